"""The job system: the status table (db) as the source of truth, the huey queue, scan, task, daemon, report.

Resume, retries and the report are database queries; the cut layer does the work.
"""

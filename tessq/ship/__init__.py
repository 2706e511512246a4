"""Shipping finished output: a ZIP of OUT and an upload to S3, both checked after the fact."""

"""One image in, exact slices out: geometry, TIFF reading, PNG/TIFF encoding, georeference, self-check, verify.

No database and no queue here: the job layer calls `core.prepare_image` and records what it returns.
"""

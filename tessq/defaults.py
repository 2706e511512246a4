"""Every default value tessq uses, in one place.

Flags and environment variables override these; nothing else in the package hard-codes them.
"""

from __future__ import annotations

# What to cut
NUM_PIECES = 8
MIN_IMAGE_SIZE = 1024  # px; both width and height must reach it (the seed's rule)
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".jp2", ".heic", *TIFF_EXTENSIONS)
SKIPPED_DIR_NAMES = frozenset({".git", ".hg", ".svn", "__MACOSX", ".ipynb_checkpoints", "__pycache__", ".tessq"})

# How to write it
SLICE_FORMAT = "png"  # "png": PNG wherever PNG holds the pixels exactly, else TIFF; "tiff": always TIFF
PNG_PRESET = "balanced"  # fast | balanced | small, see encode.py
HASH_ALGORITHM = "sha256"
METADATA_SCHEMA_VERSION = 1

# Safety limits against decompression bombs: a header may claim anything.
MAX_IMAGE_PIXELS = 50_000 * 50_000 * 4  # 10 Gpx
MEMORY_BUDGET_BYTES = 512 * 1024 * 1024  # per worker, for pixel buffers beyond one slice

# Job system
WORKSPACE_DIRNAME = ".tessq"
STATUS_DB_FILENAME = "tessq.db"
QUEUE_DB_FILENAME = "queue.db"
MAX_ATTEMPTS = 3
RETRY_DELAY_S = 5
RETRY_BACKOFF = 2.0
LEASE_S = 60.0
HEARTBEAT_S = 20.0
REAP_EVERY_S = 30.0
TIME_LIMIT_BASE_S = 600.0  # per-image limit = base + bytes_of_pixels / TIME_LIMIT_MIN_RATE
TIME_LIMIT_MIN_RATE = 2 * 1024 * 1024  # bytes/s of raw pixels we consider pathologically slow
WORKER_MAX_TASKS = 200  # recycle a worker process after this many images (bounds library leaks)
LOG_FILENAME = "batch_processing.log"
REPORT_FILENAME = "batch_report.json"

# Exit codes of `tessq run`
EXIT_OK = 0
EXIT_SOME_FAILED = 3
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

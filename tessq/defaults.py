"""Every default value tessq uses, in one place.

Flags and environment variables override these; nothing else in the package hard-codes them.
"""

from __future__ import annotations

import os

# What to cut
NUM_PIECES = 8
MIN_IMAGE_SIZE = 1024  # px; both width and height must reach it (the seed's rule)
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".jp2", ".heic", *TIFF_EXTENSIONS)
SKIPPED_DIR_NAMES = frozenset({".git", ".hg", ".svn", "__MACOSX", ".ipynb_checkpoints", "__pycache__", ".tessq"})

# How to write it
SLICE_FORMAT = "png"  # "png": PNG wherever PNG holds the pixels exactly, else TIFF; "tiff": always TIFF
# Worker self-check before the commit (tessq/selfcheck.py): "sample" decodes every slice of risky kinds, else one
# slice per image (plus the first and last of each kind's first image per worker); "full" every slice; "off".
SELF_CHECK = "sample"
PNG_PRESET = "balanced"  # fast | balanced | small, see encode.py
HASH_ALGORITHM = "sha256"
METADATA_SCHEMA_VERSION = 1

# Safety limits against decompression bombs: a header may claim anything.
MAX_IMAGE_PIXELS = 50_000 * 50_000 * 4  # 10 Gpx
MEMORY_BUDGET_BYTES = 512 * 1024 * 1024  # per worker, for pixel buffers beyond one slice
# Layouts tifffile refuses (old-style JPEG, subsampled YCbCr without JPEG, planar-separate JPEG) are decoded
# whole by Pillow/libtiff: peak memory is tiffcodec.pillow_memory() = width*height*(Pillow's 4 bytes/px + the
# numpy copy's samples*itemsize), 7 bytes/px for RGB, so the default budget admits about 76 Mpx (8,700 x 8,700);
# larger images are refused as too_large with that figure. GDAL's fallback (24-bit floats) reads by region.

# Job system
WORKSPACE_DIRNAME = ".tessq"
STATUS_DB_FILENAME = "tessq.db"
QUEUE_DB_FILENAME = "queue.db"
MAX_ATTEMPTS = 3  # attempts of an image whose processing raises a transient error
# Attempts of an image whose worker keeps dying under it (SIGKILL, OOM, preemption). Higher: a death is
# usually not the image's fault; bounded: an image that kills every worker it meets must end as failed.
MAX_LOST_ATTEMPTS = 5
RETRY_DELAY_S = 5
RETRY_BACKOFF = 2.0
LEASE_S = float(os.environ.get("TESSQ_LEASE_S") or 60.0)  # TESSQ_LEASE_S: shorter in tests, longer on slow links
HEARTBEAT_S = LEASE_S / 3  # two missed beats still keep the lease
REAP_EVERY_S = min(30.0, LEASE_S / 2)
# per-image limit = base + bytes_of_pixels / TIME_LIMIT_MIN_RATE; TESSQ_TIME_LIMIT_S overrides the base
TIME_LIMIT_BASE_S = float(os.environ.get("TESSQ_TIME_LIMIT_S") or 600.0)
# bytes/s of raw pixels we consider pathologically slow (TESSQ_TIME_LIMIT_RATE overrides)
TIME_LIMIT_MIN_RATE = float(os.environ.get("TESSQ_TIME_LIMIT_RATE") or 2 * 1024 * 1024)
WORKER_MAX_TASKS = 200  # recycle a worker process after this many images (bounds library leaks)
LOG_FILENAME = "batch_processing.log"
REPORT_FILENAME = "batch_report.json"

# S3 input and output (tessq.remote); TESSQ_S3_SPOOL_MAX_BYTES and TESSQ_S3_DISK_BUDGET_BYTES override
S3_BLOCK_BYTES = 64 * 1024  # small reads (headers, IFDs, small strips) are served from blocks of this size
S3_CACHE_BLOCKS = 64  # per open object (4 MiB); sequential small reads double the read-ahead up to that
S3_SPOOL_MAX_BYTES = 64 * 1024 * 1024  # objects up to this size are fetched whole into a temp file (one GET)
S3_DISK_BUDGET_BYTES = 8 * 1024 * 1024 * 1024  # per worker: never spool more than this, nor past free space
S3_DISK_RESERVE_BYTES = 256 * 1024 * 1024  # free space a spool must leave on the temp disk
S3_SINGLE_PUT_BYTES = 16 * 1024 * 1024  # slices below this go up in one PutObject, above it multipart
S3_UPLOAD_CONCURRENCY = 4  # slices of one image uploaded in parallel

# Exit codes of `tessq run`
EXIT_OK = 0
EXIT_SOME_FAILED = 3
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask (a container's cpuset, taskset), which os.cpu_count
    ignores; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)


# glibc malloc settings of a worker (tessq.malloc; TESSQ_MALLOPT overrides): the heap grows 64 MiB at a time and
# is trimmed only above 1 GiB of free top (a worker keeps what its largest image needed, bounded by the slice
# budget, until it exits); chunks up to 32 MiB (glibc's ceiling for this one) come from the heap, not fresh mmaps
MALLOPT = "top_pad=67108864,trim=1073741824,mmap=33554432"
# Worker processes when none are asked for (`tessq run`, `tessq workers`, `tessq demo`): one per usable core
WORKERS = usable_cores()
# The Python API's BatchJob.max_workers: the seed documented 4 whatever the machine, and notebooks written
# against it expect that, so the API keeps its own default
API_WORKERS = 4
# Names of what tessq writes (beside LOG_FILENAME and REPORT_FILENAME above)
METADATA_FILENAME = "metadata.json"  # in every image folder: the tessellation; written last, so it marks it complete
BATCH_METADATA_FILENAME = "batch_metadata.json"  # in every image folder: how it was made (job, timings, versions)
EXPORT_SUFFIX = "_results.zip"  # `tessq export`: OUT/<OUT name>_results.zip, the seed's name
METADATA_SCHEMA = "tessq.metadata"  # metadata.json's "schema": how a folder is recognised as tessq's output
# Work in progress carries one of these in its name (export and upload never ship it, scans never enter it):
TMP_MARK = ".tessq-tmp"
OLD_MARK = ".tessq-old"
TMP_FOLDER_MARK = TMP_MARK + "."  # an image folder being built: .<name>.tessq-tmp.<token> (tessq.storage.folder)
OLD_FOLDER_MARK = OLD_MARK + "."  # the folder it replaces, moved aside: .<name>.tessq-old.<token>
EXPORT_TMP_MARK = TMP_MARK + "-"  # an export being written: .<zip name>.tessq-tmp-<pid>

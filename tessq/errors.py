"""tessq's exception types: every failure a user can meet, with a message naming the file and the reason.

`permanent` tells the job system whether retrying could help (corrupt input: no; a full disk: yes).
"""

from __future__ import annotations

from pathlib import Path


class TessqError(Exception):
    """Base class of every error tessq raises on purpose."""

    permanent: bool = True
    kind: str = "error"


class ConfigError(TessqError):
    """A setting, flag or URL that cannot work (bad grid, unknown backend, missing workspace...)."""

    kind = "config"


class ImageError(TessqError):
    """A problem with one image; the message always starts with the file's path."""

    kind = "image"

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CorruptImageError(ImageError):
    """The file is not a readable TIFF: truncated, zero bytes, not a TIFF, broken IFDs or chunks."""

    kind = "corrupt"


class UnsupportedImageError(ImageError):
    """A valid TIFF whose layout or codec tessq cannot slice losslessly (the reason says which)."""

    kind = "unsupported"


class ImageTooSmallError(ImageError):
    """Width or height is below the job's minimum size."""

    kind = "too_small"


class ImageTooLargeError(ImageError):
    """The header declares more pixels or bytes than the configured limits allow (decompression bomb)."""

    kind = "too_large"


class SourceChangedError(ImageError):
    """The source file vanished or changed while tessq was working on it."""

    kind = "source_changed"


class SourceModifiedError(SourceChangedError):
    """The source was rewritten while being read: retried, so the new content is cut."""

    permanent = False


class SelfCheckError(ImageError):
    """A slice just written does not decode to the pixels that were encoded: nothing is committed."""

    kind = "self_check"

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, f"self-check failed: {reason}; nothing was committed")


class OutputCollisionError(TessqError):
    """An image's output folder holds another image's output: refused, never replaced or deleted."""

    kind = "output_collision"


class OptionsChangedError(TessqError):
    """The job's settings changed (a new scan) while the image was cut: discarded and cut again."""

    permanent = False
    kind = "options_changed"


class TransientError(TessqError):
    """A failure that may pass on its own (disk full, I/O error, lock): retried with backoff."""

    permanent = False
    kind = "transient"


class VerificationError(TessqError):
    """Slices do not reassemble to the source."""

    kind = "verification"


class ExportError(TessqError):
    """The ZIP export cannot be written or does not verify (the message names the archive or folder)."""

    kind = "export"


class ExportDiskFullError(TransientError):
    """The disk filled up while writing the ZIP; the temporary file is removed and the message names it."""

    kind = "disk_full"


class UploadError(TessqError):
    """An S3 upload problem; the message says what to check or change."""

    kind = "upload"


class BucketNotFoundError(UploadError):
    """The bucket of s3://BUCKET/PREFIX does not exist at the endpoint."""

    kind = "no_bucket"


class S3AuthError(UploadError):
    """No credentials, unknown profile, bad keys or access denied."""

    kind = "s3_auth"


class S3UnreachableError(UploadError):
    """The endpoint cannot be reached (no network, wrong --endpoint-url); may pass on its own."""

    permanent = False
    kind = "s3_unreachable"


class ChecksumMismatchError(UploadError):
    """The object S3 stored does not match the local file (size or CRC32); it is not recorded as uploaded."""

    permanent = False
    kind = "checksum"


class RemoteIOError(TransientError, OSError):
    """An S3 read, listing or write failed in a way that may pass (timeout, 5xx, dropped connection).

    Also an OSError, so code that lets I/O errors through (tiff's readers) treats it like a failing disk."""

    kind = "s3_io"


class LeaseLostError(TransientError):
    """The worker's lease on an image expired and was given away before its output was committed."""

    kind = "lease_lost"

"""Where images are read and image folders written: one Storage interface (base.py), one small backend each
for a local folder (local.py), s3://BUCKET/PREFIX (s3.py) and an archive read as a tree (archive.py).

`at(location)` is the only place that looks at a location's scheme: everything above asks the Storage.
Not fsspec: s3fs needs aiobotocore, which pins botocore to a narrow range (clashing with users' boto3), and
fsspec's LocalFileSystem writes by plain open() and commits by shutil.move from the system temp dir (no
O_NOFOLLOW, no fsync, no atomic rename beside the target), which folder.py needs; s3fs's ETag-pinned ranged
reads (IfMatch) are what s3.RangedReader already does on boto3, so the few operations are written here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from tessq.storage import archive, s3
from tessq.storage.archive import ArchiveMember, ArchiveStorage
from tessq.storage.base import OutputFolder, Source, Storage
from tessq.storage.local import LocalStorage
from tessq.storage.s3 import RemoteSource, S3Storage
from tessq.storage.tree import FolderEntries

__all__ = [
    "ArchiveMember",
    "ArchiveStorage",
    "FolderEntries",
    "LocalStorage",
    "OutputFolder",
    "RemoteSource",
    "S3Storage",
    "Source",
    "Storage",
    "at",
    "holds_state",
    "is_archive",
    "is_member",
    "resolve",
    "sweep_temp",
    "text",
    "verifiable",
]

Location = str | os.PathLike[str] | Storage


def at(location: Location) -> Storage:
    """The Storage of an input or output location: an archive file (by its suffix, when it exists), an
    s3://BUCKET/PREFIX URL (also as pathlib folds it, 's3:/...'), else a local folder."""
    if isinstance(location, Storage):
        return location
    if archive.is_archive(location):
        return ArchiveStorage(location)
    if s3.is_remote(location):
        return S3Storage(location)
    return LocalStorage(location)


FileSource = Path | RemoteSource | ArchiveMember  # what Storage.source() gives, as the cut layer reads it


def source_at(location: str | os.PathLike[str] | Source) -> FileSource:
    """One file given by its location (a path or an s3:// URL; a source a Storage gave passes) as a Source."""
    if isinstance(location, (RemoteSource, ArchiveMember, Path)):
        return location
    if isinstance(location, (str, os.PathLike)):
        return s3.as_source(location)
    raise TypeError(f"not a source: {location!r}")


def sweep_temp(alive: Callable[[int], bool]) -> int:
    """Remove the spools and upload folders of S3 work left by dead processes of this machine (by pid)."""
    return s3.sweep_temp(alive)


def _holder(location: Location) -> Storage:
    """The storage holding a location, without asking whether it is an archive (the same canonical form)."""
    if isinstance(location, Storage):
        return location
    return S3Storage(location) if s3.is_remote(location) else LocalStorage(location)


def resolve(location: Location) -> Path | str:
    """The canonical form of a location: an absolute local Path, or the normalised URL."""
    return _holder(location).resolved()


def text(location: Location) -> str:
    """The normalised location as the status table stores it."""
    return _holder(location).text


def holds_state(location: Location) -> bool:
    """Whether the location can hold OUT/.tessq and the log, without touching it (S3 cannot)."""
    return not s3.is_remote(location.text if isinstance(location, Storage) else location)


def is_archive(location: object) -> bool:
    return archive.is_archive(location)


def is_member(source: object) -> bool:
    """Whether a source is an archive member (read by its byte range, its spool or its stream)."""
    return archive.is_member(source)


@contextlib.contextmanager
def verifiable(
    input_dir: Location, output_dir: Location, rel_path: str, out_rel: str
) -> Iterator[tuple[Path, Source | None]]:
    """(local image folder, source or None) for verify.verify_image; an S3 folder is downloaded to a temp dir."""
    source = at(input_dir).existing_source(rel_path)
    with at(output_dir).local_copy(out_rel) as folder:
        yield folder, source


def readable(source: str | os.PathLike[str] | Source) -> str | Path | Source:
    """A source as tiff reads it: an S3 URL or a source object as it is, a local name as a Path."""
    if s3.is_remote(source) or archive.is_member(source):
        return source  # type: ignore[return-value]
    return Path(source)  # type: ignore[arg-type]


def tiff_target(source: object) -> tuple[object, int | None, int | None]:
    """(what tifffile opens, its size or None, the TIFF's offset in it or None) for one source: an archive
    member's byte range, an S3 object's spool or ranged reader, else the local path itself."""
    if isinstance(source, ArchiveMember):
        return source.tiff_range()
    if s3.is_remote(source):
        target, size = s3.tiff_target(source)  # type: ignore[arg-type]
        return target, size, None
    return source, None, None


def fallback_target(source: object) -> object:
    """What a fallback decoder (Pillow, GDAL) opens: the local path's text, else a seekable view."""
    if isinstance(source, ArchiveMember):
        return source.fallback_target()
    if s3.is_remote(source):
        return s3.tiff_target(source)[0]  # type: ignore[arg-type]
    return str(source)


def location_value(value: str | os.PathLike[str]) -> Path | str:
    """A location as the Python API passes it on: a local one as a Path; a URL stays a string (Path would
    fold its '//')."""
    return os.fspath(value) if s3.is_remote(value) else Path(value)


def join_text(base: str, relative: str) -> str:
    """base/relative for a stored location, without touching it (history's listing of many rows)."""
    if s3.is_remote(base):
        return f"{base.rstrip('/')}/{relative}"
    return str(Path(base) / relative)

"""Atomic image folders: build `<parent>/.<name>.tessq-tmp.<token>/`, fsync, rename into place; replace an
existing folder via `.<name>.tessq-old.<token>`; clean leftovers of crashed runs.

A crash at any moment leaves either no folder, the old complete folder, or the new complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from tessq import defaults
from tessq.errors import OutputCollisionError
from tessq.perprocess import PerProcess

TMP_MARK = defaults.TMP_FOLDER_MARK
OLD_MARK = defaults.OLD_FOLDER_MARK
# a new file of an image folder: created or emptied, never opened through a symlink, not inherited by children
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def tmp_name(name: str, token: str) -> str:
    return f".{name}{TMP_MARK}{token}"


def old_name(name: str, token: str) -> str:
    return f".{name}{OLD_MARK}{token}"


def is_leftover(entry: str, name: str | None = None) -> bool:
    """Whether a directory entry is a temporary or displaced folder tessq left behind (for `name` if given)."""
    for mark in (TMP_MARK, OLD_MARK):
        if mark in entry and entry.startswith("."):
            base = entry[1 : entry.index(mark)]
            if name is None or base == name:
                return True
    return False


def fsync_path(path: str | Path) -> None:
    """Make a file's data, or a directory's entries (creations, renames), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(folder: Path) -> None:
    """fsync every file of `folder` concurrently: parallel fsyncs share journal commits, so ten files cost
    about one commit instead of ten in a row."""
    files = [entry.path for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False)]
    if len(files) <= 1:
        for path in files:
            fsync_path(path)
        return
    list(_FSYNC_POOL.get().map(fsync_path, files))


_FSYNC_POOL = PerProcess(lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync"))


def cleanup_stale(parent: str | Path, name: str) -> list[Path]:
    """Remove `.<name>.tessq-tmp.*` / `.<name>.tessq-old.*` left by crashed runs; returns what was removed.

    If a crash happened between moving the old folder aside and renaming the new one in, the old folder is
    the only complete copy: it is moved back instead of removed.
    """
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    final = parent / name
    for entry in sorted(os.listdir(parent)):
        if not is_leftover(entry, name):
            continue
        path = parent / entry
        if OLD_MARK in entry and not final.exists():
            with contextlib.suppress(OSError):
                os.rename(path, final)
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


METADATA = defaults.METADATA_FILENAME
NESTED_SCAN_MAX = 10_000  # entries looked at under a folder about to be replaced (an image folder has ~10)


def _source_of(folder: Path) -> tuple[str | None, str | None, str | None] | None:
    """(relative_path, absolute_path, sha256) of the source a tessq image folder was cut from; None when
    `folder` holds no readable tessq metadata.json."""
    try:
        with open(folder / METADATA, "rb") as fh:
            meta = json.loads(fh.read(64 * 1024 * 1024))
        src = meta["source"] if meta.get("schema") == defaults.METADATA_SCHEMA else None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(src, dict):
        return None
    return src.get("relative_path"), src.get("absolute_path"), src.get("sha256")


def replace_problem(final: Path, new: Path) -> str | None:
    """Why the existing folder `final` must not be replaced by `new` (both image folders), or None.

    Replaceable: the same image's earlier output (same relative path, and the same source file or the same
    content), or a folder holding no image at all (a leftover). Not replaceable: another image's folder, or a
    folder with image folders inside (an input folder's images nested under an image's name)."""
    if final.is_symlink() or not final.is_dir():
        return "is not a folder"
    old, ours = _source_of(final), _source_of(new)
    if old is not None and ours is not None:
        same_rel = old[0] == ours[0]
        same_file = old[1] is not None and old[1] == ours[1]
        same_content = old[2] is not None and old[2] == ours[2]
        if not (same_rel and (same_file or same_content)):
            return f"holds the output of another image ({old[1] or old[0]})"
    seen = 0
    for dirpath, dirnames, filenames in os.walk(final):
        if Path(dirpath) != final and METADATA in filenames:
            return f"holds other images' output folders ({Path(dirpath).relative_to(final)})"
        dirnames[:] = [d for d in dirnames if not is_leftover(d)]
        seen += len(dirnames) + len(filenames)
        if seen > NESTED_SCAN_MAX:
            return f"holds more than {NESTED_SCAN_MAX:,} entries: not an image folder"
    return None


class AtomicFolder:
    """The temporary folder being filled; `commit()` renames it to the final name."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.token = secrets.token_hex(4)
        self.path = final.parent / tmp_name(final.name, self.token)
        self.committed = False

    @classmethod
    def create(cls, final: str | Path) -> AtomicFolder:
        """An empty temporary folder beside `final` (its parents created); commit() or abandon() it."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        folder = cls(final)
        folder.path.mkdir()
        return folder

    def path_for(self, name: str) -> Path:
        """Where the file `name` of the folder is (to read back what was written; write with write/open_for_write)."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"not a file name inside an image folder: {name!r}")
        return self.path / name

    def _create(self, name: str) -> int:
        """The one place a file of the folder is created: never through a link planted in the folder."""
        return os.open(self.path_for(name), _WRITE_FLAGS, 0o666)

    def write(self, name: str, data: bytes) -> Path:
        """Write one file of the folder whole: slices and metadata held in memory (commit syncs them)."""
        # os-level calls: open() adds an fstat, an isatty ioctl and a buffer per file, ten files per image
        fd = self._create(name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return self.path_for(name)

    def open_for_write(self, name: str) -> BinaryIO:
        """A new file of the folder open for writing (and seeking), for streamed encoders and tifffile."""
        # open() with our opener: the file object's name stays the path (tifffile reads it)
        return open(self.path_for(name), "wb", opener=lambda path, _flags: os.open(path, _WRITE_FLAGS, 0o666))

    def commit(self) -> None:
        """fsync the files and the folder, move any existing final folder aside, rename into place.

        The folder moved aside (and deleted) must be this image's own earlier output or a leftover holding
        no image: one that holds another image's output (its metadata.json names another source) or other
        images' folders (a subfolder with a metadata.json) raises OutputCollisionError and is left alone."""
        fsync_files(self.path)
        fsync_path(self.path)
        parent = self.final.parent
        displaced = None
        if self.final.exists():
            problem = replace_problem(self.final, self.path)
            if problem:
                raise OutputCollisionError(f"{self.final}: {problem}; nothing was replaced or deleted")
            displaced = parent / old_name(self.final.name, self.token)
            os.rename(self.final, displaced)
        os.rename(self.path, self.final)
        fsync_path(parent)
        self.committed = True
        if displaced is not None:
            shutil.rmtree(displaced, ignore_errors=True)

    def abandon(self) -> None:
        """Remove the temporary folder (nothing to do once committed)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

"""Atomic image folders: build `<parent>/.<name>.tessq-tmp.<token>/`, fsync, rename into place; replace an
existing folder via `.<name>.tessq-old.<token>`; clean leftovers of crashed runs.

A crash at any moment leaves either no folder, the old complete folder, or the new complete one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

TMP_MARK = ".tessq-tmp."
OLD_MARK = ".tessq-old."


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


_POOL: dict[int, ThreadPoolExecutor] = {}


def _fsync_pool() -> ThreadPoolExecutor:
    """One small thread pool per process (threads do not survive fork, hence keyed by pid)."""
    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
    return _POOL[pid]


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


class AtomicFolder:
    """The temporary folder being filled; `commit()` renames it to the final name.

    Files written with `write()` are fsynced in the background at once, so their flush overlaps the encoding
    of the next slice and `commit()` mostly finds the work done (parallel fsyncs also share journal commits).
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.token = secrets.token_hex(4)
        self.path = final.parent / tmp_name(final.name, self.token)
        self.committed = False
        self._syncing: dict[str, Future[None]] = {}

    def write(self, name: str, data: bytes) -> Path:
        """Write one file of the folder (the one place slices and metadata reach the disk) and start its fsync."""
        path = self.path / name
        with open(path, "wb") as fh:
            fh.write(data)
        self.started_writing(path)
        return path

    def started_writing(self, path: Path) -> None:
        """Queue the fsync of a file written by someone else (a streamed slice) once it is closed."""
        self._syncing[path.name] = _fsync_pool().submit(fsync_path, path)

    def commit(self) -> None:
        """fsync the files and the folder, move any existing final folder aside, rename into place."""
        self._sync_all_files()
        fsync_path(self.path)
        parent = self.final.parent
        displaced = None
        if self.final.exists():
            displaced = parent / old_name(self.final.name, self.token)
            os.rename(self.final, displaced)
        os.rename(self.path, self.final)
        fsync_path(parent)
        self.committed = True
        if displaced is not None:
            shutil.rmtree(displaced, ignore_errors=True)

    def _sync_all_files(self) -> None:
        """Wait for the queued fsyncs; fsync any file that was not queued (written by a third-party writer)."""
        for entry in os.scandir(self.path):
            if entry.name not in self._syncing and entry.is_file(follow_symlinks=False):
                self._syncing[entry.name] = _fsync_pool().submit(fsync_path, entry.path)
        for future in self._syncing.values():
            future.result()

    def abandon(self) -> None:
        for future in self._syncing.values():
            future.cancel()
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final: str | Path) -> Iterator[AtomicFolder]:
    """Yield an empty temporary folder beside `final`; remove it unless committed (on any error too)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = AtomicFolder(final)
    folder.path.mkdir()
    try:
        yield folder
    finally:
        if not folder.committed:
            folder.abandon()

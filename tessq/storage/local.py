"""A local folder as a Storage: the tree walked with os.scandir, sources read as files, image folders written
in place (folder.AtomicFolder renames them in; this module cleans up after crashed writers).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessq.errors import ConfigError, TessqError
from tessq.storage import folder
from tessq.storage.base import Source, Storage
from tessq.storage.tree import (
    METADATA_NAME,
    READABLE_ARCHIVES,
    FolderEntries,
    is_image_name,
    is_skipped_dir,
    is_tessq_output,
    is_tiff_name,
    unreadable_archive_advice,
)

log = logging.getLogger("tessq.scan")


def contained(root: Path, relative: str) -> Path:
    """root/relative, refusing anything that would land outside root ('..', absolute, NUL)."""
    if "\x00" in relative or relative.startswith(("/", "\\")):
        raise TessqError(f"refusing output path {relative!r}: not a relative path inside {root}")
    base, target = root.resolve(), (root / relative).resolve()
    if target == base or base not in target.parents:
        raise TessqError(f"refusing output path {relative!r}: it escapes the output folder {root}")
    return target


def walk(root: Path, *, follow_symlinks: bool, exclude: set[Path]) -> Iterator[FolderEntries]:
    """Yield every folder (depth first, sorted) with its TIFF entries and count of other images.

    Hidden and system folders, `exclude` (the workspace, the output) and, unless asked, symlinks
    are never entered; visited (device, inode) pairs stop symlink loops.
    """
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        path, rel = stack.pop()
        try:
            st = path.stat()
        except OSError as exc:
            log.warning("cannot enter %s: %s", path, exc)
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        folder_entries = FolderEntries(rel=rel)
        subdirs: list[tuple[Path, str]] = []
        not_entered: list[FolderEntries] = []
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", path, exc)
            continue
        if any(e.name == METADATA_NAME for e in entries) and is_tessq_output(path):
            yield FolderEntries(rel=rel, skip_reason="tessq_output")  # an image folder tessq wrote: not input
            continue
        for entry in entries:
            try:
                child_rel = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink() and not follow_symlinks:
                    if is_tiff_name(entry.name):
                        folder_entries.skipped_files.append((entry.name, "symlink"))
                    elif entry.is_dir():
                        not_entered.append(FolderEntries(rel=child_rel, skip_reason="symlink"))
                    continue
                if entry.is_dir(follow_symlinks=follow_symlinks):
                    child = Path(entry.path)
                    if is_skipped_dir(entry.name):
                        not_entered.append(FolderEntries(rel=child_rel, skip_reason="hidden"))
                        continue
                    if child.resolve() in exclude:
                        not_entered.append(FolderEntries(rel=child_rel, skip_reason="excluded"))
                        continue
                    subdirs.append((child, child_rel))
                elif entry.is_file(follow_symlinks=follow_symlinks):
                    if is_tiff_name(entry.name):
                        folder_entries.tiffs.append(entry)
                    elif is_image_name(entry.name):
                        folder_entries.other_images += 1
            except OSError as exc:
                log.warning("cannot read %s: %s", entry.path, exc)
        yield folder_entries
        yield from not_entered
        stack.extend(reversed(subdirs))


@dataclass(frozen=True)
class LocalOutputFolder:
    """An image folder written in place: folder.AtomicFolder's rename is the commit, nothing is left to do."""

    local_dir: Path

    def commit(self, still_holds: Callable[[], bool] | None = None) -> dict[str, Any]:
        return {"url": str(self.local_dir)}


class LocalStorage(Storage):
    """A folder on a local (or mounted) file system."""

    kind = "local"
    holds_state = True
    probe_in_processes = True
    plain_files = True

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.given_text = os.fspath(location)
        self.given = Path(location)
        self.path = self.given.resolve()

    @property
    def text(self) -> str:
        return str(self.path)

    def resolved(self) -> Path:
        return self.path

    @property
    def local_path(self) -> Path:
        return self.path

    def join(self, relative: str) -> str:
        return str(self.path / relative)

    def default_output(self) -> LocalStorage:
        return LocalStorage(self.path.parent / f"{self.path.name}_tessq")

    def check_input(self) -> None:
        if self.given.is_file():
            advice = unreadable_archive_advice(self.given)
            raise ConfigError(
                f"input {self.given_text} is a file, not a folder"
                + (f": {advice}" if advice else f" or an archive tessq reads ({READABLE_ARCHIVES})")
            )
        if not self.given.is_dir():
            raise ConfigError(f"input folder {self.given_text} does not exist or is not a folder")

    def check_output(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"the output {self.path} exists and is not a folder")

    def prepare_output(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def walk(self, *, follow_symlinks: bool = False, exclude: Sequence[Path | str] = ()) -> Iterator[FolderEntries]:
        excluded = {p.resolve() for p in exclude if isinstance(p, Path)}
        return walk(self.path, follow_symlinks=follow_symlinks, exclude=excluded)

    def source(self, relative: str) -> Path:
        return self.given / relative

    def existing_source(self, relative: str) -> Source | None:
        found = self.source(relative)
        return found if found.exists() else None

    @contextlib.contextmanager
    def output_folder(self, out_rel: str, tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[LocalOutputFolder]:
        yield LocalOutputFolder(contained(self.given, out_rel))

    def cleanup_stale(self, out_rel: str) -> None:
        image_dir = contained(self.given, out_rel)
        folder.cleanup_stale(image_dir.parent, image_dir.name)

    def put_bytes(self, relative: str, data: bytes) -> None:
        """An atomic replace that never writes through a link planted at the name or its temp."""
        path = self.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    @contextlib.contextmanager
    def local_copy(self, out_rel: str) -> Iterator[Path]:
        yield self.given / out_rel

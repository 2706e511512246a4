"""Shipping the output as one ZIP: which files are shipped, and the streaming, verified archive.

`shipped_files` is the one listing both the ZIP export and the S3 upload (upload.py) use.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from tessq import defaults
from tessq.errors import ExportDiskFullError, ExportError

Progress = Callable[[int, int], None]
log = logging.getLogger("tessq.export")

DEFAULT_EXTRA_FILES = (defaults.REPORT_FILENAME, defaults.LOG_FILENAME)
# Markers of folders and files that are work in progress (atomic image folders, our own temp archives).
TEMP_MARKERS = (defaults.TMP_MARK, defaults.OLD_MARK)
# Formats that are already compressed: deflating them again costs CPU and saves nothing.
STORED_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".jp2", ".zip", ".gz", ".bz2", ".xz", ".zst", ".7z"}
)
# 1980-01-01 is the earliest time a ZIP header can hold; fixed so that equal trees give equal archives.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--
CHUNK = 1 << 20
# Size of a local header + central record without the name, with ZIP64 extras: a lower bound per entry.
ENTRY_OVERHEAD = 30 + 46 + 2 * 28
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
TMP_SUFFIX = defaults.EXPORT_TMP_MARK


# ---------------------------------------------------------------- what is shipped


def default_zip_path(out_dir: Path) -> Path:
    """OUT/<OUT name>_results.zip, the seed's name."""
    out_dir = Path(out_dir)
    return out_dir / f"{out_dir.resolve().name}{defaults.EXPORT_SUFFIX}"


def is_temporary(rel: str) -> bool:
    """True for anything inside or named like a work-in-progress folder or temp file."""
    return any(marker in part for part in PurePosixPath(rel).parts for marker in TEMP_MARKERS)


def _normalise_rel(rel: str) -> str:
    """A clean relative posix path; refuses absolute paths and '..' so nothing outside OUT is shipped."""
    posix = PurePosixPath(str(rel).replace(os.sep, "/").strip("/"))
    if posix.is_absolute() or ".." in posix.parts:
        raise ExportError(f"image folder {rel!r} is not inside the output directory")
    return "" if str(posix) == "." else str(posix)


def select_image_dirs(image_dirs: Iterable[str], folder: str | None) -> list[str]:
    """The image folders to ship, sorted; with `folder`, only those at or under that output sub-folder."""
    dirs = sorted({_normalise_rel(d) for d in image_dirs})
    if not folder:
        return dirs
    limit = _normalise_rel(folder)
    if not limit:
        return dirs
    return [d for d in dirs if d == limit or d.startswith(limit + "/")]


def _not_shipped(not_shipped: list[dict[str, str]] | None, path: str, reason: str) -> None:
    log.warning("not shipped: %s (%s)", path, reason)
    if not_shipped is not None:
        not_shipped.append({"path": path, "reason": reason})


def _kind(mode: int) -> str:
    return "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"


def _walk_files(root: str, rel_root: str, not_shipped: list[dict[str, str]] | None = None) -> Iterable[tuple[str, str]]:
    """Regular files below `root` as (path, relative name), never following a symbolic link (a link is
    left out and listed in `not_shipped`, as are sockets, FIFOs and devices) and skipping
    work-in-progress items. Plain strings: this runs once per slice, 100,000s of times."""
    stack = [(root, rel_root)]
    while stack:
        here, rel_here = stack.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                if is_temporary(entry.name):
                    continue
                rel = f"{rel_here}/{entry.name}" if rel_here else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel))
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, rel
                else:
                    _not_shipped(not_shipped, entry.path, _kind(entry.stat(follow_symlinks=False).st_mode))


def _link_on_the_way(root: Path, rel: str) -> str | None:
    """The first component of root/rel (below root) that is a symbolic link or not a folder, else None."""
    here = root
    for part in PurePosixPath(rel).parts:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            return None  # missing: the caller's error
        if not stat.S_ISDIR(mode):
            return f"{here} is {_kind(mode)}"
    return None


class MissingImagesError(ExportError):
    """Done images whose folder is missing on disk (or has no metadata.json): named, with the fix."""

    SHOWN = 5

    def __init__(self, missing: Sequence[str], hint: str | None = None) -> None:
        self.missing = list(missing)
        shown = ", ".join(self.missing[: self.SHOWN])
        more = f" and {len(self.missing) - self.SHOWN} more" if len(self.missing) > self.SHOWN else ""
        hint = hint or "run `tessq run IN OUT` (or `tessq scan IN --out OUT`) again to redo them"
        super().__init__(
            f"{len(self.missing)} done image folder(s) are missing on disk: {shown}{more}; "
            f"{hint} (the scan checks every done image's folder and queues the missing ones again)"
        )


def shipped_files(
    out_dir: Path,
    image_dirs: Sequence[str],
    *,
    folder: str | None = None,
    extra_files: Iterable[str] = DEFAULT_EXTRA_FILES,
    exclude: Iterable[Path] = (),
    not_shipped: list[dict[str, str]] | None = None,
) -> list[tuple[Path, str]]:
    """Every file of the done image folders plus the reports, as (absolute path, relative posix name),
    sorted by name so archives and uploads see the same deterministic order.

    A done image whose folder is missing on disk is an error: the status table and the disk disagree,
    and silently shipping less than the table promises would hide it. Nothing is reached through a
    symbolic link inside OUT: a linked file, a linked image folder (or a link on its way) and a linked
    report are left out, logged, and listed in `not_shipped` ({"path", "reason"}).
    """
    root = Path(out_dir).resolve()
    # Walked paths start from the resolved root, so comparing resolved strings is enough.
    excluded = {str(Path(p).resolve()) for p in exclude}
    files: dict[str, str] = {}
    missing: list[str] = []
    for rel_dir in select_image_dirs(image_dirs, folder):
        path = root / rel_dir
        link = _link_on_the_way(root, rel_dir)
        if link is not None:
            _not_shipped(not_shipped, str(path), link)
            continue
        if not path.is_dir():
            missing.append(rel_dir)
            continue
        for file_path, rel in _walk_files(str(path), rel_dir, not_shipped):
            files[rel] = file_path
    if missing:
        raise MissingImagesError(missing)
    for name in extra_files:
        rel = _normalise_rel(name)
        path = root / rel
        if not rel or is_temporary(rel) or _link_on_the_way(root, str(PurePosixPath(rel).parent)):
            continue
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode):
            files[rel] = str(path)
        else:
            _not_shipped(not_shipped, str(path), _kind(mode))
    return [(Path(files[rel]), rel) for rel in sorted(files) if files[rel] not in excluded]


# ---------------------------------------------------------------- the archive


_UNSAFE_IN_ENTRY = re.compile(r"[\\\x00-\x1f\x7f]")


def zip_entry_name(rel: str) -> str:
    """The archive entry name of the shipped file `rel`, built from its path components only.

    Zip readers on Windows (Explorer, 7-Zip, .NET) also split names at backslashes, so a folder named
    `a\\..\\..\\pwn` would extract outside the target: a backslash (and any control character) in a
    component becomes `_`. Empty, `.` and `..` components, and absolute names, are refused."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ExportError(f"refusing archive entry {rel!r}: not a relative path inside the output folder")
    return "/".join(_UNSAFE_IN_ENTRY.sub("_", part) for part in parts)


def archive_entries(files: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """`files` with their archive entry names (zip_entry_name); two files whose names would become one
    entry are refused with both named, never merged."""
    seen: dict[str, str] = {}
    entries = []
    for path, rel in files:
        name = zip_entry_name(rel)
        if name in seen:
            raise ExportError(f"{rel!r} and {seen[name]!r} would both be archive entry {name!r}; rename one")
        seen[name] = rel
        entries.append((path, name))
    return entries


def compression_for(name: str) -> int:
    already_compressed = os.path.splitext(name)[1].lower() in STORED_SUFFIXES
    return zipfile.ZIP_STORED if already_compressed else zipfile.ZIP_DEFLATED


def _zip_info(name: str, size: int) -> zipfile.ZipInfo:
    """A header with everything fixed except name and size: the archive depends on content alone."""
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
    info.compress_type = compression_for(name)
    info.external_attr = FILE_MODE << 16
    info.create_system = 3  # unix, whatever machine wrote it
    info.file_size = size  # lets zipfile pick ZIP64 headers up front for entries near 4 GB
    return info


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _check_free_space(dest: Path, files: Sequence[tuple[Path, str]], sizes: Sequence[int]) -> None:
    """Fail before writing anything when the stored entries alone cannot fit (a lower bound on the size)."""
    lower_bound = sum(
        size + ENTRY_OVERHEAD + 2 * len(rel.encode())
        for (_, rel), size in zip(files, sizes, strict=True)
        if compression_for(rel) == zipfile.ZIP_STORED
    )
    free = shutil.disk_usage(dest.parent).free
    if free < lower_bound:
        raise ExportDiskFullError(
            f"not enough free space to write {dest}: it needs at least {lower_bound / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB is free on that disk; free some space or pass another --zip PATH"
        )


def _copy_exactly(src: IO[bytes], dst: IO[bytes], size: int, path: Path) -> None:
    """Copy the first `size` bytes in chunks. The size is the one taken when listing, so a log still
    being appended to is archived as a consistent prefix instead of breaking the header's size."""
    remaining = size
    while remaining:
        chunk = src.read(min(CHUNK, remaining))
        if not chunk:
            raise ExportError(f"{path} shrank while it was being archived; export again")
        dst.write(chunk)
        remaining -= len(chunk)


def _create_new(tmp: Path) -> int:
    """A new file, never opened through a link planted at the temporary name (O_EXCL refuses anything there)."""
    try:
        return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    except FileExistsError as exc:
        raise ExportError(f"{tmp} exists and is not this export's (a link, or another export): remove it") from exc


def _write_archive(
    tmp: Path | BinaryIO, files: Sequence[tuple[Path, str]], sizes: Sequence[int], progress: Progress | None
) -> tuple[int, int]:
    """Stream every file into `tmp` (a new path, or a file open for writing that this closes) chunk by
    chunk; returns (stored, deflated) entry counts."""
    total = sum(sizes)
    done = stored = deflated = 0
    raw = tmp if not isinstance(tmp, Path) else os.fdopen(_create_new(tmp), "w+b")
    with raw, zipfile.ZipFile(raw, "w", allowZip64=True) as zf:
        for (path, rel), size in zip(files, sizes, strict=True):
            info = _zip_info(rel, size)
            # O_NOFOLLOW: a file swapped for a link after the listing is refused (ELOOP), not read through.
            with os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW), "rb") as src, zf.open(info, "w") as dst:
                _copy_exactly(src, dst, size, path)
            if info.compress_type == zipfile.ZIP_STORED:
                stored += 1
            else:
                deflated += 1
            done += size
            if progress is not None:
                progress(done, total)
    return stored, deflated


def verify_archive(path: Path, expected: Sequence[tuple[str, int]]) -> None:
    """Reopen the archive and read every entry back: names, order, sizes and every CRC must match.

    Reading through ZipExtFile streams each entry and raises BadZipFile on a CRC mismatch, the same
    check `ZipFile.testzip` does, without holding any entry in memory.
    """
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) != len(expected):
            raise ExportError(f"{path}: archive holds {len(infos)} entries, expected {len(expected)}")
        for info, (name, size) in zip(infos, expected, strict=True):
            if info.filename != name or info.file_size != size:
                raise ExportError(
                    f"{path}: entry {info.filename!r} ({info.file_size} bytes) where {name!r} "
                    f"({size} bytes) was expected; did the output change during the export?"
                )
            try:
                with zf.open(info) as entry:
                    while entry.read(CHUNK):
                        pass
            except zipfile.BadZipFile as exc:
                raise ExportError(f"{path}: entry {name!r} fails its CRC check ({exc})") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _started_after(pid: int, mtime: float) -> bool:
    """True when process `pid` started after `mtime` (so it is a reused pid, not the temp file's writer)."""
    try:
        return os.stat(f"/proc/{pid}").st_ctime > mtime + 1.0
    except OSError:
        return False


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove `.<dest name>.tessq-tmp-<pid>` left beside `dest` by an export killed with SIGKILL (its pid
    is gone, or was reused by a process started after the file was last written); returns what went."""
    pattern = re.compile(re.escape(f".{dest.name}{TMP_SUFFIX}") + r"(\d+)$")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if pid == os.getpid() or not _pid_alive(pid) or _started_after(pid, mtime):
            try:
                os.unlink(entry.path)  # a link is removed itself, never its target
            except OSError as exc:
                log.warning("cannot remove the stale temporary archive %s: %s", entry.path, exc)
                continue
            log.info("removed the stale temporary archive %s (its export was killed)", entry.path)
            removed.append(Path(entry.path))
    return removed


def export_zip(
    out_dir: Path,
    image_dirs: Sequence[str],
    dest: Path | None = None,
    *,
    folder: str | None = None,
    extra_files: Iterable[str] = DEFAULT_EXTRA_FILES,
    progress: Progress | None = None,
) -> dict:
    """Write the done images (and the reports) of `out_dir` into one verified ZIP at `dest`.

    The archive is written to a temporary name beside `dest` and renamed into place only once it is
    complete and verified, so `dest` is either the previous archive or the new one, never half of one.
    `progress(done_bytes, total_bytes)` is called after each file is written.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    dest = Path(dest) if dest is not None else default_zip_path(out_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}{TMP_SUFFIX}{os.getpid()}")
    stale = remove_stale_temps(dest)
    if not select_image_dirs(image_dirs, folder):
        where = f" under folder {folder!r}" if folder else ""
        raise ExportError(f"nothing to export: no done images{where} in {out_dir}")
    not_shipped: list[dict[str, str]] = []
    files = shipped_files(
        out_dir, image_dirs, folder=folder, extra_files=extra_files, exclude=(dest, tmp), not_shipped=not_shipped
    )
    files = archive_entries(files)
    # Sizes are taken once: the header, the progress total and the verification all agree on them.
    sizes = [os.lstat(path).st_size for path, _ in files]
    _check_free_space(dest, files, sizes)
    raw = os.fdopen(_create_new(tmp), "w+b")
    try:
        stored, deflated = _write_archive(raw, files, sizes, progress)
        verify_archive(tmp, [(rel, size) for (_, rel), size in zip(files, sizes, strict=True)])
        os.replace(tmp, dest)
    except OSError as exc:
        raw.close()
        tmp.unlink(missing_ok=True)
        if _is_disk_full(exc):
            raise ExportDiskFullError(
                f"the disk filled up while writing {dest} (temporary file removed); "
                "free some space or pass another --zip PATH, then export again"
            ) from exc
        raise
    except BaseException:
        raw.close()
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(dest),
        "entries": len(files),
        "bytes": dest.stat().st_size,
        "input_bytes": sum(sizes),
        "stored": stored,
        "deflated": deflated,
        "verified": True,
        "not_shipped": not_shipped,
        "stale_temps_removed": len(stale),
        "seconds": round(time.monotonic() - started, 3),
    }

"""Walking the input tree: which folders hold TIFFs, which files are eligible, from headers only.

Pure classification lives here (`classify_folder`, `output_folder_names`, `eligibility`); the walk
reads directory entries and TIFF headers, never pixels. `scan_tree` records it all in the table.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tessq import db, defaults, remote, tiff
from tessq.errors import ImageError
from tessq.options import SliceOptions

log = logging.getLogger("tessq.scan")

PROBE_PARALLEL_MIN = 2000  # below this many TIFFs a process pool costs more than it saves
MAX_NAME_BYTES = 180  # leaves room for ".<name>.tessq-tmp.<token>" under the usual 255-byte NAME_MAX


@dataclass
class FolderEntries:
    rel: str  # posix path relative to the input root, '' for the root
    tiffs: list[os.DirEntry[str]] = field(default_factory=list)
    other_images: int = 0


@dataclass
class ScanSummary:
    input_dir: str
    output_dir: str
    found: int = 0
    queued: int = 0
    requeued: int = 0
    already_done: int = 0
    in_progress_or_failed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failed_at_scan: list[dict[str, str]] = field(default_factory=list)
    folders_with_tiffs: int = 0
    folders_skipped: dict[str, int] = field(default_factory=dict)
    enqueue_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("enqueue_ids")
        return data


def is_tiff_name(name: str) -> bool:
    return name.lower().endswith(defaults.TIFF_EXTENSIONS)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(defaults.IMAGE_EXTENSIONS)


def is_skipped_dir(name: str) -> bool:
    return name.startswith(".") or name in defaults.SKIPPED_DIR_NAMES


def classify_folder(n_tiffs: int, n_other_images: int) -> str | None:
    """The skip reason of a folder, or None when it holds TIFFs (or nothing worth recording)."""
    if n_tiffs == 0 and n_other_images > 0:
        return "no_tiff"  # the seed's "JPG-only folder"
    return None


def eligibility(width: int, height: int, min_size: int) -> str | None:
    """None when the image is to be cut, else the skip reason."""
    if width < min_size or height < min_size:
        return "too_small"
    return None


def safe_component(name: str) -> str:
    """A file-system-safe output folder name: no separators, NUL or dot-only names, bounded length."""
    cleaned = name.replace("/", "_").replace("\\", "_").replace("\x00", "_")
    if cleaned in ("", ".", "..") or cleaned.startswith("."):
        cleaned = "_" + cleaned
    if len(cleaned.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(cleaned.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        head = cleaned.encode("utf-8", "surrogateescape")[: MAX_NAME_BYTES - 13].decode("utf-8", "ignore")
        cleaned = f"{head}~{digest}"
    return cleaned


def output_folder_names(file_names: list[str]) -> dict[str, str]:
    """Map each TIFF file name of one folder to its output folder name.

    The stem is used ('a.tif' -> 'a'); when two files share a stem case-insensitively ('a.tif',
    'A.tiff'), each of them uses its whole file name instead, so no two images share a folder.
    """
    stems: dict[str, int] = {}
    for name in file_names:
        key = Path(name).stem.lower()
        stems[key] = stems.get(key, 0) + 1
    return {
        name: safe_component(Path(name).stem if stems[Path(name).stem.lower()] == 1 else name) for name in file_names
    }


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
        folder = FolderEntries(rel=rel)
        subdirs: list[tuple[Path, str]] = []
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", path, exc)
            continue
        for entry in entries:
            try:
                if entry.is_symlink() and not follow_symlinks:
                    continue
                if entry.is_dir(follow_symlinks=follow_symlinks):
                    child = Path(entry.path)
                    if is_skipped_dir(entry.name) or child.resolve() in exclude:
                        continue
                    subdirs.append((child, f"{rel}/{entry.name}" if rel else entry.name))
                elif entry.is_file(follow_symlinks=follow_symlinks):
                    if is_tiff_name(entry.name):
                        folder.tiffs.append(entry)
                    elif is_image_name(entry.name):
                        folder.other_images += 1
            except OSError as exc:
                log.warning("cannot read %s: %s", entry.path, exc)
        yield folder
        stack.extend(reversed(subdirs))


def printable(text: str) -> str:
    """`text` itself when it is valid UTF-8, else its bytes with the undecodable ones as \\xNN escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def relative_path(rel_folder: str, name: str) -> str:
    """`name` inside the input-relative folder (POSIX separators; '' is the root)."""
    return str(PurePosixPath(rel_folder) / name) if rel_folder else name


def candidate_row(entry: os.DirEntry[str], rel_folder: str, out_name: str, min_size: int,
                  known: db.KnownHeader | None = None) -> dict[str, Any]:
    """One image row from the file's stat and TIFF header (no pixels decoded); `known` is what an earlier
    scan read from this file's header, used instead of reading it again while size and mtime still match."""
    st = entry.stat(follow_symlinks=True)
    rel_path = relative_path(rel_folder, entry.name)
    stored_path = printable(rel_path)
    row: dict[str, Any] = {
        "rel_path": stored_path,
        "folder": printable(rel_folder),
        "out_rel": printable(relative_path(rel_folder, out_name)),
        "src_size": st.st_size,
        "src_mtime": st.st_mtime,
        "status": db.QUEUED,
        "skip_reason": None,
        "error_type": None,
        "error_message": None,
        "width": None,
        "height": None,
        "pixel_bytes": None,
        "attempts": 0,
    }

    def failed(kind: str, message: str) -> dict[str, Any]:
        return {**row, "status": db.FAILED, "error_type": kind, "error_message": message}

    if stored_path != rel_path:
        # The status table (and S3, and most tools) hold names as UTF-8; this one cannot be stored faithfully.
        return failed("unsupported_name", f"{printable(entry.path)}: file name is not valid UTF-8; rename it")
    if not stat.S_ISREG(st.st_mode):
        return failed("unsupported", f"{entry.path}: not a regular file")
    if known is not None and known.matches(st):
        row.update(width=known.width, height=known.height, pixel_bytes=known.pixel_bytes)
    else:
        try:
            info = tiff.probe(entry.path)
        except ImageError as exc:
            return failed(exc.kind, str(exc))
        except OSError as exc:  # permission denied, I/O error: recorded, never silently dropped
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
            return failed("unreadable", f"{entry.path}: {reason}")
        row.update(width=info.width, height=info.height, pixel_bytes=pixel_bytes(info))
    reason = eligibility(row["width"], row["height"], min_size)
    if reason:
        row.update(status=db.SKIPPED, skip_reason=reason)
    return row


@dataclass(frozen=True)
class FileRef:
    """A local file as candidate_row reads it (an os.DirEntry cannot cross to another process)."""

    path: str
    name: str

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.path, follow_symlinks=follow_symlinks)


def probe_all(files: list[tuple[Any, str, str]], min_size: int, *, parallel: bool,
              known: dict[str, db.KnownHeader] | None = None) -> list[dict[str, Any]]:
    """candidate_row for every (entry, folder, output name), in order. Headers an earlier scan read are not
    read again while the file's size and mtime match (a rescan of an unchanged tree only stats it). When
    PROBE_PARALLEL_MIN or more local files need their header read, one process per CPU reads them (header
    parsing is CPU-bound Python: 2x on 2 cores)."""
    known = known or {}
    jobs = [(entry, rel, out_name, min_size, known.get(printable(relative_path(rel, entry.name))))
            for entry, rel, out_name in files]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    to_read = sum(1 for job in jobs if job[4] is None)
    if not parallel or cpus < 2 or to_read < PROBE_PARALLEL_MIN:
        rows = [_probe_one(job) for job in jobs]
    else:
        jobs = [(FileRef(entry.path, entry.name), *rest) for entry, *rest in jobs]
        context = multiprocessing.get_context("fork")  # the pool inherits the imported modules: no start-up
        with ProcessPoolExecutor(max_workers=cpus, mp_context=context, initializer=_init_probe_process,
                                 initargs=(os.getpid(),)) as pool:
            rows = list(pool.map(_probe_one, jobs, chunksize=256))
    candidates = []
    for row in rows:
        if isinstance(row, str):
            log.warning("%s", row)
        else:
            candidates.append(row)
    return candidates


def _init_probe_process(parent: int) -> None:
    """Each probe process dies with the scan (PR_SET_PDEATHSIG): a kill -9 of `tessq scan`/`run` while headers
    are read leaves no orphan. A parent that died before the prctl took effect is caught by the ppid check."""
    from tessq.queue import die_with_parent

    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)


def _probe_one(job: tuple[Any, str, str, int, db.KnownHeader | None]) -> dict[str, Any] | str:
    """One candidate row, or a warning for a file that vanished or cannot be stat'ed after the listing."""
    entry, rel, out_name, min_size, known = job
    try:
        return candidate_row(entry, rel, out_name, min_size, known)
    except OSError as exc:
        return f"cannot stat {entry.path}: {exc}"


def pixel_bytes(info: Any) -> int:
    try:
        itemsize = np.dtype(info.dtype).itemsize
    except TypeError:
        itemsize = 1
    return int(info.width) * int(info.height) * int(info.samples or 1) * itemsize


def scan_tree(
    input_dir: Path | str,
    output_dir: Path | str,
    options: SliceOptions,
    options_hash: str,
    *,
    follow_symlinks: bool = False,
    exclude: tuple[Path, ...] = (),
) -> ScanSummary:
    """Walk `input_dir`, record the job, its folders and every candidate; return what to enqueue.

    Either side may be an s3:// URL: an S3 input is listed (remote.walk, same rules) and probed by ranged GETs."""
    input_dir, output_dir = remote.resolve(input_dir), remote.resolve(output_dir)
    summary = ScanSummary(str(input_dir), str(output_dir))
    folders: list[dict[str, Any]] = []
    files: list[tuple[Any, str, str]] = []  # (directory entry, folder, output folder name) of every TIFF
    if isinstance(input_dir, str):
        tree: Iterator[FolderEntries] = remote.walk(input_dir, exclude=(str(output_dir),))
    else:
        excluded = {p.resolve() for p in (output_dir, *exclude) if isinstance(p, Path)}
        tree = walk(input_dir, follow_symlinks=follow_symlinks, exclude=excluded)
    for folder in tree:
        reason = classify_folder(len(folder.tiffs), folder.other_images)
        if reason:
            summary.folders_skipped[reason] = summary.folders_skipped.get(reason, 0) + 1
        if folder.tiffs or reason:
            folders.append(
                {
                    "path": printable(folder.rel),
                    "n_tiffs": len(folder.tiffs),
                    "n_other_images": folder.other_images,
                    "skip_reason": reason,
                }
            )
        if not folder.tiffs:
            continue
        summary.folders_with_tiffs += 1
        names = output_folder_names([e.name for e in folder.tiffs])
        files.extend((entry, folder.rel, names[entry.name]) for entry in folder.tiffs)
    with db.session():
        known = db.known_headers(str(input_dir))
    candidates = probe_all(files, options.min_size, parallel=isinstance(input_dir, Path), known=known)
    with db.session():
        job = db.upsert_job(str(input_dir), str(output_dir), options.to_dict(), options_hash)
        db.replace_folders(job.id, folders)
        outcome = db.record_candidates(job.id, candidates, options_hash)
        db.forget_missing(job.id, {c["rel_path"] for c in candidates})
    summary.found = len(candidates)
    summary.queued, summary.requeued = len(outcome.new_queued), len(outcome.requeued)
    summary.already_done, summary.in_progress_or_failed = outcome.unchanged_done, outcome.unchanged_other
    for c in candidates:
        if c["status"] == db.SKIPPED:
            summary.skipped[c["skip_reason"]] = summary.skipped.get(c["skip_reason"], 0) + 1
        elif c["status"] == db.FAILED:
            summary.failed_at_scan.append(
                {"file": c["rel_path"], "type": c["error_type"], "message": c["error_message"]}
            )
    summary.enqueue_ids = outcome.new_queued + outcome.requeued
    return summary

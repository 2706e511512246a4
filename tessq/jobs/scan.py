"""Walking the input tree: which folders hold TIFFs, which files are eligible, from headers only.

Pure classification lives here (`classify_folder`, `output_folder_names`; eligibility is grid.refusal); the walk
reads directory entries and TIFF headers, never pixels. `scan_tree` records it all in the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tessq import defaults, hashing, storage
from tessq.cut import tiff
from tessq.cut.grid import refusal
from tessq.errors import ImageError
from tessq.jobs import db
from tessq.jobs.settings import options_fingerprint
from tessq.options import SliceOptions

# The tree rules and the local walk live in storage now; scan's names for them stay importable from here.
from tessq.storage.local import walk  # noqa: F401
from tessq.storage.tree import (  # noqa: F401
    METADATA_NAME,
    TESSQ_METADATA_SCHEMA,
    FolderEntries,
    is_image_name,
    is_skipped_dir,
    is_tessq_output,
    is_tiff_name,
)

log = logging.getLogger("tessq.scan")

PROBE_PARALLEL_MIN = 2000  # below this many TIFFs a process pool costs more than it saves
MAX_NAME_BYTES = 180  # leaves room for ".<name>.tessq-tmp.<token>" under the usual 255-byte NAME_MAX


# Folder skip reasons that count in batch_summary.folders_skipped (the seed's JPG-only folders); the others
# (hidden, excluded, symlink, tessq_output) are listed by path and reason in ScanSummary.skipped_entries only.
IMAGE_FOLDER_REASONS = ("no_tiff",)
# Slice file extensions (world files .pgw/.tfw sit beside them and are not slices).
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
CHECK_OUTPUT_MODES = ("stat", "hash", "none")
VERIFIED_DIFFERENT = "tessq verify found it different"
CHECK_PARALLEL_MIN = 256  # done images from which their output folders are checked by a thread pool
CHECK_THREADS = 8
SKIP_LOG_EACH_MAX = 1000  # above this many skipped entries the log has one INFO summary and each at DEBUG


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
    # every TIFF and folder not cut on purpose: {"path", "kind": "file"|"folder", "reason"}
    skipped_entries: list[dict[str, str]] = field(default_factory=list)
    # done images queued again because their output folder is missing/damaged or `tessq verify` found them
    # different: {"file", "reason"}
    requeued_damaged: int = 0
    damaged: list[dict[str, str]] = field(default_factory=list)
    # done images whose source and output are both gone: nothing left to ship or redo, no longer counted
    forgotten: list[dict[str, str]] = field(default_factory=list)
    check_output: str = "stat"
    enqueue_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("enqueue_ids")
        return data


def classify_folder(n_tiffs: int, n_other_images: int) -> str | None:
    """The skip reason of a folder, or None when it holds TIFFs (or nothing worth recording)."""
    if n_tiffs == 0 and n_other_images > 0:
        return "no_tiff"  # the seed's "JPG-only folder"
    return None


def safe_component(name: str) -> str:
    """A file-system-safe output folder name: no separators, NUL or dot-only names, bounded length."""
    cleaned = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in name)
    if cleaned in ("", ".", "..") or cleaned.startswith("."):
        cleaned = "_" + cleaned
    if len(cleaned.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(cleaned.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        head = cleaned.encode("utf-8", "surrogateescape")[: MAX_NAME_BYTES - 13].decode("utf-8", "ignore")
        cleaned = f"{head}~{digest}"
    return cleaned


def output_folder_names(file_names: list[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """Map each TIFF file name of one folder to its output folder name, unique in that folder by construction.

    The stem is used ('a.tif' -> 'a'); when two files share a stem case-insensitively ('a.tif', 'A.tiff'), or
    the stem is the name of a sibling input folder whose images have output folders under OUT (`taken`: 'site'
    for 'site.tif' beside 'site/detail.tif'), the whole file name is used instead. Names that sanitising
    (safe_component) made equal ('.hid.tif' and '_.hid.tif' -> '_.hid'), or that still meet a sibling folder,
    get a short hash of the original file name: no two images, and no image and input folder, share a path.
    """
    taken_keys = {t.lower() for t in taken}
    stems: dict[str, int] = {}
    for name in file_names:
        key = Path(name).stem.lower()
        stems[key] = stems.get(key, 0) + 1

    def first_choice(name: str) -> str:
        stem = Path(name).stem
        return stem if stems[stem.lower()] == 1 and stem.lower() not in taken_keys else name

    names = {name: safe_component(first_choice(name)) for name in file_names}
    for _ in range(2):  # 1st pass: the names sanitising changed; 2nd: any still shared
        groups: dict[str, list[str]] = {}
        for name, out in names.items():
            groups.setdefault(out.lower(), []).append(name)
        clashing = [
            name for key, members in groups.items() if len(members) > 1 or key in taken_keys for name in members
        ]
        if not clashing:
            break
        changed = [n for n in clashing if names[n] != first_choice(n)]
        for name in changed or clashing:
            names[name] = hashed_name(names[name], name)
    return names


def hashed_name(out_name: str, original: str) -> str:
    """`out_name` made distinct by a stable hash of the `original` file name (bounded like safe_component)."""
    digest = hashlib.sha256(original.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    head = out_name.encode("utf-8", "surrogateescape")[: MAX_NAME_BYTES - 9].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def output_parents(folder_rels: Iterable[str]) -> dict[str, set[str]]:
    """For the input folders holding TIFFs: parent folder -> the names of its subfolders that will hold image
    folders under OUT (each such folder and every folder above it, up to the root)."""
    children: dict[str, set[str]] = {}
    for rel in folder_rels:
        path = PurePosixPath(rel)
        while rel:
            parent = str(path.parent) if str(path.parent) != "." else ""
            children.setdefault(parent, set()).add(path.name)
            path, rel = path.parent, parent
    return children


def colliding_outputs(out_rels: list[str]) -> dict[int, str]:
    """Output paths of one job that would share a folder: {index: the out_rel it collides with}. Two images
    collide when their paths are equal (case-insensitively: macOS and Windows file systems) or one lies inside
    the other's folder; the first of them keeps its path. Run on the final names, an empty result is the
    scan's check that they are unique."""
    seen: dict[str, str] = {}
    clashes: dict[int, str] = {}
    for i, rel in enumerate(out_rels):
        key = rel.lower()
        if key in seen:
            clashes[i] = seen[key]
        else:
            seen[key] = rel
    for i, rel in enumerate(out_rels):
        for parent in PurePosixPath(rel.lower()).parents:
            other = seen.get(str(parent))
            if other is not None and str(parent) != ".":
                clashes.setdefault(i, other)
                break
    return clashes


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


def candidate_row(
    entry: os.DirEntry[str], rel_folder: str, out_name: str, options: SliceOptions, known: db.KnownHeader | None = None
) -> dict[str, Any]:
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
        return failed("unsupported_name", f"{printable(str(entry.path))}: file name is not valid UTF-8; rename it")
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
    refused = refusal(row["width"], row["height"], options)  # the worker's own rule: skipped here, not failed there
    if refused:
        row.update(status=db.SKIPPED, skip_reason=refused.kind, error_message=f"{entry.path}: {refused.message}")
    return row


@dataclass(frozen=True)
class FileRef:
    """A local file as candidate_row reads it (an os.DirEntry cannot cross to another process)."""

    path: str
    name: str

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.path, follow_symlinks=follow_symlinks)


def probe_all(
    files: list[tuple[Any, str, str]],
    options: SliceOptions,
    *,
    parallel: bool,
    known: dict[str, db.KnownHeader] | None = None,
) -> list[dict[str, Any]]:
    """candidate_row for every (entry, folder, output name), in order. Headers an earlier scan read are not
    read again while the file's size and mtime match (a rescan of an unchanged tree only stats it). When
    PROBE_PARALLEL_MIN or more local files need their header read, one process per CPU reads them (header
    parsing is CPU-bound Python: 2x on 2 cores)."""
    known = known or {}
    jobs = [
        (entry, rel, out_name, options, known.get(printable(relative_path(rel, entry.name))))
        for entry, rel, out_name in files
    ]
    cpus = defaults.usable_cores()
    to_read = sum(1 for job in jobs if job[4] is None)
    if not parallel or cpus < 2 or to_read < PROBE_PARALLEL_MIN:
        rows = [_probe_one(job) for job in jobs]
    else:
        jobs = [
            (FileRef(entry.path, entry.name) if isinstance(entry, os.DirEntry) else entry, rel, name, opts, hint)
            for entry, rel, name, opts, hint in jobs
        ]
        context = multiprocessing.get_context("fork")  # the pool inherits the imported modules: no start-up
        with ProcessPoolExecutor(
            max_workers=cpus, mp_context=context, initializer=_init_probe_process, initargs=(os.getpid(),)
        ) as pool:
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
    from tessq.jobs.queue import die_with_parent

    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)


def _probe_one(job: tuple[Any, str, str, SliceOptions, db.KnownHeader | None]) -> dict[str, Any] | str:
    """One candidate row, or a warning for a file that vanished or cannot be stat'ed after the listing."""
    entry, rel, out_name, options, known = job
    try:
        return candidate_row(entry, rel, out_name, options, known)
    except OSError as exc:
        return f"cannot stat {entry.path}: {exc}"


def refuse_colliding(candidates: list[dict[str, Any]]) -> None:
    """The scan's check that output paths are unique: an image whose output folder would be another's (or lie
    inside it) is failed at scan with `output_collision` instead of overwriting or nesting in done work.
    output_folder_names makes this impossible within a folder; this catches whatever else could."""
    cut = [c for c in candidates if c["status"] != db.FAILED]
    clashes = colliding_outputs([c["out_rel"] for c in cut])
    for i, other in clashes.items():
        c = cut[i]
        c.update(
            status=db.FAILED,
            skip_reason=None,
            error_type="output_collision",
            error_message=f"{c['rel_path']}: its output folder {c['out_rel']!r} would collide with"
            f" {other!r}, another image's; rename the file or its folder",
        )


def pixel_bytes(info: Any) -> int:
    try:
        itemsize = np.dtype(info.dtype).itemsize
    except TypeError:
        itemsize = 1
    return int(info.width) * int(info.height) * int(info.samples or 1) * itemsize


def output_problem(image_dir: Path, n_slices: int | None, bytes_out: int | None, mode: str = "stat") -> str | None:
    """None when a done image's folder is complete, else what is wrong with it ('output missing', 'slice X
    size differs', ...).

    mode "stat" (the default, no file is read but a damaged folder's metadata.json): the folder and its
    metadata.json exist, and its slice files are as many and as large as the status table recorded; when
    they are not, metadata.json names the slice that is missing or has another size. mode "hash": every
    slice recorded in metadata.json exists with its size and sha256 (reads every slice). mode "none": no check.
    """
    if mode == "none":
        return None
    try:
        entries = {e.name: e for e in os.scandir(image_dir)}
    except FileNotFoundError:
        return "output missing"
    except NotADirectoryError:
        return "output is not a folder"
    except OSError as exc:
        return f"output unreadable ({exc.strerror or exc})"
    if METADATA_NAME not in entries:
        return "metadata.json missing"
    if mode == "stat" and n_slices is not None and bytes_out is not None:
        try:
            sizes = [
                e.stat().st_size
                for name, e in entries.items()
                if name.startswith("slice_") and name.lower().endswith(SLICE_SUFFIXES) and e.is_file()
            ]
        except OSError:
            sizes = []
        if len(sizes) == n_slices and sum(sizes) == bytes_out:
            return None
    try:
        meta = json.loads((image_dir / METADATA_NAME).read_bytes())
        records = meta["slices"]
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        return "metadata.json unreadable"
    if not isinstance(records, list) or not all(isinstance(rec, dict) for rec in records):
        return "metadata.json unreadable"  # hand-edited or written by something else: its slices are not a list
    problems: list[str] = []
    for rec in records:
        name = rec.get("file", "?")
        entry = entries.get(name)
        try:
            size = entry.stat().st_size if entry is not None else None
        except OSError:
            size = None
        if size is None:
            problems.append(f"slice {name} missing")
        elif size != rec.get("bytes"):
            problems.append(f"slice {name} size differs ({size} bytes, metadata.json says {rec.get('bytes')})")
        elif mode == "hash" and rec.get("sha256") and hashing.file_digest(image_dir / name) != rec["sha256"]:
            problems.append(f"slice {name} hash differs from metadata.json")
    if not problems and mode == "stat" and n_slices is not None and len(records) != n_slices:
        problems.append(f"metadata.json lists {len(records)} slices, the status table {n_slices}")
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def check_done_outputs(
    job_id: int,
    output_dir: Path | str | storage.Storage,
    mode: str,
    summary: ScanSummary,
    present: set[str] | None = None,
) -> list[int]:
    """Done images that must be cut again: their output folder is missing or damaged (output_problem), or
    `tessq verify` recorded them as different. They are queued again; returns their ids.

    `present`: the rel_paths of the sources in the tree now. A done image whose source is gone cannot be
    redone: if its output is damaged too, nothing of it is left and it is forgotten (cancelled,
    'source_removed'), so exports stop expecting its folder; an intact one keeps its output."""
    if mode not in CHECK_OUTPUT_MODES:
        raise ValueError(f"check_output must be one of {', '.join(CHECK_OUTPUT_MODES)}, not {mode!r}")
    with db.session():
        rows = db.done_outputs(job_id)
    local_out = storage.at(output_dir).local_path

    def problem(row: tuple[int, str, str, int | None, int | None, int | None]) -> str | None:
        _, _, out_rel, n_slices, bytes_out, verified = row
        if verified == 0:
            return VERIFIED_DIFFERENT
        if local_out is not None:  # an s3:// output is not checked here (tessq verify does)
            return output_problem(local_out / out_rel, n_slices, bytes_out, mode)
        return None

    if len(rows) >= CHECK_PARALLEL_MIN:  # directory listings and reads release the GIL: overlap their waits
        with ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="check-output") as pool:
            reasons = list(pool.map(problem, rows, chunksize=64))
    else:
        reasons = [problem(row) for row in rows]
    found = {row[0]: (row[1], reason) for row, reason in zip(rows, reasons, strict=True) if reason}
    redo = {i: v for i, v in found.items() if present is None or v[0] in present}
    gone = {i: v for i, v in found.items() if i not in redo and v[1] != VERIFIED_DIFFERENT}
    if gone:
        with db.session():
            forgotten = db.forget_done(list(gone))
        for image_id in forgotten:
            rel_path, reason = gone[image_id]
            summary.forgotten.append({"file": rel_path, "reason": f"{reason}; source gone"})
            log.info("forgotten %s: %s and its source is gone", rel_path, reason)
    if not redo:
        return []
    with db.session():
        requeued = db.requeue_done(list(redo))
    for image_id in requeued:
        rel_path, reason = redo[image_id]
        summary.damaged.append({"file": rel_path, "reason": reason})
        log.info("queued again %s: %s", rel_path, reason)
    summary.requeued_damaged = len(requeued)
    summary.already_done -= len(requeued)
    return requeued


def _log_skipped(entries: list[dict[str, str]]) -> None:
    if not entries:
        return
    one_by_one = len(entries) <= SKIP_LOG_EACH_MAX
    each = log.info if one_by_one else log.debug
    if not one_by_one:  # (`each is log.debug` never held: every attribute access makes a new bound method)
        log.info("skipped %d files and folders (each listed at DEBUG, and in `tessq report --json`)", len(entries))
    for e in entries:
        each("skipped %s %s: %s", e["kind"], e["path"], e["reason"])


def scan_tree(
    input_dir: Path | str,
    output_dir: Path | str,
    options: SliceOptions,
    options_hash: str,
    *,
    follow_symlinks: bool = False,
    exclude: tuple[Path, ...] = (),
    check_output: str = "stat",
) -> ScanSummary:
    """Walk `input_dir`, record the job, its folders and every candidate; return what to enqueue.

    Done images whose output folder is missing or damaged (check_output: "stat", "hash" or "none", see
    output_problem) or that `tessq verify` found different are queued again.

    Either side may be an s3:// URL: an S3 input is listed (same rules) and probed by ranged GETs; an archive
    input's member paths are its tree."""
    source, target = storage.at(input_dir), storage.at(output_dir)
    input_dir, output_dir = source.resolved(), target.resolved()
    if check_output not in CHECK_OUTPUT_MODES:
        raise ValueError(f"check_output must be one of {', '.join(CHECK_OUTPUT_MODES)}, not {check_output!r}")
    summary = ScanSummary(str(input_dir), str(output_dir), check_output=check_output)
    folders: list[dict[str, Any]] = []
    files: list[tuple[Any, str, str]] = []  # (directory entry, folder, output folder name) of every TIFF
    with_tiffs: list[FolderEntries] = []
    tree: Iterator[FolderEntries] = source.walk(follow_symlinks=follow_symlinks, exclude=(output_dir, *exclude))
    for folder in tree:
        for name, why in folder.skipped_files:
            summary.skipped_entries.append(
                {"path": printable(relative_path(folder.rel, name)), "kind": "file", "reason": why}
            )
        if folder.skip_reason:
            summary.skipped_entries.append(
                {"path": printable(folder.rel), "kind": "folder", "reason": folder.skip_reason}
            )
            folders.append(
                {"path": printable(folder.rel), "n_tiffs": 0, "n_other_images": 0, "skip_reason": folder.skip_reason}
            )
            continue
        reason = classify_folder(len(folder.tiffs), folder.other_images)
        if reason:
            summary.folders_skipped[reason] = summary.folders_skipped.get(reason, 0) + 1
            summary.skipped_entries.append({"path": printable(folder.rel), "kind": "folder", "reason": reason})
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
        with_tiffs.append(folder)
    subfolders = output_parents(f.rel for f in with_tiffs)
    for folder in with_tiffs:
        names = output_folder_names([e.name for e in folder.tiffs], subfolders.get(folder.rel, ()))
        files.extend((entry, folder.rel, names[entry.name]) for entry in folder.tiffs)
    with db.session():
        known = db.known_headers(str(input_dir))
    candidates = probe_all(files, options, parallel=source.probe_in_processes, known=known)
    refuse_colliding(candidates)
    with db.session(), db.scan_transaction():  # one write transaction: concurrent scans of a tree queue each once
        job = db.upsert_job(str(input_dir), str(output_dir), options.to_dict(), options_hash)
        db.replace_folders(job.id, folders)
        outcome = db.record_candidates(
            job.id, candidates, options_hash, db.OutputCheck(options_fingerprint, output_problem)
        )
        db.forget_missing(job.id, {c["rel_path"] for c in candidates})
    summary.found = len(candidates)
    summary.queued, summary.requeued = len(outcome.new_queued), len(outcome.requeued)
    summary.already_done, summary.in_progress_or_failed = outcome.unchanged_done, outcome.unchanged_other
    for c in candidates:
        if c["status"] == db.SKIPPED:
            summary.skipped[c["skip_reason"]] = summary.skipped.get(c["skip_reason"], 0) + 1
            summary.skipped_entries.append({"path": c["rel_path"], "kind": "file", "reason": c["skip_reason"]})
        elif c["status"] == db.FAILED:
            summary.failed_at_scan.append(
                {"file": c["rel_path"], "type": c["error_type"], "message": c["error_message"]}
            )
    damaged = check_done_outputs(job.id, target, check_output, summary, {c["rel_path"] for c in candidates})
    summary.skipped_entries.sort(key=lambda e: (e["path"], e["kind"]))
    _log_skipped(summary.skipped_entries)
    for f in summary.failed_at_scan:
        log.info("unreadable %s: %s", f["file"], f["message"])
    summary.enqueue_ids = outcome.new_queued + outcome.requeued + damaged
    return summary

"""The final report: the rows db.py fetches for it, and the pure arithmetic that turns them into the summary.

`build_report()` is what `tessq report`, `tessq run` and `BatchTesselator.run_batch()` return (`summarize`
computes it from a `ReportRows`, without a database), and `write_report()` puts it in OUT/batch_report.json
(atomically).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from tessq import __version__, defaults, storage
from tessq.jobs import db


class BatchSummary(TypedDict):
    """The seed's batch_summary (the README, "Report fields")."""

    total_images_found: int
    successfully_processed: int
    skipped: int
    errors: int
    folders_skipped: int
    total_processing_time: float
    average_time_per_image: float
    images_per_hour: float


class Throughput(TypedDict):
    wall_clock_s: float
    calendar_s: float
    idle_s: float
    worker_busy_s: float
    source_bytes: int
    output_bytes: int
    pixel_bytes: int
    pixel_mb_per_s: float


class ErrorEntry(TypedDict):
    file: str
    type: str | None
    message: str | None
    attempts: int


class SkippedEntry(TypedDict):
    path: str
    kind: str  # 'file' or 'folder'
    reason: str | None


class UnfinishedEntry(TypedDict):
    file: str
    status: str
    worker: str | None


class Verification(TypedDict):
    identical: int
    different: int


class JobEntry(TypedDict):
    id: int
    input_dir: str
    output_dir: str
    options: dict[str, Any]  # SliceOptions.to_dict()


class Report(TypedDict):
    """batch_report.json, key for key in this order (the README, "Report fields")."""

    batch_summary: BatchSummary
    states: dict[str, int]
    throughput: Throughput
    skip_reasons: dict[str, int]
    folders_skipped_by_reason: dict[str, int]
    per_folder: dict[str, dict[str, int]]
    errors: list[ErrorEntry]
    skipped: list[SkippedEntry]
    unfinished: list[UnfinishedEntry]
    verification: Verification
    uploads: db.UploadTotals
    job: JobEntry | None
    jobs: list[JobEntry]
    jobs_in_database: int
    generated_at: float
    tessq_version: str


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [started, finished] intervals: the time at least one image was being cut.

    Idle gaps (between an interrupted run and its resumption, or workers started hours after the scan)
    fall outside every interval, so they do not count."""
    total, end = 0.0, None
    start = 0.0
    for s, f in sorted(intervals):
        f = max(f, s)
        if end is None or s > end:
            if end is not None:
                total += end - start
            start, end = s, f
        else:
            end = max(end, f)
    if end is not None:
        total += end - start
    return total


def batch_summary(
    counts: Mapping[str, int],
    folders_skipped: int,
    first_start: float | None,
    last_finish: float | None,
    busy_s: float,
    n_timed: int,
    active_s: float | None = None,
) -> BatchSummary:
    """The seed's batch_summary keys (defined in the README, "Report fields").

    `active_s` (the union of image intervals, `busy_seconds`) is the processing time; without it, the
    span from first start to last finish."""
    done = counts.get(db.DONE, 0)
    if active_s is not None:
        wall = active_s
    else:
        wall = (last_finish - first_start) if first_start is not None and last_finish is not None else 0.0
    wall = max(wall, 0.0)
    return {
        "total_images_found": sum(counts.get(s, 0) for s in db.STATES if s != db.CANCELLED),
        "successfully_processed": done,
        "skipped": counts.get(db.SKIPPED, 0),
        "errors": counts.get(db.FAILED, 0),
        "folders_skipped": folders_skipped,
        "total_processing_time": round(wall, 3),
        "average_time_per_image": round(busy_s / n_timed, 3) if n_timed else 0.0,
        "images_per_hour": round(done / wall * 3600.0, 1) if wall > 0 else 0.0,
    }


IMAGE_FOLDER_REASONS = ("no_tiff",)  # = scan.IMAGE_FOLDER_REASONS (not imported: scan pulls in numpy)
UNFINISHED_LISTED = 100  # queued/running images named in the report (all of them are counted in "states")


@dataclass(frozen=True)
class ReportRows:
    """Everything a report is computed from: one job's rows (every job's when job_id is None), as db returns
    them. `folder_skips` counts only the seed's JPG-only folders (IMAGE_FOLDER_REASONS); hidden, symlinked,
    excluded and tessq-output folders are in `skipped_folders` only."""

    job_id: int | None
    counts: dict[str, int]
    folder_skips: dict[str, int]
    done: db.DoneTotals
    intervals: list[tuple[float, float]]
    skip_reasons: dict[str, int]
    per_folder: list[db.FolderStateCount]
    errors: list[db.ErrorRow]
    verified: dict[int, int]
    skipped_images: list[db.SkipRow]
    skipped_folders: list[db.SkipRow]
    unfinished: list[db.UnfinishedRow]
    jobs: list[db.JobRow]
    n_jobs: int


def fetch_rows(job_id: int | None = None) -> ReportRows:
    """The report's rows (call inside a session)."""
    return ReportRows(
        job_id=job_id,
        counts=db.state_counts(job_id),
        folder_skips=db.folder_skip_counts(job_id, IMAGE_FOLDER_REASONS),
        done=db.done_totals(job_id),
        intervals=db.finished_intervals(job_id),
        skip_reasons=db.image_skip_counts(job_id),
        per_folder=db.folder_state_counts(job_id),
        errors=db.failed_rows(job_id),
        verified=db.verification_counts(job_id),
        skipped_images=db.skipped_image_rows(job_id),
        skipped_folders=db.skipped_folder_rows(job_id),
        unfinished=db.unfinished_rows(job_id, UNFINISHED_LISTED),
        jobs=db.job_rows(job_id),
        n_jobs=db.job_count(),
    )


def build_report(job_id: int | None = None) -> dict[str, Any]:
    """One job's report (every job's rows together when job_id is None), as the JSON-ready dict (a `Report`)."""
    with db.session():
        rows = fetch_rows(job_id)
        uploads = db.UploadLedger().summary(upload_prefix(rows))
    return dict(summarize(rows, uploads, generated_at=time.time()))


def upload_prefix(rows: ReportRows) -> str | None:
    """Whose uploads the report counts: those from one job's local output folder; every upload otherwise."""
    out = rows.jobs[0].output_dir if rows.job_id is not None and rows.jobs else None
    return out if out and storage.holds_state(out) else None


def summarize(rows: ReportRows, uploads: db.UploadTotals, generated_at: float) -> Report:
    """The report of `rows` (pure: no database, no clock)."""
    done = rows.done
    active = busy_seconds(rows.intervals)
    summary = batch_summary(
        rows.counts,
        sum(rows.folder_skips.values()),
        done.first_start,
        done.last_finish,
        done.busy_s,
        done.n_timed,
        active,
    )
    jobs = [job_entry(j) for j in rows.jobs]
    job = jobs[0] if rows.job_id is not None and jobs else None
    return {
        "batch_summary": summary,
        "states": rows.counts,
        "throughput": throughput(done, summary["total_processing_time"]),
        "skip_reasons": rows.skip_reasons,
        "folders_skipped_by_reason": rows.folder_skips,
        "per_folder": per_folder(rows.per_folder),
        "errors": [
            {"file": e.rel_path, "type": e.error_type, "message": e.error_message, "attempts": e.attempts}
            for e in rows.errors
        ],
        "skipped": skipped_entries(rows.skipped_images, rows.skipped_folders),
        "unfinished": [{"file": u.rel_path, "status": u.status, "worker": u.worker} for u in rows.unfinished],
        "verification": {"identical": rows.verified.get(1, 0), "different": rows.verified.get(0, 0)},
        "uploads": uploads,
        "job": job,
        "jobs": jobs,
        "jobs_in_database": rows.n_jobs,
        "generated_at": generated_at,
        "tessq_version": __version__,
    }


def throughput(done: db.DoneTotals, wall: float) -> Throughput:
    """`wall` (the processing time: batch_summary's total_processing_time) beside the calendar span from the
    first start to the last finish, and the done images' sizes."""
    first, last = done.first_start, done.last_finish
    calendar = max(last - first, 0.0) if first and last else 0.0
    return {
        "wall_clock_s": wall,
        "calendar_s": round(calendar, 3),
        "idle_s": round(max(calendar - wall, 0.0), 3),
        "worker_busy_s": round(done.busy_s, 3),
        "source_bytes": done.source_bytes,
        "output_bytes": done.output_bytes,
        "pixel_bytes": done.pixel_bytes,
        "pixel_mb_per_s": round(done.pixel_bytes / 1e6 / wall, 2) if wall else 0.0,
    }


def per_folder(rows: list[db.FolderStateCount]) -> dict[str, dict[str, int]]:
    """{folder: {state: images}} by folder name ('.' for the input's root)."""
    folders: dict[str, dict[str, int]] = {}
    for row in rows:
        folders.setdefault(row.folder or ".", {})[row.status] = row.n
    return dict(sorted(folders.items()))


def skipped_entries(images: list[db.SkipRow], folders: list[db.SkipRow]) -> list[SkippedEntry]:
    """Every TIFF and folder the last scans did not cut on purpose, with the reason, by path (a file before a
    folder of the same path)."""
    files: list[SkippedEntry] = [{"path": r.path, "kind": "file", "reason": r.reason} for r in images]
    dirs: list[SkippedEntry] = [{"path": r.path, "kind": "folder", "reason": r.reason} for r in folders]
    return sorted(files + dirs, key=lambda e: (e["path"], e["kind"]))


def job_entry(row: db.JobRow) -> JobEntry:
    return {"id": row.id, "input_dir": row.input_dir, "output_dir": row.output_dir, "options": json.loads(row.options)}


def report_bytes(report: Mapping[str, Any]) -> bytes:
    """batch_report.json's content, the same locally and on S3."""
    return (json.dumps(report, indent=2, sort_keys=False) + "\n").encode()


def write_report(report: Mapping[str, Any], output_dir: Path) -> Path:
    """OUT/batch_report.json, replaced atomically so a reader never sees half of it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / defaults.REPORT_FILENAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover (or a planted link) is removed itself, never written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(report_bytes(report))
    os.replace(tmp, path)  # replaces a link planted at `path` itself, not its target
    return path


def output_dirs() -> list[Path]:
    """Every job's output folder (a report is written into its own job's folder only: pipeline.finish_report)."""
    with db.session():
        return [Path(out) for out in db.output_dirs()]

"""The final report: database queries for the raw numbers, pure arithmetic for the summary.

`build_report()` is what `tessq report`, `tessq run` and `BatchTesselator.run_batch()` return,
and `write_report()` puts it in OUT/batch_report.json (atomically).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import peewee

from tessq import __version__, db, defaults
from tessq.db import Folder, Image, Job


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


def batch_summary(counts: dict[str, int], folders_skipped: int, first_start: float | None,
                  last_finish: float | None, busy_s: float, n_timed: int,
                  active_s: float | None = None) -> dict[str, Any]:
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


def of_job(cond: Any, model: Any, job_id: int | None) -> Any:
    """`cond` restricted to one job's rows (all rows when job_id is None)."""
    return cond if job_id is None else cond & (model.job == job_id)


def skipped_entries(job_id: int | None = None) -> list[dict[str, str]]:
    """Every TIFF and folder the last scans did not cut on purpose, with the reason (call inside a session)."""
    files = [
        {"path": rel, "kind": "file", "reason": reason}
        for rel, reason in Image.select(Image.rel_path, Image.skip_reason)
        .where(of_job(Image.status == db.SKIPPED, Image, job_id)).order_by(Image.rel_path).tuples()
    ]
    folders = [
        {"path": path, "kind": "folder", "reason": reason}
        for path, reason in Folder.select(Folder.path, Folder.skip_reason)
        .where(of_job(Folder.skip_reason.is_null(False), Folder, job_id)).order_by(Folder.path).tuples()
    ]
    return sorted(files + folders, key=lambda e: (e["path"], e["kind"]))


def state_counts(job_id: int | None = None) -> dict[str, int]:
    query = Image.select(Image.status, peewee.fn.COUNT(Image.id))
    if job_id is not None:
        query = query.where(Image.job == job_id)
    rows = query.group_by(Image.status).tuples()
    counts = dict.fromkeys(db.STATES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


def build_report(job_id: int | None = None) -> dict[str, Any]:
    """One job's report (every job's rows together when job_id is None)."""
    with db.session():
        counts = state_counts(job_id)
        # the seed's JPG-only folders; hidden, symlinked, excluded and tessq-output folders are in "skipped" only
        image_folder = of_job(Folder.skip_reason.in_(IMAGE_FOLDER_REASONS), Folder, job_id)
        folders_skipped = Folder.select().where(image_folder).count()
        first_start, last_finish, busy, n_timed, bytes_in, bytes_out, pixels = (
            Image.select(
                peewee.fn.MIN(Image.started_at),
                peewee.fn.MAX(Image.finished_at),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.duration_s), 0),
                peewee.fn.COUNT(Image.duration_s),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.src_size), 0),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.bytes_out), 0),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.pixel_bytes), 0),
            )
            .where(of_job(Image.status == db.DONE, Image, job_id))
            .tuples()
            .first()
        )
        intervals = list(
            Image.select(Image.started_at, Image.finished_at)
            .where(of_job(Image.status.in_([db.DONE, db.FAILED]) & Image.started_at.is_null(False)
                          & Image.finished_at.is_null(False), Image, job_id))
            .tuples()
        )
        skip_reasons = dict(
            Image.select(Image.skip_reason, peewee.fn.COUNT(Image.id))
            .where(of_job(Image.status == db.SKIPPED, Image, job_id))
            .group_by(Image.skip_reason)
            .tuples()
        )
        folder_reasons = dict(
            Folder.select(Folder.skip_reason, peewee.fn.COUNT(Folder.id))
            .where(image_folder)
            .group_by(Folder.skip_reason)
            .tuples()
        )
        per_folder: dict[str, dict[str, int]] = {}
        for folder, status, n in (
            Image.select(Image.folder, Image.status, peewee.fn.COUNT(Image.id))
            .where(of_job(Image.status != db.CANCELLED, Image, job_id))
            .group_by(Image.folder, Image.status)
            .tuples()
        ):
            per_folder.setdefault(folder or ".", {})[status] = int(n)
        errors = [
            {"file": r.rel_path, "type": r.error_type, "message": r.error_message, "attempts": r.attempts}
            for r in Image.select(Image.rel_path, Image.error_type, Image.error_message, Image.attempts)
            .where(of_job(Image.status == db.FAILED, Image, job_id))
            .order_by(Image.rel_path)
        ]
        verified = dict(
            Image.select(Image.verified, peewee.fn.COUNT(Image.id))
            .where(of_job((Image.status == db.DONE) & Image.verified.is_null(False), Image, job_id))
            .group_by(Image.verified)
            .tuples()
        )
        skipped = skipped_entries(job_id)
        unfinished = [
            {"file": r.rel_path, "status": r.status, "worker": r.worker}
            for r in Image.select(Image.rel_path, Image.status, Image.worker)
            .where(of_job(Image.status.in_([db.RUNNING, db.QUEUED]), Image, job_id))
            .order_by(Image.status.desc(), Image.rel_path)  # running first
            .limit(UNFINISHED_LISTED)
        ]
        jobs = Job.select().order_by(Job.id)
        job_rows = [
            {"id": j.id, "input_dir": j.input_dir, "output_dir": j.output_dir, "options": json.loads(j.options)}
            for j in (jobs.where(Job.id == job_id) if job_id is not None else jobs)
        ]
        n_jobs = jobs.count()
    active = busy_seconds([(float(a), float(b)) for a, b in intervals])
    summary = batch_summary(counts, folders_skipped, first_start, last_finish, float(busy), int(n_timed), active)
    wall = summary["total_processing_time"]
    calendar = max(float(last_finish) - float(first_start), 0.0) if first_start and last_finish else 0.0
    out = job_rows[0]["output_dir"] if job_id is not None and job_rows else None
    return {
        "batch_summary": summary,
        "states": counts,
        "throughput": {
            "wall_clock_s": wall,
            "calendar_s": round(calendar, 3),
            "idle_s": round(max(calendar - wall, 0.0), 3),
            "worker_busy_s": round(float(busy), 3),
            "source_bytes": int(bytes_in),
            "output_bytes": int(bytes_out),
            "pixel_bytes": int(pixels),
            "pixel_mb_per_s": round(int(pixels) / 1e6 / wall, 2) if wall else 0.0,
        },
        "skip_reasons": skip_reasons,
        "folders_skipped_by_reason": folder_reasons,
        "per_folder": dict(sorted(per_folder.items())),
        "errors": errors,
        "skipped": skipped,
        "unfinished": unfinished,
        "verification": {"identical": int(verified.get(1, 0)), "different": int(verified.get(0, 0))},
        "uploads": db.UploadLedger().summary(out if out and not out.startswith("s3:") else None),
        "job": job_rows[0] if job_id is not None and job_rows else None,
        "jobs": job_rows,
        "jobs_in_database": n_jobs,
        "generated_at": time.time(),
        "tessq_version": __version__,
    }


def report_bytes(report: dict[str, Any]) -> bytes:
    """batch_report.json's content, the same locally and on S3."""
    return (json.dumps(report, indent=2, sort_keys=False) + "\n").encode()


def write_report(report: dict[str, Any], output_dir: Path) -> Path:
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
        return [Path(j.output_dir) for j in Job.select(Job.output_dir).order_by(Job.id)]

"""The live view: a read-only snapshot of the status table, and its rich rendering.

`snapshot()` is plain data (also `tessq status --json`); `render()` turns it into a rich panel.
Nothing here writes to the database.
"""

from __future__ import annotations

import time
from typing import Any

import peewee
from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tessq import db
from tessq.db import Image
from tessq.report import busy_seconds, of_job, state_counts

WINDOW_S = 300.0  # throughput is measured over the last five minutes


def throughput(done_in_window: int, bytes_in_window: int, window_s: float) -> dict[str, float]:
    hours = window_s / 3600.0
    return {
        "images_per_hour": round(done_in_window / hours, 1) if hours else 0.0,
        "mb_per_s": round(bytes_in_window / 1e6 / window_s, 2) if window_s else 0.0,
    }


def eta_seconds(remaining: int, images_per_hour: float) -> float | None:
    if remaining == 0:
        return 0.0
    return remaining / images_per_hour * 3600.0 if images_per_hour > 0 else None


def split_live(workers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(live, stalled) running images: stalled when the holder is a process of this host that is gone, or its
    lease has expired (a worker elsewhere that stopped renewing it)."""
    from tessq.daemon import dead_local_workers

    dead = set(dead_local_workers(sorted({w["worker"] for w in workers if w["worker"]})))
    live, stalled = [], []
    for w in workers:
        (stalled if w["worker"] in dead or w["lease_left_s"] < 0 else live).append(w)
    return live, stalled


def snapshot(job_id: int | None = None) -> dict[str, Any]:
    """One job's live counts (every job's when job_id is None)."""
    with db.session():
        now = db.server_time()
        counts = state_counts(job_id)
        window_start = now - WINDOW_S
        # the rate over the last five minutes counts only the time images were being cut in them (the union of
        # their intervals): the idle minutes before a resumed run, or between runs, do not dilute it
        recent = Image.select(Image.started_at, Image.finished_at).where(
            of_job((Image.status == db.DONE) & (Image.finished_at >= window_start)
                   & Image.started_at.is_null(False), Image, job_id)).tuples()
        busy = busy_seconds([(max(float(a), window_start), float(b)) for a, b in recent])
        window = max(busy, 1.0) if busy else WINDOW_S
        n_recent, bytes_recent = (
            Image.select(peewee.fn.COUNT(Image.id), peewee.fn.COALESCE(peewee.fn.SUM(Image.pixel_bytes), 0))
            .where(of_job((Image.status == db.DONE) & (Image.finished_at >= window_start), Image, job_id))
            .tuples()
            .first()
        )
        workers = [
            {
                "worker": r.worker,
                "image": r.rel_path,
                "seconds": round(now - (r.started_at or now), 1),
                "attempt": r.attempts,
                "lease_left_s": round((r.lease_until or now) - now, 1),
            }
            for r in Image.select(Image.worker, Image.rel_path, Image.started_at, Image.attempts, Image.lease_until)
            .where(of_job(Image.status == db.RUNNING, Image, job_id))
            .order_by(Image.worker)
        ]
        errors = [
            {"file": r.rel_path, "type": r.error_type, "message": r.error_message}
            for r in Image.select(Image.rel_path, Image.error_type, Image.error_message)
            .where(of_job(Image.status == db.FAILED, Image, job_id))
            .order_by(Image.finished_at.desc())
            .limit(5)
        ]
    rate = throughput(int(n_recent), int(bytes_recent), window)
    to_do = counts[db.DONE] + counts[db.FAILED] + counts[db.QUEUED] + counts[db.RUNNING]
    finished = counts[db.DONE] + counts[db.FAILED]
    remaining = counts[db.QUEUED] + counts[db.RUNNING]
    workers, stalled = split_live(workers)
    # "running" counts the images a live worker holds; those of dead workers (or expired leases) are "stalled":
    # they go back to the queue when workers next start (or the reaper runs).
    counts = dict(counts, running=counts[db.RUNNING] - len(stalled))
    hosts: dict[str, int] = {}
    for w in workers:
        host = (w["worker"] or "?").rpartition(":")[0]
        hosts[host] = hosts.get(host, 0) + 1
    return {
        "counts": counts,
        "progress": {"finished": finished, "total": to_do, "remaining": remaining},
        "throughput": rate,
        # an ETA only while workers are at it: with none alive nothing will finish, whatever the recent rate
        "eta_s": eta_seconds(remaining, rate["images_per_hour"]) if workers or not remaining else None,
        "workers": workers,
        "stalled": stalled,
        "hosts": hosts,
        "latest_errors": errors,
        "uploads": db.UploadLedger().summary(),
        "job_id": job_id,
        "at": now,
    }


def render(snap: dict[str, Any]) -> Panel:
    counts, progress = snap["counts"], snap["progress"]
    states = Table.grid(padding=(0, 2))
    for _ in db.STATES:
        states.add_column(justify="right")
    states.add_row(*[Text(s, style="bold") for s in db.STATES])
    states.add_row(*[str(counts[s]) for s in db.STATES])
    total = max(progress["total"], 1)
    eta = snap["eta_s"]
    eta_text = "-" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=total, completed=progress["finished"], width=40),
        f"{progress['finished']}/{progress['total']}",
        f"ETA {eta_text}",
        f"{snap['throughput']['images_per_hour']} img/h",
        f"{snap['throughput']['mb_per_s']} MB/s",
    )
    parts: list[Any] = [states, bar]
    if snap.get("hosts"):
        parts.append(Text("hosts: " + ", ".join(f"{h} ({n} busy)" for h, n in sorted(snap["hosts"].items()))))
    if snap["workers"]:
        table = Table(title="workers", expand=False)
        for col in ("worker", "image", "seconds", "attempt"):
            table.add_column(col)
        for w in snap["workers"]:
            table.add_row(w["worker"], w["image"], f"{w['seconds']:.0f}", str(w["attempt"]))
        parts.append(table)
    if snap.get("stalled"):
        parts.append(Text(f"{len(snap['stalled'])} image(s) held by workers that are gone (dead process or expired "
                          "lease): they go back to the queue when workers start", style="yellow"))
    if snap["latest_errors"]:
        errs = Table(title="latest errors", expand=False)
        errs.add_column("file")
        errs.add_column("type")
        errs.add_column("message", overflow="fold")
        for e in snap["latest_errors"]:
            errs.add_row(e["file"], e["type"] or "", e["message"] or "")
        parts.append(errs)
    if snap["uploads"]["objects"]:
        parts.append(Text(f"uploaded: {snap['uploads']['objects']} objects, {snap['uploads']['bytes'] / 1e6:.1f} MB"))
    return Panel(Group(*parts), title="tessq status")

"""The live view: a read-only snapshot of the status table, and its rich rendering.

`snapshot()` is plain data (also `tessq status --json`); `render()` turns it into a rich panel.
Nothing here writes to the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tessq.jobs import db
from tessq.jobs.report import busy_seconds

WINDOW_S = 300.0  # throughput is measured over the last five minutes
LATEST_ERRORS = 5


class Rate(TypedDict):
    images_per_hour: float
    mb_per_s: float


class Progress(TypedDict):
    finished: int
    total: int
    remaining: int


class WorkerEntry(TypedDict):
    worker: str | None  # host:pid
    image: str
    seconds: float  # since it started this image
    attempt: int
    lease_left_s: float  # < 0: expired


class LatestError(TypedDict):
    file: str
    type: str | None
    message: str | None


class Snapshot(TypedDict):
    """`tessq status --json`, key for key in this order."""

    counts: dict[str, int]
    progress: Progress
    throughput: Rate
    eta_s: float | None
    workers: list[WorkerEntry]
    stalled: list[WorkerEntry]
    hosts: dict[str, int]
    latest_errors: list[LatestError]
    uploads: db.UploadTotals
    job_id: int | None
    at: float


@dataclass(frozen=True)
class StatusRows:
    """What a snapshot is computed from, as db returns it: the server's clock, the counts, the images done since
    `now - WINDOW_S` (their intervals, number and pixel bytes), the running images and the latest failures."""

    job_id: int | None
    now: float
    counts: dict[str, int]
    recent_intervals: list[tuple[float, float]]
    n_recent: int
    pixels_recent: int
    running: list[db.RunningRow]
    latest_errors: list[db.ErrorRow]


def throughput(done_in_window: int, bytes_in_window: int, window_s: float) -> Rate:
    hours = window_s / 3600.0
    return {
        "images_per_hour": round(done_in_window / hours, 1) if hours else 0.0,
        "mb_per_s": round(bytes_in_window / 1e6 / window_s, 2) if window_s else 0.0,
    }


def eta_seconds(remaining: int, images_per_hour: float) -> float | None:
    if remaining == 0:
        return 0.0
    return remaining / images_per_hour * 3600.0 if images_per_hour > 0 else None


def fetch_rows(job_id: int | None = None) -> StatusRows:
    """The snapshot's rows (call inside a session)."""
    now = db.server_time()
    since = now - WINDOW_S
    n_recent, pixels_recent = db.recent_done_totals(job_id, since)
    return StatusRows(
        job_id=job_id,
        now=now,
        counts=db.state_counts(job_id),
        recent_intervals=db.recent_done_intervals(job_id, since),
        n_recent=n_recent,
        pixels_recent=pixels_recent,
        running=db.running_rows(job_id),
        latest_errors=db.latest_failed_rows(job_id, LATEST_ERRORS),
    )


def dead_holders(rows: Iterable[db.RunningRow]) -> set[str]:
    """The lease holders that are processes of this host that are gone."""
    from tessq.jobs.daemon import dead_local_workers

    return set(dead_local_workers(sorted({r.worker for r in rows if r.worker})))


def snapshot(job_id: int | None = None) -> dict[str, Any]:
    """One job's live counts (every job's when job_id is None), as the JSON-ready dict (a `Snapshot`)."""
    with db.session():
        rows = fetch_rows(job_id)
    uploads = db.UploadLedger().summary()
    return dict(summarize(rows, dead_holders(rows.running), uploads))


def worker_entry(row: db.RunningRow, now: float) -> WorkerEntry:
    return {
        "worker": row.worker,
        "image": row.rel_path,
        "seconds": round(now - (row.started_at or now), 1),
        "attempt": row.attempts,
        "lease_left_s": round((row.lease_until or now) - now, 1),
    }


def split_live(workers: list[WorkerEntry], dead: set[str]) -> tuple[list[WorkerEntry], list[WorkerEntry]]:
    """(live, stalled) running images: stalled when the holder is one of `dead` (a process of this host that is
    gone), or its lease has expired (a worker elsewhere that stopped renewing it)."""
    live: list[WorkerEntry] = []
    stalled: list[WorkerEntry] = []
    for w in workers:
        (stalled if w["worker"] in dead or w["lease_left_s"] < 0 else live).append(w)
    return live, stalled


def busy_hosts(workers: list[WorkerEntry]) -> dict[str, int]:
    """Running images per host (the host part of host:pid), in the order the workers come."""
    hosts: dict[str, int] = {}
    for w in workers:
        host = (w["worker"] or "?").rpartition(":")[0]
        hosts[host] = hosts.get(host, 0) + 1
    return hosts


def summarize(rows: StatusRows, dead: set[str], uploads: db.UploadTotals) -> Snapshot:
    """The snapshot of `rows`, `dead` being the lease holders known to be gone (pure: no database, no clock)."""
    counts, now = rows.counts, rows.now
    window_start = now - WINDOW_S
    # the rate over the last five minutes counts only the time images were being cut in them (the union of
    # their intervals): the idle minutes before a resumed run, or between runs, do not dilute it
    busy = busy_seconds([(max(a, window_start), b) for a, b in rows.recent_intervals])
    window = max(busy, 1.0) if busy else WINDOW_S
    rate = throughput(rows.n_recent, rows.pixels_recent, window)
    to_do = counts[db.DONE] + counts[db.FAILED] + counts[db.QUEUED] + counts[db.RUNNING]
    finished = counts[db.DONE] + counts[db.FAILED]
    remaining = counts[db.QUEUED] + counts[db.RUNNING]
    workers, stalled = split_live([worker_entry(r, now) for r in rows.running], dead)
    # "running" counts the images a live worker holds; those of dead workers (or expired leases) are "stalled":
    # they go back to the queue when workers next start (or the reaper runs).
    counts = dict(counts, running=counts[db.RUNNING] - len(stalled))
    return {
        "counts": counts,
        "progress": {"finished": finished, "total": to_do, "remaining": remaining},
        "throughput": rate,
        # an ETA only while workers are at it: with none alive nothing will finish, whatever the recent rate
        "eta_s": eta_seconds(remaining, rate["images_per_hour"]) if workers or not remaining else None,
        "workers": workers,
        "stalled": stalled,
        "hosts": busy_hosts(workers),
        "latest_errors": [
            {"file": e.rel_path, "type": e.error_type, "message": e.error_message} for e in rows.latest_errors
        ],
        "uploads": uploads,
        "job_id": rows.job_id,
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
        parts.append(
            Text(
                f"{len(snap['stalled'])} image(s) held by workers that are gone (dead process or expired "
                "lease): they go back to the queue when workers start",
                style="yellow",
            )
        )
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

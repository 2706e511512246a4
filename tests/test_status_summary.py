"""status.summarize on hand-made rows: progress, the five-minute rate, the ETA, live and stalled workers,
without a database or live processes."""

from __future__ import annotations

import json

import pytest

from tessq.jobs import db
from tessq.jobs.status import WINDOW_S, StatusRows, summarize

NOW = 10_000.0
NO_UPLOADS: db.UploadTotals = {"objects": 0, "bytes": 0}
SNAPSHOT_KEYS = [
    "counts",
    "progress",
    "throughput",
    "eta_s",
    "workers",
    "stalled",
    "hosts",
    "latest_errors",
    "uploads",
    "job_id",
    "at",
]


def counts(**n: int) -> dict[str, int]:
    return dict(dict.fromkeys(db.STATES, 0), **n)


def status_rows(
    *,
    counts: dict[str, int],
    recent: list[tuple[float, float]] | None = None,
    n_recent: int = 0,
    pixels: int = 0,
    running: list[db.RunningRow] | None = None,
    errors: list[db.ErrorRow] | None = None,
) -> StatusRows:
    return StatusRows(
        job_id=3,
        now=NOW,
        counts=counts,
        recent_intervals=recent or [],
        n_recent=n_recent,
        pixels_recent=pixels,
        running=running or [],
        latest_errors=errors or [],
    )


def running(
    worker: str | None,
    image: str = "a.tif",
    started: float | None = NOW - 12.34,
    lease_until: float | None = NOW + 30.0,
) -> db.RunningRow:
    return db.RunningRow(worker, image, started, 2, lease_until)


def test_an_empty_table_is_finished_at_once_with_no_rate() -> None:
    snap = summarize(status_rows(counts=counts()), set(), NO_UPLOADS)
    assert list(snap) == SNAPSHOT_KEYS
    assert snap["progress"] == {"finished": 0, "total": 0, "remaining": 0}
    assert snap["throughput"] == {"images_per_hour": 0.0, "mb_per_s": 0.0}
    assert snap["eta_s"] == 0.0  # nothing left
    assert snap["workers"] == [] and snap["stalled"] == [] and snap["hosts"] == {}
    assert snap["job_id"] == 3 and snap["at"] == NOW
    json.dumps(snap)


def test_progress_counts_done_and_failed_as_finished_skipped_and_cancelled_not_at_all() -> None:
    snap = summarize(
        status_rows(
            counts=counts(done=4, failed=2, queued=3, running=1, skipped=7, cancelled=5), running=[running("h:1")]
        ),
        set(),
        NO_UPLOADS,
    )
    assert snap["progress"] == {"finished": 6, "total": 10, "remaining": 4}


def test_the_rate_is_over_the_busy_time_in_the_window() -> None:
    # 6 images in the last five minutes, cut during 60 s of it (one interval started before the window)
    recent = [(NOW - WINDOW_S - 100.0, NOW - WINDOW_S + 30.0), (NOW - 40.0, NOW - 10.0)]
    snap = summarize(
        status_rows(
            counts=counts(done=6, queued=12), recent=recent, n_recent=6, pixels=120_000_000, running=[running("h:1")]
        ),
        set(),
        NO_UPLOADS,
    )
    assert snap["throughput"] == {"images_per_hour": 360.0, "mb_per_s": 2.0}
    assert snap["eta_s"] == pytest.approx(12 / 360.0 * 3600.0)


def test_a_window_with_less_than_a_second_busy_counts_one_second() -> None:
    snap = summarize(
        status_rows(counts=counts(done=1), recent=[(NOW - 1.0, NOW - 0.5)], n_recent=1, pixels=1_000_000),
        set(),
        NO_UPLOADS,
    )
    assert snap["throughput"] == {"images_per_hour": 3600.0, "mb_per_s": 1.0}


def test_nothing_done_recently_spreads_over_the_whole_window() -> None:
    snap = summarize(
        status_rows(counts=counts(done=1, queued=1), n_recent=0, running=[running("h:1")]), set(), NO_UPLOADS
    )
    assert snap["throughput"] == {"images_per_hour": 0.0, "mb_per_s": 0.0}
    assert snap["eta_s"] is None  # no rate: no estimate


def test_dead_holders_and_expired_leases_are_stalled_and_not_running() -> None:
    rows = [
        running("h:1", "a.tif"),
        running("h:2", "b.tif"),
        running("far:9", "c.tif", lease_until=NOW - 0.5),
        running("far:10", "d.tif", started=None, lease_until=None),
    ]
    snap = summarize(status_rows(counts=counts(running=4, queued=2), running=rows), {"h:2"}, NO_UPLOADS)
    assert [w["image"] for w in snap["workers"]] == ["a.tif", "d.tif"]
    assert [w["image"] for w in snap["stalled"]] == ["b.tif", "c.tif"]
    assert snap["counts"]["running"] == 2 and snap["counts"]["queued"] == 2
    assert snap["progress"]["remaining"] == 6  # stalled images are still to do
    assert snap["hosts"] == {"h": 1, "far": 1}  # live workers only
    assert snap["workers"][0] == {
        "worker": "h:1",
        "image": "a.tif",
        "seconds": 12.3,
        "attempt": 2,
        "lease_left_s": 30.0,
    }
    assert snap["workers"][1]["seconds"] == 0.0 and snap["workers"][1]["lease_left_s"] == 0.0  # not known yet
    assert snap["stalled"][1]["lease_left_s"] == -0.5


def test_no_eta_while_no_worker_is_alive() -> None:
    recent = [(NOW - 100.0, NOW - 10.0)]
    snap = summarize(
        status_rows(counts=counts(done=5, running=1), recent=recent, n_recent=5, running=[running("h:1")]),
        {"h:1"},
        NO_UPLOADS,
    )
    assert snap["throughput"]["images_per_hour"] == 200.0
    assert snap["eta_s"] is None and snap["counts"]["running"] == 0 and snap["stalled"]


def test_a_holder_without_a_name_is_counted_on_an_unknown_host() -> None:
    snap = summarize(status_rows(counts=counts(running=1), running=[running(None)]), set(), NO_UPLOADS)
    assert snap["hosts"] == {"": 1}  # '?' has no ':': its host part is empty


def test_latest_errors_and_uploads_are_passed_through() -> None:
    errors = [db.ErrorRow("z.tif", "corrupt", "bad strip", 1), db.ErrorRow("y.tif", None, None, 3)]
    snap = summarize(status_rows(counts=counts(failed=2), errors=errors), set(), {"objects": 3, "bytes": 99})
    assert snap["latest_errors"] == [
        {"file": "z.tif", "type": "corrupt", "message": "bad strip"},
        {"file": "y.tif", "type": None, "message": None},
    ]
    assert snap["uploads"] == {"objects": 3, "bytes": 99}

"""history.timings on hand-made rows: times relative to the run's first start, the pixel rate, the paths."""

from __future__ import annotations

from typing import Any

from tessq.jobs import db
from tessq.jobs.history import timings


def row(
    rel_path: str,
    *,
    started: float | None,
    finished: float,
    duration: float | None = None,
    pixels: int | None = None,
    status: str = db.DONE,
    output_dir: str = "/data/out",
    **more: Any,
) -> db.TimingRow:
    fields: dict[str, Any] = dict(
        id=1,
        rel_path=rel_path,
        status=status,
        worker="host:1",
        attempts=1,
        started_at=started,
        finished_at=finished,
        duration_s=duration,
        n_slices=4,
        bytes_out=10,
        pixel_bytes=pixels,
        out_rel=rel_path.rsplit(".", 1)[0],
        input_dir="/data/in",
        output_dir=output_dir,
    )
    fields.update(more)
    return db.TimingRow(**fields)


def test_no_rows_no_timings() -> None:
    assert timings([]) == []


def test_times_count_from_the_earliest_start_and_rates_need_pixels_and_a_duration() -> None:
    rows = [
        row("a/x.tif", started=101.0, finished=102.5, duration=1.5, pixels=3_000_000),
        row("b.tif", started=100.0, finished=104.0, duration=4.0, pixels=0),
        row("c.tif", started=None, finished=104.12345, duration=None, pixels=5, status=db.FAILED),
    ]
    got = timings(rows)
    assert [t["t_s"] for t in got] == [2.5, 4.0, 4.123]
    assert [t["pixel_mb_per_s"] for t in got] == [2.0, None, None]
    assert got[0]["source"] == "/data/in/a/x.tif" and got[0]["image_dir"] == "/data/out/a/x"
    assert got[2]["status"] == db.FAILED and got[2]["started_at"] is None


def test_without_any_start_the_first_finish_is_the_origin() -> None:
    got = timings([row("a.tif", started=None, finished=50.0), row("b.tif", started=None, finished=53.25)])
    assert [t["t_s"] for t in got] == [0.0, 3.25]


def test_an_s3_output_gives_urls() -> None:
    (got,) = timings([row("d/e.tif", started=1.0, finished=2.0, output_dir="s3://bucket/out/")])
    assert got["image_dir"] == "s3://bucket/out/d/e"
    assert list(got) == [
        "rel_path",
        "input_dir",
        "source",
        "output_dir",
        "out_rel",
        "image_dir",
        "status",
        "worker",
        "attempts",
        "started_at",
        "finished_at",
        "duration_s",
        "t_s",
        "n_slices",
        "bytes_out",
        "pixel_bytes",
        "pixel_mb_per_s",
    ]

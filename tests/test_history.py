"""tessq.jobs.history.per_image_timings: the status table's finished images, in finishing order, for plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tessq import pipeline
from tessq.jobs import db
from tessq.jobs.history import per_image_timings


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)
    pipeline.open_workspace(tmp_path / "ws")
    return tmp_path


def add_image(job: db.Job, rel_path: str, status: str, **columns: Any) -> None:
    db.Image.create(
        job=job,
        rel_path=rel_path,
        folder="",
        out_rel=rel_path.rsplit(".", 1)[0],
        src_size=1,
        src_mtime=0.0,
        status=status,
        **columns,
    )


def test_finished_images_in_finishing_order_with_run_relative_times(workspace: Path) -> None:
    with db.session():
        job = db.upsert_job("/data/in", "/data/out", {}, "h")
        other = db.upsert_job("/data/other", "s3://bucket/other_out", {}, "h")
        add_image(
            job,
            "b.tif",
            db.DONE,
            started_at=100.0,
            finished_at=104.0,
            duration_s=4.0,
            pixel_bytes=8_000_000,
            n_slices=8,
            bytes_out=5,
            worker="host:1",
            attempts=1,
        )
        add_image(job, "a.tif", db.DONE, started_at=101.0, finished_at=102.5, duration_s=1.5, pixel_bytes=3_000_000)
        add_image(job, "c.tif", db.FAILED, started_at=103.0, finished_at=103.5, duration_s=0.5)
        add_image(job, "q.tif", db.QUEUED)
        add_image(job, "r.tif", db.RUNNING, started_at=99.0)
        add_image(job, "s.tif", db.SKIPPED, finished_at=90.0)
        add_image(other, "x.tif", db.DONE, started_at=50.0, finished_at=51.0, duration_s=1.0)

    mine = per_image_timings(input_dir="/data/in")
    assert [r["rel_path"] for r in mine] == ["a.tif", "c.tif", "b.tif"]
    assert [r["t_s"] for r in mine] == [2.5, 3.5, 4.0]  # seconds since the earliest start among them (100.0)
    assert [r["status"] for r in mine] == [db.DONE, db.FAILED, db.DONE]
    b = mine[2]
    assert b["duration_s"] == 4.0 and b["pixel_mb_per_s"] == 2.0 and b["n_slices"] == 8 and b["worker"] == "host:1"
    assert b["image_dir"] == str(Path("/data/out/b")) and b["source"] == str(Path("/data/in/b.tif"))
    assert mine[1]["pixel_mb_per_s"] is None  # no pixel size recorded

    done = per_image_timings(statuses=[db.DONE])
    assert [r["rel_path"] for r in done] == ["x.tif", "a.tif", "b.tif"]
    assert done[0]["image_dir"] == "s3://bucket/other_out/x"  # a URL keeps its '//'
    assert done[0]["t_s"] == 1.0  # now measured from x.tif's start, the earliest of these rows
    assert per_image_timings(input_dir="/nowhere") == []

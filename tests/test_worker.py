"""One worker process's duties, in process: claim, cut, commit on the committer thread, record the outcome."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tessq import pipeline
from tessq.jobs import db, task
from tessq.options import SliceOptions
from tests.conftest import write_tiff


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("TESSQ_DB_URL", "TESSQ_QUEUE_URL"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def _scan(tmp_path: Path, n: int) -> tuple[Path, list[int]]:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(n):
        write_tiff(src / f"img_{i}.tif", 64, 96, seed=i)
    ws = pipeline.open_workspace(tmp_path / "ws")
    pipeline.scan_and_enqueue(src, out, SliceOptions(min_size=0), workspace=ws)
    with db.session():
        return out, sorted(db.queued_ids_with_size())


def test_a_cut_image_is_committed_by_the_committer_and_recorded_done(workspace: Path) -> None:
    out, ids = _scan(workspace, 3)
    for image_id in ids:
        task.process_image(image_id)
    task.wait_for_commit()
    with db.session():
        rows = [db.image(i) for i in ids]
    assert [r.status for r in rows] == [db.DONE] * 3
    for r in rows:
        assert (out / r.out_rel / "metadata.json").is_file()
    assert not [e for e in os.listdir(out) if e.startswith(".")]  # no temporary folder left behind


def test_a_commit_that_finds_the_source_changed_retries_and_leaves_no_output(workspace: Path) -> None:
    out, [image_id] = _scan(workspace, 1)
    with db.session():
        claim = db.claim(image_id, db.worker_identity(), 60)
        row = db.image(image_id)
    prepared = task.cut(row, claim)
    source = Path(row.job.input_dir) / row.rel_path
    write_tiff(source, 70, 96, seed=9)  # rewritten between the cut and the commit
    task._commit(claim, row, prepared, started=0.0)
    with db.session():
        after = db.image(image_id)
    assert after.status == db.QUEUED and after.error_type == "source_changed"
    assert not out.exists() or not os.listdir(out)


def test_a_time_limit_that_strikes_inside_a_decoder_is_still_reported_as_a_timeout() -> None:
    from huey.exceptions import TaskTimeout

    from tessq.errors import CorruptImageError

    try:
        try:
            raise TaskTimeout("timeout (1s)")
        except TaskTimeout as exc:  # what tiff.py does with any codec exception
            raise CorruptImageError("in/huge.tif", f"cannot decode pixel data ({exc})") from exc
    except CorruptImageError as wrapped:
        action, kind, message = task.classify(wrapped, "huge.tif", 1)
    assert (action, kind) == ("fail", "timeout") and "timed out after 1 s" in message
    assert task.classify(CorruptImageError("in/bad.tif", "garbled strip"), "bad.tif", 1)[1] == "corrupt"


def test_the_image_statement_returns_the_same_row_and_job_as_the_peewee_query(workspace: Path) -> None:
    _, ids = _scan(workspace, 2)
    with db.session():
        for image_id in ids:
            fast = db.image(image_id)
            slow = db.Image.select(db.Image, db.Job).join(db.Job).where(db.Image.id == image_id).get()
            assert fast is not None and fast.__data__ == slow.__data__ and fast.job.__data__ == slow.job.__data__
        assert db.image(max(ids) + 1) is None


def test_a_done_row_holds_the_size_mtime_and_dimensions_of_the_file_that_was_cut(workspace: Path) -> None:
    import json

    out, [image_id] = _scan(workspace, 1)
    with db.session():
        db.Image.update(width=1, height=1).where(db.Image.id == image_id).execute()  # a stale header record
    task.process_image(image_id)
    task.wait_for_commit()
    with db.session():
        row = db.image(image_id)
    meta = json.loads((out / row.out_rel / "metadata.json").read_text())
    source = workspace / "in" / row.rel_path
    assert row.status == db.DONE
    assert (row.width, row.height) == (meta["source"]["width"], meta["source"]["height"]) == (96, 64)
    assert (row.src_size, row.src_mtime) == (source.stat().st_size, source.stat().st_mtime)

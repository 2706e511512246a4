"""db.record_candidates, the scan's state table: what a rescan does to each row, by the row's state and what the
scan found (same file, changed file, changed settings, a skip, an output path now another image's).

Real SQLite; candidates written as the scan writes them. The mutation run of db.py (issue #17 item 7) found
these transitions tested only through the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tessq.jobs import db


def cand(rel: str, *, size: int = 1, mtime: float = 1.0, status: str = db.QUEUED, out: str | None = None) -> dict:
    return {
        "rel_path": rel,
        "folder": "",
        "out_rel": out or rel.rsplit(".", 1)[0],
        "src_size": size,
        "src_mtime": mtime,
        "status": status,
        "skip_reason": "too_small" if status == db.SKIPPED else None,
        "error_type": "corrupt" if status == db.FAILED else None,
        "error_message": None,
        "width": 64,
        "height": 48,
        "pixel_bytes": 64 * 48 * 3,
        "attempts": 0,
    }


@pytest.fixture
def job(tmp_path: Path) -> int:
    db.open_database(f"sqlite:///{tmp_path}/tessq.db")
    db.create_schema()
    with db.session():
        return db.upsert_job("/in", "/out", {}, "h").id


def record(job_id: int, *cands: dict[str, Any], options_hash: str = "h") -> db.ScanOutcome:
    with db.session():
        return db.record_candidates(job_id, list(cands), options_hash)


def set_status(rel: str, status: str, **fields: Any) -> None:
    if status == db.DONE:
        fields.setdefault("options_hash", "h")  # what finish_done records: the settings it was cut with
    with db.session():
        db.Image.update(status=status, **fields).where(db.Image.rel_path == rel).execute()


def row(rel: str, job_id: int | None = None) -> db.Image:
    with db.session():
        query = db.Image.select().where(db.Image.rel_path == rel)
        return query.where(db.Image.job == job_id).get() if job_id else query.get()


def test_new_rows_are_queued_in_id_order_and_nothing_is_counted_unchanged(job: int) -> None:
    outcome = record(job, cand("b.tif"), cand("a.tif"), cand("s.tif", status=db.SKIPPED))
    assert outcome.new_queued == sorted(outcome.new_queued) and len(outcome.new_queued) == 2
    assert (outcome.requeued, outcome.unchanged_done, outcome.unchanged_other) == ([], 0, 0)
    assert [row(r).id for r in ("b.tif", "a.tif")] == outcome.new_queued
    assert row("s.tif").status == db.SKIPPED


def test_a_rescan_of_unchanged_files_counts_them_and_queues_nothing(job: int) -> None:
    names = [f"{c}.tif" for c in "abcde"]
    record(job, *(cand(n) for n in names))
    set_status("a.tif", db.DONE)
    set_status("b.tif", db.DONE)
    set_status("c.tif", db.FAILED, error_type="corrupt")
    set_status("d.tif", db.RUNNING)  # e.tif stays queued
    outcome = record(job, *(cand(n) for n in names))
    assert (outcome.new_queued, outcome.requeued) == ([], [])
    assert (outcome.unchanged_done, outcome.unchanged_other) == (2, 3)
    assert [row(n).status for n in names] == [db.DONE, db.DONE, db.FAILED, db.RUNNING, db.QUEUED]


def test_a_changed_source_or_changed_settings_requeue_a_done_image_reset(job: int) -> None:
    record(job, cand("a.tif"), cand("b.tif"), cand("c.tif"))
    for name in ("a.tif", "b.tif", "c.tif"):
        set_status(name, db.DONE, attempts=2, worker="host:1", error_message="old")
    outcome = record(job, cand("a.tif", size=2), cand("b.tif", mtime=5.0), cand("c.tif"))
    assert sorted(outcome.requeued) == sorted(row(n).id for n in ("a.tif", "b.tif")) and outcome.unchanged_done == 1
    redone = row("a.tif")
    assert (redone.status, redone.src_size, redone.attempts, redone.worker, redone.error_message) == (
        db.QUEUED,
        2,
        0,
        None,
        None,
    )
    assert row("c.tif").status == db.DONE
    stale = record(job, cand("a.tif", size=2), cand("b.tif", mtime=5.0), cand("c.tif"), options_hash="h2")
    assert stale.requeued == [row("c.tif").id]  # a, b are queued already: their messages are in flight


def test_a_failed_image_waits_for_retry_unless_its_source_changed(job: int) -> None:
    record(job, cand("a.tif"), cand("b.tif"), cand("c.tif"))
    for name in ("a.tif", "b.tif", "c.tif"):
        set_status(name, db.FAILED, error_type="corrupt")
    outcome = record(job, cand("a.tif"), cand("b.tif", size=9), cand("c.tif"))
    assert outcome.requeued == [row("b.tif").id] and outcome.unchanged_other == 2
    assert [row(n).status for n in ("a.tif", "b.tif", "c.tif")] == [db.FAILED, db.QUEUED, db.FAILED]


def test_a_file_now_skipped_is_recorded_so_but_a_queued_one_is_left_to_its_message(job: int) -> None:
    record(job, cand("a.tif"), cand("b.tif"), cand("c.tif"))
    set_status("a.tif", db.DONE)
    outcome = record(
        job,
        cand("a.tif", status=db.SKIPPED),
        cand("b.tif", status=db.SKIPPED),
        cand("c.tif", status=db.SKIPPED, size=3),
    )
    assert (outcome.requeued, outcome.unchanged_done, outcome.unchanged_other) == ([], 0, 0)
    assert [row(n).status for n in ("a.tif", "b.tif", "c.tif")] == [db.SKIPPED, db.QUEUED, db.SKIPPED]


def test_an_output_path_now_anothers_moves_queued_failed_and_done_images_to_their_new_name(job: int) -> None:
    record(job, cand("q.tif", out="x"), cand("f.tif", out="y"), cand("d.tif", out="z"), cand("k.tif", out="k"))
    set_status("f.tif", db.FAILED, error_type="corrupt")
    set_status("d.tif", db.DONE)
    set_status("k.tif", db.DONE)
    # New files now own x, y and z; the old images get other names (as scan.output_folder_names gives them).
    outcome = record(
        job,
        cand("q.tif", out="x_1"),
        cand("f.tif", out="y_1"),
        cand("d.tif", out="z_1"),
        cand("k.tif", out="k"),
        cand("x.tif", out="x"),
        cand("y.tif", out="y"),
        cand("z.tif", out="z"),
    )
    assert row("q.tif").out_rel == "x_1" and row("q.tif").status == db.QUEUED  # not cut yet: renamed in place
    assert sorted(outcome.requeued) == sorted(row(n).id for n in ("f.tif", "d.tif"))
    assert (row("f.tif").out_rel, row("d.tif").out_rel) == ("y_1", "z_1")
    assert (row("k.tif").status, row("k.tif").out_rel) == (db.DONE, "k")
    assert row("x.tif").out_rel == "x" and len(outcome.new_queued) == 3


def test_a_new_name_alone_moves_no_image(job: int) -> None:
    record(job, cand("d.tif", out="d"), cand("q.tif", out="q"))
    set_status("d.tif", db.DONE)
    outcome = record(job, cand("d.tif", out="d_renamed"), cand("q.tif", out="q_renamed"))  # nobody else claims d, q
    assert (outcome.unchanged_done, outcome.unchanged_other) == (1, 1)
    assert (row("d.tif").out_rel, row("q.tif").out_rel) == ("d", "q")


def test_each_job_has_its_own_rows_for_the_same_relative_path(job: int) -> None:
    record(job, cand("a.tif"))
    set_status("a.tif", db.DONE)
    with db.session():
        other = db.upsert_job("/in2", "/out2", {}, "h").id
    outcome = record(other, cand("a.tif"))
    assert len(outcome.new_queued) == 1 and outcome.unchanged_done == 0
    assert row("a.tif", job).status == db.DONE and row("a.tif", other).status == db.QUEUED

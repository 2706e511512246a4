"""The status table's guarantees: one claim wins, finishes are fenced, leases expire on the server clock."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from tessq.jobs import db


def _setup(url: str, n: int) -> list[int]:
    db.open_database(url)
    db.create_schema()
    with db.session():
        job = db.upsert_job("/in", "/out", {}, "h")
        rows = [
            {
                "rel_path": f"img_{i}.tif",
                "folder": "",
                "out_rel": f"img_{i}",
                "src_size": 1,
                "src_mtime": 1.0,
                "status": db.QUEUED,
                "attempts": 0,
            }
            for i in range(n)
        ]
        outcome = db.record_candidates(job.id, rows, "h")
    return outcome.new_queued


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tessq.db"
    return request.getfixturevalue("postgres_url")


def test_second_claim_of_same_image_is_refused(db_url: str) -> None:
    [image_id] = _setup(db_url, 1)
    with db.session():
        first = db.claim(image_id, "host:1", 60)
        second = db.claim(image_id, "host:2", 60)
    assert first is not None and first.attempt == 1
    assert second is None


def test_expired_lease_can_be_taken_and_fences_the_old_holder(db_url: str) -> None:
    [image_id] = _setup(db_url, 1)
    with db.session():
        old = db.claim(image_id, "host:1", 0.05)
        time.sleep(0.2)
        new = db.claim(image_id, "host:2", 60)
        assert new is not None and new.attempt == 2
        assert not db.renew_lease(old, 60)
        assert not db.finish_done(old, n_slices=1, bytes_out=1, duration_s=1, options_hash="h", pixel_bytes=1)
        assert db.finish_done(new, n_slices=8, bytes_out=10, duration_s=1, options_hash="h", pixel_bytes=1)
        row = db.image(image_id)
    assert row.status == db.DONE and row.n_slices == 8 and row.worker == "host:2"


def test_reaper_requeues_expired_and_fails_exhausted(db_url: str) -> None:
    ids = _setup(db_url, 2)
    with db.session():
        db.claim(ids[0], "host:1", 0.01)
        db.claim(ids[1], "host:1", 0.01)
        db.Image.update(attempts=3).where(db.Image.id == ids[1]).execute()
        time.sleep(0.1)
        requeued, failed = db.reap_expired(max_attempts=3)
        assert requeued == [ids[0]] and failed == [ids[1]]
        assert db.image(ids[0]).status == db.QUEUED
        assert db.image(ids[1]).status == db.FAILED


def test_dead_worker_images_are_reclaimed_before_lease_expiry(db_url: str) -> None:
    [image_id] = _setup(db_url, 1)
    with db.session():
        db.claim(image_id, "host:999", 3600)
        requeued, _ = db.reap_expired(3, dead_workers=["host:999"])
    assert requeued == [image_id]


def test_images_of_workers_stopped_with_their_run_get_their_attempt_back(db_url: str) -> None:
    ids = _setup(db_url, 2)
    with db.session():
        db.claim(ids[0], "host:7", 3600)
        db.claim(ids[1], "host:8", 3600)
        db.Image.update(attempts=5).execute()
        requeued, failed = db.reap_expired(5, dead_workers=["host:8"], interrupted=["host:7"])
        assert sorted(requeued) == [ids[0]] and failed == [ids[1]]
        refunded = db.image(ids[0])
    assert refunded.status == db.QUEUED and refunded.attempts == 4 and refunded.worker is None


def test_an_interrupted_release_refunds_the_attempt_and_a_retry_release_does_not(db_url: str) -> None:
    ids = _setup(db_url, 2)
    with db.session():
        stopped, failing = db.claim(ids[0], "host:1", 60), db.claim(ids[1], "host:1", 60)
        assert db.release_interrupted(stopped)
        assert db.release_for_retry(failing, error_type="io", message="disk full")
        rows = [db.image(i) for i in ids]
    assert [(r.status, r.attempts) for r in rows] == [(db.QUEUED, 0), (db.QUEUED, 1)]


def _claimer(url: str, ids: list[int], out: mp.Queue) -> None:
    db.open_database(url)
    won = []
    for image_id in ids:
        with db.session():
            c = db.claim(image_id, f"host:{mp.current_process().pid}", 60)
            if c:
                db.finish_done(c, n_slices=1, bytes_out=1, duration_s=0, options_hash="h", pixel_bytes=1)
                won.append(image_id)
    out.put(won)


def test_four_processes_racing_never_claim_an_image_twice(db_url: str) -> None:
    ids = _setup(db_url, 300)
    db.database.close()
    ctx = mp.get_context("fork")
    results: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db_url, ids, results)) for _ in range(4)]
    for p in procs:
        p.start()
    won = [i for _ in procs for i in results.get(timeout=120)]
    for p in procs:
        p.join(30)
    assert sorted(won) == sorted(ids)  # each exactly once: no duplicates, none lost
    db.open_database(db_url)
    with db.session():
        assert db.Image.select().where(db.Image.attempts != 1).count() == 0

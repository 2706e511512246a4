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


def test_a_finish_records_what_was_cut_and_from_which_source_state(db_url: str) -> None:
    ids = _setup(db_url, 2)
    with db.session():
        c0, c1 = db.claim(ids[0], "host:1", 60), db.claim(ids[1], "host:1", 60)
        done = dict(n_slices=8, bytes_out=1234, duration_s=2.5, options_hash="h", pixel_bytes=4096)
        assert db.finish_done(c0, **done, source_state=(555, 7.25), dimensions=(96, 64))
        assert db.finish_done(c1, **done)  # no source state known: the scan's stays
        cut, kept = db.image(ids[0]), db.image(ids[1])
    assert (cut.status, cut.n_slices, cut.bytes_out, cut.duration_s, cut.pixel_bytes) == (db.DONE, 8, 1234, 2.5, 4096)
    assert (cut.src_size, cut.src_mtime, cut.width, cut.height) == (555, 7.25, 96, 64)
    assert cut.lease_until is None and cut.finished_at is not None and cut.error_type is None
    assert (kept.src_size, kept.src_mtime, kept.width, kept.height) == (1, 1.0, None, None)


def test_a_finish_is_refused_once_a_scan_changed_the_jobs_settings(db_url: str) -> None:
    [image_id] = _setup(db_url, 1)
    with db.session():
        c = db.claim(image_id, "host:1", 60)
        db.Job.update(options_hash="other").execute()
        assert not db.finish_done(c, n_slices=8, bytes_out=1, duration_s=1, options_hash="h", pixel_bytes=1)
        assert db.image(image_id).status == db.RUNNING


def test_a_failure_is_recorded_with_its_error_only_by_the_holder_of_the_claim(db_url: str) -> None:
    [image_id] = _setup(db_url, 1)
    with db.session():
        old = db.claim(image_id, "host:1", 0.05)
        time.sleep(0.2)
        new = db.claim(image_id, "host:2", 60)
        assert not db.finish_failed(old, error_type="io", message="stale", duration_s=1.0)
        assert db.finish_failed(new, error_type="corrupt", message="a.tif: bad strip", duration_s=0.5)
        row = db.image(image_id)
    assert (row.status, row.error_type, row.error_message, row.duration_s) == (
        db.FAILED,
        "corrupt",
        "a.tif: bad strip",
        0.5,
    )
    assert row.lease_until is None and row.finished_at is not None


def test_a_lease_is_renewed_by_its_holder_and_its_time_left_read_on_the_server_clock(db_url: str) -> None:
    [image_id] = _setup(db_url, 1)
    with db.session():
        old = db.claim(image_id, "host:1", 0.05)
        time.sleep(0.2)
        assert db.lease_left(old) is not None and db.lease_left(old) < 0  # expired, still held until reaped
        new = db.claim(image_id, "host:2", 5)
        assert db.lease_left(old) is None and not db.renew_lease(old, 60)  # lost
        assert 0 < db.lease_left(new) <= 5
        assert db.renew_lease(new, 600)
        assert 590 < db.lease_left(new) <= 600


def test_a_retry_release_keeps_the_error_and_an_interrupted_one_clears_it(db_url: str) -> None:
    ids = _setup(db_url, 2)
    with db.session():
        stopped, failing = db.claim(ids[0], "host:1", 60), db.claim(ids[1], "host:1", 60)
        assert db.release_interrupted(stopped) and db.release_for_retry(failing, error_type="io", message="EIO")
        assert not db.release_for_retry(failing, error_type="io", message="again")  # no longer held
        rows = [db.image(i) for i in ids]
    assert [(r.error_type, r.error_message, r.worker, r.lease_until) for r in rows] == [
        (None, None, None, None),
        ("io", "EIO", None, None),
    ]


def test_the_reaper_fails_exhausted_images_as_lost_and_keeps_their_last_error(db_url: str) -> None:
    ids = _setup(db_url, 3)
    with db.session():
        for image_id in ids:
            db.claim(image_id, "host:1", 0.01)
        db.Image.update(attempts=3).where(db.Image.id.in_(ids[1:])).execute()
        db.Image.update(error_message="a.tif: timed out").where(db.Image.id == ids[2]).execute()
        time.sleep(0.1)
        requeued, failed = db.reap_expired(max_attempts=3)
        again, plain, kept = (db.image(i) for i in ids)
    assert requeued == [ids[0]] and sorted(failed) == ids[1:]
    assert (again.status, again.attempts, again.worker, again.lease_until) == (db.QUEUED, 1, None, None)
    assert (plain.status, plain.error_type, plain.error_message) == (
        db.FAILED,
        "lost",
        "worker died or lost its lease on every attempt",
    )
    assert plain.finished_at is not None and plain.lease_until is None
    assert (kept.error_type, kept.error_message) == ("lost", "a.tif: timed out")


def test_reaping_a_dead_worker_touches_only_its_running_images(db_url: str) -> None:
    ids = _setup(db_url, 3)
    with db.session():
        finished = db.claim(ids[0], "host:9", 3600)
        db.finish_done(finished, n_slices=1, bytes_out=1, duration_s=0, options_hash="h", pixel_bytes=1)
        db.claim(ids[1], "host:9", 3600)
        db.claim(ids[2], "host:5", 3600)  # alive: its lease runs
        requeued, failed = db.reap_expired(3, dead_workers=["host:9"], interrupted=["host:9"])
        states = [(r.status, r.attempts) for r in (db.image(i) for i in ids)]
    assert requeued == [ids[1]] and failed == []
    assert states == [(db.DONE, 1), (db.QUEUED, 0), (db.RUNNING, 1)]  # the first attempt refunded

"""The delivery queue as the status table's servant: lost messages are rebuilt from the table, cheaply."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessq import pipeline
from tessq.jobs import db
from tessq.jobs import queue as tq


def _workspace_with_queued_rows(backend: dict, monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    for key in ("TESSQ_DB_URL", "TESSQ_QUEUE_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in backend.items():
        if key.startswith("TESSQ_"):
            monkeypatch.setenv(key, value)
    pipeline.open_workspace(backend["TESSQ_WORKSPACE"])
    rows = [
        {
            "rel_path": f"img_{i}.tif",
            "folder": "",
            "out_rel": f"img_{i}",
            "src_size": 1,
            "src_mtime": 1.0,
            "status": db.QUEUED,
            "attempts": 0,
            "pixel_bytes": 1000,
        }
        for i in range(n)
    ]
    with db.session():
        job = db.upsert_job("/in", "/out", {}, "h")
        return db.record_candidates(job.id, rows, "h").new_queued


def test_repair_enqueues_exactly_the_rows_without_a_message_reading_the_queue_once(
    tmp_path: Path, backend: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _workspace_with_queued_rows(backend, monkeypatch, 400)
    tq.enqueue(ids[:300])
    huey = tq.huey()
    reads = []
    real_pending = huey.pending

    def counted_pending(*args: object, **kwargs: object) -> list:
        reads.append(1)
        return real_pending(*args, **kwargs)

    monkeypatch.setattr(huey, "pending", counted_pending)
    assert tq.repair_unqueued() == 100
    # one pass over the queue, not one per queued row (that was quadratic: 18 s for 2,000 images)
    assert len(reads) == 1
    monkeypatch.undo()
    assert sorted(t.args[0] for t in tq.huey().pending()) == sorted(ids)
    assert tq.repair_unqueued() == 0


def test_a_scan_is_enqueued_in_batches_with_every_message_and_its_time_limit(
    tmp_path: Path, backend: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _workspace_with_queued_rows(backend, monkeypatch, 7)
    monkeypatch.setattr(tq, "ENQUEUE_BATCH", 3)  # 3 + 3 + 1
    sizes = {i: 10**9 * k for k, i in enumerate(ids)}
    assert tq.enqueue(ids, sizes) == 7
    pending = {t.args[0]: t.timeout for t in tq.huey().pending()}
    assert sorted(pending) == sorted(ids)
    assert all(pending[i] == tq.time_limit(sizes[i]) for i in ids)
    assert len(set(pending.values())) > 1  # the limits really differ per image

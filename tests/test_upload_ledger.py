"""db.UploadLedger, what a re-run of `--upload` trusts: one row per S3 key, updated in place, and totals per OUT."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tessq.jobs import db


@pytest.fixture
def ledger(tmp_path: Path) -> db.UploadLedger:
    db.open_database(f"sqlite:///{tmp_path}/tessq.db")
    db.create_schema()
    return db.UploadLedger()


def test_an_upload_is_recorded_with_what_was_sent_and_found_by_its_key(ledger: db.UploadLedger) -> None:
    assert ledger.get("s3://b/out/a/slice_0.png") is None
    before = time.time()
    ledger.record("s3://b/out/a/slice_0.png", "/out/a/slice_0.png", 100, 5.5, "sha-a", '"etag-a"')
    ledger.record("s3://b/out/a/slice_1.png", "/out/a/slice_1.png", 7, 5.5, "sha-b", '"etag-b"')
    got = ledger.get("s3://b/out/a/slice_0.png")
    assert got is not None
    assert (got.local_path, got.size, got.mtime, got.checksum, got.etag) == (
        "/out/a/slice_0.png",
        100,
        5.5,
        "sha-a",
        '"etag-a"',
    )
    assert before <= got.uploaded_at <= time.time()
    other = ledger.get("s3://b/out/a/slice_1.png")
    assert other is not None and (other.size, other.checksum) == (7, "sha-b")


def test_an_upload_sent_again_replaces_its_record(ledger: db.UploadLedger) -> None:
    ledger.record("s3://b/k", "/out/a", 100, 5.5, "sha-a", '"e1"')
    ledger.record("s3://b/k", "/out/b", 250, 9.0, "sha-b", None)
    got = ledger.get("s3://b/k")
    assert got is not None
    assert (got.local_path, got.size, got.mtime, got.checksum, got.etag) == ("/out/b", 250, 9.0, "sha-b", None)
    assert ledger.summary() == {"objects": 1, "bytes": 250}


def test_totals_count_every_upload_or_only_those_from_one_output_folder(ledger: db.UploadLedger) -> None:
    assert ledger.summary() == {"objects": 0, "bytes": 0}
    ledger.record("s3://b/1", "/data/out/a/s0.png", 10, 1.0, "x", None)
    ledger.record("s3://b/2", "/data/out/b/s0.png", 20, 1.0, "y", None)
    ledger.record("s3://b/3", "/data/out2/a/s0.png", 40, 1.0, "z", None)  # another OUT sharing the prefix's text
    assert ledger.summary() == {"objects": 3, "bytes": 70}
    assert ledger.summary("/data/out") == {"objects": 2, "bytes": 30}
    assert ledger.summary("/data/out/") == {"objects": 2, "bytes": 30}
    assert ledger.summary("/data/none") == {"objects": 0, "bytes": 0}

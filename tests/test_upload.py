"""S3 upload against a real S3 HTTP endpoint (moto_server in its own process) with the real boto3 client."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import boto3
import pytest

from tessq.errors import BucketNotFoundError, S3AuthError, S3UnreachableError
from tessq.jobs import db
from tessq.ship import upload
from tessq.ship.export import shipped_files
from tessq.ship.upload import file_crc32, files_to_ship, upload_outputs
from tessq.storage import s3 as storage_s3
from tests.s3server import DUMMY_ENV, free_port, s3_endpoint, start_moto, stop_moto

__all__ = ["s3_endpoint"]  # the fixture is used by name below
REPO = Path(__file__).resolve().parents[1]
DONE = ["p/s1/img_1", "p/s1/img_2", "q/img_3"]


@pytest.fixture
def ledger(tmp_path: Path) -> db.UploadLedger:
    db.open_database(f"sqlite:///{tmp_path}/tessq.db")
    db.create_schema()
    return db.UploadLedger()


@pytest.fixture
def s3(s3_endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    name = f"tessq-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def small_multipart(monkeypatch: pytest.MonkeyPatch) -> int:
    """Multipart from 6 MB in 5 MB parts (S3's minimum part size) so a test file of ~11 MB takes 3 parts."""
    monkeypatch.setattr(upload, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(upload, "MULTIPART_CHUNKSIZE", 5 << 20)
    return 11 << 20


def make_tree(out: Path, slices: int = 3, big: int = 0) -> list[tuple[Path, str]]:
    for n, rel in enumerate(DONE):
        folder = out / rel
        folder.mkdir(parents=True)
        for i in range(slices):
            (folder / f"slice_{i}.png").write_bytes(os.urandom(2000 + 100 * i))
        (folder / "metadata.json").write_text(f'{{"n": {n}}}')
        (folder / "batch_metadata.json").write_text("{}")
    if big:
        (out / DONE[0] / "slice_big.png").write_bytes(os.urandom(big))
    (out / "a_not_done").mkdir()
    (out / "a_not_done" / "slice_0.png").write_bytes(b"x")
    (out / "batch_report.json").write_text("{}")
    (out / "batch_processing.log").write_text("log\n")
    return files_to_ship(out, DONE)


def bucket_objects(s3, bucket: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_upload_sends_every_file_and_the_bucket_matches_the_tree(
    tmp_path: Path, s3, bucket: str, ledger: db.UploadLedger, s3_endpoint: str, small_multipart: int
) -> None:
    files = make_tree(tmp_path / "out", big=small_multipart)
    seen: list[tuple[int, int]] = []
    result = upload_outputs(
        files,
        f"s3://{bucket}/run1/",
        ledger=ledger,
        endpoint_url=s3_endpoint,
        concurrency=4,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert result["uploaded"] == len(files) and result["skipped"] == 0 and result["failed"] == []
    assert result["bytes_uploaded"] == sum(p.stat().st_size for p, _ in files)
    remote = bucket_objects(s3, bucket)
    local = {f"run1/{rel}": path.read_bytes() for path, rel in files}
    assert set(remote) == set(local)
    for key, data in local.items():
        assert len(remote[key]) == len(data)
        assert hashlib.sha256(remote[key]).digest() == hashlib.sha256(data).digest(), key
    # Every object carries the full-object CRC32 of the local file, including the multipart one.
    for path, rel in files:
        head = s3.head_object(Bucket=bucket, Key=f"run1/{rel}", ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"] == file_crc32(path)
    assert ledger.summary() == {"objects": len(files), "bytes": result["bytes_uploaded"]}
    total = sum(p.stat().st_size for p, _ in files)
    assert seen[-1][1] == total and max(d for d, _ in seen) == total


def test_rerun_uploads_nothing_and_a_changed_file_is_sent_again(
    tmp_path: Path, bucket: str, ledger: db.UploadLedger, s3_endpoint: str, s3
) -> None:
    files = make_tree(tmp_path / "out")
    url = f"s3://{bucket}/p"
    upload_outputs(files, url, ledger=ledger, endpoint_url=s3_endpoint)
    again = upload_outputs(files, url, ledger=ledger, endpoint_url=s3_endpoint)
    assert (again["uploaded"], again["skipped"], again["bytes_uploaded"]) == (0, len(files), 0)

    # Same size and same mtime but other bytes: only the checksum can tell, and it must.
    path, rel = next((p, r) for p, r in files if r.endswith("slice_0.png"))
    st = path.stat()
    path.write_bytes(os.urandom(st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = upload_outputs(files, url, ledger=ledger, endpoint_url=s3_endpoint)
    assert (changed["uploaded"], changed["skipped"]) == (1, len(files) - 1)
    assert s3.get_object(Bucket=bucket, Key=f"p/{rel}")["Body"].read() == path.read_bytes()


KILLABLE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tessq.jobs import db
    from tessq.ship.upload import files_to_ship, upload_outputs

    db_url, out, url, endpoint = sys.argv[1:5]
    db.open_database(db_url)
    files = files_to_ship(Path(out), [p.name for p in Path(out).iterdir() if p.is_dir()])
    # A slow progress bar makes the run long enough to be killed in the middle.
    upload_outputs(files, url, ledger=db.UploadLedger(), endpoint_url=endpoint, concurrency=2,
                   progress=lambda done, total: time.sleep(0.03))
    """
)


def test_kill_9_mid_upload_resumes_without_resending_completed_files(
    tmp_path: Path, bucket: str, ledger: db.UploadLedger, s3_endpoint: str, s3
) -> None:
    out = tmp_path / "out"
    for i in range(200):
        (out / f"img_{i:03d}").mkdir(parents=True)
        (out / f"img_{i:03d}" / "slice_0.png").write_bytes(os.urandom(4096))
    files = files_to_ship(out, [f"img_{i:03d}" for i in range(200)])
    url = f"s3://{bucket}/resume"
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = {**os.environ, **DUMMY_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), f"sqlite:///{tmp_path}/tessq.db", str(out), url, s3_endpoint],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while ledger.summary()["objects"] < 30:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        assert time.monotonic() < deadline, "the upload made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at = upload.endpoint_id(s3_endpoint)
    before = {f"{url}/{rel}": ledger.get(f"{at} {url}/{rel}") for _, rel in files}
    completed = {key: row.uploaded_at for key, row in before.items() if row is not None}
    assert 30 <= len(completed) < len(files)

    result = upload_outputs(files, url, ledger=ledger, endpoint_url=s3_endpoint)
    # An object S3 confirmed just before the kill, not yet in the ledger, is found by its CRC32 and skipped.
    assert len(completed) <= result["skipped"] <= len(completed) + 2
    assert result["uploaded"] + result["skipped"] == len(files) == result["verified"]
    for key, uploaded_at in completed.items():
        assert ledger.get(f"{at} {key}").uploaded_at == uploaded_at, f"{key} was sent again"
    remote = bucket_objects(s3, bucket)
    assert remote == {f"resume/{rel}": path.read_bytes() for path, rel in files}


def test_a_transfer_that_does_not_match_the_local_checksum_fails_and_is_not_recorded(
    tmp_path: Path,
    bucket: str,
    ledger: db.UploadLedger,
    s3_endpoint: str,
    small_multipart: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 computes the full-object CRC32 over the parts it received; a mismatch with the local CRC32
    (what a corrupted transfer looks like) must fail that file and keep it out of the ledger."""
    files = make_tree(tmp_path / "out", slices=1, big=small_multipart)
    big = next(p for p, r in files if r.endswith("slice_big.png"))
    real_crc = upload.file_crc32
    monkeypatch.setattr(upload, "file_crc32", lambda p: "AAAAAA==" if p == big else real_crc(p))
    result = upload_outputs(files, f"s3://{bucket}/c", ledger=ledger, endpoint_url=s3_endpoint)
    assert [f["path"] for f in result["failed"]] == [str(big)]
    assert "CRC32" in result["failed"][0]["error"]
    assert ledger.get(f"{upload.endpoint_id(s3_endpoint)} s3://{bucket}/c/{DONE[0]}/slice_big.png") is None
    assert result["uploaded"] == len(files) - 1

    monkeypatch.setattr(upload, "file_crc32", real_crc)
    retry = upload_outputs(files, f"s3://{bucket}/c", ledger=ledger, endpoint_url=s3_endpoint)
    # The object S3 kept holds the right bytes (its CRC32 equals the local file's): it is recorded, not sent.
    assert retry["failed"] == [] and retry["verified"] == len(files)
    assert (retry["uploaded"], retry["skipped"]) in ((1, len(files) - 1), (0, len(files)))
    assert ledger.get(f"{upload.endpoint_id(s3_endpoint)} s3://{bucket}/c/{DONE[0]}/slice_big.png") is not None


def test_a_missing_bucket_is_a_clear_error(tmp_path: Path, ledger: db.UploadLedger, s3_endpoint: str) -> None:
    files = make_tree(tmp_path / "out")
    with pytest.raises(BucketNotFoundError, match=r"bucket 'no-such-bucket' does not exist"):
        upload_outputs(files, "s3://no-such-bucket/x", ledger=ledger, endpoint_url=s3_endpoint)
    assert ledger.summary()["objects"] == 0


def test_an_unreachable_endpoint_is_a_clear_error(
    tmp_path: Path, ledger: db.UploadLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_s3, "MAX_ATTEMPTS", 2)  # keep the backoff short; the default retries 8 times
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(S3UnreachableError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1"):
        upload_outputs(make_tree(tmp_path / "out"), "s3://b-ucket/x", ledger=ledger, endpoint_url=dead)


def test_unknown_profile_is_a_clear_error(tmp_path: Path, ledger: db.UploadLedger) -> None:
    with pytest.raises(S3AuthError, match="profile 'nobody-has-this'"):
        upload_outputs([], "s3://bkt/x", ledger=ledger, profile="nobody-has-this")


def test_bad_credentials_are_a_clear_error_that_names_the_bucket(
    tmp_path: Path, ledger: db.UploadLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second server with authentication on: the dummy keys are unknown to its IAM, like revoked keys.
    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        for key, value in DUMMY_ENV.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(S3AuthError, match=r"access to bucket 'some-bucket'.*refused") as info:
            upload_outputs(make_tree(tmp_path / "out"), "s3://some-bucket/x", ledger=ledger, endpoint_url=url)
        assert DUMMY_ENV["AWS_SECRET_ACCESS_KEY"] not in str(info.value)
    finally:
        stop_moto(proc)


def test_upload_ships_the_same_files_as_the_zip_export(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = make_tree(out)
    assert files == shipped_files(out, DONE)
    names = [rel for _, rel in files]
    assert "batch_report.json" in names and not any(n.startswith("a_not_done") for n in names)

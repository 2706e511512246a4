"""Issue 19, items 1, 4, 5, 7: shipping holds against a changed target, planted links, secrets and kill -9.

Checked from the outside: a fresh S3 listing of a real moto server (a second one for the other endpoint),
the files in OUT, the SQLite file read directly, /proc for processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tessq import logs
from tessq.errors import ConfigError
from tessq.jobs import db
from tessq.jobs.backends import make_database, make_queue
from tessq.redact import redact
from tessq.ship import export, upload
from tests.conftest import seed_tree, tessq_cmd, write_tiff
from tests.s3server import DUMMY_ENV, s3_endpoint, start_moto, stop_moto  # noqa: F401  (fixture)
from tests.s3tools import new_bucket, s3_client

MIN = "--min-size=32"
MARKER_TOKEN = "TESSQMARKERSESSIONTOKEN0123456789abcdef"
MARKER_SECRET = "TESSQMARKERSECRETKEY0123456789abcdef"


def listing(endpoint: str, bucket: str, prefix: str) -> dict[str, int]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return {o["Key"][len(prefix) + 1 :]: o["Size"] for page in pages for o in page.get("Contents", [])}


def local_files(out: Path, ws: Path) -> dict[str, int]:
    """What a correct upload ships, from the table read with sqlite3 and the disk (regular files only)."""
    con = sqlite3.connect(f"file:{ws / '.tessq' / 'tessq.db'}?mode=ro", uri=True)
    dirs = [r[0] for r in con.execute("SELECT out_rel FROM image WHERE status='done'")]
    con.close()
    files = {}
    for rel_dir in dirs:
        for path in (out / rel_dir).rglob("*"):
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(out).as_posix()] = path.stat().st_size
    for name in ("batch_report.json", "batch_processing.log"):
        if (out / name).is_file() and not (out / name).is_symlink():
            files[name] = (out / name).stat().st_size
    return files


@pytest.fixture
def finished(tmp_path: Path, sqlite_env: dict[str, str]) -> tuple[Path, Path, dict[str, str]]:
    src, out = tmp_path / "in", tmp_path / "out"
    seed_tree(src)
    tessq_cmd("run", str(src), str(out), MIN, "--workers", "2", env=sqlite_env, cwd=tmp_path)
    return out, tmp_path / "ws", {**sqlite_env, **DUMMY_ENV}


# ---------------------------------------------------------------- 1. upload checks the target, not its ledger


def test_objects_deleted_from_the_bucket_are_sent_again_and_the_listing_matches(
    finished: tuple[Path, Path, dict[str, str]],
    s3_endpoint: str,
) -> None:
    out, ws, env = finished
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/ship"
    tessq_cmd("upload", url, "--endpoint-url", s3_endpoint, env=env, cwd=out.parent, check=True)
    expected = local_files(out, ws)
    assert listing(s3_endpoint, bucket, "ship") == expected
    gone = sorted(expected)[::3]
    client = s3_client(s3_endpoint)
    for rel in gone:
        client.delete_object(Bucket=bucket, Key=f"ship/{rel}")
    again = tessq_cmd("upload", url, "--endpoint-url", s3_endpoint, env=env, cwd=out.parent, check=True)
    assert f"uploaded {len(gone)} file(s), skipped {len(expected) - len(gone)} already there" in again.stdout
    assert f"verified {len(expected)} objects in the target" in again.stdout
    assert listing(s3_endpoint, bucket, "ship") == expected
    # An object overwritten with other bytes of another size is replaced too.
    victim = sorted(expected)[1]
    client.put_object(Bucket=bucket, Key=f"ship/{victim}", Body=b"x")
    third = tessq_cmd("upload", url, "--endpoint-url", s3_endpoint, env=env, cwd=out.parent, check=True)
    assert "uploaded 1 file(s)" in third.stdout
    assert client.get_object(Bucket=bucket, Key=f"ship/{victim}")["Body"].read() == (out / victim).read_bytes()


def test_a_second_empty_endpoint_with_the_same_bucket_name_gets_everything(
    finished: tuple[Path, Path, dict[str, str]],
    s3_endpoint: str,
) -> None:
    out, ws, env = finished
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/ship"
    tessq_cmd("upload", url, "--endpoint-url", s3_endpoint, env=env, cwd=out.parent, check=True)
    expected = local_files(out, ws)
    proc, other = start_moto()
    try:
        s3_client(other).create_bucket(Bucket=bucket)
        second = tessq_cmd("upload", url, "--endpoint-url", other, env=env, cwd=out.parent, check=True)
        assert f"uploaded {len(expected)} file(s), skipped 0" in second.stdout
        assert listing(other, bucket, "ship") == expected
        # The ledger (read directly) holds each object once per endpoint.
        con = sqlite3.connect(f"file:{ws / '.tessq' / 'tessq.db'}?mode=ro", uri=True)
        rows = [r[0] for r in con.execute("SELECT key FROM upload")]
        con.close()
        assert len(rows) == 2 * len(expected)
        assert {r.split(" ", 1)[0] for r in rows} == {upload.endpoint_id(s3_endpoint), upload.endpoint_id(other)}
    finally:
        stop_moto(proc)


def test_endpoint_ids_normalise_and_name_aws_once() -> None:
    assert upload.endpoint_id(None) == "aws"
    assert upload.endpoint_id("https://s3.eu-west-1.amazonaws.com") == "aws"
    assert upload.endpoint_id("HTTP://User:pw@MinIO.local:80/") == "http://minio.local"
    assert upload.endpoint_id("http://127.0.0.1:9000") != upload.endpoint_id("http://127.0.0.1:9001")


def test_an_object_missing_after_the_upload_is_reported_failed(
    tmp_path: Path,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The final listing is the proof: an object that vanished between its PUT and the end is a failure."""
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
    db.open_database(f"sqlite:///{tmp_path}/tessq.db")
    db.create_schema()
    out = tmp_path / "out"
    (out / "img").mkdir(parents=True)
    for i in range(3):
        (out / "img" / f"slice_{i}.png").write_bytes(os.urandom(1000))
    bucket = new_bucket(s3_endpoint)
    real_send = upload._send

    def send_then_lose(run, path, key, size, crc):  # type: ignore[no-untyped-def]
        etag = real_send(run, path, key, size, crc)
        if key.endswith("slice_1.png"):
            s3_client(s3_endpoint).delete_object(Bucket=bucket, Key=key)
        return etag

    monkeypatch.setattr(upload, "_send", send_then_lose)
    result = upload.upload_outputs(
        upload.files_to_ship(out, ["img"]), f"s3://{bucket}/p", ledger=db.UploadLedger(), endpoint_url=s3_endpoint
    )
    assert result["verified"] == 2
    assert [f["key"] for f in result["failed"]] == ["p/img/slice_1.png"]
    assert "missing after the upload" in result["failed"][0]["error"]


# ---------------------------------------------------------------- 4. links in OUT


def test_a_link_in_a_done_folder_is_neither_zipped_nor_uploaded(
    finished: tuple[Path, Path, dict[str, str]],
    s3_endpoint: str,
    tmp_path: Path,
) -> None:
    out, ws, env = finished
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret\n")
    folder = out / "project_alpha/survey_001/aerial_photo_001"
    (folder / "stolen.txt").symlink_to(secret)
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    (outside / "inner.txt").write_text("the secret\n")
    (folder / "linked_dir").symlink_to(outside)
    (out / "batch_report.json").unlink()
    (out / "batch_report.json").symlink_to(secret)
    proc = tessq_cmd("export", "--zip", env=env, cwd=out.parent, check=True)
    names = zipfile.ZipFile(out / "out_results.zip").namelist()
    assert not any("stolen" in n or "linked_dir" in n for n in names) and "batch_report.json" not in names
    assert "metadata.json" in " ".join(names)
    assert "symbolic link" in proc.stderr
    with zipfile.ZipFile(out / "out_results.zip") as zf:
        assert all(b"the secret" not in zf.read(n) for n in names)
    bucket = new_bucket(s3_endpoint)
    tessq_cmd("upload", f"s3://{bucket}/ship", "--endpoint-url", s3_endpoint, env=env, cwd=out.parent, check=True)
    remote = listing(s3_endpoint, bucket, "ship")
    assert not any("stolen" in k or "linked_dir" in k for k in remote) and "batch_report.json" not in remote
    assert remote == local_files(out, ws)
    assert secret.read_text() == "the secret\n"


def test_a_linked_image_folder_is_not_shipped(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "a").mkdir(parents=True)
    (out / "a" / "slice_0.png").write_bytes(b"png")
    (elsewhere / "b").mkdir(parents=True)
    (elsewhere / "b" / "slice_0.png").write_bytes(b"secret")
    (out / "p").symlink_to(elsewhere)  # a link on the way to a done folder
    not_shipped: list[dict[str, str]] = []
    files = export.shipped_files(out, ["a", "p/b"], not_shipped=not_shipped)
    assert [rel for _, rel in files] == ["a/slice_0.png"]
    assert [n["path"] for n in not_shipped] == [str(out.resolve() / "p/b")]


def test_the_log_file_is_never_appended_through_a_link(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif", seed=1)
    out.mkdir()
    target = tmp_path / "outside.log"
    target.write_text("precious\n")
    (out / "batch_processing.log").symlink_to(target)
    proc = tessq_cmd("run", str(src), str(out), MIN, "--workers", "1", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode != 0 and "symbolic link" in proc.stderr
    assert target.read_text() == "precious\n"
    # In-process too: the handler refuses the link.
    with pytest.raises(ConfigError, match="symbolic link"):
        logs.setup("INFO", out / "batch_processing.log", console=False)
    assert target.read_text() == "precious\n"


def test_a_link_planted_at_the_temporary_archive_name_is_not_written_through(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "slice_0.png").write_bytes(b"png")
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    dest = out / "ship.zip"
    (out / f".ship.zip.tessq-tmp-{os.getpid()}").symlink_to(victim)
    export.export_zip(out, ["a"], dest)
    assert victim.read_text() == "keep\n"
    assert zipfile.ZipFile(dest).namelist() == ["a/slice_0.png"]


# ---------------------------------------------------------------- 5. secrets


def test_debug_logs_with_s3_output_hold_no_token_or_secret(
    tmp_path: Path,
    sqlite_env: dict[str, str],
    s3_endpoint: str,
) -> None:
    src = tmp_path / "in"
    seed_tree(src)
    bucket = new_bucket(s3_endpoint)
    env = {
        **sqlite_env,
        **DUMMY_ENV,
        "AWS_SESSION_TOKEN": MARKER_TOKEN,
        "AWS_SECRET_ACCESS_KEY": MARKER_SECRET,
        "TESSQ_S3_ENDPOINT_URL": s3_endpoint,
    }
    quiet = tessq_cmd(
        "--log-level", "DEBUG", "run", str(src), f"s3://{bucket}/cut", MIN, "--workers", "2", env=env, cwd=tmp_path
    )
    # With the SDK's wire log asked for explicitly, the headers are logged, masked.
    # (another OUT is another job: its state goes to a workspace of its own)
    wire_env = {**env, "TESSQ_LOG_WIRE": "1", "TESSQ_WORKSPACE": str(tmp_path / "ws2")}
    wire = tessq_cmd(
        "--log-level",
        "DEBUG",
        "run",
        str(src),
        f"s3://{bucket}/cut2",
        MIN,
        "--workers",
        "1",
        env=wire_env,
        cwd=tmp_path,
    )
    assert quiet.returncode == 3, quiet.stderr[-2000:]  # the seed tree has one corrupt file
    assert wire.returncode == 3, wire.stderr[-2000:]
    log = (tmp_path / "ws2/.tessq/batch_processing.log").read_text()
    assert "X-Amz-Security-Token" in log and "X-Amz-Security-Token': b'***'" in log
    texts = [quiet.stdout, quiet.stderr, wire.stdout, wire.stderr]
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            texts.append(path.read_bytes().decode(errors="replace"))
    for text in texts:
        assert MARKER_TOKEN not in text and MARKER_SECRET not in text
        assert "Signature=" not in text.replace("Signature=***", "")


def test_a_password_in_a_database_or_queue_url_is_masked_in_the_error(
    tmp_path: Path, sqlite_env: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as info:
        make_database("mysql://alice:hunter2secret@db.example:3306/tessq")
    assert "hunter2secret" not in str(info.value) and "alice:***@db.example" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_queue("amqp://bob:hunter2secret@mq.example/")
    assert "hunter2secret" not in str(info.value)
    env = {**sqlite_env, "TESSQ_DB_URL": "postgress://carol:hunter2secret@pg.example/db"}
    proc = tessq_cmd("--log-level", "DEBUG", "status", "--once", env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "hunter2secret" not in proc.stdout + proc.stderr
    assert "carol:***@" in proc.stdout + proc.stderr


def test_redact_masks_headers_query_strings_and_url_passwords() -> None:
    wire = (
        "headers={'X-Amz-Security-Token': b'FwoGZXIvYXdz', 'Authorization': b'AWS4-HMAC-SHA256 "
        "Credential=AKIAEXAMPLE/20261201/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0a1b2c'}"
    )
    assert redact(wire) == "headers={'X-Amz-Security-Token': b'***', 'Authorization': b'***'}"
    url = "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2Fx&X-Amz-Security-Token=IQo&X-Amz-Signature=beef"
    assert (
        redact(url) == "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Security-Token=***&X-Amz-Signature=***"
    )
    assert redact("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"
    assert redact("nothing to hide, signature checked") == "nothing to hide, signature checked"


# ---------------------------------------------------------------- 7. leftovers


def test_a_temporary_archive_left_by_kill_9_is_removed_by_the_next_export(
    finished: tuple[Path, Path, dict[str, str]],
) -> None:
    out, _, env = finished
    script = (
        "import os, sys, time\nfrom tessq.ship import export\n"
        "real = export._write_archive\n"
        "def slow(tmp, files, sizes, progress):\n"
        "    return real(tmp, files, sizes, lambda d, t: time.sleep(60))\n"
        "export._write_archive = slow\n"
        "from tessq.cli import main\nsys.argv = ['tessq', 'export', '--zip']\nmain()\n"
    )
    leftovers = []
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=out.parent)
        tmp = out / f".out_results.zip.tessq-tmp-{proc.pid}"
        deadline = time.monotonic() + 60
        while not tmp.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the export never started its archive"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert tmp.exists()
        # The export that follows a killed one removes its temporary archive as it starts.
        assert not any(t.exists() for t in leftovers)
        leftovers.append(tmp)
    tessq_cmd("export", "--zip", env=env, cwd=out.parent, check=True)
    assert not [p.name for p in out.iterdir() if ".tessq-tmp-" in p.name]
    assert zipfile.ZipFile(out / "out_results.zip").testzip() is None


def test_a_live_exports_temporary_archive_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "slice_0.png").write_bytes(b"png")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / f".ship.zip.tessq-tmp-{sleeper.pid}"
        time.sleep(0.05)
        live.write_bytes(b"in progress")
        export.export_zip(out, ["a"], out / "ship.zip")
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
    reason="PR_SET_PDEATHSIG is Linux's; the probe pool needs 2 CPUs",
)
def test_kill_9_of_scan_while_probing_leaves_no_probe_process(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    from tessq.jobs.scan import PROBE_PARALLEL_MIN

    src = tmp_path / "in"
    one = write_tiff(src / "seed.tif", 40, 48, seed=1)
    for i in range(3 * PROBE_PARALLEL_MIN):  # hard links: many files to probe, made in a moment
        os.link(one, src / f"img_{i:05d}.tif")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessq", "scan", str(src), MIN],
        env=sqlite_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pool: set[int] = set()
    deadline = time.monotonic() + 120
    while len(pool) < 2 and proc.poll() is None and time.monotonic() < deadline:
        pool |= _children(proc.pid)
        time.sleep(0.005)
    assert pool, "the scan finished before its probe pool was seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pool) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [p for p in pool if _alive(p)]
    for pid in orphans:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "probe processes outlived the killed scan"

"""Two "machines" on one box: separate workspaces, temp dirs and host names, sharing PostgreSQL (or Redis +
PostgreSQL) and S3; one is SIGKILLed mid-run and the other finishes everything, each image exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import tessq_cmd, tessq_popen, write_tiff
from tests.s3server import DUMMY_ENV, s3_endpoint  # noqa: F401  (fixture)
from tests.s3tools import assert_bit_exact, download, keys, new_bucket, upload_tree

N_IMAGES = 24
LEASE_S = "3"  # short, so the survivor's reaper sees the dead machine's leases expire within seconds


def machine(name: str, tmp_path: Path, shared: dict[str, str]) -> dict[str, str]:
    """The environment of one machine: its own host name, workspace and temp dir; the shared services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    for sub in ("ws", "tmp"):
        (tmp_path / name / sub).mkdir(parents=True)
    return {
        **env,
        **DUMMY_ENV,
        **shared,
        "TESSQ_HOSTNAME": name,
        "TESSQ_WORKSPACE": str(tmp_path / name / "ws"),
        "TMPDIR": str(tmp_path / name / "tmp"),
        "TESSQ_LEASE_S": LEASE_S,
    }


def kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(params=["postgres", "redis+postgres"])
def shared(request: pytest.FixtureRequest, postgres_url: str, s3_endpoint: str) -> dict[str, str]:
    env = {"TESSQ_DB_URL": postgres_url, "TESSQ_S3_ENDPOINT_URL": s3_endpoint}
    if request.param == "redis+postgres":
        env["TESSQ_QUEUE_URL"] = request.getfixturevalue("redis_url")
    return env


def rows(shared: dict[str, str]) -> list[tuple[str, str, str | None, int]]:
    import psycopg

    with psycopg.connect(shared["TESSQ_DB_URL"]) as conn:
        return list(conn.execute("SELECT rel_path, status, worker, attempts FROM image ORDER BY rel_path"))


def hosts_busy(shared: dict[str, str]) -> dict[str, int]:
    """What `tessq status --json` reports as `hosts`: running images per host, read from the shared table."""
    busy: dict[str, int] = {}
    for _, status, worker, _ in rows(shared):
        if status == "running" and worker:
            host = worker.rpartition(":")[0]
            busy[host] = busy.get(host, 0) + 1
    return busy


def wait_for(predicate, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_machine_that_disappears_loses_nothing_and_every_image_is_done_exactly_once(
    tmp_path: Path, shared: dict[str, str], s3_endpoint: str
) -> None:
    src = tmp_path / "src"
    for i in range(N_IMAGES):
        write_tiff(src / f"site_{i % 3}/img_{i:02d}.tif", 900, 1000, seed=i, compression="zlib")
    bucket = new_bucket(s3_endpoint)
    upload_tree(s3_endpoint, src, bucket, "raw")
    a, b = machine("machine-a", tmp_path, shared), machine("machine-b", tmp_path, shared)
    scan = json.loads(
        tessq_cmd(
            "scan",
            f"s3://{bucket}/raw",
            "--out",
            f"s3://{bucket}/cut",
            "--min-size=64",
            "--json",
            env=a,
            cwd=tmp_path,
            check=True,
        ).stdout
    )
    assert scan["queued"] == N_IMAGES
    daemon_a = tessq_popen("workers", "--workers", "2", env=a, cwd=tmp_path)
    daemon_b = None
    try:
        wait_for(lambda: sum(r[1] == "done" for r in rows(shared)) >= 2 and hosts_busy(shared).get("machine-a"))
        daemon_b = tessq_popen("workers", "--workers", "2", "--drain", env=b, cwd=tmp_path)
        seen = wait_for(lambda: (lambda h: h if {"machine-a", "machine-b"} <= set(h) else None)(hosts_busy(shared)))
        # machine-a goes while it holds an image: at once, before anything slow (a status command) lets the queue
        # run dry under it on a fast host
        wait_for(lambda: hosts_busy(shared).get("machine-a"))
        kill_group(daemon_a)  # the whole machine goes: daemon and workers, no goodbye
        held = {r[0] for r in rows(shared) if r[1] == "running" and r[2].startswith("machine-a:")}
        assert held, "machine-a held no image when it was killed"
        status = json.loads(tessq_cmd("status", "--json", env=b, cwd=tmp_path, check=True).stdout)
        assert set(status["hosts"]) <= {"machine-a", "machine-b"} and status["counts"]["done"] >= 2
        assert daemon_b.wait(timeout=120) == 0, daemon_b.stdout.read() if daemon_b.stdout else ""
    finally:
        kill_group(daemon_a)
        if daemon_b is not None:
            kill_group(daemon_b)
    final = rows(shared)
    assert [r[1] for r in final] == ["done"] * N_IMAGES
    by_path = {r[0]: r for r in final}
    for path in held:  # taken over after the lease expired: a second attempt, by the survivor
        assert by_path[path][2].startswith("machine-b:") and by_path[path][3] == 2, by_path[path]
    assert sum(r[3] for r in final) == N_IMAGES + len(held)  # no attempt unaccounted for
    assert set(seen) == {"machine-a", "machine-b"}
    out_keys = keys(s3_endpoint, bucket, "cut")
    assert sum(k.endswith("/metadata.json") for k in out_keys) == N_IMAGES
    batch = assert_bit_exact(download(s3_endpoint, bucket, "cut", tmp_path / "dl"), src, N_IMAGES)
    committed = {(m["worker"], m["attempt"]) for m in batch}
    assert committed == {(r[2], r[3]) for r in final}  # each folder is the one the fenced finish accepted
    assert not list((tmp_path / "machine-b/tmp").iterdir())
    report = json.loads(tessq_cmd("report", "--json", env=b, cwd=tmp_path, check=True).stdout)
    assert report["batch_summary"]["successfully_processed"] == N_IMAGES and report["batch_summary"]["errors"] == 0

"""The job system end to end: the real CLI, real worker processes, real TIFFs, on every backend."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import many_tiffs, seed_tree, tessq_cmd, tessq_popen, write_tiff

MIN = "--min-size=32"


def report_json(env: dict[str, str], cwd: Path) -> dict:
    return json.loads(tessq_cmd("report", "--json", env=env, cwd=cwd, check=True).stdout)


def status_json(env: dict[str, str], cwd: Path) -> dict:
    return json.loads(tessq_cmd("status", "--json", env=env, cwd=cwd, check=True).stdout)


def started_at(out: Path) -> dict[str, float]:
    return {
        str(p.parent.relative_to(out)): json.loads(p.read_text())["started_at"]
        for p in out.rglob("batch_metadata.json")
    }


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tessq-tmp" in p.name or ".tessq-old" in p.name]


def worker_children(parent: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
            kids.append(int(stat.parent.name))
    return kids


def wait_for(predicate, timeout: float = 60, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_run_on_the_seed_tree_reports_exact_counts_and_mirrors_the_tree(tmp_path: Path, backend: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    expected = seed_tree(src)
    proc = tessq_cmd("run", str(src), str(out), MIN, "--workers", "2", "--json", env=backend, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # one corrupt file failed: the distinct status
    summary = report_json(backend, tmp_path)["batch_summary"]
    assert summary["total_images_found"] == expected["found"]
    assert summary["successfully_processed"] == expected["done"]
    assert summary["skipped"] == expected["skipped"]
    assert summary["errors"] == expected["failed"]
    assert summary["folders_skipped"] == expected["folders_skipped"]
    assert summary["images_per_hour"] > 0 and summary["total_processing_time"] > 0
    rep = report_json(backend, tmp_path)
    assert rep["errors"][0]["file"] == "project_beta/corrupt.tif"
    assert "corrupt.tif" in rep["errors"][0]["message"]
    assert rep["skip_reasons"] == {"too_small": 1}
    slices = sorted(p.name for p in (out / "project_alpha/survey_001/aerial_photo_001").glob("slice_*.png"))
    assert len(slices) == 8
    assert (out / "project_alpha/survey_001/aerial_photo_001/metadata.json").is_file()
    assert (out / "dup/a.tif").is_dir() and (out / "dup/a.TIFF").is_dir()  # same stem: distinct folders
    assert (out / "unicode ü dir/photo with space é").is_dir()
    assert not (out / ".git").exists() and not leftovers(out)
    assert json.loads((out / "batch_report.json").read_text())["batch_summary"] == summary
    verify = tessq_cmd("verify", "--json", env=backend, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["identical"] == expected["done"]


def test_rerun_redoes_nothing_and_a_touched_file_alone_is_redone(tmp_path: Path, backend: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    seed_tree(src)
    tessq_cmd("run", str(src), str(out), MIN, "--workers", "2", env=backend, cwd=tmp_path)
    first = started_at(out)
    tessq_cmd("run", str(src), str(out), MIN, "--workers", "2", env=backend, cwd=tmp_path)
    assert started_at(out) == first
    touched = src / "dup/a.tif"
    os.utime(touched, (time.time() + 10, time.time() + 10))
    scan = json.loads(
        tessq_cmd("scan", str(src), "--out", str(out), MIN, "--json", env=backend, cwd=tmp_path, check=True).stdout
    )
    assert scan["requeued"] == 1 and scan["queued"] == 0 and scan["already_done"] == 4
    tessq_cmd("workers", "--workers", "2", "--drain", env=backend, cwd=tmp_path, check=True)
    second = started_at(out)
    changed = {k for k in first if first[k] != second[k]}
    assert changed == {"dup/a.tif"}


def in_process_status(backend: dict, monkeypatch: pytest.MonkeyPatch):
    """Read the live status table from the test process itself (fast polling, same queries as the CLI)."""
    from tessq import pipeline
    from tessq.jobs import status

    for key, value in backend.items():
        if key.startswith("TESSQ_"):
            monkeypatch.setenv(key, value)
    for key in ("TESSQ_DB_URL", "TESSQ_QUEUE_URL"):
        if key not in backend:
            monkeypatch.delenv(key, raising=False)
    pipeline.open_workspace(backend["TESSQ_WORKSPACE"])
    return status.snapshot


def test_sigkill_of_a_worker_mid_image_loses_and_duplicates_nothing(
    tmp_path: Path, backend: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        write_tiff(src / f"big_{i:02d}.tif", 2000, 2000, seed=i)
    tessq_cmd("scan", str(src), "--out", str(out), MIN, env=backend, cwd=tmp_path, check=True)
    snapshot = in_process_status(backend, monkeypatch)
    daemon = tessq_popen("workers", "--workers", "2", "--drain", env=backend, cwd=tmp_path)
    killed, victims = 0, set()
    try:
        while killed < 3 and daemon.poll() is None:
            running = [w for w in snapshot()["workers"] if w["worker"] not in victims]
            if running and running[0]["seconds"] >= 0.05:
                victims.add(running[0]["worker"])
                try:
                    os.kill(int(running[0]["worker"].rpartition(":")[2]), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:  # it finished and was recycled in between
                    pass
                time.sleep(0.5)
            time.sleep(0.02)
        daemon.wait(timeout=240)
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
    assert daemon.returncode == 0, daemon.stdout.read() if daemon.stdout else ""
    assert killed >= 1
    rep = report_json(backend, tmp_path)
    assert rep["batch_summary"]["successfully_processed"] == 12 and rep["batch_summary"]["errors"] == 0
    assert len(list(out.rglob("metadata.json"))) == 12 and not leftovers(out)
    verify = json.loads(tessq_cmd("verify", "--json", env=backend, cwd=tmp_path).stdout)
    assert verify["identical"] == 12


def test_sigterm_stops_gracefully_and_a_restart_finishes_the_rest(tmp_path: Path, sqlite_env: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(16):
        write_tiff(src / f"img_{i:02d}.tif", 900, 900, seed=i)
    tessq_cmd("scan", str(src), "--out", str(out), MIN, env=sqlite_env, cwd=tmp_path, check=True)
    daemon = tessq_popen("workers", "--workers", "2", env=sqlite_env, cwd=tmp_path)
    wait_for(lambda: status_json(sqlite_env, tmp_path)["counts"]["done"] >= 2, timeout=120)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=120) == 0
    snap = status_json(sqlite_env, tmp_path)
    assert snap["counts"]["running"] == 0  # nothing left claimed by a stopped worker
    assert snap["counts"]["done"] + snap["counts"]["queued"] == 16
    tessq_cmd("workers", "--workers", "2", "--drain", env=sqlite_env, cwd=tmp_path, check=True)
    assert report_json(sqlite_env, tmp_path)["batch_summary"]["successfully_processed"] == 16
    assert not leftovers(out)


def test_killing_the_daemon_leaves_no_orphan_workers(tmp_path: Path, sqlite_env: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    many_tiffs(src, 30, 400, 400)
    tessq_cmd("scan", str(src), "--out", str(out), MIN, env=sqlite_env, cwd=tmp_path, check=True)
    daemon = tessq_popen("workers", "--workers", "2", env=sqlite_env, cwd=tmp_path)
    children = wait_for(lambda: len(worker_children(daemon.pid)) >= 3 and worker_children(daemon.pid), timeout=30)
    daemon.kill()  # SIGKILL the parent only
    daemon.wait()
    wait_for(
        lambda: (
            not [
                p
                for p in children
                if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            ]
        ),
        timeout=10,
    )
    tessq_cmd("workers", "--workers", "2", "--drain", env=sqlite_env, cwd=tmp_path, check=True)
    rep = report_json(sqlite_env, tmp_path)
    assert rep["batch_summary"]["successfully_processed"] == 30 and not leftovers(out)


def test_six_workers_and_a_polling_reader_never_hit_database_is_locked(tmp_path: Path, sqlite_env: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    many_tiffs(src, 200)
    tessq_cmd("scan", str(src), "--out", str(out), MIN, env=sqlite_env, cwd=tmp_path, check=True)
    daemon = tessq_popen("workers", "--workers", "6", "--drain", env=sqlite_env, cwd=tmp_path)
    snapshots = []
    while daemon.poll() is None:
        snap = status_json(sqlite_env, tmp_path)
        assert sum(snap["counts"].values()) == 200  # every row is always in exactly one state
        snapshots.append(snap)
    output = daemon.stdout.read() if daemon.stdout else ""
    assert daemon.returncode == 0, output
    assert "database is locked" not in output
    assert "database is locked" not in (out / "batch_processing.log").read_text()
    assert len(snapshots) >= 2
    assert report_json(sqlite_env, tmp_path)["batch_summary"]["successfully_processed"] == 200


@pytest.mark.parametrize("name", ["a" * 240 + ".tif"])
def test_very_long_source_names_stay_inside_the_output(tmp_path: Path, sqlite_env: dict, name: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / name)
    proc = tessq_cmd("run", str(src), str(out), MIN, "--workers", "1", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [meta] = list(out.rglob("metadata.json"))
    assert out in meta.parents and len(meta.parent.name.encode()) <= 200


def test_an_image_over_its_time_limit_fails_as_timed_out_and_the_batch_goes_on(
    tmp_path: Path, sqlite_env: dict
) -> None:
    import numpy as np
    import tifffile

    from tests.conftest import photo

    src, out = tmp_path / "in", tmp_path / "out"
    # 6000 x 6000 RGB as 10 x 10 copies of one photo: the same 0.8 s of cutting on a fast, quiet machine, but
    # written in seconds (a whole 6000 x 6000 photo() takes ~1 GB of float64 temporaries and most of the test)
    src.mkdir(parents=True)
    tifffile.imwrite(src / "huge.tif", np.tile(photo(600, 600), (10, 10, 1)), photometric="rgb", compression="zlib")
    write_tiff(src / "small.tif")  # 0.03 s
    env = {**sqlite_env, "TESSQ_TIME_LIMIT_S": "0.3", "TESSQ_TIME_LIMIT_RATE": "1e12"}
    proc = tessq_cmd("run", str(src), str(out), MIN, "--workers", "1", env=env, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    rep = report_json(env, tmp_path)
    assert rep["batch_summary"]["successfully_processed"] == 1
    assert [(e["file"], e["type"]) for e in rep["errors"]] == [("huge.tif", "timeout")]
    assert "timed out" in rep["errors"][0]["message"] and not (out / "huge").exists() and not leftovers(out)


def _hold_with_dead_worker(image_id: int, attempts: int) -> None:
    """The row as a worker that died mid-image on its `attempts`-th claim leaves it."""
    from tessq.jobs import db

    with db.session():
        db.Image.update(
            status=db.RUNNING,
            worker=f"{db.hostname()}:999999",
            attempts=attempts,  # no such pid
            lease_until=db.server_time() + 3600,
        ).where(db.Image.id == image_id).execute()
    db.database.close()


def _one_scanned_image(tmp_path: Path, env: dict, monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[Path, int]:
    """A tree of one TIFF, scanned and queued; (output folder, its image id)."""
    from tessq.jobs import db

    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / name)
    tessq_cmd("scan", str(src), "--out", str(out), MIN, env=env, cwd=tmp_path, check=True)
    in_process_status(env, monkeypatch)
    with db.session():
        [row] = list(db.Image.select())
    db.database.close()
    return out, row.id


def test_an_image_whose_workers_keep_dying_ends_failed_and_its_leftovers_are_removed(
    tmp_path: Path, sqlite_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq import defaults
    from tessq.jobs import db

    out, image_id = _one_scanned_image(tmp_path, sqlite_env, monkeypatch, "killer.tif")
    with db.session():
        db.Image.update(status=db.DONE).where(db.Image.id == image_id).execute()  # its message is dropped
    db.database.close()
    daemon = tessq_popen("workers", "--workers", "1", env=sqlite_env, cwd=tmp_path)
    leftover = out / ".killer.tessq-tmp.deadbeef"
    try:
        wait_for(lambda: worker_children(daemon.pid), timeout=30)
        time.sleep(0.5)  # past the daemon's start-up recovery: the death below happens while it runs
        _hold_with_dead_worker(image_id, defaults.MAX_LOST_ATTEMPTS)
        leftover.mkdir(parents=True)
        (leftover / "slice_0_0_0_48_32.png").write_bytes(b"half")
        wait_for(lambda: report_json(sqlite_env, tmp_path)["errors"], timeout=60, every=0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    rep = report_json(sqlite_env, tmp_path)
    assert [(e["file"], e["type"]) for e in rep["errors"]] == [("killer.tif", "lost")]
    assert not leftover.exists()


def test_a_run_stopped_from_outside_again_and_again_never_fails_the_image_it_was_cutting(
    tmp_path: Path, sqlite_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq import defaults

    out, image_id = _one_scanned_image(tmp_path, sqlite_env, monkeypatch, "big.tif")
    # as if `tessq workers` (daemon and workers) had been kill -9'ed during this image MAX_LOST_ATTEMPTS times
    _hold_with_dead_worker(image_id, defaults.MAX_LOST_ATTEMPTS)
    tessq_cmd("workers", "--workers", "1", "--drain", env=sqlite_env, cwd=tmp_path, check=True)
    rep = report_json(sqlite_env, tmp_path)
    assert rep["batch_summary"]["successfully_processed"] == 1 and rep["errors"] == []
    assert (out / "big" / "metadata.json").exists()

"""Lost or damaged state files (issue #19 item 3), with real `python -m tessq` processes and real files, judged
from the outside (exit codes, messages, the files in OUT, the SQLite file read directly):

- tessq.db deleted (or truncated) while `tessq run` works: it stops within seconds with a message saying what
  to do, exit 2, a log of bounded size, batch_report.json untouched; the same command then rebuilds the table,
  keeping the folders already complete (adopted) and cutting the rest.
- tessq.db damaged: every command says so in one line (exit 2), no traceback, nothing overwritten.
- queue.db deleted or overwritten with garbage, between scan and workers or mid-run: rebuilt from the status
  table, every image done.
- a report is never written from a database that does not hold the job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tessq_cmd, write_tiff

N_IMAGES = 40


def make_tree(src: Path, n: int = N_IMAGES, side: int = 700) -> None:
    for i in range(n):
        write_tiff(src / f"d{i % 3}/img_{i:03d}.tif", side, side, seed=i)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def count(db_file: Path, status: str = "done", not_hash: str = "") -> int:
    """Rows in `status` (made with options other than `not_hash`)."""
    try:
        con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                con.execute(
                    "SELECT count(*) FROM image WHERE status = ? AND (? = '' OR coalesce(options_hash, '') != ?)",
                    (status, not_hash, not_hash),
                ).fetchone()[0]
            )
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def states(db_file: Path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5)
    try:
        return dict(con.execute("SELECT status, count(*) FROM image GROUP BY status").fetchall())
    finally:
        con.close()


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "tessq", *args],
            env=clean_env(),
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_done(proc: subprocess.Popen[bytes], db_file: Path, n: int, timeout: float = 120, not_hash: str = "") -> None:
    deadline = time.monotonic() + timeout
    while count(db_file, not_hash=not_hash) < n:
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, f"fewer than {n} images done after {timeout} s"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code, or None after killing the process group because it hung."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return None


def test_tessq_db_deleted_mid_run_stops_it_with_the_way_out_and_the_report_is_kept(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src)
    env, db_file = clean_env(), out / ".tessq" / "tessq.db"
    tessq_cmd(
        "run",
        str(src),
        str(out),
        "--min-size",
        "32",
        "--workers",
        "2",
        "-n",
        "4",
        env=env,
        cwd=tmp_path,
        check=True,
        timeout=300,
    )
    report = (out / "batch_report.json").read_bytes()
    assert json.loads(report)["batch_summary"]["successfully_processed"] == N_IMAGES
    con = sqlite3.connect(db_file)
    old_hash = con.execute("SELECT options_hash FROM job").fetchone()[0]
    con.close()
    # the same job with other cut options: every image is cut again, and the table is deleted mid-way
    rerun = ["run", str(src), str(out), "--min-size", "32", "--workers", "2", "-n", "6", "--force-options"]
    proc = start(rerun, tmp_path, tmp_path / "run.log")
    wait_done(proc, db_file, 3, not_hash=old_hash)  # 3 images cut again with the new options
    db_file.unlink()
    deleted = time.monotonic()
    rc = finish(proc, 30)
    took = time.monotonic() - deleted
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert rc == 2, f"exit {rc} {took:.1f} s after the deletion\n{output[-3000:]}"
    assert took < 15, f"took {took:.1f} s to stop"
    assert f"the status table {db_file} was deleted while workers ran" in output
    assert f"tessq run IN {out}" in output
    assert "Traceback" not in output
    assert (out / "batch_processing.log").stat().st_size < 400_000, "the log kept growing"
    assert (out / "batch_report.json").read_bytes() == report, "the report was overwritten"
    assert not db_file.exists(), "a new, empty status table was created in place of the deleted one"
    status = tessq_cmd("status", str(out), "--once", env=env, cwd=tmp_path)
    assert status.returncode == 2 and f"{db_file} is missing" in status.stderr, status.stderr
    assert not db_file.exists()
    # the way out: the same command rebuilds the table, keeps the folders already cut with -n 6, cuts the rest
    again = tessq_cmd(*rerun, env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept" in again.stderr and "already complete" in again.stderr, again.stderr[-2000:]
    assert states(db_file) == {"done": N_IMAGES}
    rep = json.loads((out / "batch_report.json").read_text())
    assert rep["batch_summary"]["successfully_processed"] == N_IMAGES
    for meta in out.rglob("metadata.json"):
        assert json.loads(meta.read_text())["grid"]["pieces"] == 6, meta


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_tessq_db_is_refused_by_every_command_in_one_line_and_rebuilt_from_out(
    tmp_path: Path, damage: str
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src, 4, 64)
    env, db_file = clean_env(), out / ".tessq" / "tessq.db"
    tessq_cmd("run", str(src), str(out), "--min-size", "32", "--workers", "1", env=env, cwd=tmp_path, check=True)
    report = (out / "batch_report.json").read_bytes()
    made = {p: p.stat().st_mtime_ns for p in out.rglob("batch_metadata.json")}
    assert len(made) == 4
    con = sqlite3.connect(db_file)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for suffix in ("-wal", "-shm"):
        db_file.with_name(db_file.name + suffix).unlink(missing_ok=True)
    if damage == "truncated":
        with open(db_file, "r+b") as fh:
            fh.truncate(1000)
    else:
        db_file.write_bytes(os.urandom(3000))
    for args in (
        ["status", str(out), "--once"],
        ["report", str(out)],
        ["workers", str(out), "--drain"],
        ["run", str(src), str(out), "--min-size", "32"],
    ):
        proc = tessq_cmd(*args, env=env, cwd=tmp_path, timeout=60)
        assert proc.returncode == 2, (args, proc.returncode, proc.stdout, proc.stderr)
        assert f"{db_file} is damaged" in proc.stderr and "move it aside" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, args
    assert (out / "batch_report.json").read_bytes() == report
    # the way out the message gives: move it aside, run again; the complete folders are kept, nothing is recut
    db_file.rename(db_file.with_name("tessq.db.damaged"))
    again = tessq_cmd("run", str(src), str(out), "--min-size", "32", "--workers", "1", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert states(db_file) == {"done": 4}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("batch_metadata.json")} == made, "images were cut again"
    assert json.loads((out / "batch_report.json").read_text())["batch_summary"]["successfully_processed"] == 4


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_queue_db_lost_between_scan_and_workers_is_rebuilt_from_the_status_table(tmp_path: Path, damage: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src, 12, 64)
    env, queue_file = clean_env(), out / ".tessq" / "queue.db"
    tessq_cmd("scan", str(src), "--out", str(out), "--min-size", "32", env=env, cwd=tmp_path, check=True)
    assert count(out / ".tessq" / "tessq.db", "queued") == 12
    if damage == "deleted":
        queue_file.unlink()  # its -wal and -shm stay behind, as after a plain `rm queue.db`
    else:
        queue_file.write_bytes(b"this is not a database" * 100)
    proc = tessq_cmd("workers", str(out), "--workers", "2", "--drain", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rebuilt the queue from the status table: 12 image(s)" in proc.stderr, proc.stderr[-2000:]
    assert states(out / ".tessq" / "tessq.db") == {"done": 12}
    if damage == "garbage":
        assert list(queue_file.parent.glob("queue.db.damaged-*")), "the damaged queue was not kept aside"


def test_queue_db_deleted_mid_run_is_rebuilt_and_the_run_finishes_everything(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src)
    db_file = out / ".tessq" / "tessq.db"
    proc = start(["run", str(src), str(out), "--min-size", "32", "--workers", "2"], tmp_path, tmp_path / "run.log")
    wait_done(proc, db_file, 3)
    (out / ".tessq" / "queue.db").unlink()
    rc = finish(proc, 180)
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert rc == 0, output[-3000:]
    assert "rebuilt the queue from the status table" in output
    assert states(db_file) == {"done": N_IMAGES}
    assert json.loads((out / "batch_report.json").read_text())["batch_summary"]["successfully_processed"] == N_IMAGES


def test_no_report_is_written_from_a_database_that_does_not_hold_the_job(tmp_path: Path) -> None:
    from tessq import pipeline
    from tessq.errors import ConfigError
    from tessq.jobs import db

    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src, 2, 64)
    env = clean_env()
    tessq_cmd("run", str(src), str(out), "--min-size", "32", "--workers", "1", env=env, cwd=tmp_path, check=True)
    report = (out / "batch_report.json").read_bytes()
    pipeline.open_workspace(out, create=False, output_dir=out)
    choice = pipeline.select_job(out=out)
    assert choice is not None
    with db.session():  # what a status table deleted and created anew (or another job's) looks like
        db.Job.delete().execute()
    with pytest.raises(ConfigError, match="not writing the report"):
        pipeline.finish_report(choice.job)
    assert (out / "batch_report.json").read_bytes() == report
    proc = tessq_cmd("report", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "no job" in proc.stderr, proc.stderr
    assert (out / "batch_report.json").read_bytes() == report


def test_a_supervisor_error_that_repeats_backs_off_and_then_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    from tessq.errors import TessqError
    from tessq.jobs.daemon import _Trouble

    trouble, now, tries = _Trouble(), 0.0, 0
    caplog.set_level(logging.ERROR, logger="tessq.worker")
    with pytest.raises(TessqError, match="failed 12 times in a row"):
        while True:
            if trouble.ready(now):
                tries += 1
                trouble.failed(RuntimeError("no such thing"), now)
            now += 0.05
    assert tries == _Trouble.GIVE_UP
    assert 30 < now < 300, f"gave up after {now:.1f} s of backoff"
    assert len(caplog.records) <= 4, [r.getMessage() for r in caplog.records]


def test_a_status_table_whose_pages_were_cut_and_grown_back_is_caught_before_a_drain_ends(tmp_path: Path) -> None:
    """A truncation SQLite's checkpoints grew back past the held size passes the size check; the drain's last
    check reads every page and stops with the way out instead of ending the job as if all were done."""
    from tessq.jobs import db

    path = tmp_path / "tessq.db"
    db.open_database(f"sqlite:///{path}")
    db.create_schema()
    with db.session():
        job = db.upsert_job("/in", "/out", {}, "h")
        rows = [
            {"rel_path": f"d/img_{i:04d}.tif", "folder": "d", "out_rel": f"d/img_{i:04d}", "src_size": i}
            | {"src_mtime": 1.0, "status": db.QUEUED, "attempts": 0}
            for i in range(3000)
        ]
        db.record_candidates(job.id, rows, "h")
    db.hold_database()
    try:
        db.check_intact()  # a sound table passes
        db.database.obj.close()
        size = path.stat().st_size
        with open(path, "r+b") as fh:  # zeros where pages were, the file as long as before
            fh.seek(size // 2)
            fh.write(bytes(size - size // 2))
        with pytest.raises(db.StateLostError, match="became unreadable"):
            db.check_intact()
    finally:
        db.release_database()
        db.database.obj.close()

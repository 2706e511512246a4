"""Races and messages (issue #19 item 8): real `python -m tessq` processes, checked from the outside.

Concurrent scans of one tree, settings changed while an image is cut, zip entry names that escape where `\\`
is a separator, a file name that forges a log line, a read-only workspace and an unreachable PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path, PureWindowsPath

import numpy as np
import pytest
import tifffile

from tests.conftest import tessq_cmd, write_tiff

MIN = "--min-size=32"
N_RACE = 200


def db_file(ws: Path) -> Path:
    (path,) = [p for p in ws.rglob("tessq.db") if p.is_file()]
    return path


def query(ws: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db_file(ws)}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def popen(*args: str, env: dict, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tessq", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scans_together(src: Path, out: Path, env: dict, cwd: Path) -> list[tuple[int, str]]:
    procs = [popen("scan", str(src), "--out", str(out), MIN, env=env, cwd=cwd) for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        results.append((proc.returncode, stdout + stderr))
    return results


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_concurrent_scans_of_one_tree_never_crash(tmp_path: Path, db: str, request: pytest.FixtureRequest) -> None:
    """1 in 25 crashed with `UNIQUE constraint failed: image.job_id, image.rel_path`: the existing rows were
    read outside the write transaction. 8 rounds of two scans started together, each on a fresh job
    (the race window itself is held open by the next test)."""
    src = tmp_path / "in"
    one = write_tiff(tmp_path / "one.tif", h=40, w=48, seed=1)
    for i in range(N_RACE):  # hard links: many rows (a wider window for the race), made in a moment
        (src / f"f{i % 4}").mkdir(parents=True, exist_ok=True)
        os.link(one, src / f"f{i % 4}" / f"img_{i:03d}.tif")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    rounds = 8 if db == "sqlite" else 4
    for r in range(rounds):
        ws = tmp_path / f"ws{r}"
        ws.mkdir()
        env["TESSQ_WORKSPACE"] = str(ws)
        if db == "postgres":  # one shared database: a fresh job per round (its rows are new to both scans)
            if r == 0:
                env["TESSQ_DB_URL"] = request.getfixturevalue("postgres_url")
            dest = tmp_path / f"in{r}"
            src.rename(dest)
            src = dest
        for code, output in scans_together(src, tmp_path / f"out{r}", env, tmp_path):
            assert code == 0, f"round {r}: exit {code}\n{output}"
            assert "Traceback" not in output and "IntegrityError" not in output, output
        if db == "sqlite":
            assert query(ws, "SELECT count(*), count(DISTINCT rel_path) FROM image") == [(N_RACE, N_RACE)]
            (queue_db,) = ws.rglob("queue.db")
            con = sqlite3.connect(str(queue_db))
            assert con.execute("SELECT count(*) FROM task").fetchone()[0] == N_RACE  # each image queued once
            con.close()


@pytest.mark.parametrize("db_kind", ["sqlite", "postgres"])
def test_a_scan_waiting_on_another_sees_its_rows(
    tmp_path: Path, db_kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window of the crash, held open on purpose: scan A has inserted its rows and not committed yet when
    scan B starts. B reads the existing rows inside its write transaction, so it waits for A and then sees
    A's rows (nothing inserted twice, nothing queued twice); read before it, B crashed on its insert."""
    import threading

    from tessq.jobs import db

    url = request.getfixturevalue("postgres_url") if db_kind == "postgres" else f"sqlite:///{tmp_path}/t.db"
    db.open_database(url)
    db.create_schema()
    cands = [
        {
            "rel_path": f"img_{i}.tif",
            "folder": "",
            "out_rel": f"img_{i}",
            "src_size": 1,
            "src_mtime": 1.0,
            "status": db.QUEUED,
            "skip_reason": None,
            "error_type": None,
            "error_message": None,
            "width": 64,
            "height": 64,
            "pixel_bytes": 64 * 64,
            "attempts": 0,
        }
        for i in range(50)
    ]
    inserted, b_started = threading.Event(), threading.Event()
    insert = db._insert_images

    def insert_then_hold(rows: list) -> None:
        insert(rows)
        if threading.current_thread().name == "scan-a":  # inserted, not committed: let B start now
            inserted.set()
            b_started.wait(10)
            time.sleep(0.5)

    monkeypatch.setattr(db, "_insert_images", insert_then_hold)
    with db.session():
        job_id = db.upsert_job(str(tmp_path / "in"), str(tmp_path / "out"), {}, "h").id
    db.database.close()
    outcomes: dict[str, object] = {}

    def scan(name: str) -> None:
        try:
            if name == "b":
                inserted.wait(10)
                b_started.set()
            with db.session(), db.scan_transaction():
                outcomes[name] = db.record_candidates(job_id, cands, "h")
        except Exception as exc:
            outcomes[name] = exc
        finally:
            db.database.close()

    threads = [threading.Thread(target=scan, args=(n,), name=f"scan-{n}") for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not isinstance(outcomes["b"], Exception), outcomes["b"]
    assert len(outcomes["a"].new_queued) == 50 and outcomes["b"].new_queued == []  # type: ignore[union-attr]
    with db.session():
        assert db.Image.select().count() == 50
    db.database.close()


def test_settings_changed_while_an_image_is_cut_are_not_reported_done_stale(tmp_path: Path, sqlite_env: dict) -> None:
    """An image running while `scan --num-pieces 4` changed the options finished done with 8 slices and the
    old options hash. Now the worker re-checks the job's settings before its commit (and the finish is fenced
    on them): the image is cut again with the new ones."""
    src, out, ws = tmp_path / "in", tmp_path / "out", Path(sqlite_env["TESSQ_WORKSPACE"])
    src.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(src / "big.tif", rng.integers(0, 255, (5000, 5000, 3), dtype=np.uint8), photometric="rgb")
    tessq_cmd("scan", str(src), "--out", str(out), MIN, "--num-pieces", "8", env=sqlite_env, cwd=tmp_path, check=True)
    workers = popen("workers", "--workers", "1", "--drain", env=sqlite_env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while query(ws, "SELECT status FROM image")[0][0] != "running":
            assert time.monotonic() < deadline and workers.poll() is None
            time.sleep(0.02)
        rescan = tessq_cmd(
            "scan",
            str(src),
            "--out",
            str(out),
            MIN,
            "--num-pieces",
            "4",
            "--json",
            "--force-options",  # on a loaded host the image may finish before this scan starts: redo it then
            env=sqlite_env,
            cwd=tmp_path,
            check=True,
        )
        status_at_rescan = query(ws, "SELECT status FROM image")[0][0]
        stdout, stderr = workers.communicate(timeout=300)
    finally:
        if workers.poll() is None:
            workers.kill()
    assert workers.returncode == 0, stdout + stderr
    if query(ws, "SELECT status FROM image")[0][0] == "queued":
        # on a loaded host the drained daemon had exited before the rescan queued the image again: cut it
        tessq_cmd("workers", "--workers", "1", "--drain", env=sqlite_env, cwd=tmp_path, check=True)
    ((status, n_slices, row_hash, job_hash),) = query(
        ws, "SELECT i.status, i.n_slices, i.options_hash, j.options_hash FROM image i JOIN job j ON j.id = i.job_id"
    )
    assert (status, n_slices) == ("done", 4) and row_hash == job_hash
    meta = json.loads((out / "big" / "metadata.json").read_text())
    assert len(meta["slices"]) == 4 and len(list((out / "big").glob("slice_*"))) == 4
    if status_at_rescan == "running" and json.loads(rescan.stdout)["in_progress_or_failed"] == 1:
        # the rescan met the image running (so it did not queue it again): the worker itself threw away
        # what it had cut with the old settings
        log = next(out.rglob("batch_processing.log")).read_text()
        assert "settings changed while it was" in log


def test_zip_entries_never_escape_where_backslash_is_a_separator(tmp_path: Path, sqlite_env: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a\\..\\..\\..\\pwn" / "img.tif", seed=1)
    write_tiff(src / "ok" / "b\\..\\c.tif", seed=2)
    proc = tessq_cmd("run", str(src), str(out), MIN, "--workers", "1", "--zip", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (archive,) = out.glob("*_results.zip")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
    slices = [n for n in names if "/slice_" in n]
    assert len({n.rsplit("/", 1)[0] for n in slices}) == 2, names
    for name in names:
        assert "\\" not in name and ".." not in PureWindowsPath(name).parts, name
        assert not PureWindowsPath(name).is_absolute() and not PureWindowsPath(name).drive


def test_a_newline_in_a_file_name_cannot_forge_a_log_line(tmp_path: Path, sqlite_env: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    forged = "x\n2026-01-01 00:00:00,000 INFO [1 tessq.worker] done forged.tif (9 slices, 0.01 s)\r"
    write_tiff(src / f"{forged}.tif", seed=1)
    write_tiff(src / "plain.tif", seed=2)
    proc = tessq_cmd("run", str(src), str(out), MIN, "--workers", "1", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out / "batch_processing.log").read_text()
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], log
    assert any("x\\n2026-01-01" in line and "\\r" in line for line in lines)
    assert not [line for line in proc.stderr.splitlines() if line.startswith("2026-01-01")]
    assert {row[0] for row in query(Path(sqlite_env["TESSQ_WORKSPACE"]), "SELECT status FROM image")} == {"done"}
    assert not [p for p in out.rglob("*") if "\n" in p.name or "\r" in p.name]  # folders: no control chars


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "│" not in text, text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_read_only_workspace_is_one_line_with_exit_2(tmp_path: Path, sqlite_env: dict) -> None:
    src, ws = tmp_path / "in", tmp_path / "ro"
    write_tiff(src / "a.tif", seed=1)
    ws.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(ws)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): no read-only file system to test on")
    try:
        env = dict(sqlite_env, TESSQ_WORKSPACE=str(ws))
        tessq_cmd("scan", str(src), "--out", str(tmp_path / "out"), MIN, env=env, cwd=tmp_path, check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(ws)], check=True)
        for args in (
            ("scan", str(src), "--out", str(tmp_path / "out"), MIN),
            ("workers", "--workers", "1", "--drain"),
            ("retry",),
        ):
            one_line_error(tessq_cmd(*args, env=env, cwd=tmp_path, timeout=60), "cannot be written", str(ws))
        for args in (("report", "--json"), ("status", "--json")):  # reading a read-only workspace works
            proc = tessq_cmd(*args, env=env, cwd=tmp_path, timeout=60)
            assert proc.returncode == 0 and json.loads(proc.stdout), proc.stdout + proc.stderr
        fresh = dict(sqlite_env, TESSQ_WORKSPACE=str(ws / "new"))  # a workspace that cannot even be created
        one_line_error(
            tessq_cmd("scan", str(src), "--out", str(tmp_path / "out2"), MIN, env=fresh, cwd=tmp_path, timeout=60),
            "cannot be written",
        )
    finally:
        subprocess.run(["umount", "-l", str(ws)], capture_output=True)


def test_unreachable_postgres_is_one_line_with_exit_2(tmp_path: Path, sqlite_env: dict) -> None:
    src = tmp_path / "in"
    write_tiff(src / "a.tif", seed=1)
    env = dict(sqlite_env, TESSQ_DB_URL="postgresql://tessq:s3cretpw@127.0.0.1:1/tessq")
    for args in (("scan", str(src), "--out", str(tmp_path / "out"), MIN), ("report",), ("status",)):
        proc = tessq_cmd(*args, env=env, cwd=tmp_path, timeout=60)
        one_line_error(proc, "cannot reach the status database", "127.0.0.1:1", "TESSQ_DB_URL")
        assert "s3cretpw" not in proc.stderr

"""Say what was skipped and what is left (issue #15, item 5): scan --json, the report and the log name every
skipped file and folder with its reason; tessq's own output folders inside IN are not input; plain
`tessq report` names what is still queued/running; `tessq status` shows an ETA only while workers are alive
and does not show a dead local worker as running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import seed_tree, tessq_cmd, write_tiff

SEED_SKIPPED = [
    {"path": ".git", "kind": "folder", "reason": "hidden"},
    {"path": "project_beta/crops", "kind": "folder", "reason": "no_tiff"},
    {"path": "project_beta/small.tif", "kind": "file", "reason": "too_small"},
]


def scan_json(src: Path, out: Path, env: dict[str, str], cwd: Path, *extra: str) -> dict:
    proc = tessq_cmd(
        "scan", str(src), "--out", str(out), "--min-size=32", "--json", *extra, env=env, cwd=cwd, check=True
    )
    return json.loads(proc.stdout)


def test_scan_json_report_and_log_name_every_skipped_file_and_folder(
    tmp_path: Path, sqlite_env: dict[str, str]
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    seed_tree(src)
    summary = scan_json(src, out, sqlite_env, tmp_path)
    assert summary["skipped_entries"] == SEED_SKIPPED
    assert summary["skipped"] == {"too_small": 1} and summary["folders_skipped"] == {"no_tiff": 1}  # counts kept
    report = json.loads(tessq_cmd("report", "--json", env=sqlite_env, cwd=tmp_path, check=True).stdout)
    assert report["skipped"] == SEED_SKIPPED
    assert report["batch_summary"]["folders_skipped"] == 1 and report["folders_skipped_by_reason"] == {"no_tiff": 1}
    log = (out / "batch_processing.log").read_text()
    for entry in SEED_SKIPPED:
        assert f"skipped {entry['kind']} {entry['path']}: {entry['reason']}" in log
    assert "unreadable project_beta/corrupt.tif" in log
    plain = tessq_cmd("scan", str(src), "--out", str(out), "--min-size=32", env=sqlite_env, cwd=tmp_path, check=True)
    assert "skipped file project_beta/small.tif: too_small" in plain.stderr


def test_tessq_output_folders_inside_the_input_are_skipped_not_scanned(
    tmp_path: Path, sqlite_env: dict[str, str]
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif", 64, 96, seed=1)
    write_tiff(src / "sub/b.tif", 64, 96, seed=2)
    tessq_cmd(
        "run",
        str(src),
        str(out),
        "--min-size=32",
        "--workers=1",
        "--format=tiff",
        env=sqlite_env,
        cwd=tmp_path,
        check=True,
    )
    shutil.copytree(out, src / "previous_run")  # someone left an output (TIFF slices!) inside the input tree
    summary = scan_json(src, out, sqlite_env, tmp_path, "--format=tiff")
    assert summary["found"] == 2 and summary["already_done"] == 2 and summary["queued"] == 0
    assert summary["skipped_entries"] == [
        {"path": "previous_run/a", "kind": "folder", "reason": "tessq_output"},
        {"path": "previous_run/sub/b", "kind": "folder", "reason": "tessq_output"},
    ]
    assert summary["folders_skipped"] == {}


def test_symlinks_not_followed_are_listed(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(tmp_path / "elsewhere/real.tif", 64, 96, seed=1)
    write_tiff(src / "a.tif", 64, 96, seed=2)
    os.symlink(tmp_path / "elsewhere/real.tif", src / "link.tif")
    os.symlink(tmp_path / "elsewhere", src / "linked_dir")
    summary = scan_json(src, out, sqlite_env, tmp_path)
    assert summary["found"] == 1
    assert {"path": "link.tif", "kind": "file", "reason": "symlink"} in summary["skipped_entries"]
    assert {"path": "linked_dir", "kind": "folder", "reason": "symlink"} in summary["skipped_entries"]


def test_plain_report_shows_what_is_still_queued(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif", 64, 96, seed=1)
    write_tiff(src / "b.tif", 64, 96, seed=2)
    scan_json(src, out, sqlite_env, tmp_path)
    proc = tessq_cmd("report", env=sqlite_env, cwd=tmp_path, check=True)
    assert "still to do: 2 queued, 0 running" in proc.stdout
    assert "queued: a.tif" in proc.stdout and "queued: b.tif" in proc.stdout
    report = json.loads(tessq_cmd("report", "--json", env=sqlite_env, cwd=tmp_path, check=True).stdout)
    assert [u["file"] for u in report["unfinished"]] == ["a.tif", "b.tif"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_shows_an_eta_only_while_workers_are_alive(
    tmp_path: Path, sqlite_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        write_tiff(src / f"img_{i}.tif", 64, 96, seed=i)
    tessq_cmd("run", str(src), str(out), "--min-size=32", "--workers=1", env=sqlite_env, cwd=tmp_path, check=True)

    from tessq import pipeline
    from tessq.jobs import db

    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)
    pipeline.open_workspace(sqlite_env["TESSQ_WORKSPACE"])

    def hold(worker: str) -> dict:
        """img_0 running under `worker` (lease still valid), img_1 queued; then `tessq status --json`."""
        with db.session():
            db.Image.update(status=db.RUNNING, worker=worker, lease_until=db.server_time() + 600).where(
                db.Image.rel_path == "img_0.tif"
            ).execute()
            db.Image.update(status=db.QUEUED).where(db.Image.rel_path == "img_1.tif").execute()
        return json.loads(tessq_cmd("status", "--json", env=sqlite_env, cwd=tmp_path, check=True).stdout)

    alive = hold(f"{db.hostname()}:{os.getpid()}")  # this test process: alive
    assert [w["image"] for w in alive["workers"]] == ["img_0.tif"] and alive["counts"]["running"] == 1
    assert alive["eta_s"] is not None and alive["stalled"] == []

    dead = hold(f"{db.hostname()}:{_dead_pid()}")
    assert dead["workers"] == [] and dead["counts"]["running"] == 0
    assert [w["image"] for w in dead["stalled"]] == ["img_0.tif"]
    assert dead["eta_s"] is None and dead["progress"]["remaining"] == 2
    plain = tessq_cmd("status", "--once", env=sqlite_env, cwd=tmp_path, check=True).stdout
    assert "ETA -" in plain and "held by workers that are gone" in plain


def test_an_image_too_small_for_its_grid_is_skipped_at_scan(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    """A 2x4 grid needs at least 4x2 px: a 3 px wide image is refused by the scan, with the worker's own reason,
    instead of being queued and then failing in the worker."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "narrow.tif", 40, 3, seed=1)
    write_tiff(src / "wide.tif", 40, 64, seed=2)
    proc = tessq_cmd(
        "run", str(src), str(out), "--min-size=1", "--grid=2x4", "--workers=1", env=sqlite_env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped file narrow.tif: too_small" in proc.stderr
    report = json.loads(tessq_cmd("report", "--json", env=sqlite_env, cwd=tmp_path, check=True).stdout)
    assert report["skipped"] == [{"path": "narrow.tif", "kind": "file", "reason": "too_small"}]
    assert report["batch_summary"]["errors"] == 0 and report["batch_summary"]["successfully_processed"] == 1
    assert not (out / "narrow").exists() and (out / "wide" / "metadata.json").is_file()

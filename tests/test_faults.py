"""Fault tolerance, the fast subset of scripts/chaos.py: kill -9, SIGTERM, hostile inputs, disk full, vanished
sources and escaping names, each judged by the harness's independent checker (slices + sqlite3 + report).
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tessq_chaos", ROOT / "scripts" / "chaos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["tessq_chaos"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()


def good_tree(src: Path, sizes: list[tuple[int, int]], seed: int = 0) -> chaos.Tree:
    tree = chaos.Tree(src)
    for i, (h, w) in enumerate(sizes):
        rel = f"d{i % 2}/img_{i:02d}.tif"
        chaos.write_good(src / rel, h, w, seed=seed + i)
        tree.good.add(rel)
    return tree


def assert_clean(findings: chaos.Findings) -> None:
    assert findings.clean, "\n".join(findings.details)


def test_worker_killed_mid_image_gets_its_image_redone_once_with_no_partial_folder(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    tree = good_tree(src, [(1400, 1400)] * 5 + [(200, 300)] * 3)
    tq = chaos.Tessq(tmp_path)
    chaos.scan(tq, src, out)
    watch = chaos.PartialWatch(out, every=0.05)
    daemon = tq.popen("workers", "--workers", "2", "--drain")
    rng = random.Random(5)
    kills = []
    try:
        for _ in range(2):
            kills.append(chaos.wait_until(lambda: chaos.kill_running_worker(tq, rng, 0.01), 60, 0.01))
            time.sleep(0.3)
        assert daemon.wait(timeout=120) == 0
    finally:
        chaos.killpg(daemon)
    assert all(kills), "no running image to kill"
    attempts = {r["id"]: r["attempts"] for r in tq.rows()}
    assert any(attempts[image_id] > attempt for _, image_id, attempt in kills), "no kill landed mid-image"
    assert_clean(chaos.check(tq, tree, out, seen_partial=watch.stop()))


def test_sigterm_of_run_exits_130_and_the_same_command_finishes_everything_exactly_once(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    tree = good_tree(src, [(1600, 1600)] * 24)  # long enough (~1.5 s) to stop it midway
    (src / "bad").mkdir()
    for name in ("zero_bytes.tif", "png_named.tif"):
        (src / "bad" / name).write_bytes(chaos.bad_files()[name][0])
        tree.bad[f"bad/{name}"] = "fail"
    tq = chaos.Tessq(tmp_path)
    cmd = ("run", str(src), str(out), chaos.MIN_ARG, "--workers", "2")
    proc = tq.popen(*cmd)
    try:
        assert chaos.wait_until(lambda: tq.counts()["done"] >= 2, 60, 0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        chaos.killpg(proc)
    assert tq.counts()["running"] == 0  # graceful: nothing left claimed by a stopped worker
    assert tq.counts()["queued"] > 0  # it really stopped before the end
    again = tq.run(*cmd, timeout=180)
    assert again.returncode == 3, again.stdout + again.stderr  # the two hostile files
    assert_clean(chaos.check(tq, tree, out))


def test_hostile_inputs_each_fail_with_an_error_naming_the_file_and_the_batch_continues(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    tree = good_tree(src, [(300, 260), (64, 64), (500, 90)])
    for name, (data, expect) in chaos.bad_files().items():
        (src / "bad").mkdir(exist_ok=True)
        (src / "bad" / name).write_bytes(data)
        tree.bad[f"bad/{name}"] = expect
    (src / "bad/deflate_bomb.tif").write_bytes(chaos.deflate_bomb(6000))
    tree.bad["bad/deflate_bomb.tif"] = "fail_or_exact"
    tq = chaos.Tessq(tmp_path)
    proc = tq.run("run", str(src), str(out), chaos.MIN_ARG, "--workers", "2", timeout=180)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert_clean(chaos.check(tq, tree, out))
    errors = {e["file"]: e for e in tq.report()["errors"]}
    for rel, expect in tree.bad.items():
        if expect == "fail":
            assert Path(rel).name in errors[rel]["message"], errors.get(rel)


def test_disk_full_is_retried_after_space_is_freed_and_never_reported_done_corrupt(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    why = chaos.mount_tmpfs(out, "1m")
    if why:
        pytest.skip(why)
    try:
        tree = good_tree(src, [(420 + 9 * i, 400) for i in range(8)], seed=300)
        tq = chaos.Tessq(tmp_path)
        chaos.scan(tq, src, out)
        daemon = tq.popen("workers", "--workers", "2", "--drain")
        full = chaos.wait_until(
            lambda: tq.query("SELECT id FROM image WHERE error_message LIKE '%disk full%' AND status = 'queued'"),
            60,
            0.05,
        )
        assert full, "the 1 MB output never filled up"
        assert tq.counts()["done"] < len(tree.good)
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        assert daemon.wait(timeout=120) == 0
        assert_clean(chaos.check(tq, tree, out))
        assert tq.query("SELECT max(attempts) AS n FROM image")[0]["n"] >= 2
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def test_source_deleted_between_scan_and_processing_fails_by_name_and_drops_out_after_a_rescan(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    tree = good_tree(src, [(120, 140)] * 4)
    gone = sorted(tree.good)[1]
    tq = chaos.Tessq(tmp_path)
    chaos.scan(tq, src, out)
    (src / gone).unlink()
    assert chaos.drain(tq, 2, 120) == 0
    row = next(r for r in tq.rows() if r["rel_path"] == gone)
    assert row["status"] == "failed" and Path(gone).name in row["error_message"], row
    proc = tq.run("run", str(src), str(out), chaos.MIN_ARG, "--workers", "2", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the vanished file no longer counts as an error
    assert_clean(chaos.check(tq, tree, out, chaos.Expect(gone={gone})))


def test_source_names_and_table_rows_that_would_escape_out_never_write_outside_it(tmp_path: Path) -> None:
    findings, *_ = chaos.escaping_names_run(tmp_path)
    assert_clean(findings)


def test_a_file_name_that_is_not_utf8_does_not_crash_the_scan(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    good_tree(src, [(64, 64)])
    tq = chaos.Tessq(tmp_path)
    assert chaos.non_utf8_name_scan(tq, src, out) is None


def test_a_source_unreadable_at_scan_is_recorded_failed_with_the_reason(tmp_path: Path) -> None:
    if subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs user namespaces (unshare -U): root ignores permission bits")
    src, out = tmp_path / "in", tmp_path / "out"
    good_tree(src, [(64, 64), (64, 64)])
    locked = src / "d1/img_01.tif"
    locked.chmod(0)
    tq = chaos.Tessq(tmp_path, prefix=["unshare", "-U"])
    try:
        chaos.scan(tq, src, out)
        row = next((r for r in tq.rows() if r["rel_path"] == "d1/img_01.tif"), None)
        assert row is not None, "the unreadable file is missing from the status table"
        assert row["status"] == "failed" and "ermission" in row["error_message"]
    finally:
        os.chmod(locked, 0o644)

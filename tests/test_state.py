"""Where a job's state lives (OUT/.tessq) and how every command finds it: issue #15 items 1, 2, 4, 7.

Everything runs through the real CLI (`python -m tessq` subprocesses, real SQLite files, real workers) or the
real Python API, with no TESSQ_WORKSPACE: the state must be found from OUT, or from a folder inside it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tessq import BatchJob, BatchTesselator
from tessq.errors import ConfigError
from tessq.jobs.report import batch_summary, busy_seconds
from tests.conftest import tessq_cmd, write_tiff


@pytest.fixture
def env() -> dict[str, str]:
    """No TESSQ_* at all: the embedded default, the state found by the rule alone."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}


@pytest.fixture(autouse=True)
def clean_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)


def tree(root: Path, n: int, seed: int = 0) -> Path:
    for i in range(n):
        write_tiff(root / f"sub_{i % 2}/img_{i}.tif", 40, 48, seed=seed + i)
    return root


def folders(tmp_path: Path, *names: str) -> list[Path]:
    made = []
    for name in names:
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        made.append(tmp_path / name)
    return made


def cut_times(out: Path) -> dict[str, float]:
    return {
        str(p.parent.relative_to(out)): json.loads(p.read_text())["started_at"]
        for p in out.rglob("batch_metadata.json")
    }


def run_json(*args: str, env: dict[str, str], cwd: Path, code: int = 0) -> dict:
    proc = tessq_cmd(*args, "--json", env=env, cwd=cwd)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------ item 1: state lives with the output


def test_run_resumes_from_another_folder_and_every_command_finds_the_job_from_out(
    tmp_path: Path, env: dict[str, str]
) -> None:
    src, out = tree(tmp_path / "in", 3), tmp_path / "out"
    here, elsewhere = folders(tmp_path, "terminal_1", "home/other")
    first = run_json("run", str(src), str(out), "--min-size=32", "--workers=2", env=env, cwd=here)
    assert first["batch_summary"]["successfully_processed"] == 3
    assert (out / ".tessq/tessq.db").is_file() and (out / ".tessq/queue.db").is_file()
    assert not (here / ".tessq").exists(), "the state lives with the output, not in the current folder"
    before = cut_times(out)

    # a new terminal in another folder: the same command resumes, cutting nothing again
    again = tessq_cmd("run", str(src), str(out), "--min-size=32", "--workers=2", env=env, cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert "already done, unchanged" in again.stdout and cut_times(out) == before
    assert not (elsewhere / ".tessq").exists()

    # the reading commands: given OUT, or run from inside OUT (any subfolder), as git finds .git
    status = run_json("status", str(out), env=env, cwd=elsewhere)
    assert status["counts"]["done"] == 3
    inside = out / "sub_0"
    assert run_json("report", env=env, cwd=inside)["batch_summary"]["successfully_processed"] == 3
    assert run_json("verify", env=env, cwd=out)["identical"] == 3
    assert tessq_cmd("retry", str(out), env=env, cwd=elsewhere).stdout.startswith("re-queued 0")
    zipped = tessq_cmd("export", "--zip", "--out", str(out), env=env, cwd=elsewhere)
    assert zipped.returncode == 0, zipped.stderr
    workers = tessq_cmd("workers", str(out), "--workers", "1", "--drain", env=env, cwd=elsewhere, timeout=60)
    assert workers.returncode == 0 and "drained" in workers.stdout, workers.stderr


def test_the_python_api_resumes_from_another_folder_without_a_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tree(tmp_path / "in", 2), tmp_path / "out"
    a, b = folders(tmp_path, "nb_a", "nb_b")
    job = BatchJob(input_dir=src, output_dir=out, min_image_size=32, max_workers=1)
    monkeypatch.chdir(a)
    assert BatchTesselator(job).run_batch()["batch_summary"]["successfully_processed"] == 2
    before = cut_times(out)
    monkeypatch.chdir(b)
    again = BatchTesselator(job)
    assert again.scan()["already_done"] == 2
    again.process(poll_s=0.2)
    assert cut_times(out) == before
    assert not (a / ".tessq").exists() and not (b / ".tessq").exists()


def test_no_job_here_stops_at_once_says_what_to_pass_and_creates_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    (empty,) = folders(tmp_path, "nothing_here")
    for command in (
        ["status"],
        ["report"],
        ["verify"],
        ["retry"],
        ["export", "--zip"],
        ["workers", "--drain"],
        ["upload", "s3://bucket/x"],
    ):
        started = time.monotonic()
        proc = tessq_cmd(*command, env=env, cwd=empty, timeout=60)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "no tessq job found here" in proc.stderr and "pass the output folder" in proc.stderr, proc.stderr
        assert f"tessq {command[0]} OUT" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert time.monotonic() - started < 30, f"{command} must not wait"
    missing = tessq_cmd("status", str(tmp_path / "no_such_out"), env=env, cwd=empty)
    assert missing.returncode == 2 and "no tessq job in" in missing.stderr
    assert listing(tmp_path) == ["nothing_here"], "a refused command creates no workspace"


def test_an_old_layout_workspace_in_the_current_folder_keeps_working_with_a_message(
    tmp_path: Path, env: dict[str, str]
) -> None:
    src, out = tree(tmp_path / "in", 2), tmp_path / "out"
    (old,) = folders(tmp_path, "project")
    made_the_old_way = tessq_cmd(
        "-w", str(old), "run", str(src), str(out), "--min-size=32", "--workers=1", env=env, cwd=old
    )
    assert made_the_old_way.returncode == 0 and (old / ".tessq/tessq.db").is_file()
    assert not (out / ".tessq").exists()
    before = cut_times(out)

    again = tessq_cmd("run", str(src), str(out), "--min-size=32", "--workers=1", env=env, cwd=old)
    assert again.returncode == 0, again.stderr
    assert "old-layout workspace" in again.stderr and f"mv {old / '.tessq'} {out / '.tessq'}" in again.stderr
    assert cut_times(out) == before and not (out / ".tessq").exists(), "used in place, not duplicated"

    # migrated the way the message says: then found from OUT, from any folder
    (old / ".tessq").rename(out / ".tessq")
    report = run_json("report", str(out), env=env, cwd=tmp_path)
    assert report["batch_summary"]["successfully_processed"] == 2


# ------------------------------------------------------------------ item 2: one job, one report


def test_two_jobs_started_from_one_folder_keep_separate_state_reports_and_exports(
    tmp_path: Path, env: dict[str, str]
) -> None:
    in1, in2 = tree(tmp_path / "in1", 3, seed=0), tree(tmp_path / "in2", 2, seed=10)
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    (cwd,) = folders(tmp_path, "work")
    r1 = run_json("run", str(in1), str(out1), "--min-size=32", "--workers=1", env=env, cwd=cwd)
    r2 = run_json("run", str(in2), str(out2), "--min-size=32", "--workers=1", env=env, cwd=cwd)
    assert r1["batch_summary"]["total_images_found"] == 3 and r2["batch_summary"]["total_images_found"] == 2
    on_disk1 = json.loads((out1 / "batch_report.json").read_text())
    on_disk2 = json.loads((out2 / "batch_report.json").read_text())
    assert on_disk1["batch_summary"]["successfully_processed"] == 3, "job 2 must not overwrite job 1's report"
    assert on_disk2["batch_summary"]["successfully_processed"] == 2
    assert on_disk1["job"]["output_dir"] == str(out1) and on_disk2["job"]["output_dir"] == str(out2)

    rep1 = run_json("report", str(out1), env=env, cwd=cwd)
    assert rep1["batch_summary"]["total_images_found"] == 3 and rep1["jobs_in_database"] == 1
    assert run_json("verify", str(out2), env=env, cwd=cwd)["checked"] == 2
    zipped = tessq_cmd("export", "--zip", "--out", str(out1), env=env, cwd=cwd)
    assert zipped.returncode == 0, zipped.stderr
    import zipfile

    names = zipfile.ZipFile(out1 / "out1_results.zip").namelist()
    assert sum(n.endswith("metadata.json") and "batch_" not in n for n in names) == 3
    assert not any(".tessq" in n for n in names), "the state folder is never shipped"


def test_several_jobs_in_one_postgresql_are_told_apart(tmp_path: Path, env: dict[str, str], postgres_url: str) -> None:
    env = dict(env, TESSQ_DB_URL=postgres_url)
    in1, in2 = tree(tmp_path / "in1", 3, seed=0), tree(tmp_path / "in2", 2, seed=10)
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    (cwd,) = folders(tmp_path, "anywhere")
    r1 = run_json("run", str(in1), str(out1), "--min-size=32", "--workers=1", env=env, cwd=cwd)
    r2 = run_json("run", str(in2), str(out2), "--min-size=32", "--workers=1", env=env, cwd=cwd)
    assert r1["batch_summary"]["successfully_processed"] == 3
    assert r2["batch_summary"]["successfully_processed"] == 2
    assert json.loads((out1 / "batch_report.json").read_text())["batch_summary"]["total_images_found"] == 3
    assert not (cwd / ".tessq").exists() and not (out1 / ".tessq").exists(), "PostgreSQL holds the state"

    by_out = run_json("report", str(out1), env=env, cwd=cwd)
    assert by_out["batch_summary"]["total_images_found"] == 3 and by_out["jobs_in_database"] == 2
    assert by_out["errors"] == [] and list(by_out["per_folder"]) == ["sub_0", "sub_1"]
    inside = run_json("status", env=env, cwd=out2 / "sub_0")
    assert inside["counts"]["done"] == 2, "inside OUT picks OUT's job"

    proc = tessq_cmd("report", "--json", env=env, cwd=cwd)
    assert proc.returncode == 0
    assert "2 jobs share" in proc.stderr and "--job" in proc.stderr, proc.stderr
    job1 = by_out["job"]["id"]
    picked = run_json("report", "--job", str(job1), env=env, cwd=cwd)
    assert picked["job"]["output_dir"] == str(out1) and picked["batch_summary"]["successfully_processed"] == 3
    assert run_json("verify", "--job", str(job1), env=env, cwd=cwd)["checked"] == 3
    bad = tessq_cmd("report", "--job", "999", env=env, cwd=cwd)
    assert bad.returncode == 2 and "no job 999" in bad.stderr


def test_time_figures_leave_out_the_idle_gap_between_runs(tmp_path: Path, env: dict[str, str]) -> None:
    src, out = tree(tmp_path / "in", 2), tmp_path / "out"
    run_json("run", str(src), str(out), "--min-size=32", "--workers=1", env=env, cwd=tmp_path)
    time.sleep(3.0)  # the machine sits idle, then one more image arrives and the run is resumed
    write_tiff(src / "late.tif", 40, 48, seed=99)
    rep = run_json("run", str(src), str(out), "--min-size=32", "--workers=1", env=env, cwd=tmp_path)
    summary, throughput = rep["batch_summary"], rep["throughput"]
    assert summary["successfully_processed"] == 3
    assert throughput["calendar_s"] >= 3.0
    assert summary["total_processing_time"] < throughput["calendar_s"] - 2.5, throughput
    assert throughput["idle_s"] >= 2.5
    assert summary["images_per_hour"] == pytest.approx(3 / summary["total_processing_time"] * 3600, rel=0.01)
    live = run_json("status", str(out), env=env, cwd=tmp_path)["throughput"]["images_per_hour"]
    assert live > 3 / throughput["calendar_s"] * 3600 * 1.5, "the live rate leaves the idle gap out too"


def test_busy_seconds_is_the_union_of_image_intervals() -> None:
    assert busy_seconds([]) == 0.0
    assert busy_seconds([(0, 10), (5, 12), (100, 101)]) == pytest.approx(13.0)  # overlap merged, gap left out
    assert busy_seconds([(3, 4), (0, 1), (0.5, 2)]) == pytest.approx(3.0)
    summary = batch_summary({"done": 10}, 0, 0.0, 3700.0, 50.0, 10, active_s=100.0)
    assert summary["total_processing_time"] == 100.0 and summary["images_per_hour"] == 360.0


# ------------------------------------------------------------------ item 4: never throw finished work away silently


def test_changed_cut_options_are_refused_with_the_count_then_accepted_with_the_flag(
    tmp_path: Path, env: dict[str, str]
) -> None:
    src, out = tree(tmp_path / "in", 3), tmp_path / "out"
    run_json("run", str(src), str(out), "--min-size=32", "--workers=1", "-n", "8", env=env, cwd=tmp_path)
    before = cut_times(out)
    log_before = (out / "batch_processing.log").read_bytes()

    for command in (["run", str(src), str(out)], ["scan", str(src), "--out", str(out)]):
        refused = tessq_cmd(*command, "--min-size=32", "-n", "4", env=env, cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "3 finished image(s)" in refused.stderr and "--force-options" in refused.stderr
        assert "num_pieces: 8 -> 4" in refused.stderr
    assert cut_times(out) == before and (out / "batch_processing.log").read_bytes() == log_before
    assert len(list((out / "sub_0/img_0").glob("slice_*"))) == 8

    same_options = tessq_cmd("run", str(src), str(out), "--min-size=32", "-n", "8", env=env, cwd=tmp_path)
    assert same_options.returncode == 0, "the job's own options (or only min-size changes) pass"

    forced = run_json(
        "run", str(src), str(out), "--min-size=32", "--workers=1", "-n", "4", "--force-options", env=env, cwd=tmp_path
    )
    assert forced["batch_summary"]["successfully_processed"] == 3
    assert len(list((out / "sub_0/img_0").glob("slice_*"))) == 4
    assert all(cut_times(out)[k] > before[k] for k in before)


def test_the_api_refuses_changed_options_unless_force_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, out = tree(tmp_path / "in", 1), tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    BatchTesselator(BatchJob(input_dir=src, output_dir=out, min_image_size=32, max_workers=1)).run_batch()
    with pytest.raises(ConfigError, match=r"1 finished image\(s\).*force_options=True"):
        BatchTesselator(BatchJob(input_dir=src, output_dir=out, min_image_size=32, num_pieces=2))
    forced = BatchTesselator(
        BatchJob(input_dir=src, output_dir=out, min_image_size=32, num_pieces=2, max_workers=1, force_options=True)
    )
    assert forced.scan()["requeued"] == 1


def test_refused_runs_write_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    src = tree(tmp_path / "in", 1)
    before = listing(tmp_path)
    same = tessq_cmd("run", str(src), str(src), env=env, cwd=tmp_path)
    assert same.returncode == 2 and "must differ" in same.stderr
    missing = tessq_cmd("run", str(tmp_path / "nonexistent"), "o1", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    scan_missing = tessq_cmd("scan", str(tmp_path / "nonexistent"), "--out", "o2", env=env, cwd=tmp_path)
    assert scan_missing.returncode == 2
    (tmp_path / "a_file").write_text("x")
    before = listing(tmp_path)
    onto_file = tessq_cmd("run", str(src), str(tmp_path / "a_file"), env=env, cwd=tmp_path)
    assert onto_file.returncode == 2 and "not a folder" in onto_file.stderr
    assert listing(tmp_path) == before, "no log, no output folder, no workspace"
    for proc in (same, missing, scan_missing, onto_file):
        assert "Traceback" not in proc.stderr


def test_one_output_folder_belongs_to_one_input(tmp_path: Path, env: dict[str, str]) -> None:
    in1, in2, out = tree(tmp_path / "in1", 1), tree(tmp_path / "in2", 1, seed=5), tmp_path / "out"
    run_json("run", str(in1), str(out), "--min-size=32", "--workers=1", env=env, cwd=tmp_path)
    other = tessq_cmd("run", str(in2), str(out), "--min-size=32", env=env, cwd=tmp_path)
    assert other.returncode == 2 and "already holds the output of another input" in other.stderr


# ------------------------------------------------------------------ item 7: consistent options


def test_global_options_work_after_the_command_and_workers_takes_runs_worker_flag(
    tmp_path: Path, env: dict[str, str]
) -> None:
    src, out = tree(tmp_path / "in", 2), tmp_path / "out"
    scanned = tessq_cmd(
        "scan", str(src), "--out", str(out), "-n", "2", "--min-size=32", "--log-level", "WARNING", env=env, cwd=tmp_path
    )
    assert scanned.returncode == 0, scanned.stderr
    drained = tessq_cmd("workers", "--max-workers", "1", "--drain", "-w", str(out), env=env, cwd=tmp_path, timeout=90)
    assert drained.returncode == 0 and "drained" in drained.stdout, drained.stderr
    status = tessq_cmd("status", "--json", "-w", str(out), env=env, cwd=tmp_path)
    assert status.returncode == 0 and json.loads(status.stdout)["counts"]["done"] == 2
    legacy = tessq_cmd("workers", str(out), "-n", "1", "--drain", env=env, cwd=tmp_path, timeout=90)
    assert legacy.returncode == 0 and "deprecated" in legacy.stderr and "--workers N" in legacy.stderr
    helps = {c: tessq_cmd(c, "--help", env=env, cwd=tmp_path).stdout for c in ("scan", "run", "workers")}
    assert "--num-pieces" in helps["scan"] and "--num-pieces" in helps["run"] and "-n" not in helps["workers"]
    assert "--workers" in helps["workers"] and "--max-workers" in helps["workers"]
    assert "--workspace" in helps["workers"]


def test_bad_settings_print_one_line_not_a_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    src = tree(tmp_path / "in", 1)
    cases = [
        (dict(env, TESSQ_DB_URL="nosuchdb://x/y"), ["report"]),
        (env, ["-w", str(src / "sub_0/img_0.tif"), "report"]),
        (env, ["scan", str(src), "--grid", "0x3"]),
    ]
    for case_env, args in cases:
        proc = tessq_cmd(*args, env=case_env, cwd=tmp_path)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr and "error" in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


def test_the_state_folder_is_never_scanned_as_input(tmp_path: Path, env: dict[str, str]) -> None:
    """OUT inside IN: the output (and its .tessq/) is excluded from the scan of IN."""
    src = tree(tmp_path / "in", 2)
    out = src / "tiles"
    run_json("run", str(src), str(out), "--min-size=32", "--workers=1", env=env, cwd=tmp_path)
    again = run_json("scan", str(src), "--out", str(out), "--min-size=32", env=env, cwd=tmp_path)
    assert again["found"] == 2 and again["already_done"] == 2
    con = sqlite3.connect(out / ".tessq/tessq.db")
    assert con.execute("select count(*) from image where rel_path like '%tessq%'").fetchone()[0] == 0


# ------------------------------------------------------------------ the lookup rule itself (settings.resolve_workspace)


def test_the_lookup_order_explicit_then_out_then_upwards_then_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq.jobs.settings import resolve_workspace

    out = tmp_path / "out"
    (out / ".tessq").mkdir(parents=True)
    (out / ".tessq/tessq.db").write_bytes(b"")
    deep = out / "a/b"
    deep.mkdir(parents=True)
    (nowhere,) = folders(tmp_path, "nowhere")

    monkeypatch.chdir(nowhere)
    assert resolve_workspace(output_dir=out).root == out
    assert resolve_workspace(tmp_path / "ws").root == tmp_path / "ws"
    assert resolve_workspace(out / ".tessq").root == out, "-w OUT/.tessq means OUT"
    with pytest.raises(ConfigError, match=r"pass the output folder.*tessq report OUT"):
        resolve_workspace(command="report")
    monkeypatch.setenv("TESSQ_WORKSPACE", str(tmp_path / "env_ws"))
    assert resolve_workspace(output_dir=out).root == tmp_path / "env_ws", "explicit beats OUT"
    monkeypatch.delenv("TESSQ_WORKSPACE")

    monkeypatch.chdir(deep)
    found = resolve_workspace()
    assert found.root == out and found.how == "search"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    remote = resolve_workspace(output_dir="s3://bucket/processed/")
    assert remote.root.parent == tmp_path / "cache/tessq/workspaces"
    assert remote.root == resolve_workspace(output_dir="s3://bucket/processed").root, "one URL, one state"
    assert remote.root != resolve_workspace(output_dir="s3://bucket/other").root

    monkeypatch.chdir(nowhere)
    monkeypatch.setenv("TESSQ_DB_URL", "postgresql://nobody@127.0.0.1:1/none")
    shared = resolve_workspace()
    assert shared.how == "shared-db" and not shared.is_embedded

"""The run flow written once (pipeline.run): its exit code, its hooks, and the same report from each caller.

`tessq run`, `tessq demo` and BatchTesselator.run_batch only build a RunRequest and present the RunOutcome.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tessq import BatchJob, BatchTesselator, defaults, pipeline
from tessq.jobs import db
from tessq.jobs import queue as tq
from tessq.options import SliceOptions
from tests.conftest import seed_tree, tessq_cmd, write_tiff


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TESSQ_* from the developer's shell: each job keeps its state in its own OUT/.tessq."""
    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("stopped_by", "failed", "code"),
    [
        ("drained", 0, defaults.EXIT_OK),
        ("drained", 2, defaults.EXIT_SOME_FAILED),
        ("signal", 0, defaults.EXIT_INTERRUPTED),
        ("signal", 5, defaults.EXIT_INTERRUPTED),  # stopped early wins: the failures may not be final yet
    ],
)
def test_the_exit_code_says_interrupted_then_some_failed_then_ok(stopped_by: str, failed: int, code: int) -> None:
    assert pipeline.run_exit_code(stopped_by, failed) == code


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """What two runs of one tree must agree on (not when, how fast, nor where the output went)."""
    summary = {
        k: v
        for k, v in report["batch_summary"].items()
        if k not in ("total_processing_time", "average_time_per_image", "images_per_hour")
    }
    return {
        "batch_summary": summary,
        "states": report["states"],
        "skip_reasons": report["skip_reasons"],
        "errors": sorted((e["type"], Path(e["file"]).name if e.get("file") else "") for e in report["errors"]),
    }


def test_the_cli_and_the_api_give_the_same_report_for_one_tree(tmp_path: Path, clean_env: None) -> None:
    expected = seed_tree(tmp_path / "in")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    cli = tessq_cmd(
        "run",
        str(tmp_path / "in"),
        str(tmp_path / "cli_out"),
        "--min-size",
        "32",
        "--workers",
        "2",
        "--json",
        env=env,
        cwd=tmp_path,
    )
    assert cli.returncode == (defaults.EXIT_SOME_FAILED if expected["failed"] else defaults.EXIT_OK), cli.stderr
    from_cli = json.loads(cli.stdout[cli.stdout.index("{") :])
    from_api = BatchTesselator(
        BatchJob(input_dir=tmp_path / "in", output_dir=tmp_path / "api_out", min_image_size=32, max_workers=2)
    ).run_batch(progress=False)
    assert comparable(from_cli) == comparable(from_api)
    assert from_api["batch_summary"]["successfully_processed"] == expected["done"]


def test_a_run_stopped_early_reports_what_is_left_exits_130_and_writes_no_zip(tmp_path: Path, clean_env: None) -> None:
    for i in range(2):
        write_tiff(tmp_path / f"in/img_{i}.tif", seed=i)
    seen: list[str] = []

    def stopped(n_workers: int, job: db.Job) -> str:
        seen.append(f"drain {n_workers} {Path(job.output_dir).name}")
        return "signal"  # as a Ctrl-C before any image was cut

    def never(job: db.Job) -> dict[str, Any]:
        raise AssertionError("an interrupted run must not zip")

    hooks = pipeline.RunHooks(
        on_workspace=lambda ws: seen.append(f"workspace {ws.root.name}"),
        on_scan=lambda summary: seen.append(f"scan {summary.queued}"),
        drain=stopped,
        export=never,
    )
    request = pipeline.RunRequest(tmp_path / "in", tmp_path / "out", SliceOptions(min_size=0), n_workers=3, zip=True)
    outcome = pipeline.run(request, hooks)
    assert seen == ["workspace out", "scan 2", "drain 3 out"]
    assert outcome.stopped_by == "signal" and outcome.zip is None
    assert outcome.exit_code == defaults.EXIT_INTERRUPTED
    assert outcome.report["states"]["queued"] == 2
    assert outcome.workspace.state_dir == (tmp_path / "out" / defaults.WORKSPACE_DIRNAME).resolve()
    assert json.loads((tmp_path / "out" / defaults.REPORT_FILENAME).read_text())["states"]["queued"] == 2


def test_a_bound_workspace_gives_the_previous_binding_back(tmp_path: Path, clean_env: None) -> None:
    first = pipeline.open_workspace(tmp_path / "a")
    second = pipeline.open_workspace(tmp_path / "b", create=True)
    assert tq.workspace() == second
    with pipeline.bound(first):
        assert tq.workspace() == first
        assert db.sqlite_file() == first.db_file()
    assert tq.workspace() == second
    assert db.sqlite_file() == second.db_file()


def test_scan_and_run_take_the_same_slice_flags() -> None:
    import dataclasses

    from typer.testing import CliRunner

    from tessq import cli

    runner = CliRunner()
    shown = {c: runner.invoke(cli.app, [c, "--help"], env={"COLUMNS": "200"}).output for c in ("scan", "run")}
    for field in dataclasses.fields(cli.SliceFlags):
        flag = "--format" if field.name == "fmt" else "--" + field.name.replace("_", "-")
        assert flag in shown["scan"] and flag in shown["run"], flag


def test_the_global_workspace_option_reaches_the_command_before_or_after_it(tmp_path: Path, clean_env: None) -> None:
    write_tiff(tmp_path / "in/a.tif", seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tessq_cmd(
        "scan",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
        "--min-size",
        "0",
        env=env,
        cwd=tmp_path,
        check=True,
    )
    for args in (["-w", str(tmp_path / "out"), "status", "--json"], ["status", "--json", "-w", str(tmp_path / "out")]):
        proc = tessq_cmd(*args, env=env, cwd=elsewhere)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["counts"]["queued"] == 1
    assert not (elsewhere / defaults.WORKSPACE_DIRNAME).exists()

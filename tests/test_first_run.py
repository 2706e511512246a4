"""What a new user meets first: the README's two commands, `tessq demo`, `--version`, `--help`, and CI.

The demo runs as a subprocess in an empty folder with no TESSQ_* variables, so nothing from the
repository, the developer's shell or another test can make it pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tessq

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
DONE_FOLDERS = [
    "project_alpha/survey_001/aerial_photo_001",
    "project_alpha/survey_001/aerial_photo_002",
    "project_alpha/survey_002/scan_0003",
    "project_gamma/bigendian_scan",
]
NOT_CUT = ["project_beta/crops", "project_beta/preview_small", "project_beta/damaged_scan"]
COMMANDS = ["scan", "workers", "status", "report", "run", "retry", "verify", "export", "upload", "demo"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    # rich folds lines at 80 columns when stdout is not a terminal; a wide one keeps each path on one line
    env["COLUMNS"] = "300"
    return env


def readme_commands() -> list[str]:
    """The commands of the README's first code block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)
    assert block, "README.md has no code block"
    return [re.split(r"\s+#", line, maxsplit=1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def tessq_script() -> str:
    """The installed `tessq` console script (what `pip install -e .` puts on PATH)."""
    beside = Path(sys.executable).parent / "tessq"
    found = str(beside) if beside.exists() else shutil.which("tessq")
    if found is None:
        message = "the `tessq` console script is not installed (pip install -e .)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def printed_summary(stdout: str) -> dict:
    """The batch_summary JSON the demo prints (the first {...} block)."""
    match = re.search(r"^\{\n.*?^\}$", stdout, re.S | re.M)
    assert match, f"no report in the demo's output:\n{stdout}"
    return json.loads(match.group(0))


def assert_demo_outcome(proc: subprocess.CompletedProcess[str], demo_dir: Path) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = printed_summary(proc.stdout)
    assert summary["total_images_found"] == 6
    assert summary["successfully_processed"] == 4
    assert summary["skipped"] == 1 and summary["errors"] == 1 and summary["folders_skipped"] == 1
    out = demo_dir.resolve() / "output"
    assert f"output: {out}" in proc.stdout
    assert f"report: {out / 'batch_report.json'}" in proc.stdout
    assert "verify: 4/4 images reassemble bit for bit" in proc.stdout
    for folder in DONE_FOLDERS:
        assert (out / folder / "metadata.json").is_file(), folder
        assert len(list((out / folder).glob("slice_*.png"))) == 8, folder
    for folder in NOT_CUT:
        assert not (out / folder).exists(), folder
    assert json.loads((out / "batch_report.json").read_text())["batch_summary"] == summary


def test_python_m_tessq_demo_in_a_clean_folder_reports_and_says_where_the_output_is(tmp_path: Path) -> None:
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "tessq", "demo", "my-demo"],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_demo_outcome(proc, cwd / "my-demo")
    assert [p.name for p in cwd.iterdir()] == ["my-demo"], "the demo writes only inside its folder"


def test_readme_first_command_runs_as_written(tmp_path: Path) -> None:
    first = readme_commands()[0]
    install, _, run = first.partition("&&")
    assert install.split()[:2] == ["pip", "install"] and run.strip().startswith("tessq demo"), first
    argv = run.split()
    proc = subprocess.run(
        [tessq_script(), *argv[1:]], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    default_dir = tmp_path / (argv[2] if len(argv) > 2 else "tessq-demo")
    assert_demo_outcome(proc, default_dir)


def test_version_and_help() -> None:
    version = subprocess.run([tessq_script(), "--version"], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"tessq {tessq.__version__}"
    helped = subprocess.run(
        [sys.executable, "-m", "tessq", "--help"], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    for command in COMMANDS:
        assert re.search(rf"^\W*{command}\b", helped.stdout, re.M), f"`{command}` missing from --help"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme_test = readme_commands()[1]
    assert "pytest" in readme_test and "pip install" in readme_test
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run must be executable"
    lines = [line.strip() for line in script.read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert "set -euo pipefail" in commands or "set -e" in commands
    assert readme_test in commands, ".ci/run must run the README's test command verbatim"
    after = commands[commands.index(readme_test) + 1 :]
    checks = [
        "python -m ruff check tessq tests scripts",
        "python -m ruff format --check tessq tests scripts",
        "python -m mypy",
    ]
    # then only the code's own checks (issue #17 item 6) and the wheel check (issue #15 item 8)
    assert after == [*checks, "scripts/check_wheel.sh"]
    check = (ROOT / "scripts/check_wheel.sh").read_text()
    assert "pip wheel" in check and "-m venv" in check and '/bin/tessq" demo' in check and "--help" in check

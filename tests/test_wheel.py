"""The wheel works (issue #15 item 8): built from the source tree, installed into a fresh venv (not editable),
`tessq --help` and `tessq demo` run from it, from a folder outside the repository.

`.ci/run` does the same after the test suite (scripts/check_wheel.sh); this test keeps it honest locally too.
It takes ~30-40 s (the venv's dependencies come from pip's index/cache), hence `slow`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("CI", "").lower() == "true",
    reason="under CI, .ci/run runs scripts/check_wheel.sh (the same check) after the suite",
)
@pytest.mark.timeout(240)
def test_the_wheel_installed_in_a_fresh_venv_runs_help_and_the_demo(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info behind, never in the worktree
    src.mkdir()
    # tessq/schema.sql links to alembic_free_schema.sql; the seed's module names sit at the root
    files = ("pyproject.toml", "README.md", "alembic_free_schema.sql", "batch_tesselate.py", "enhanced_tesselate.py")
    for name in files:
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tessq", src / "tessq", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSQ_", "PYTHON", "VIRTUAL_ENV"))}
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        check=True,
        env=env,
        timeout=120,
        capture_output=True,
    )
    (wheel,) = dist.glob("tessq-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import tessq; print(tessq.__file__)"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert str(venv) in where.stdout, f"not the installed wheel: {where.stdout}{where.stderr}"
    helped = subprocess.run(
        [str(venv / "bin/tessq"), "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "Usage" in helped.stdout, helped.stderr
    demo = subprocess.run(
        [str(venv / "bin/tessq"), "demo", "d"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "verify: 4/4 images reassemble bit for bit" in demo.stdout
    assert "Traceback" not in demo.stderr
    seed = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "from batch_tesselate import BatchTesselator, BatchJob; "
            "from enhanced_tesselate import verify_images_identical",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert seed.returncode == 0, seed.stderr

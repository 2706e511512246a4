"""The command line as a user meets it: help texts, status, retry, verify catching damage, export, upload."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import boto3
import pytest

from tests.conftest import seed_tree, tessq_cmd

COMMANDS = ["scan", "workers", "status", "report", "run", "retry", "verify", "export", "upload", "demo"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One finished batch of the seed tree, shared by the read-only tests below."""
    import os

    root = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    env["TESSQ_WORKSPACE"] = str(root / "ws")
    seed_tree(root / "in")
    tessq_cmd("run", str(root / "in"), str(root / "out"), "--min-size=32", "--workers=2", env=env, cwd=root)
    return root, env


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    proc = tessq_cmd(command, "--help", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_version_and_module_entry_point(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    proc = tessq_cmd("--version", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("tessq ")


def test_commands_outside_a_workspace_say_what_to_do(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    proc = tessq_cmd("report", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode == 2 and "tessq scan" in proc.stderr


def test_bad_grid_is_a_clear_usage_error(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    (tmp_path / "in").mkdir()
    proc = tessq_cmd("scan", str(tmp_path / "in"), "--grid", "2by4", env=sqlite_env, cwd=tmp_path)
    assert proc.returncode == 2 and "ROWSxCOLS" in proc.stderr


def test_status_once_renders_counts(finished: tuple[Path, dict[str, str]]) -> None:
    root, env = finished
    proc = tessq_cmd("status", "--once", env=env, cwd=root, check=True)
    assert "done" in proc.stdout and "corrupt.tif" in proc.stdout
    counts = json.loads(tessq_cmd("status", "--json", env=env, cwd=root, check=True).stdout)["counts"]
    assert counts["done"] > 0 and counts["failed"] == 1
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "done" in line and "failed" in line)
    names, values = lines[header].split(), lines[header + 1].split()
    labels = [n.strip("│┃") for n in names if n.strip("│┃")]
    numbers = [v.strip("│┃") for v in values if v.strip("│┃")]
    shown = dict(zip(labels, numbers, strict=True))
    assert shown["done"] == str(counts["done"]) and shown["failed"] == "1"  # the numbers, not just the labels


def test_status_piped_or_in_a_notebook_cell_prints_one_snapshot_instead_of_blocking(
    finished: tuple[Path, dict[str, str]],
) -> None:
    root, env = finished
    env = {k: v for k, v in env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = tessq_cmd("status", env=env, cwd=root, check=True, timeout=60)  # stdout is a pipe, as in `!tessq status`
    assert "done" in proc.stdout and "corrupt.tif" in proc.stdout


def test_retry_requeues_failed_images(finished: tuple[Path, dict[str, str]]) -> None:
    root, env = finished
    proc = tessq_cmd("retry", "--failed", env=env, cwd=root, check=True)
    assert "re-queued 1" in proc.stdout
    tessq_cmd("workers", "--workers", "1", "--drain", env=env, cwd=root, check=True)
    report = json.loads(tessq_cmd("report", "--json", env=env, cwd=root, check=True).stdout)
    assert report["batch_summary"]["errors"] == 1  # still corrupt: failed again, with the reason
    assert report["errors"][0]["type"] == "corrupt"


def test_export_zip_holds_every_done_image_and_the_report(finished: tuple[Path, dict[str, str]]) -> None:
    root, env = finished
    proc = tessq_cmd("export", "--zip", env=env, cwd=root, check=True)
    archive = root / "out" / "out_results.zip"
    assert "verified=True" in proc.stdout and archive.is_file()
    names = zipfile.ZipFile(archive).namelist()
    assert "batch_report.json" in names
    assert len([n for n in names if n.endswith("metadata.json") and "batch_" not in n]) == 5


def test_upload_sends_done_images_once_and_reports_progress(
    finished: tuple[Path, dict[str, str]], s3_endpoint: str
) -> None:
    import os

    root, env = finished
    env = {**env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="cli-test")
    first = tessq_cmd("upload", "s3://cli-test/run1", "--endpoint-url", s3_endpoint, env=env, cwd=root, check=True)
    second = tessq_cmd("upload", "s3://cli-test/run1", "--endpoint-url", s3_endpoint, env=env, cwd=root, check=True)
    assert "skipped 0" in first.stdout and "uploaded 0 file(s)" in second.stdout
    listing = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="cli-test")
    keys = [o["Key"] for o in listing["Contents"]]
    assert any(k.endswith("aerial_photo_001/metadata.json") for k in keys)
    status = json.loads(tessq_cmd("status", "--json", env=env, cwd=root, check=True).stdout)
    assert status["uploads"]["objects"] == len(keys)


def test_verify_catches_a_damaged_slice(finished: tuple[Path, dict[str, str]]) -> None:
    root, env = finished
    ok = tessq_cmd("verify", "--json", env=env, cwd=root)
    assert ok.returncode == 0 and json.loads(ok.stdout)["identical"] == 5
    victim = sorted((root / "out/dup/a.tif").glob("slice_*.png"))[0]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-20] + bytes(20))
        bad = tessq_cmd("verify", "--json", env=env, cwd=root)
        assert bad.returncode == 3 and json.loads(bad.stdout)["different"] == ["dup/a.tif"]
    finally:
        victim.write_bytes(original)

"""scripts/batch_processing.ipynb runs top to bottom (nbclient, a real kernel) on generated sample data.

The notebook is executed as committed: no cell is edited, only the TESSQ_NB_* environment overrides it
documents are set (small sample images, output in tmp_path, and the S3 cell pointed at a moto server).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="the [notebook] extra (nbformat) is not installed")
nbclient = pytest.importorskip("nbclient", reason="the [notebook] extra (nbclient) is not installed")
pytest.importorskip("ipykernel", reason="the [notebook] extra (ipykernel) is not installed")
pytest.importorskip("matplotlib", reason="the [notebook] extra (matplotlib) is not installed")

NOTEBOOK = Path(__file__).resolve().parents[1] / "scripts" / "batch_processing.ipynb"
# make_sample_tree(size=320): 4 TIFFs >= 320 px, a 256 px preview (too small for MIN_SIZE 300),
# a truncated TIFF, a JPG-only folder.
EXPECTED = {
    "total_images_found": 6,
    "successfully_processed": 4,
    "skipped": 1,
    "errors": 1,
    "folders_skipped": 1,
}
DONE_FOLDERS = [
    "project_alpha/survey_001/aerial_photo_001",
    "project_alpha/survey_001/aerial_photo_002",
    "project_alpha/survey_002/scan_0003",
    "project_gamma/bigendian_scan",
]


def text_outputs(cell: Any) -> list[str]:
    """Every text the cell showed: streams and the text/plain form of displays and results."""
    texts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            texts.append(out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            texts.append(out["data"]["text/plain"])
    return texts


def displayed_table(nb: Any, title: str) -> dict[str, str]:
    """The rows of the notebook's Table displayed under `title`, as {first column: rest}."""
    for cell in nb.cells:
        for text in text_outputs(cell):
            lines = text.splitlines()
            if lines and lines[0] == title:
                rows = {}
                for line in lines[1:]:
                    key, _, value = line.partition("  ")
                    rows[key.strip()] = value.strip()
                return rows
    raise AssertionError(f"no table titled {title!r} in the notebook's outputs")


def s3_endpoint_or_none(request: pytest.FixtureRequest) -> str | None:
    """The moto S3 endpoint, or None where moto cannot run (a skip locally; under CI=true the fixture fails)."""
    try:
        return request.getfixturevalue("s3_endpoint")
    except pytest.skip.Exception:
        return None


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(c.outputs == [] and c.execution_count is None for c in code), "commit the notebook with outputs cleared"


def test_notebook_runs_top_to_bottom_on_sample_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)  # the embedded SQLite workspace, whatever the developer's shell has
    sample = tmp_path / "sample"
    overrides = {
        "TESSQ_NB_INPUT_DIR": "sample",  # the notebook generates its sample tree (a missing path is an error)
        "TESSQ_NB_SAMPLE_DIR": str(sample),
        "TESSQ_NB_SAMPLE_SIZE": "320",
        "TESSQ_NB_MIN_SIZE": "300",
        "TESSQ_NB_MAX_WORKERS": "2",
    }
    endpoint = s3_endpoint_or_none(request)
    if endpoint is not None:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="notebook-test")
        overrides["TESSQ_NB_S3_URL"] = "s3://notebook-test/run1"
        overrides["TESSQ_NB_S3_ENDPOINT_URL"] = endpoint
    for key, value in overrides.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "every code cell ran, in order"

    out = sample / "output"
    summary = displayed_table(nb, "batch_summary")
    for key, value in EXPECTED.items():
        assert summary[key] == str(value), (key, summary)
    assert float(summary["images_per_hour"]) > 0
    report = json.loads((out / "batch_report.json").read_text())
    assert {k: report["batch_summary"][k] for k in EXPECTED} == EXPECTED

    scan = displayed_table(nb, "scan")
    assert scan["TIFFs found"] == "6" and scan["queued (new)"] == "4" and scan["skipped: too_small"] == "1"

    progress = [t for c in code for t in text_outputs(c) if "finished (" in t]
    assert progress and progress[-1].startswith("[" + "#" * 30 + "]") and "5/5 finished" in progress[-1]

    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "the timing plot is shown"
    assert (out / "batch_timings.png").stat().st_size > 1000

    verified = displayed_table(nb, "verification sample")
    assert len(verified) == 3 and all(v.endswith("True") for v in verified.values()), verified
    assert any("identical = True" in t for c in code for t in text_outputs(c)), "reconstruct + compare ran"

    archive = out / "output_results.zip"
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
    for folder in DONE_FOLDERS:
        assert f"{folder}/metadata.json" in names
        assert sum(n.startswith(f"{folder}/slice_") for n in names) == 8
    assert "batch_report.json" in names

    if endpoint is not None:
        import boto3

        listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="notebook-test", Prefix="run1/")
        keys = {o["Key"] for o in listed.get("Contents", [])}
        assert {f"run1/{folder}/metadata.json" for folder in DONE_FOLDERS} <= keys
        assert len(keys) == len(names), "the upload ships the same files as the ZIP"
    else:
        assert any("S3_URL is not set" in t for c in code for t in text_outputs(c))

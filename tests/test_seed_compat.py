"""Seed code runs unchanged (issue #15, item 6): the seed README's snippets, as written, in a fresh Python
process whose current folder is elsewhere; metadata.json's original_image; run_batch's progress and console
log; the notebook stopping on a mistyped INPUT_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import write_tiff

SEED_SUMMARY_KEYS = [
    "total_images_found",
    "successfully_processed",
    "skipped",
    "errors",
    "folders_skipped",
    "total_processing_time",
    "average_time_per_image",
    "images_per_hour",
]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}


def python(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A tree for the seed's custom script (min_image_size=2048): one image to cut, one too small, a JPG folder."""
    root = tmp_path / "your_dataset_path"
    write_tiff(root / "survey/big.tif", 2048, 2080, samples=1, seed=1)
    write_tiff(root / "survey/small.tif", 500, 600, samples=1, seed=2)
    (root / "crops").mkdir()
    (root / "crops/crop_001.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    return root


def test_the_seed_custom_processing_script_runs_as_written(dataset: Path, tmp_path: Path) -> None:
    # The seed README's "Custom Processing Script", verbatim but for printing what it got.
    proc = python(
        """
        from batch_tesselate import BatchTesselator, BatchJob

        # Configure job
        config = BatchJob(
            input_dir="your_dataset_path",
            output_dir="output_path",
            num_pieces=12,              # More pieces for larger images
            max_workers=6,              # More workers for faster processing
            min_image_size=2048         # Higher quality threshold
        )

        # Run processing
        processor = BatchTesselator(config)
        report = processor.run_batch()

        import json
        print("REPORT=" + json.dumps(report))
    """,
        cwd=tmp_path,
    )
    report = json.loads(proc.stdout.split("REPORT=", 1)[1])
    summary = report["batch_summary"]
    assert list(summary) == SEED_SUMMARY_KEYS
    assert (
        summary["total_images_found"],
        summary["successfully_processed"],
        summary["skipped"],
        summary["errors"],
        summary["folders_skipped"],
    ) == (2, 1, 1, 0, 1)
    assert summary["images_per_hour"] > 0
    folder = tmp_path / "output_path/survey/big"
    assert len(list(folder.glob("slice_*.png"))) == 12
    # run_batch is not silent: the console log (stderr, at log_level INFO) and a final progress line
    assert "done survey/big.tif" in proc.stderr and "skipped file survey/small.tif: too_small" in proc.stderr
    assert "progress: 1/1 finished" in proc.stderr


def test_the_seed_verification_snippets_run_as_written(dataset: Path, tmp_path: Path) -> None:
    python(
        """
        from batch_tesselate import BatchTesselator, BatchJob
        BatchTesselator(BatchJob(input_dir="your_dataset_path", output_dir="processed_output", max_workers=2,
                                 min_image_size=1024)).run_batch(progress=False)
    """,
        cwd=tmp_path,
    )
    proc = python(
        """
        import json
        from pathlib import Path

        from enhanced_tesselate import reconstruct, verify_images_identical

        # Verify all processed images (the seed's batch verification loop, completed)
        def verify_batch_quality(output_dir):
            results = {}
            for metadata_file in Path(output_dir).rglob("metadata.json"):
                # Load metadata and verify reconstruction
                with open(metadata_file) as f:
                    meta = json.load(f)

                original_path = meta["original_image"]["path"]
                # Reconstruct and verify...
                reconstruct(metadata_file.parent, "reconstructed.tif")
                result = verify_images_identical(
                    original_path,
                    "reconstructed.tif"
                )
                print(f"Images identical: {result['overall_identical']}")
                direct = verify_images_identical(original_path, metadata_file.parent)  # a folder works too
                results[original_path] = (result["overall_identical"], direct["overall_identical"])
            return results

        print("RESULTS=" + json.dumps(verify_batch_quality("processed_output")))
    """,
        cwd=tmp_path,
    )
    results = json.loads(proc.stdout.split("RESULTS=", 1)[1])
    assert results == {str((dataset / "survey/big.tif").resolve()): [True, True]}  # small.tif: too small
    assert "Images identical: True" in proc.stdout
    meta = json.loads((tmp_path / "processed_output/survey/big/metadata.json").read_text())
    assert meta["original_image"]["path"] == meta["source"]["absolute_path"]
    assert (meta["original_image"]["width"], meta["original_image"]["height"]) == (2080, 2048)
    assert meta["schema"] == "tessq.metadata" and "slices" in meta  # tessq's keys are all still there


def test_the_seed_command_line_runs_as_written(tmp_path: Path) -> None:
    src = tmp_path / "input/dataset"
    write_tiff(src / "a.tif", 1024, 1100, samples=1, seed=3)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch_tesselate",
            str(src),
            str(tmp_path / "output/directory"),
            "--num-pieces",
            "8",
            "--max-workers",
            "4",
            "--min-size",
            "1024",
            "--resume",
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "output/directory/a").glob("slice_*.png"))) == 8


def test_the_seed_module_names_come_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert set(project["tool"]["setuptools"]["py-modules"]) == {"batch_tesselate", "enhanced_tesselate"}
    import batch_tesselate
    import enhanced_tesselate
    from tessq import BatchJob, BatchTesselator, verify_images_identical

    assert batch_tesselate.BatchJob is BatchJob and batch_tesselate.BatchTesselator is BatchTesselator
    assert enhanced_tesselate.verify_images_identical is verify_images_identical


def test_the_notebook_stops_on_a_mistyped_input_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)
    sample = tmp_path / "sample"
    monkeypatch.setenv("TESSQ_NB_INPUT_DIR", str(tmp_path / "my_datset"))  # a typo of my_dataset
    monkeypatch.setenv("TESSQ_NB_SAMPLE_DIR", str(sample))
    monkeypatch.setenv("TESSQ_NB_OUTPUT_DIR", str(tmp_path / "out"))
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "scripts" / "batch_processing.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        client.execute()
    assert "FileNotFoundError" in str(failure.value) and "my_datset" in str(failure.value)
    ran = [c for c in nb.cells if c.cell_type == "code" and c.execution_count is not None]
    assert len(ran) == 1, "nothing after the configuration cell ran"
    assert not sample.exists() and not (tmp_path / "out").exists(), "no sample tree generated, nothing processed"


def test_run_batch_shows_progress_in_a_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)
    write_tiff(tmp_path / "in/a.tif", 64, 96, seed=1)
    write_tiff(tmp_path / "in/b.tif", 64, 96, seed=2)
    cell = textwrap.dedent(f"""
        from batch_tesselate import BatchTesselator, BatchJob
        report = BatchTesselator(BatchJob(input_dir={str(tmp_path / "in")!r}, output_dir={str(tmp_path / "out")!r},
                                          max_workers=1, min_image_size=32)).run_batch()
        report["batch_summary"]["successfully_processed"]
    """)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = nb.cells[0].outputs
    shown = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "display_data"]
    assert shown and shown[-1].startswith("[" + "#" * 30 + "]") and "2/2 finished" in shown[-1], outputs
    assert any("text/html" in o.get("data", {}) for o in outputs)
    logged = "".join(o["text"] for o in outputs if o.get("output_type") == "stream" and o["name"] == "stderr")
    assert "done a.tif" in logged and "done b.tif" in logged  # the console log, at log_level INFO
    assert outputs[-1]["data"]["text/plain"] == "2"

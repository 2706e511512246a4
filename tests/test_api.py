"""The seed's Python API: BatchJob/BatchTesselator on the real queue and workers, and the lower-level functions.

The batch runs in this process (scan, report) plus a `tessq workers --drain` child, exactly as in a notebook.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tessq import BatchJob, BatchTesselator, verify_images_identical
from tests.conftest import seed_tree, tessq_cmd, write_tiff

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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TESSQ_* from the developer's shell: every workspace here is an explicit embedded SQLite one."""
    for key in [k for k in os.environ if k.startswith("TESSQ_")]:
        monkeypatch.delenv(key)


def seed_job(tmp_path: Path, **overrides: Any) -> BatchJob:
    """The seed's BatchJob call, every parameter spelled out (min size scaled down for small test images)."""
    params: dict[str, Any] = {
        "input_dir": tmp_path / "in",
        "output_dir": tmp_path / "out",
        "num_pieces": 8,
        "max_workers": 2,
        "min_image_size": 32,
        "skip_existing": True,
        "resume_mode": True,
        "log_level": "INFO",
        "workspace": tmp_path / "ws",
    }
    params.update(overrides)
    return BatchJob(**params)


def slices_started_at(out: Path) -> dict[str, float]:
    """When each image folder was cut, from its batch_metadata.json."""
    found = out.rglob("batch_metadata.json")
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())["started_at"] for p in found}


def test_batch_job_defaults_are_the_seeds() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(BatchJob)}
    assert [f.name for f in dataclasses.fields(BatchJob)][:8] == [
        "input_dir",
        "output_dir",
        "num_pieces",
        "max_workers",
        "min_image_size",
        "skip_existing",
        "resume_mode",
        "log_level",
    ]
    assert {
        k: defaults[k]
        for k in ("num_pieces", "max_workers", "min_image_size", "skip_existing", "resume_mode", "log_level")
    } == {
        "num_pieces": 8,
        "max_workers": 4,
        "min_image_size": 1024,
        "skip_existing": True,
        "resume_mode": True,
        "log_level": "INFO",
    }


def test_run_batch_returns_the_seeds_summary_and_the_same_report_as_the_cli(tmp_path: Path, clean_env: None) -> None:
    expected = seed_tree(tmp_path / "in")
    snapshots: list[dict[str, Any]] = []
    report = BatchTesselator(seed_job(tmp_path)).run_batch(on_progress=snapshots.append)

    summary = report["batch_summary"]
    assert list(summary) == SEED_SUMMARY_KEYS
    assert summary["total_images_found"] == expected["found"]
    assert summary["successfully_processed"] == expected["done"]
    assert summary["skipped"] == expected["skipped"]
    assert summary["errors"] == expected["failed"]
    assert summary["folders_skipped"] == expected["folders_skipped"]
    assert summary["images_per_hour"] > 0 and summary["average_time_per_image"] > 0
    assert snapshots and snapshots[-1]["progress"]["remaining"] == 0
    assert snapshots[-1]["progress"]["finished"] == expected["done"] + expected["failed"]

    out = tmp_path / "out"
    assert len(list((out / "project_alpha/survey_001/aerial_photo_001").glob("slice_*.png"))) == 8
    assert (out / "batch_processing.log").is_file()

    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    env["TESSQ_WORKSPACE"] = str(tmp_path / "ws")
    cli = json.loads(tessq_cmd("report", "--json", env=env, cwd=tmp_path, check=True).stdout)
    api_again = BatchTesselator(seed_job(tmp_path)).report()
    for rep in (report, cli, api_again):
        rep.pop("generated_at")
    assert cli == report
    assert api_again == report
    on_disk = json.loads((out / "batch_report.json").read_text())
    assert on_disk["batch_summary"] == summary


def test_resume_keeps_done_images_and_resume_mode_false_redoes_them(tmp_path: Path, clean_env: None) -> None:
    expected = seed_tree(tmp_path / "in")
    out = tmp_path / "out"
    BatchTesselator(seed_job(tmp_path)).run_batch()
    first = slices_started_at(out)
    assert len(first) == expected["done"]

    again = BatchTesselator(seed_job(tmp_path))
    scan = again.scan()
    assert scan["already_done"] == expected["done"] and scan["queued"] == 0
    again.process(poll_s=0.2)
    assert again.report()["batch_summary"]["successfully_processed"] == expected["done"]
    assert slices_started_at(out) == first, "resume must not cut a finished image again"

    redo = BatchTesselator(seed_job(tmp_path, resume_mode=False))
    report = redo.run_batch()
    assert report["batch_summary"]["successfully_processed"] == expected["done"]
    second = slices_started_at(out)
    assert second.keys() == first.keys()
    assert all(second[k] > first[k] for k in first), "resume_mode=False must cut every image again"


def test_skip_existing_false_requeues_done_images(tmp_path: Path, clean_env: None) -> None:
    write_tiff(tmp_path / "in/a.tif", seed=1)
    BatchTesselator(seed_job(tmp_path)).run_batch()
    assert BatchTesselator(seed_job(tmp_path)).scan()["queued"] == 0
    assert BatchTesselator(seed_job(tmp_path, skip_existing=False)).scan()["queued"] == 1


def test_each_tesselator_keeps_its_own_workspace(tmp_path: Path, clean_env: None) -> None:
    write_tiff(tmp_path / "a/in/one.tif", seed=1)
    write_tiff(tmp_path / "b/in/two.tif", seed=2)
    write_tiff(tmp_path / "b/in/three.tif", seed=3)
    first = BatchTesselator(seed_job(tmp_path / "a"))
    second = BatchTesselator(seed_job(tmp_path / "b"))  # opened last: the process-wide database points here
    assert first.scan()["queued"] == 1
    assert second.scan()["queued"] == 2
    assert first.report()["batch_summary"]["total_images_found"] == 1
    assert second.report()["batch_summary"]["total_images_found"] == 2


def test_lower_level_functions_cut_reassemble_and_verify_one_image(tmp_path: Path) -> None:
    from tessq import SliceOptions, reconstruct, tessellate_image, verify_image

    source = write_tiff(tmp_path / "photo.tif", 64, 96, seed=3, compression="lzw")
    image_dir = tmp_path / "photo"
    result = tessellate_image(source, image_dir, SliceOptions(num_pieces=4, min_size=32))
    assert result["slices"] == 4
    assert sorted(p.name for p in image_dir.glob("slice_*.png")) == sorted(r["file"] for r in result["slice_records"])
    assert (image_dir / "metadata.json").is_file()

    check = verify_image(image_dir, source)
    assert check["overall_identical"] and check["compared_with"] == "source" and check["slices_checked"] == 4

    rebuilt = reconstruct(image_dir, tmp_path / "rebuilt.tif")
    assert verify_images_identical(source, rebuilt)["overall_identical"]

    other = write_tiff(tmp_path / "other.tif", 64, 96, seed=4)
    differs = verify_images_identical(source, other)
    assert not differs["overall_identical"] and differs["pixels_different"] > 0

    first_slice = image_dir / result["slice_records"][0]["file"]
    first_slice.write_bytes((image_dir / result["slice_records"][1]["file"]).read_bytes())  # a wrong slice
    assert not verify_image(image_dir, source)["overall_identical"]


@pytest.mark.timeout(120)
def test_process_does_not_stall_on_a_chatty_worker_log(tmp_path: Path, clean_env: None) -> None:
    """At DEBUG the workers log ~300 bytes per image: 300 images overflow a 64 KiB pipe nobody reads."""
    for i in range(300):
        write_tiff(tmp_path / f"in/img_{i:03d}.tif", 8, 8, seed=i)
    job = seed_job(tmp_path, num_pieces=1, min_image_size=8, log_level="DEBUG")
    report = BatchTesselator(job).run_batch()
    assert report["batch_summary"]["successfully_processed"] == 300

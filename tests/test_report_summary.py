"""report.summarize on hand-made rows: the report's arithmetic (totals, percentages of time, averages, the
skipped and unfinished lists), without a database."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tessq import __version__
from tessq.jobs import db
from tessq.jobs.report import ReportRows, summarize, upload_prefix

NO_UPLOADS: db.UploadTotals = {"objects": 0, "bytes": 0}
REPORT_KEYS = [
    "batch_summary",
    "states",
    "throughput",
    "skip_reasons",
    "folders_skipped_by_reason",
    "per_folder",
    "errors",
    "skipped",
    "unfinished",
    "verification",
    "uploads",
    "job",
    "jobs",
    "jobs_in_database",
    "generated_at",
    "tessq_version",
]
SUMMARY_KEYS = [
    "total_images_found",
    "successfully_processed",
    "skipped",
    "errors",
    "folders_skipped",
    "total_processing_time",
    "average_time_per_image",
    "images_per_hour",
]


def counts(**n: int) -> dict[str, int]:
    return dict(dict.fromkeys(db.STATES, 0), **n)


def rows(**changes: Any) -> ReportRows:
    """An empty status table's rows, with `changes`."""
    empty = ReportRows(
        job_id=None,
        counts=counts(),
        folder_skips={},
        done=db.DoneTotals(None, None, 0.0, 0, 0, 0, 0),
        intervals=[],
        skip_reasons={},
        per_folder=[],
        errors=[],
        verified={},
        skipped_images=[],
        skipped_folders=[],
        unfinished=[],
        jobs=[],
        n_jobs=0,
    )
    return dataclasses.replace(empty, **changes)


JOB = db.JobRow(7, "/data/in", "/data/out", json.dumps({"num_pieces": 4}))


def test_zero_images_give_zeros_everywhere_and_the_keys_in_their_order() -> None:
    report = summarize(rows(), NO_UPLOADS, generated_at=123.0)
    assert list(report) == REPORT_KEYS
    assert list(report["batch_summary"]) == SUMMARY_KEYS
    assert report["batch_summary"] == dict.fromkeys(SUMMARY_KEYS, 0)
    assert report["throughput"] == {
        "wall_clock_s": 0.0,
        "calendar_s": 0.0,
        "idle_s": 0.0,
        "worker_busy_s": 0.0,
        "source_bytes": 0,
        "output_bytes": 0,
        "pixel_bytes": 0,
        "pixel_mb_per_s": 0.0,
    }
    assert report["per_folder"] == {} and report["errors"] == [] and report["skipped"] == []
    assert report["unfinished"] == [] and report["verification"] == {"identical": 0, "different": 0}
    assert report["job"] is None and report["jobs"] == [] and report["jobs_in_database"] == 0
    assert report["generated_at"] == 123.0 and report["tessq_version"] == __version__
    json.dumps(report)  # the whole report is JSON


def test_totals_rates_and_averages_come_from_the_busy_time_not_the_calendar() -> None:
    done = db.DoneTotals(
        first_start=1000.0,
        last_finish=1101.0,
        busy_s=20.0,
        n_timed=4,
        source_bytes=11,
        output_bytes=22,
        pixel_bytes=26_000_000,
    )
    report = summarize(
        rows(
            counts=counts(done=3, failed=1, skipped=1, cancelled=2, queued=1),
            folder_skips={"no_tiff": 2},
            done=done,
            intervals=[(1000.0, 1010.0), (1005.0, 1012.0), (1100.0, 1101.0)],  # overlap merged, the gap left out
        ),
        NO_UPLOADS,
        generated_at=0.0,
    )
    summary, throughput = report["batch_summary"], report["throughput"]
    assert summary == {
        "total_images_found": 6,  # every state but cancelled
        "successfully_processed": 3,
        "skipped": 1,
        "errors": 1,
        "folders_skipped": 2,
        "total_processing_time": 13.0,
        "average_time_per_image": 5.0,  # worker seconds per timed image
        "images_per_hour": 830.8,  # 3 / 13 s
    }
    assert throughput == {
        "wall_clock_s": 13.0,
        "calendar_s": 101.0,
        "idle_s": 88.0,
        "worker_busy_s": 20.0,
        "source_bytes": 11,
        "output_bytes": 22,
        "pixel_bytes": 26_000_000,
        "pixel_mb_per_s": 2.0,
    }
    assert report["states"] == counts(done=3, failed=1, skipped=1, cancelled=2, queued=1)
    assert report["folders_skipped_by_reason"] == {"no_tiff": 2}


def test_times_are_rounded_and_a_calendar_shorter_than_the_busy_time_has_no_idle_time() -> None:
    done = db.DoneTotals(1000.0, 1000.5, 2.00049, 3, 0, 0, 1_234_567)
    report = summarize(
        rows(counts=counts(done=3), done=done, intervals=[(1000.0, 1000.12345), (1000.2, 1001.0)]),
        NO_UPLOADS,
        generated_at=0.0,
    )
    assert report["batch_summary"]["total_processing_time"] == 0.923
    assert report["batch_summary"]["average_time_per_image"] == 0.667
    assert report["batch_summary"]["images_per_hour"] == round(3 / 0.92345 * 3600, 1)
    assert report["throughput"]["calendar_s"] == 0.5 and report["throughput"]["idle_s"] == 0.0
    assert report["throughput"]["worker_busy_s"] == 2.0
    assert report["throughput"]["pixel_mb_per_s"] == round(1.234567 / 0.923, 2)


def test_all_failed_counts_errors_and_no_rate() -> None:
    errors = [db.ErrorRow("a/x.tif", "corrupt", "truncated", 1), db.ErrorRow("b.tif", "lost", None, 3)]
    report = summarize(
        rows(counts=counts(failed=2), errors=errors, intervals=[(5.0, 9.0), (6.0, 7.0)]), NO_UPLOADS, generated_at=0.0
    )
    summary = report["batch_summary"]
    assert summary["successfully_processed"] == 0 and summary["errors"] == 2 and summary["total_images_found"] == 2
    assert summary["total_processing_time"] == 4.0  # failed images were being cut too
    assert summary["images_per_hour"] == 0.0 and summary["average_time_per_image"] == 0.0  # no done image
    assert report["throughput"]["calendar_s"] == 0.0  # no done image: no first start, no last finish
    assert report["errors"] == [
        {"file": "a/x.tif", "type": "corrupt", "message": "truncated", "attempts": 1},
        {"file": "b.tif", "type": "lost", "message": None, "attempts": 3},
    ]


def test_running_and_queued_rows_are_listed_as_given_and_counted() -> None:
    unfinished = [db.UnfinishedRow("b.tif", db.RUNNING, "host:12"), db.UnfinishedRow("a.tif", db.QUEUED, None)]
    report = summarize(rows(counts=counts(running=1, queued=5), unfinished=unfinished), NO_UPLOADS, generated_at=0.0)
    assert report["unfinished"] == [
        {"file": "b.tif", "status": "running", "worker": "host:12"},
        {"file": "a.tif", "status": "queued", "worker": None},
    ]
    assert report["batch_summary"]["total_images_found"] == 6 and report["batch_summary"]["images_per_hour"] == 0.0


def test_per_folder_names_the_root_dot_and_sorts_folders() -> None:
    per_folder = [
        db.FolderStateCount("z", db.DONE, 2),
        db.FolderStateCount("", db.FAILED, 1),
        db.FolderStateCount("a/b", db.DONE, 1),
        db.FolderStateCount("", db.DONE, 4),
    ]
    report = summarize(rows(per_folder=per_folder), NO_UPLOADS, generated_at=0.0)
    assert report["per_folder"] == {".": {"failed": 1, "done": 4}, "a/b": {"done": 1}, "z": {"done": 2}}
    assert list(report["per_folder"]) == [".", "a/b", "z"]


def test_skipped_files_and_folders_are_merged_by_path_a_file_first() -> None:
    report = summarize(
        rows(
            skipped_images=[db.SkipRow("b/small.tif", "too_small"), db.SkipRow("link.tif", "symlink")],
            skipped_folders=[db.SkipRow("a", "no_tiff"), db.SkipRow("link.tif", "hidden")],
            skip_reasons={"too_small": 1, "symlink": 1},
        ),
        NO_UPLOADS,
        generated_at=0.0,
    )
    assert report["skipped"] == [
        {"path": "a", "kind": "folder", "reason": "no_tiff"},
        {"path": "b/small.tif", "kind": "file", "reason": "too_small"},
        {"path": "link.tif", "kind": "file", "reason": "symlink"},
        {"path": "link.tif", "kind": "folder", "reason": "hidden"},
    ]
    assert report["skip_reasons"] == {"too_small": 1, "symlink": 1}


def test_verification_counts_by_verdict() -> None:
    report = summarize(rows(verified={1: 5, 0: 2}), NO_UPLOADS, generated_at=0.0)
    assert report["verification"] == {"identical": 5, "different": 2}


def test_one_jobs_report_names_it_and_counts_its_uploads_only_when_local() -> None:
    one = rows(job_id=7, jobs=[JOB], n_jobs=3)
    report = summarize(one, {"objects": 2, "bytes": 10}, generated_at=0.0)
    entry = {"id": 7, "input_dir": "/data/in", "output_dir": "/data/out", "options": {"num_pieces": 4}}
    assert report["job"] == entry and report["jobs"] == [entry] and report["jobs_in_database"] == 3
    assert report["uploads"] == {"objects": 2, "bytes": 10}
    assert upload_prefix(one) == "/data/out"
    assert upload_prefix(rows(job_id=7, jobs=[JOB._replace(output_dir="s3://bucket/out")])) is None
    assert upload_prefix(rows(job_id=None, jobs=[JOB])) is None  # every job's report: every upload
    assert upload_prefix(rows(job_id=8, jobs=[])) is None
    every = summarize(rows(jobs=[JOB, JOB._replace(id=8)], n_jobs=2), NO_UPLOADS, generated_at=0.0)
    assert every["job"] is None and [j["id"] for j in every["jobs"]] == [7, 8]


@pytest.mark.parametrize("first_start", [None, 0.0])
def test_no_calendar_span_without_a_first_start(first_start: float | None) -> None:
    done = db.DoneTotals(first_start, 50.0, 1.0, 1, 0, 0, 0)
    report = summarize(rows(counts=counts(done=1), done=done, intervals=[(0.0, 1.0)]), NO_UPLOADS, generated_at=0.0)
    assert report["throughput"]["calendar_s"] == 0.0 and report["throughput"]["idle_s"] == 0.0
    assert report["batch_summary"]["images_per_hour"] == 3600.0

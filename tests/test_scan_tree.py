"""scan_tree on a real tree, field by field: what it lists as skipped, records per folder, logs, fails and queues.

These pin the details the CLI and the report show (paths, kinds, reasons, counts); a mutation run of scan.py
(issue #17 item 7) found them unchecked.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

from tessq.jobs import db, scan, task
from tessq.jobs.settings import options_fingerprint
from tessq.options import SliceOptions
from tests.conftest import seed_tree, write_tiff

OPTIONS = SliceOptions(min_size=32)


def open_table(tmp_path: Path) -> None:
    db.open_database(f"sqlite:///{tmp_path}/ws/tessq.db")
    db.create_schema()


def scan_once(src: Path, out: Path, **kwargs: object) -> scan.ScanSummary:
    return scan.scan_tree(src, out, OPTIONS, options_fingerprint(OPTIONS), **kwargs)  # type: ignore[arg-type]


def cut_queued(summary: scan.ScanSummary) -> None:
    """Cut what the scan queued, in this process, as a worker would (claim, cut, commit)."""
    for image_id in summary.enqueue_ids:
        task.process_image(image_id)
    task.wait_for_commit()


def lose_table(tmp_path: Path) -> None:
    """The status table is deleted and made again, empty; the output folders stay."""
    db.database.close()
    (tmp_path / "ws" / "tessq.db").unlink()
    open_table(tmp_path)


def two_images_cut(tmp_path: Path) -> tuple[Path, Path]:
    """in/a.tif and in/b.tif, scanned and cut into out/a and out/b."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif", 64, 96, seed=1)
    write_tiff(src / "b.tif", 64, 96, seed=2)
    open_table(tmp_path)
    cut_queued(scan_once(src, out))
    return src, out


def rows() -> dict[str, db.Image]:
    with db.session():
        return {r.rel_path: r for r in db.Image.select()}


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """The seed's tree plus a symlinked TIFF, a symlinked folder and the output folder inside the input."""
    src, out = tmp_path / "in", tmp_path / "in" / "out"
    seed_tree(src)
    os.symlink(src / "dup" / "a.tif", src / "link.tif")
    os.symlink(src / "project_beta", src / "linkdir")
    os.symlink(src / "dup" / "a.tif", src / "project_beta" / "link2.tif")
    (src / "jpgs").mkdir()
    (src / "jpgs" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    write_tiff(src / "project_alpha" / "survey_002" / "tiny.tif", 8, 8)
    write_tiff(src / "dup" / "sub.tif")  # beside dup/sub/, which holds a TIFF too: the two need distinct outputs
    write_tiff(src / "dup" / "sub" / "c.tif")
    out.mkdir(parents=True)
    open_table(tmp_path)
    return src, out


def test_every_file_and_folder_not_cut_is_listed_by_path_kind_and_reason(tree: tuple[Path, Path]) -> None:
    src, out = tree
    summary = scan_once(src, out)
    assert summary.skipped_entries == [
        {"path": ".git", "kind": "folder", "reason": "hidden"},
        {"path": "jpgs", "kind": "folder", "reason": "no_tiff"},
        {"path": "link.tif", "kind": "file", "reason": "symlink"},
        {"path": "linkdir", "kind": "folder", "reason": "symlink"},
        {"path": "out", "kind": "folder", "reason": "excluded"},
        {"path": "project_alpha/survey_002/tiny.tif", "kind": "file", "reason": "too_small"},
        {"path": "project_beta/crops", "kind": "folder", "reason": "no_tiff"},
        {"path": "project_beta/link2.tif", "kind": "file", "reason": "symlink"},
        {"path": "project_beta/small.tif", "kind": "file", "reason": "too_small"},
    ]
    assert summary.skipped == {"too_small": 2} and summary.folders_skipped == {"no_tiff": 2}
    assert (summary.input_dir, summary.output_dir, summary.check_output) == (str(src), str(out), "stat")
    assert summary.folders_with_tiffs == 6  # survey_001, survey_002, project_beta, the unicode folder, dup, dup/sub
    assert summary.found == 10 and summary.queued == 7
    outputs = {r.rel_path: r.out_rel for r in rows().values()}
    assert outputs["dup/sub/c.tif"] == "dup/sub/c" and outputs["dup/sub.tif"] not in ("dup/sub", "dup/sub/c")
    [failed] = summary.failed_at_scan
    assert failed["file"] == "project_beta/corrupt.tif"
    assert failed["type"] == rows()["project_beta/corrupt.tif"].error_type and failed["type"]
    assert "corrupt.tif" in failed["message"]


def test_the_status_table_gets_each_folder_with_its_counts_and_the_job_its_settings(
    tree: tuple[Path, Path],
) -> None:
    src, out = tree
    summary = scan_once(src, out)
    with db.session():
        folders = {f.path: (f.n_tiffs, f.n_other_images, f.skip_reason) for f in db.Folder.select()}
        [job] = list(db.Job.select())
    assert folders == {
        "project_alpha/survey_001": (2, 1, None),
        "project_alpha/survey_002": (1, 0, None),
        "project_beta": (2, 0, None),
        "project_beta/crops": (0, 2, "no_tiff"),
        "jpgs": (0, 1, "no_tiff"),
        "unicode ü dir": (1, 0, None),
        "dup": (3, 0, None),
        "dup/sub": (1, 0, None),
        ".git": (0, 0, "hidden"),
        "linkdir": (0, 0, "symlink"),
        "out": (0, 0, "excluded"),
    }
    assert (job.input_dir, job.output_dir, job.options_hash) == (str(src), str(out), options_fingerprint(OPTIONS))
    assert json.loads(job.options) == json.loads(json.dumps(OPTIONS.to_dict(), sort_keys=True))
    queued = sorted(r.id for r in rows().values() if r.status == db.QUEUED)
    assert sorted(summary.enqueue_ids) == queued and len(queued) == 7
    assert {r.out_rel for r in rows().values()} >= {
        "dup/a.tif",
        "dup/a.TIFF",
        "project_alpha/survey_001/aerial_photo_001",
    }
    assert all(r.attempts == 0 for r in rows().values())


def test_following_symlinks_cuts_the_linked_tiff_and_excluded_folders_are_listed(tree: tuple[Path, Path]) -> None:
    src, out = tree
    summary = scan_once(src, out, follow_symlinks=True, exclude=(src / "dup",))
    linked = rows()["link.tif"]
    assert linked.status == db.QUEUED and (linked.width, linked.height) == (96, 64)
    assert {"path": "dup", "kind": "folder", "reason": "excluded"} in summary.skipped_entries
    assert not any(p.startswith("dup/") for p in rows())


def test_skipped_entries_are_logged_one_by_one_up_to_the_limit_then_summarised(
    tree: tuple[Path, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tree
    caplog.set_level(logging.DEBUG, logger="tessq.scan")
    monkeypatch.setattr(scan, "SKIP_LOG_EACH_MAX", 9)  # exactly as many as there are: each one at INFO
    scan_once(src, out)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "skipped folder .git: hidden" in infos and "skipped file project_beta/small.tif: too_small" in infos
    assert any(m.startswith("unreadable project_beta/corrupt.tif: ") and "corrupt.tif" in m[30:] for m in infos)
    caplog.clear()
    monkeypatch.setattr(scan, "SKIP_LOG_EACH_MAX", 8)
    scan_once(src, out)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debugs = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "skipped 9 files and folders (each listed at DEBUG, and in `tessq report --json`)" in infos
    assert not any(m.startswith("skipped folder") for m in infos)
    assert "skipped folder .git: hidden" in debugs


def test_a_file_moved_away_and_back_is_queued_again_with_its_header_from_the_table(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "sub" / "a.tif", 64, 48, seed=1)
    open_table(tmp_path)
    assert scan_once(src, out).already_done == 0  # OUT does not exist yet: nothing to adopt
    before = rows()["sub/a.tif"]
    away = tmp_path / "away.tif"
    os.rename(src / "sub" / "a.tif", away)  # rename keeps size and mtime: the known header applies
    scan_once(src, out)
    assert rows()["sub/a.tif"].status == db.CANCELLED
    # Garbled while away but with its size and mtime kept: proof the header is taken from the table, not re-read.
    st = away.stat()
    data = bytearray(away.read_bytes())
    data[4:8] = b"\xff\xff\xff\x7f"
    away.write_bytes(bytes(data))
    os.utime(away, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(away, src / "sub" / "a.tif")
    back = scan_once(src, out)
    after = rows()["sub/a.tif"]
    assert after.status == db.QUEUED and after.id in back.enqueue_ids
    assert (after.width, after.height, after.pixel_bytes) == (before.width, before.height, before.pixel_bytes)
    assert after.pixel_bytes == 64 * 48 * 3


def test_a_file_that_stops_being_regular_after_the_listing_fails_as_unsupported(tmp_path: Path) -> None:
    write_tiff(tmp_path / "a.tif")
    [entry] = [e for e in os.scandir(tmp_path) if e.name == "a.tif"]
    (tmp_path / "a.tif").unlink()
    os.mkfifo(tmp_path / "a.tif")
    row = scan.candidate_row(entry, "sub", "a", OPTIONS)
    assert (row["status"], row["error_type"]) == (db.FAILED, "unsupported")
    assert row["error_message"] == f"{entry.path}: not a regular file"
    assert (row["rel_path"], row["folder"], row["out_rel"]) == ("sub/a.tif", "sub", "sub/a")


def test_a_file_whose_read_fails_is_recorded_unreadable_with_the_os_reason(tmp_path: Path) -> None:
    # /proc/self/mem is a regular file whose read at offset 0 fails (EIO or EINVAL): a real OS error, no mock.
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux /proc")
    os.symlink("/proc/self/mem", tmp_path / "mem.tif")
    [entry] = list(os.scandir(tmp_path))
    row = scan.candidate_row(entry, "", "mem", OPTIONS)
    assert (row["status"], row["error_type"]) == (db.FAILED, "unreadable")
    reasons = {f"{entry.path}: {os.strerror(code)}" for code in (errno.EIO, errno.EINVAL)}  # by kernel version
    assert row["error_message"] in reasons


def test_a_name_that_is_not_utf8_fails_with_a_message_naming_it(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.tif"
    try:
        write_tiff(Path(os.fsdecode(raw)))
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    [entry] = [e for e in os.scandir(tmp_path) if e.name.endswith(".tif")]
    row = scan.candidate_row(entry, "", "cafe", OPTIONS)
    assert (row["status"], row["error_type"]) == (db.FAILED, "unsupported_name")
    assert row["error_message"] == f"{scan.printable(entry.path)}: file name is not valid UTF-8; rename it"
    assert row["rel_path"] == "caf\\xe9.tif"


def test_a_too_small_image_is_skipped_with_a_message_naming_the_file(tmp_path: Path) -> None:
    write_tiff(tmp_path / "tiny.tif", 16, 16)
    [entry] = list(os.scandir(tmp_path))
    row = scan.candidate_row(entry, "", "tiny", OPTIONS)
    assert (row["status"], row["skip_reason"]) == (db.SKIPPED, "too_small")
    assert row["error_message"].startswith(f"{entry.path}: ") and "32" in row["error_message"]


def test_probing_in_processes_starts_only_at_the_threshold_of_headers_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        write_tiff(tmp_path / f"img_{i}.tif", 40, 50, seed=i)
    files = [(e, "", e.name) for e in sorted(os.scandir(tmp_path), key=lambda e: e.name)]
    pools: list[int] = []
    real_pool = scan.ProcessPoolExecutor

    def counting_pool(*args: object, **kwargs: object) -> object:
        pools.append(int(kwargs["max_workers"]))  # type: ignore[call-overload]
        return real_pool(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scan, "ProcessPoolExecutor", counting_pool)
    monkeypatch.setattr(scan, "PROBE_PARALLEL_MIN", 4)
    scan.probe_all(files, OPTIONS, parallel=True)
    assert pools == []  # 3 headers to read, below the threshold: read in this process
    monkeypatch.setattr(scan, "PROBE_PARALLEL_MIN", 3)
    pooled = scan.probe_all(files, OPTIONS, parallel=True)
    cpus = len(os.sched_getaffinity(0))
    assert pools == ([cpus] if cpus >= 2 else [])
    assert [r["rel_path"] for r in pooled] == ["img_0.tif", "img_1.tif", "img_2.tif"]
    pools.clear()
    scan.probe_all(files, OPTIONS, parallel=False)  # an S3 or archive source: never forked
    known = {r["rel_path"]: db.KnownHeader(r["src_size"], r["src_mtime"], 50, 40, 6000) for r in pooled}
    scan.probe_all(files, OPTIONS, parallel=True, known=known)  # every header known: nothing to read
    assert pools == []


def test_a_damaged_done_image_is_queued_again_and_one_whose_source_is_gone_is_forgotten(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif", 64, 96, seed=1)
    write_tiff(src / "b.tif", 64, 96, seed=2)
    open_table(tmp_path)
    first = scan_once(src, out)
    cut_queued(first)
    assert {r.status for r in rows().values()} == {db.DONE}
    (out / "a" / "metadata.json").unlink()
    (out / "b" / "metadata.json").unlink()
    (src / "b.tif").unlink()
    again = scan_once(src, out)
    assert again.damaged == [{"file": "a.tif", "reason": "metadata.json missing"}]
    assert again.forgotten == [{"file": "b.tif", "reason": "metadata.json missing; source gone"}]
    assert again.enqueue_ids == [rows()["a.tif"].id] and again.requeued_damaged == 1
    assert rows()["a.tif"].status == db.QUEUED and rows()["b.tif"].status == db.CANCELLED


def test_a_check_output_mode_is_recorded_and_an_unknown_one_is_refused_by_name(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif")
    open_table(tmp_path)
    assert scan_once(src, out, check_output="hash").check_output == "hash"
    with pytest.raises(ValueError, match=r"^check_output must be one of stat, hash, none, not 'bogus'$"):
        scan_once(src, out, check_output="bogus")


def test_a_rebuilt_status_table_keeps_complete_output_folders_as_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif", 64, 96, seed=1)
    write_tiff(src / "b.tif", 64, 96, seed=2)
    write_tiff(src / "c.tif", 64, 96, seed=3)
    write_tiff(src / "0tiny.tif", 8, 8)  # listed first, skipped: adoption goes on past it
    open_table(tmp_path)
    cut_queued(scan_once(src, out))
    fields = ("n_slices", "bytes_out", "pixel_bytes", "width", "height", "worker", "attempts")
    before_loss = rows()["a.tif"]
    cut = {name: getattr(before_loss, name) for name in fields}
    lose_table(tmp_path)  # the output folders are intact
    (out / "b" / "metadata.json").unlink()  # ... but for this one
    batch = json.loads((out / "c" / "batch_metadata.json").read_text())
    (out / "c" / "batch_metadata.json").write_text(json.dumps({**batch, "attempt": 3}))  # cut on its third try
    again = scan_once(src, out)
    assert again.already_done == 2 and again.queued == 1
    kept = "kept 2 image folder(s) already complete in %s as done (their metadata matches the source and the options)"
    assert kept % out in [r.getMessage() for r in caplog.records]
    assert (rows()["c.tif"].status, rows()["c.tif"].attempts) == (db.DONE, 3)
    adopted = rows()["a.tif"]
    assert adopted.status == db.DONE and rows()["b.tif"].status == db.QUEUED
    assert {name: getattr(adopted, name) for name in fields} == cut and cut["n_slices"] == 8
    assert adopted.finished_at == (out / "a" / "metadata.json").stat().st_mtime and adopted.duration_s > 0
    assert abs(adopted.started_at - before_loss.started_at) < 5  # batch_metadata.json's, not the claim's clock
    assert again.enqueue_ids == [rows()["b.tif"].id]


def test_a_folder_made_from_another_source_state_is_not_adopted_after_a_lost_table(tmp_path: Path) -> None:
    src, out = two_images_cut(tmp_path)
    lose_table(tmp_path)
    write_tiff(src / "a.tif", 64, 96, seed=3)  # a.tif changed after it was cut: its folder is stale
    os.utime(src / "a.tif", (1e9, 1e9))
    os.rename(out / "b", out / "b_moved")  # b's folder is elsewhere; a folder for c names b's source
    os.rename(out / "b_moved", out / "c")
    write_tiff(src / "c.tif", 64, 96, seed=2)
    again = scan_once(src, out)
    assert again.already_done == 0 and again.queued == 3


def test_a_rescan_counts_done_rows_and_folders_adopted_for_rows_it_lost_together(tmp_path: Path) -> None:
    src, out = two_images_cut(tmp_path)
    with db.session():
        db.Image.delete().where(db.Image.rel_path == "b.tif").execute()  # one row lost, its folder intact
    again = scan_once(src, out)
    assert (again.already_done, again.queued, again.enqueue_ids) == (2, 0, [])

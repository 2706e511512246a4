"""Scan rules: which folders and files count, from headers only, and how output folders are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tessq.cut.grid import refusal
from tessq.jobs import db, scan
from tessq.jobs.settings import options_fingerprint
from tessq.options import SliceOptions
from tests.conftest import seed_tree, write_tiff


def test_same_stem_in_one_folder_gets_distinct_output_folders() -> None:
    names = scan.output_folder_names(["a.tif", "A.TIFF", "b.tif"])
    assert names == {"a.tif": "a.tif", "A.TIFF": "A.TIFF", "b.tif": "b"}
    assert len(set(names.values())) == 3


def test_output_names_never_escape_or_hide() -> None:
    assert scan.safe_component("..") == "_.."
    assert scan.safe_component(".hidden") == "_.hidden"
    assert "/" not in scan.safe_component("a/b") and "\x00" not in scan.safe_component("a\x00b")
    long = scan.safe_component("x" * 400)
    assert len(long.encode()) <= scan.MAX_NAME_BYTES
    assert long != scan.safe_component("x" * 401)  # the hash keeps truncated names distinct


def test_folder_with_only_jpgs_is_skipped_and_empty_folders_are_ignored() -> None:
    assert scan.classify_folder(0, 3) == "no_tiff"
    assert scan.classify_folder(1, 3) is None
    assert scan.classify_folder(0, 0) is None


def test_eligibility_needs_both_sides_at_least_min_size() -> None:
    at_least = SliceOptions(min_size=1024)
    assert refusal(1024, 1024, at_least) is None
    assert getattr(refusal(1023, 4000, at_least), "kind", None) == "too_small"
    assert getattr(refusal(4000, 1023, at_least), "kind", None) == "too_small"


def test_walk_skips_hidden_and_output_and_survives_symlink_loops(tmp_path: Path) -> None:
    src = tmp_path / "in"
    seed_tree(src)
    os.symlink(src, src / "project_alpha" / "loop")
    os.symlink(src / "dup" / "a.tif", src / "link.tif")
    folders = list(scan.walk(src, follow_symlinks=False, exclude=set()))
    tiffs = sorted(f"{f.rel}/{e.name}" for f in folders for e in f.tiffs)
    assert not any(".git" in t for t in tiffs) and not any("link.tif" in t for t in tiffs)
    followed = list(scan.walk(src, follow_symlinks=True, exclude=set()))  # terminates despite the loop
    assert any(e.name == "link.tif" for f in followed for e in f.tiffs)


def test_scan_records_rows_from_headers_and_is_idempotent(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    seed_tree(src)
    db.open_database(f"sqlite:///{tmp_path}/ws/tessq.db")
    db.create_schema()
    options = SliceOptions(min_size=32)
    first = scan.scan_tree(src, out, options, options_fingerprint(options))
    assert first.found == 7 and first.queued == 5
    assert first.skipped == {"too_small": 1} and first.folders_skipped == {"no_tiff": 1}
    assert [f["file"] for f in first.failed_at_scan] == ["project_beta/corrupt.tif"]
    second = scan.scan_tree(src, out, options, options_fingerprint(options))
    assert second.queued == 0 and second.requeued == 0  # nothing enqueued twice
    write_tiff(src / "project_alpha/survey_002/new.tif")
    third = scan.scan_tree(src, out, options, options_fingerprint(options))
    assert third.queued == 1 and third.found == 8
    with db.session():
        row = db.Image.get(db.Image.rel_path == "project_alpha/survey_001/aerial_photo_002.tif")
    assert (row.width, row.height, row.pixel_bytes) == (72, 80, 72 * 80 * 2)


def test_probing_in_a_process_pool_gives_the_same_rows_in_the_same_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(12):
        write_tiff(tmp_path / f"img_{i:02d}.tif", 40, 50, seed=i)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    files = [(e, "", e.name.rsplit(".", 1)[0]) for e in sorted(os.scandir(tmp_path), key=lambda e: e.name)]
    (tmp_path / "img_03.tif").unlink()  # vanished after the listing: a warning, not a row
    sequential = scan.probe_all(files, SliceOptions(min_size=32), parallel=False)
    monkeypatch.setattr(scan, "PROBE_PARALLEL_MIN", 1)
    pooled = scan.probe_all(files, SliceOptions(min_size=32), parallel=True)
    assert pooled == sequential
    assert len(pooled) == 12 and [r["status"] for r in pooled].count(db.FAILED) == 1
    vanished = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(vanished) == 2 and all(m.startswith(f"cannot stat {tmp_path}/img_03.tif: ") for m in vanished)


def test_a_rescan_trusts_known_headers_while_size_and_mtime_match_and_rereads_changed_files(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "a.tif", 64, 48, seed=1)
    write_tiff(src / "b.tif", 64, 48, seed=2)
    db.open_database(f"sqlite:///{tmp_path}/ws/tessq.db")
    db.create_schema()
    options = SliceOptions(min_size=32)
    assert scan.scan_tree(src, out, options, options_fingerprint(options)).queued == 2
    with db.session():
        first = db.Image.get(db.Image.rel_path == "a.tif")
    assert sorted((first.width, first.height)) == [48, 64]
    # Garble both headers. a.tif keeps its size and mtime: a rescan must not read it again (same rows, nothing
    # to redo). b.tif's mtime moves: it is read again and found corrupt.
    for name in ("a.tif", "b.tif"):
        path = src / name
        st = path.stat()
        data = bytearray(path.read_bytes())
        data[4:8] = b"\xff\xff\xff\x7f"  # first IFD offset far past the end of the file
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns if name == "a.tif" else st.st_mtime_ns + 10**9))
    again = scan.scan_tree(src, out, options, options_fingerprint(options))
    assert [f["file"] for f in again.failed_at_scan] == ["b.tif"]
    with db.session():
        a = db.Image.get(db.Image.rel_path == "a.tif")
    assert (a.status, a.width, a.height, a.pixel_bytes) == (db.QUEUED, first.width, first.height, first.pixel_bytes)
    # Eligibility is recomputed from the known header when the settings change.
    stricter = SliceOptions(min_size=50)
    assert scan.scan_tree(src, out, stricter, options_fingerprint(stricter)).skipped == {"too_small": 1}

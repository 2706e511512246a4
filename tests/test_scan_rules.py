"""Scan rules a whole-tree scan does not pin down: names, collisions, skipped folders, output checks.

Each test proves one rule of tessq.jobs.scan on plain values or real folders (no mocks), found untested by a
mutation run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tessq.cut import grid
from tessq.jobs import scan
from tessq.options import SliceOptions


def test_hidden_and_system_folders_are_not_entered_and_others_are() -> None:
    for name in (".git", ".anything", "__MACOSX", "__pycache__", ".tessq"):
        assert scan.is_skipped_dir(name), name
    for name in ("data", "git", "x.git", "MACOSX", "_pycache_"):
        assert not scan.is_skipped_dir(name), name


def test_tiff_and_image_names_are_matched_case_insensitively_by_extension() -> None:
    assert scan.is_tiff_name("A.TIF") and scan.is_tiff_name("b.tiff") and not scan.is_tiff_name("c.tif.jpg")
    assert scan.is_image_name("photo.JPEG") and scan.is_image_name("x.tif") and not scan.is_image_name("notes.txt")


def test_an_image_of_exactly_the_minimum_size_is_cut() -> None:
    options = SliceOptions(min_size=32, num_pieces=1)
    assert grid.refusal(32, 32, options) is None
    assert [getattr(grid.refusal(w, h, options), "kind", None) for w, h in [(31, 32), (32, 31)]] == ["too_small"] * 2


def test_a_folder_is_skipped_as_no_tiff_only_when_it_has_other_images_and_no_tiff() -> None:
    assert scan.classify_folder(0, 1) == "no_tiff"
    assert scan.classify_folder(2, 0) is None


def test_safe_component_replaces_separators_and_control_characters_one_for_one() -> None:
    assert scan.safe_component("a/b\\c") == "a_b_c"
    assert scan.safe_component("t\x00a\x1fb\x7fc d") == "t_a_b_c d"
    assert scan.safe_component("") == "_"
    assert scan.safe_component(".") == "_."
    assert scan.safe_component("ok name") == "ok name"


def test_a_long_name_is_cut_to_the_byte_limit_with_a_hash_of_the_whole_name() -> None:
    name = "é" * 200  # 400 bytes: the cut must not split a character
    out = scan.safe_component(name)
    head, digest = out.rsplit("~", 1)
    assert digest == hashlib.sha256(name.encode()).hexdigest()[:12]
    assert head == "é" * ((scan.MAX_NAME_BYTES - 13) // 2)
    assert len(out.encode()) <= scan.MAX_NAME_BYTES
    exact = "x" * scan.MAX_NAME_BYTES
    assert scan.safe_component(exact) == exact  # at the limit: kept whole
    over = scan.safe_component(exact + "x")
    assert len(over.encode()) == scan.MAX_NAME_BYTES


def test_hashed_name_appends_eight_hex_of_the_original_and_stays_bounded() -> None:
    digest = hashlib.sha256(b"a.tif").hexdigest()[:8]
    assert scan.hashed_name("a", "a.tif") == f"a~{digest}"
    assert scan.hashed_name("a", "a.tif") == scan.hashed_name("a", "a.tif")
    assert scan.hashed_name("a", "a.tif") != scan.hashed_name("a", "A.tif")
    long = scan.hashed_name("y" * 300, "y.tif")
    assert long == "y" * (scan.MAX_NAME_BYTES - 9) + "~" + hashlib.sha256(b"y.tif").hexdigest()[:8]
    undecodable = os.fsdecode(b"caf\xe9.tif")  # a Latin-1 name: hashed from its raw bytes
    assert scan.hashed_name("c", undecodable).endswith(hashlib.sha256(b"caf\xe9.tif").hexdigest()[:8])


def test_a_stem_that_names_a_sibling_output_folder_uses_the_whole_file_name() -> None:
    assert scan.output_folder_names(["site.tif", "other.tif"], taken=["Site"]) == {
        "site.tif": "site.tif",
        "other.tif": "other",
    }


def test_names_that_sanitising_made_equal_get_a_hash_and_the_unchanged_one_keeps_its_name() -> None:
    names = scan.output_folder_names([".hid.tif", "_.hid.tif"])
    assert names["_.hid.tif"] == "_.hid"
    assert names[".hid.tif"] == scan.hashed_name("_.hid", ".hid.tif")


def test_a_whole_file_name_that_still_meets_a_sibling_folder_is_hashed() -> None:
    # 'x.tif' beside folders 'x' and 'X.TIF': neither the stem nor the whole name is free
    names = scan.output_folder_names(["x.tif"], taken=["x", "X.TIF"])
    assert names == {"x.tif": scan.hashed_name("x.tif", "x.tif")}


def test_output_parents_lists_every_folder_up_to_the_root() -> None:
    assert scan.output_parents(["a/b/c", "d", "a/e"]) == {"": {"a", "d"}, "a": {"b", "e"}, "a/b": {"c"}}
    assert scan.output_parents([]) == {}
    assert scan.output_parents([""]) == {}


def test_outputs_collide_when_equal_ignoring_case_or_nested_and_the_first_keeps_its_path() -> None:
    assert scan.colliding_outputs(["a/x", "A/X", "b"]) == {1: "a/x"}
    assert scan.colliding_outputs(["a", "a/inner"]) == {1: "a"}
    assert scan.colliding_outputs(["Top/inner", "top"]) == {0: "top"}
    assert scan.colliding_outputs(["a/b", "ab", "a/c"]) == {}


def test_relative_paths_use_posix_separators_and_the_root_is_empty() -> None:
    assert scan.relative_path("", "a.tif") == "a.tif"
    assert scan.relative_path("x/y", "a.tif") == "x/y/a.tif"


def test_printable_keeps_utf8_and_escapes_undecodable_bytes() -> None:
    assert scan.printable("café/ok.tif") == "café/ok.tif"
    assert scan.printable(os.fsdecode(b"caf\xe9.tif")) == "caf\\xe9.tif"


def test_pixel_bytes_is_width_height_samples_and_itemsize() -> None:
    assert scan.pixel_bytes(SimpleNamespace(width=3, height=5, samples=4, dtype="uint16")) == 3 * 5 * 4 * 2
    assert scan.pixel_bytes(SimpleNamespace(width=3, height=5, samples=None, dtype="uint8")) == 15
    assert scan.pixel_bytes(SimpleNamespace(width=3, height=5, samples=2, dtype=None)) == 3 * 5 * 2 * 8
    assert scan.pixel_bytes(SimpleNamespace(width=3, height=5, samples=1, dtype=object())) == 15


def test_the_summary_as_a_dict_leaves_out_the_enqueue_ids() -> None:
    summary = scan.ScanSummary(input_dir="in", output_dir="out", found=2, enqueue_ids=[1, 2])
    data = summary.as_dict()
    assert "enqueue_ids" not in data and data["found"] == 2 and data["input_dir"] == "in"
    assert summary.enqueue_ids == [1, 2]  # the summary itself keeps them


def test_a_file_ref_stats_its_path_with_or_without_following_links(tmp_path: Path) -> None:
    target = tmp_path / "a.tif"
    target.write_bytes(b"12345")
    (tmp_path / "link.tif").symlink_to(target)
    ref = scan.FileRef(str(tmp_path / "link.tif"), "link.tif")
    assert ref.stat().st_size == 5
    assert ref.stat(follow_symlinks=False).st_ino == os.lstat(tmp_path / "link.tif").st_ino


# --- tessq output folders -----------------------------------------------------------------------------------


def image_folder(
    root: Path, slices: dict[str, bytes], *, schema: str = "tessq.metadata", listed: int | None = None
) -> Path:
    """A real image folder: its slice files and a metadata.json recording their names, sizes and hashes."""
    root.mkdir(parents=True)
    records = [
        {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in slices.items()
    ]
    for name, data in slices.items():
        (root / name).write_bytes(data)
    (root / scan.METADATA_NAME).write_text(json.dumps({"schema": schema, "slices": records[:listed]}))
    return root


def test_only_a_folder_whose_metadata_says_tessq_is_a_tessq_output(tmp_path: Path) -> None:
    assert scan.is_tessq_output(image_folder(tmp_path / "ours", {"slice_0.png": b"x"}))
    assert not scan.is_tessq_output(image_folder(tmp_path / "theirs", {}, schema="other"))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / scan.METADATA_NAME).write_text('["tessq.metadata"]')
    assert not scan.is_tessq_output(tmp_path / "list")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / scan.METADATA_NAME).write_bytes(b"\xff{")
    assert not scan.is_tessq_output(tmp_path / "bad")
    assert not scan.is_tessq_output(tmp_path / "missing")


def test_a_complete_folder_passes_the_stat_check_without_reading_metadata(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc", "slice_1.png": b"defg"})
    (folder / "slice_0.pgw").write_text("world file: not a slice")
    assert scan.output_problem(folder, 2, 7) is None
    (folder / scan.METADATA_NAME).write_text("not json")  # the fast path never reads it
    assert scan.output_problem(folder, 2, 7) is None
    assert scan.output_problem(folder, 2, 7, "stat") is None


def test_no_check_at_all_in_mode_none(tmp_path: Path) -> None:
    assert scan.output_problem(tmp_path / "missing", 1, 1, "none") is None


def test_a_missing_or_unusable_output_folder_is_named(tmp_path: Path) -> None:
    assert scan.output_problem(tmp_path / "missing", 1, 1) == "output missing"
    (tmp_path / "file").write_bytes(b"x")
    assert scan.output_problem(tmp_path / "file", 1, 1) == "output is not a folder"
    (tmp_path / "empty").mkdir()
    assert scan.output_problem(tmp_path / "empty", 1, 1) == "metadata.json missing"


@pytest.mark.parametrize("slices", ["3", '["slice_0.png"]', "null"])
def test_a_metadata_json_whose_slices_are_not_records_is_unreadable_not_a_crash(tmp_path: Path, slices: str) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc"})
    (folder / scan.METADATA_NAME).write_text(f'{{"schema": "tessq.metadata", "slices": {slices}}}')
    # a count that does not match forces the read of metadata.json, in both modes
    assert scan.output_problem(folder, 2, 3) == "metadata.json unreadable"
    assert scan.output_problem(folder, 1, 3, "hash") == "metadata.json unreadable"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_output_folder_says_so(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc"})
    folder.chmod(0)
    try:
        assert scan.output_problem(folder, 1, 3) == "output unreadable (Permission denied)"
    finally:
        folder.chmod(0o755)


def test_a_slice_of_another_size_is_named_with_both_sizes(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc", "slice_1.png": b"defg"})
    (folder / "slice_1.png").write_bytes(b"de")
    assert scan.output_problem(folder, 2, 7) == "slice slice_1.png size differs (2 bytes, metadata.json says 4)"


def test_a_missing_slice_is_named_and_further_problems_are_counted(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc", "slice_1.png": b"defg", "slice_2.png": b"h"})
    (folder / "slice_0.png").unlink()
    (folder / "slice_2.png").unlink()
    assert scan.output_problem(folder, 3, 8) == "slice slice_0.png missing (and 1 more)"
    (folder / "slice_2.png").write_bytes(b"h")
    assert scan.output_problem(folder, 3, 8) == "slice slice_0.png missing"


def test_a_slice_that_is_a_folder_is_counted_missing(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc"})
    (folder / "slice_0.png").unlink()
    (folder / "slice_0.png").mkdir()
    assert (
        scan.output_problem(folder, 1, 3) == "slice slice_0.png size differs ("
        f"{(folder / 'slice_0.png').stat().st_size} bytes, metadata.json says 3)"
    )


def test_unreadable_metadata_is_named(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc"})
    for broken in ("not json", '{"schema": "tessq.metadata"}', "[1, 2]", "\xff"):
        (folder / scan.METADATA_NAME).write_bytes(broken.encode("latin-1"))
        assert scan.output_problem(folder, 2, 3) == "metadata.json unreadable", broken


def test_a_slice_record_without_a_file_name_is_reported_as_missing(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {})
    (folder / scan.METADATA_NAME).write_text(json.dumps({"slices": [{"bytes": 3}]}))
    assert scan.output_problem(folder, 1, 3) == "slice ? missing"


def test_metadata_listing_fewer_slices_than_the_status_table_is_a_problem(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc", "slice_1.png": b"defg"}, listed=1)
    assert scan.output_problem(folder, 3, 7) == "metadata.json lists 1 slices, the status table 3"
    assert scan.output_problem(folder, None, None) is None  # nothing recorded to compare with


def test_the_stat_check_counts_only_slice_files(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc", "slice_1.TIF": b"defg"})
    (folder / "notes.png").write_bytes(b"zzzz")  # not a slice_ name
    (folder / "slice_x.pgw").write_bytes(b"zzzz")  # not a slice suffix
    (folder / "slice_dir.png").mkdir()  # not a file
    assert scan.output_problem(folder, 2, 7) is None


def test_the_hash_check_reads_every_slice_and_names_a_changed_one(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc", "slice_1.png": b"defg"})
    assert scan.output_problem(folder, 2, 7, "hash") is None
    (folder / "slice_1.png").write_bytes(b"DEFG")  # same size, other bytes: only the hash check sees it
    assert scan.output_problem(folder, 2, 7) is None
    assert scan.output_problem(folder, 2, 7, "hash") == "slice slice_1.png hash differs from metadata.json"
    assert scan.output_problem(folder, None, None, "hash") == "slice slice_1.png hash differs from metadata.json"


def test_the_hash_check_hashes_large_slices_in_full(tmp_path: Path) -> None:
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # more than one 4 MiB read
    folder = image_folder(tmp_path / "img", {"slice_0.tif": big})
    assert scan.output_problem(folder, 1, len(big), "hash") is None
    changed = big[:-1] + b"\x00"
    (folder / "slice_0.tif").write_bytes(changed)
    assert scan.output_problem(folder, 1, len(big), "hash") == "slice slice_0.tif hash differs from metadata.json"


def test_only_separators_and_control_characters_are_replaced() -> None:
    assert scan.safe_component("X-ray XX.tif") == "X-ray XX.tif"


def test_long_names_with_undecodable_bytes_are_hashed_from_their_raw_bytes_not_refused() -> None:
    raw = b"\xe9" * 200  # Latin-1 bytes, not UTF-8: os.fsdecode keeps them as lone surrogates
    name = os.fsdecode(raw)
    out = scan.safe_component(name)
    assert out.endswith("~" + hashlib.sha256(raw).hexdigest()[:12])
    assert len(out.encode("utf-8", "surrogateescape")) <= scan.MAX_NAME_BYTES
    # the cut head keeps only what decodes as UTF-8 (here nothing): the hash alone tells such names apart
    assert out == "~" + hashlib.sha256(raw).hexdigest()[:12]
    assert scan.hashed_name(name, "orig.tif") == "~" + hashlib.sha256(b"orig.tif").hexdigest()[:8]


def test_hashed_name_never_splits_a_character_at_the_byte_limit() -> None:
    out = scan.hashed_name("é" * 100, "x.tif")  # 200 bytes: the limit falls inside a character
    assert out == "é" * ((scan.MAX_NAME_BYTES - 9) // 2) + "~" + hashlib.sha256(b"x.tif").hexdigest()[:8]


def test_the_root_is_never_a_colliding_image_folder() -> None:
    assert scan.colliding_outputs([".", "a"]) == {}


def test_a_metadata_json_larger_than_64_mib_is_not_read_whole(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    padding = "x" * (64 * 1024 * 1024)  # valid JSON a few bytes longer than the 64 MiB read: cut, so unreadable
    (folder / scan.METADATA_NAME).write_text(json.dumps({"schema": "tessq.metadata", "pad": padding}))
    assert not scan.is_tessq_output(folder)


def test_colliding_outputs_fail_at_scan_with_the_path_they_would_share() -> None:
    candidates = [
        {"rel_path": "a/x.tif", "out_rel": "a/x", "status": "queued", "skip_reason": None},
        {"rel_path": "b.tif", "out_rel": "b", "status": "failed", "skip_reason": None},  # failed: not cut
        {"rel_path": "A/X.tiff", "out_rel": "A/X", "status": "skipped", "skip_reason": "too_small"},
        {"rel_path": "b/c.tif", "out_rel": "b/c", "status": "queued", "skip_reason": None},
    ]
    scan.refuse_colliding(candidates)
    assert candidates[0]["status"] == "queued" and candidates[3]["status"] == "queued"
    assert candidates[1] == {"rel_path": "b.tif", "out_rel": "b", "status": "failed", "skip_reason": None}
    assert candidates[2] == {
        "rel_path": "A/X.tiff",
        "out_rel": "A/X",
        "status": "failed",
        "skip_reason": None,
        "error_type": "output_collision",
        "error_message": "A/X.tiff: its output folder 'A/X' would collide with 'a/x', another image's; rename the"
        " file or its folder",
    }


# --- done images whose output is checked by a rescan -------------------------------------------------------


def done_job(tmp_path: Path, images: dict[str, dict[str, bytes]]) -> tuple[int, Path, dict[str, int]]:
    """A real status table with one job whose images are done, each with a real, complete output folder."""
    from tessq.jobs import db

    out = tmp_path / "out"
    db.open_database(f"sqlite:///{tmp_path}/ws/tessq.db")
    db.create_schema()
    ids = {}
    with db.session():
        job = db.upsert_job(str(tmp_path / "in"), str(out), {}, "h")
        for rel, slices in images.items():
            image_folder(out / rel, slices)
            row = db.Image.create(
                job=job.id,
                rel_path=f"{rel}.tif",
                folder="",
                out_rel=rel,
                src_size=1,
                src_mtime=1.0,
                status=db.DONE,
                n_slices=len(slices),
                bytes_out=sum(map(len, slices.values())),
            )
            ids[rel] = row.id
    return job.id, out, ids


def test_a_rescan_queues_again_the_done_images_whose_output_is_damaged_or_verified_different(tmp_path: Path) -> None:
    from tessq.jobs import db

    job_id, out, ids = done_job(
        tmp_path,
        {
            "a": {"slice_0.png": b"abc"},
            "b": {"slice_0.png": b"de"},
            "c": {"slice_0.png": b"f"},
            "d": {"slice_0.png": b"g"},
        },
    )
    (out / "a" / "slice_0.png").write_bytes(b"ABC")  # same size: only the hash check sees it
    (out / "b" / "slice_0.png").unlink()
    with db.session():
        db.record_verification(ids["c"], False)
        db.record_verification(ids["d"], True)
    summary = scan.ScanSummary(input_dir="in", output_dir=str(out), already_done=5)
    assert scan.check_done_outputs(job_id, out, "stat", summary) == [ids["b"], ids["c"]]
    assert summary.damaged == [
        {"file": "b.tif", "reason": "slice slice_0.png missing"},
        {"file": "c.tif", "reason": scan.VERIFIED_DIFFERENT},
    ]
    assert (summary.requeued_damaged, summary.already_done) == (2, 3)
    with db.session():
        assert {r.rel_path: r.status for r in db.Image.select()} == {
            "a.tif": db.DONE,
            "b.tif": db.QUEUED,
            "c.tif": db.QUEUED,
            "d.tif": db.DONE,
        }
    again = scan.ScanSummary(input_dir="in", output_dir=str(out), already_done=2)
    assert scan.check_done_outputs(job_id, out, "hash", again) == [ids["a"]]
    assert again.damaged == [{"file": "a.tif", "reason": "slice slice_0.png hash differs from metadata.json"}]
    db.database.close()


def test_no_check_mode_and_s3_outputs_only_requeue_what_verify_found_different(tmp_path: Path) -> None:
    from tessq.jobs import db

    job_id, out, ids = done_job(tmp_path, {"a": {"slice_0.png": b"abc"}, "b": {"slice_0.png": b"de"}})
    (out / "a" / "slice_0.png").unlink()
    summary = scan.ScanSummary(input_dir="in", output_dir=str(out))
    assert scan.check_done_outputs(job_id, out, "none", summary) == [] and summary.damaged == []
    assert scan.check_done_outputs(job_id, "s3://bucket/out", "stat", summary) == []
    with db.session():
        db.record_verification(ids["b"], False)
    assert scan.check_done_outputs(job_id, "s3://bucket/out", "stat", summary) == [ids["b"]]
    db.database.close()


def test_a_done_image_whose_source_and_output_are_gone_is_forgotten(tmp_path: Path) -> None:
    from tessq.jobs import db

    job_id, out, ids = done_job(
        tmp_path, {"a": {"slice_0.png": b"abc"}, "b": {"slice_0.png": b"de"}, "c": {"slice_0.png": b"f"}}
    )
    (out / "a" / "slice_0.png").unlink()
    (out / "b" / "slice_0.png").unlink()
    with db.session():
        db.record_verification(ids["c"], False)
    summary = scan.ScanSummary(input_dir="in", output_dir=str(out))
    # a.tif's source is still there: it is cut again; b.tif's and c.tif's are gone
    assert scan.check_done_outputs(job_id, out, "stat", summary, present={"a.tif"}) == [ids["a"]]
    assert summary.forgotten == [{"file": "b.tif", "reason": "slice slice_0.png missing; source gone"}]
    with db.session():
        status = {r.rel_path: (r.status, r.skip_reason) for r in db.Image.select()}
    assert status == {
        "a.tif": (db.QUEUED, None),
        "b.tif": (db.CANCELLED, "source_removed"),
        "c.tif": (db.DONE, None),
    }  # verified different but no source to redo it from: kept
    db.database.close()


def test_an_unknown_check_mode_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="check_output must be one of stat, hash, none, not 'deep'"):
        scan.check_done_outputs(1, tmp_path, "deep", scan.ScanSummary(input_dir="in", output_dir="out"))


def test_many_done_images_are_checked_in_threads_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq.jobs import db

    job_id, out, ids = done_job(tmp_path, {f"i{n}": {"slice_0.png": b"x" * n} for n in range(1, 7)})
    (out / "i3" / "slice_0.png").unlink()
    monkeypatch.setattr(scan, "CHECK_PARALLEL_MIN", 6)
    summary = scan.ScanSummary(input_dir="in", output_dir=str(out))
    assert scan.check_done_outputs(job_id, out, "stat", summary) == [ids["i3"]]
    db.database.close()


def test_the_status_tables_slice_count_and_bytes_drive_the_stat_check(tmp_path: Path) -> None:
    from tessq.jobs import db

    job_id, out, ids = done_job(tmp_path, {"a": {"slice_0.png": b"abc"}, "b": {"slice_0.png": b"de"}})
    (out / "a" / scan.METADATA_NAME).write_text("garbage")  # slices as recorded: metadata.json is not read
    with db.session():
        db.Image.update(n_slices=2).where(db.Image.id == ids["b"]).execute()  # the table expects one more
    summary = scan.ScanSummary(input_dir="in", output_dir=str(out))
    assert scan.check_done_outputs(job_id, out, "stat", summary) == [ids["b"]]
    assert summary.damaged == [{"file": "b.tif", "reason": "metadata.json lists 1 slices, the status table 2"}]
    db.database.close()


def test_a_slice_that_is_a_dangling_link_is_missing(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img", {"slice_0.png": b"abc", "slice_1.png": b"d"})
    (folder / "slice_1.png").unlink()
    (folder / "slice_1.png").symlink_to(tmp_path / "nowhere.png")
    assert scan.output_problem(folder, 2, 4) == "slice slice_1.png missing"

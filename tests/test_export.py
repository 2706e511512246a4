"""ZIP export on real trees: only done images, byte-exact content, determinism, ZIP64, atomic failure."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tessq.errors import ExportDiskFullError, ExportError, TransientError
from tessq.ship import export
from tessq.ship.export import export_zip, shipped_files, verify_archive

DONE = ["a/survey_1/img_1", "a/survey_1/img_2", "ab/img_3", "img_root", "unicode ü dir/photo with space é"]


def make_image(out: Path, rel: str, n_slices: int = 4, slice_bytes: int = 3000) -> None:
    folder = out / rel
    folder.mkdir(parents=True)
    for i in range(n_slices):
        # Incompressible bytes stand in for PNG data; the name decides how it is stored.
        (folder / f"slice_{i}_0_0_10_10.png").write_bytes(os.urandom(slice_bytes))
    (folder / "metadata.json").write_text('{"slices": ' + "[" + ", ".join(['{"x": 1}'] * 50) + "]}")
    (folder / "batch_metadata.json").write_text('{"worker": "host:1"}')


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An output tree with done images, a not-done image, work-in-progress folders and the reports."""
    out = tmp_path / "processed_output"
    for rel in DONE:
        make_image(out, rel)
    make_image(out, "a/survey_1/img_not_done")
    make_image(out, "a/survey_1/.img_4.tessq-tmp")
    make_image(out, "a/survey_1/img_5.tessq-old")
    (out / "batch_report.json").write_text('{"batch_summary": {"done": 4}}')
    (out / "batch_processing.log").write_text("line\n" * 500)
    return out


def expected_files(out: Path, dirs: list[str]) -> dict[str, bytes]:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for d in dirs for p in (out / d).rglob("*") if p.is_file()}
    for name in ("batch_report.json", "batch_processing.log"):
        files[name] = (out / name).read_bytes()
    return files


def archive_contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def test_archive_holds_exactly_the_done_images_and_reports_byte_for_byte(tree: Path) -> None:
    result = export_zip(tree, DONE)
    dest = tree / "processed_output_results.zip"
    assert result["path"] == str(dest) and result["verified"] is True
    assert archive_contents(dest) == expected_files(tree, DONE)
    assert result["entries"] == len(expected_files(tree, DONE))
    assert result["bytes"] == dest.stat().st_size


def test_extraction_with_unzip_reproduces_the_tree(tree: Path, tmp_path: Path) -> None:
    if shutil.which("unzip") is None:
        pytest.skip("Info-ZIP unzip is not installed")
    dest = tmp_path / "r.zip"
    export_zip(tree, DONE, dest)
    target = tmp_path / "x"
    subprocess.run(["unzip", "-q", str(dest), "-d", str(target)], check=True)
    extracted = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert extracted == expected_files(tree, DONE)


def test_two_exports_of_the_same_tree_are_byte_identical_whatever_the_mtimes(tree: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    export_zip(tree, list(reversed(DONE)), first)
    for path in tree.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    export_zip(tree, DONE, second)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
    assert names == sorted(names)


def test_png_entries_are_stored_and_json_and_log_deflated(tree: Path) -> None:
    result = export_zip(tree, DONE)
    with zipfile.ZipFile(result["path"]) as zf:
        kinds = {info.filename: info.compress_type for info in zf.infolist()}
    assert all(kind == zipfile.ZIP_STORED for name, kind in kinds.items() if name.endswith(".png"))
    assert all(kind == zipfile.ZIP_DEFLATED for name, kind in kinds.items() if not name.endswith(".png"))
    assert result["stored"] == sum(name.endswith(".png") for name in kinds)
    assert result["deflated"] == len(kinds) - result["stored"]


def test_folder_option_limits_to_that_folder_and_not_to_names_sharing_its_prefix(tree: Path) -> None:
    result = export_zip(tree, DONE, folder="a/")
    names = set(archive_contents(Path(result["path"])))
    image_entries = {n for n in names if "/" in n}
    assert image_entries and all(
        n.startswith("a/survey_1/img_1/") or n.startswith("a/survey_1/img_2/") for n in image_entries
    )
    assert {"batch_report.json", "batch_processing.log"} <= names


def test_archive_never_contains_itself_or_temporary_items(tree: Path) -> None:
    # The archive placed inside a shipped folder, plus a stray temp archive: neither may be packed.
    dest = tree / "a/survey_1/img_1/r.zip"
    export_zip(tree, DONE, dest)
    (tree / "a/survey_1/img_1/.x.zip.tessq-tmp-99").write_bytes(b"junk")
    export_zip(tree, DONE, dest)
    names = archive_contents(dest)
    assert "a/survey_1/img_1/r.zip" not in names
    assert not any("tessq-tmp" in n or "tessq-old" in n or "not_done" in n for n in names)


def test_more_than_65535_entries_use_the_zip64_end_records(tmp_path: Path) -> None:
    out = tmp_path / "many"
    dirs = []
    for d in range(257):  # 257 folders x 256 files = 65,792 entries, past the 16-bit count
        rel = f"f{d:03d}"
        (out / rel).mkdir(parents=True)
        for i in range(256):
            (out / rel / f"s{i}.png").write_bytes(b"%d" % i)
        dirs.append(rel)
    result = export_zip(out, dirs, tmp_path / "many.zip", extra_files=())
    assert result["entries"] == 257 * 256 > 65_535
    data = (tmp_path / "many.zip").read_bytes()
    assert b"PK\x06\x06" in data[-200:]  # ZIP64 end of central directory record
    with zipfile.ZipFile(tmp_path / "many.zip") as zf:
        infos = zf.infolist()
        assert len(infos) == 257 * 256
        assert zf.read("f256/s255.png") == b"255"


def test_zip64_entry_path_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries over the ZIP64 size limit: the limit is lowered to 1 KiB so the >4 GB code path runs fast."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1024)
    out = tmp_path / "big"
    make_image(out, "img", n_slices=3, slice_bytes=5000)
    dest = tmp_path / "big.zip"
    export_zip(out, ["img"], dest, extra_files=())
    with zipfile.ZipFile(dest) as zf:
        big = [i for i in zf.infolist() if i.file_size > 1024]
        assert big
        # Header id 0x0001 is the ZIP64 extended information extra field.
        assert all(i.extra[:2] == b"\x01\x00" for i in big)
    assert archive_contents(dest) == {
        p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
    }
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-tq", str(dest)], check=True, capture_output=True)


def test_disk_full_removes_the_temp_file_keeps_the_old_archive_and_names_the_destination(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tree / "processed_output_results.zip"
    export_zip(tree, DONE)
    before = dest.read_bytes()
    calls = {"n": 0}
    real_copy = export._copy_exactly

    def fill_up(src, dst, size, path):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst, size, path)

    monkeypatch.setattr(export, "_copy_exactly", fill_up)
    with pytest.raises(ExportDiskFullError) as info:
        export_zip(tree, DONE)
    assert isinstance(info.value, TransientError)
    assert str(dest) in str(info.value)
    assert [p.name for p in tree.iterdir() if "tessq-tmp" in p.name] == []
    assert dest.read_bytes() == before


def test_too_little_free_space_fails_before_writing(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9, 100))
    with pytest.raises(ExportDiskFullError, match=r"processed_output_results\.zip"):
        export_zip(tree, DONE)
    assert not any("zip" in p.name for p in tree.iterdir())


def test_an_interrupted_export_leaves_no_temp_file(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_zip(tree, DONE, progress=interrupt)
    assert not any("zip" in p.name for p in tree.iterdir())


def test_verification_catches_a_corrupted_entry(tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "r.zip"
    export_zip(tree, DONE, dest)
    with zipfile.ZipFile(dest) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".png"))
        expected = [(i.filename, i.file_size) for i in zf.infolist()]
    data = bytearray(dest.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 10] ^= 0xFF  # inside stored data
    dest.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="CRC"):
        verify_archive(dest, expected)


def test_progress_reaches_the_total_input_bytes(tree: Path) -> None:
    seen: list[tuple[int, int]] = []
    export_zip(tree, DONE, progress=lambda d, t: seen.append((d, t)))
    total = sum(len(b) for b in expected_files(tree, DONE).values())
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_log_growing_during_the_export_is_archived_as_the_listed_prefix(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tree / "batch_processing.log"
    listed = log.read_bytes()
    real_write = export._write_archive

    def append_then_write(tmp, files, sizes, progress):  # type: ignore[no-untyped-def]
        with open(log, "a") as f:  # a worker logging while the archive is written
            f.write("late line\n" * 100)
        return real_write(tmp, files, sizes, progress)

    monkeypatch.setattr(export, "_write_archive", append_then_write)
    result = export_zip(tree, DONE, tmp_path / "r.zip")
    assert result["verified"] is True
    assert archive_contents(tmp_path / "r.zip")["batch_processing.log"] == listed


def test_a_done_image_missing_on_disk_is_an_error_not_a_silent_gap(tree: Path) -> None:
    with pytest.raises(ExportError, match="missing on disk"):
        export_zip(tree, [*DONE, "a/gone"])


def test_nothing_done_under_the_folder_is_an_error(tree: Path) -> None:
    with pytest.raises(ExportError, match="nothing to export"):
        export_zip(tree, DONE, folder="zzz")


def test_image_dirs_outside_the_output_are_refused(tree: Path) -> None:
    with pytest.raises(ExportError, match="not inside"):
        shipped_files(tree, ["../elsewhere"])

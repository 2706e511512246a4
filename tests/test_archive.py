"""Archives as IN (issue #18): real .zip/.tar/.tar.gz made by zipfile/tarfile and by the zip/tar tools, through
the real CLI, bit-exact against the same tree cut as a folder; resume and change detection; bad archives."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import seed_tree, tessq_cmd, write_tiff

MIN = "--min-size=32"
SEED_DONE = {
    "project_alpha/survey_001/aerial_photo_001",
    "project_alpha/survey_001/aerial_photo_002",
    "unicode ü dir/photo with space é",
    "dup/a.tif",
    "dup/a.TIFF",
}


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    (tmp / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp / "tmp")  # spools land here: each test checks none is left
    return env


def members(root: Path) -> list[tuple[Path, str]]:
    return [(p, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*"))]


def zip_with(compression: int) -> Callable[[Path, Path], None]:
    def make(root: Path, dest: Path) -> None:
        with zipfile.ZipFile(dest, "w", compression) as zf:
            for path, rel in members(root):
                zf.write(path, rel)

    return make


def tar_with(mode: str) -> Callable[[Path, Path], None]:
    def make(root: Path, dest: Path) -> None:
        with tarfile.open(dest, mode) as tf:
            tf.add(root, arcname=".")

    return make


def zip_tool(*flags: str) -> Callable[[Path, Path], None]:
    def make(root: Path, dest: Path) -> None:
        subprocess.run(["zip", "-q", "-r", *flags, str(dest), "."], cwd=root, check=True)

    return make


def tar_tool(*flags: str) -> Callable[[Path, Path], None]:
    def make(root: Path, dest: Path) -> None:
        subprocess.run(["tar", *flags, "-cf", str(dest), "-C", str(root), "."], check=True)

    return make


BUILDERS = {
    "zipfile-stored.zip": zip_with(zipfile.ZIP_STORED),
    "zipfile-deflated.zip": zip_with(zipfile.ZIP_DEFLATED),
    "tarfile.tar": tar_with("w"),
    "tarfile.tar.gz": tar_with("w:gz"),
    "zip-tool-stored.zip": zip_tool("-0"),
    "zip-tool-deflated.zip": zip_tool("-9"),
    "tar-tool.tar": tar_tool(),
    "tar-tool.tgz": tar_tool("-z"),
    "tarfile.tar.bz2": tar_with("w:bz2"),
    "tarfile.tar.xz": tar_with("w:xz"),
    "tar-tool.txz": tar_tool("-J"),
    "tar-tool-pax.tar": tar_tool("--format=pax"),
    "zip-tool-descriptors.zip": zip_tool("-fd"),
    "zipfile-bzip2.zip": zip_with(zipfile.ZIP_BZIP2),
    "zipfile-lzma.zip": zip_with(zipfile.ZIP_LZMA),
    "zip-tool-bzip2.zip": zip_tool("-Z", "bzip2"),
}


def slice_hashes(out: Path) -> dict[str, str]:
    """Every slice file of an output tree (state dir excluded) -> its sha256."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("slice_*"))
        if ".tessq" not in p.parts
    }


def summary_of(out: Path) -> tuple:
    rep = json.loads((out / "batch_report.json").read_text())
    s = rep["batch_summary"]
    return (
        (s["total_images_found"], s["successfully_processed"], s["skipped"], s["errors"], s["folders_skipped"]),
        rep["skipped"],
    )


def run(env: dict[str, str], cwd: Path, src: Path | str, out: Path | str, *extra: str) -> subprocess.CompletedProcess:
    return tessq_cmd("run", str(src), str(out), MIN, "--workers", "1", *extra, env=env, cwd=cwd)


def scanned_skips(env: dict[str, str], cwd: Path, src: Path, out: Path) -> set[tuple[str, str]]:
    """(path, reason) of every skipped file and folder `tessq scan --json` names."""
    proc = tessq_cmd("scan", str(src), "--out", str(out), MIN, "--json", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {(e["path"], e["reason"]) for e in json.loads(proc.stdout)["skipped_entries"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The seed tree cut as a folder: what every archive of it must give."""
    base = tmp_path_factory.mktemp("reference")
    root = base / "tree"
    expected = seed_tree(root)
    proc = run(clean_env(base), base, root, base / "out")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the corrupt file
    out = base / "out"
    shas = {d: json.loads((out / d / "metadata.json").read_text())["source"]["sha256"] for d in SEED_DONE}
    return {
        "root": root,
        "out": out,
        "slices": slice_hashes(out),
        "summary": summary_of(out),
        "expected": expected,
        "sha256": shas,
    }


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_an_archive_as_in_gives_the_same_output_as_the_tree_as_a_folder(
    name: str, reference: dict, tmp_path: Path
) -> None:
    if "tool" in name and shutil.which(name.split("-")[0]) is None:
        pytest.skip(f"the {name.split('-')[0]} command-line tool is not installed")
    archive = tmp_path / name
    BUILDERS[name](reference["root"], archive)
    env = clean_env(tmp_path)
    out = tmp_path / "out"
    proc = run(env, tmp_path, archive, out)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert slice_hashes(out) == reference["slices"]  # bit-exact, same layout
    assert summary_of(out) == reference["summary"]  # same counts, same skipped files and folders
    for d in SEED_DONE:
        meta = json.loads((out / d / "metadata.json").read_text())
        assert meta["source"]["sha256"] == reference["sha256"][d]  # the member's bytes are the file's bytes
        assert meta["source"]["absolute_path"] == f"{archive}/{meta['source']['relative_path']}"
    rep = json.loads((out / "batch_report.json").read_text())
    assert [e["type"] for e in rep["errors"]] == ["corrupt"], rep["errors"]
    assert not list((tmp_path / "tmp").iterdir())  # spools are deleted
    verify = tessq_cmd("verify", "--json", str(out), env=env, cwd=tmp_path)
    result = json.loads(verify.stdout)
    assert verify.returncode == 0 and result["identical"] == len(SEED_DONE), verify.stdout + verify.stderr
    again = tessq_cmd("scan", str(archive), "--out", str(out), MIN, "--json", env=env, cwd=tmp_path, check=True)
    summary = json.loads(again.stdout)
    assert (summary["queued"], summary["requeued"], summary["already_done"]) == (0, 0, len(SEED_DONE))


@pytest.mark.parametrize("name", ["data.7z", "data.tar.zst", "data.rar", "notes.bin"])
def test_a_file_given_as_in_that_is_no_archive_tessq_reads_is_refused_with_what_to_do(
    name: str, tmp_path: Path
) -> None:
    given = tmp_path / name
    given.write_bytes(b"not read")
    proc = tessq_cmd("run", str(given), str(tmp_path / "out"), env=clean_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"input {given} is a file, not a folder" in proc.stderr
    assert ".tar.xz" in proc.stderr  # the archives it does read are named
    if name != "notes.bin":
        assert "extract it and pass the folder" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_deflated_member_over_the_spool_budget_is_read_in_place_from_the_inflated_stream(
    reference: dict, tmp_path: Path
) -> None:
    archive = tmp_path / "data.zip"
    zip_with(zipfile.ZIP_DEFLATED)(reference["root"], archive)
    env = {**clean_env(tmp_path), "TESSQ_ARCHIVE_SPOOL_MAX_BYTES": "1"}
    proc = run(env, tmp_path, archive, tmp_path / "out")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert slice_hashes(tmp_path / "out") == reference["slices"]


def test_the_default_output_of_an_archive_is_its_name_without_the_suffix(reference: dict, tmp_path: Path) -> None:
    archive = tmp_path / "survey.tar.gz"
    tar_with("w:gz")(reference["root"], archive)
    proc = tessq_cmd("scan", str(archive), MIN, env=clean_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "survey_tessq" / ".tessq").is_dir()


# ---------------------------------------------------------------- resume and change detection


def _zip_tree(root: Path, dest: Path, when: tuple = (2024, 5, 1, 12, 0, 0)) -> None:
    """A deflated zip whose member times are fixed (so only a content change changes a member)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, rel in members(root):
            if path.is_file():
                zf.writestr(zipfile.ZipInfo(rel, when), path.read_bytes(), zipfile.ZIP_DEFLATED)


def test_a_replaced_zip_requeues_exactly_the_changed_members(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for i in range(4):
        write_tiff(root / f"f{i % 2}/img_{i}.tif", seed=i)
    archive = tmp_path / "data.zip"
    _zip_tree(root, archive)
    env, out = clean_env(tmp_path), tmp_path / "out"
    assert run(env, tmp_path, archive, out).returncode == 0
    # same size, same time, other pixels: only the CRC tells
    write_tiff(root / "f1/img_1.tif", seed=99)
    (root / "f0/new.tif").parent.mkdir(exist_ok=True)
    write_tiff(root / "f0/new.tif", seed=7)
    _zip_tree(root, archive)
    scan = json.loads(
        tessq_cmd("scan", str(archive), "--out", str(out), MIN, "--json", env=env, cwd=tmp_path, check=True).stdout
    )
    assert (scan["queued"], scan["requeued"], scan["already_done"]) == (1, 1, 3), scan
    assert run(env, tmp_path, archive, out).returncode == 0
    meta = json.loads((out / "f1/img_1/metadata.json").read_text())
    assert meta["source"]["sha256"] == hashlib.sha256((root / "f1/img_1.tif").read_bytes()).hexdigest()


def test_a_rewritten_tar_requeues_only_members_whose_size_or_mtime_changed(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for i in range(3):
        write_tiff(root / f"img_{i}.tif", seed=i)
    archive = tmp_path / "data.tar"
    tar_with("w")(root, archive)
    env, out = clean_env(tmp_path), tmp_path / "out"
    assert run(env, tmp_path, archive, out).returncode == 0
    write_tiff(root / "img_2.tif", seed=50)
    os.utime(root / "img_2.tif", (1_700_000_000, 1_700_000_000))
    tar_with("w")(root, archive)  # a new archive: the others keep their size and mtime
    scan = json.loads(
        tessq_cmd("scan", str(archive), "--out", str(out), MIN, "--json", env=env, cwd=tmp_path, check=True).stdout
    )
    assert (scan["queued"], scan["requeued"], scan["already_done"]) == (0, 1, 2), scan


# ---------------------------------------------------------------- bad archives and odd members


def test_a_file_that_is_not_an_archive_or_is_truncated_is_refused_before_anything_is_written(
    reference: dict, tmp_path: Path
) -> None:
    env = clean_env(tmp_path)
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"this is not a zip file at all" * 100)
    good = tmp_path / "good.zip"
    zip_with(zipfile.ZIP_STORED)(reference["root"], good)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the central directory is gone
    faketar = tmp_path / "fake.tar.gz"
    faketar.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    for bad, what in ((fake, "ZIP"), (cut, "ZIP"), (faketar, "TAR")):
        proc = run(env, tmp_path, bad, tmp_path / f"out_{bad.name}")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"not a readable {what}" in proc.stdout + proc.stderr or what.lower() in (proc.stdout + proc.stderr)
        assert not (tmp_path / f"out_{bad.name}").exists()


def test_a_truncated_tar_keeps_the_members_before_and_fails_the_cut_one(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tiff(root / "a.tif", seed=1)
    write_tiff(root / "b.tif", 256, 256, seed=2)
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root / "a.tif", "a.tif")
        tf.add(root / "b.tif", "b.tif")
    data = archive.read_bytes()
    archive.write_bytes(data[: tarfile.BLOCKSIZE * 3 + (root / "a.tif").stat().st_size + 5000])
    env, out = clean_env(tmp_path), tmp_path / "out"
    proc = run(env, tmp_path, archive, out)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    rep = json.loads((out / "batch_report.json").read_text())
    assert (out / "a" / "metadata.json").is_file()
    assert [(e["file"], e["type"]) for e in rep["errors"]] == [("b.tif", "corrupt")], rep["errors"]
    assert "truncated" in rep["errors"][0]["message"]


def _patch_zip(data: bytes, name: bytes, patch: Callable[[bytearray, int, bool], None]) -> bytes:
    """Apply `patch(buf, header_offset, central)` to the local and central headers of member `name`."""
    buf = bytearray(data)
    for sig, name_at, central in ((b"PK\x03\x04", 30, False), (b"PK\x01\x02", 46, True)):
        pos = 0
        while (pos := buf.find(sig, pos)) >= 0:
            n = struct.unpack_from("<H", buf, pos + (28 if central else 26))[0]
            if bytes(buf[pos + name_at : pos + name_at + n]) == name:
                patch(buf, pos, central)
            pos += 4
    return bytes(buf)


def test_odd_members_give_a_clear_per_member_error_and_never_fill_the_disk(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    tif = write_tiff(root / "ok.tif", seed=1).read_bytes()
    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.tif", tif)
        zf.writestr("secret.tif", tif)
        zf.writestr("bomb.tif", tif)
        zf.writestr("bzip.tif", tif, zipfile.ZIP_BZIP2)
        zf.writestr("zstd.tif", tif)
        link = zipfile.ZipInfo("link.tif")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "ok.tif")
        zf.writestr("inner/nested.zip", b"PK\x05\x06" + b"\x00" * 18)
        zf.writestr("../escape/evil.tif", tif)
        zf.writestr("/abs/rooted.tif", tif)
        zf.writestr("__MACOSX/._ok.tif", b"junk")

    def encrypt(buf: bytearray, pos: int, central: bool) -> None:
        at = pos + (8 if central else 6)
        struct.pack_into("<H", buf, at, struct.unpack_from("<H", buf, at)[0] | 0x1)

    def bomb(buf: bytearray, pos: int, central: bool) -> None:
        struct.pack_into("<I", buf, pos + (24 if central else 22), 0xFFFF0000)  # declared size: ~4 GiB

    def zstd(buf: bytearray, pos: int, central: bool) -> None:
        struct.pack_into("<H", buf, pos + (10 if central else 8), 93)  # method 93: Zstandard

    data = _patch_zip(archive.read_bytes(), b"secret.tif", encrypt)
    data = _patch_zip(data, b"zstd.tif", zstd)
    archive.write_bytes(_patch_zip(data, b"bomb.tif", bomb))
    env, out = clean_env(tmp_path), tmp_path / "out"
    skipped = scanned_skips(env, tmp_path, archive, out)
    proc = run(env, tmp_path, archive, out)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    rep = json.loads((out / "batch_report.json").read_text())
    errors = {e["file"]: (e["type"], e["message"]) for e in rep["errors"]}
    assert errors["secret.tif"][0] == "unsupported" and "encrypted" in errors["secret.tif"][1]
    assert errors["bomb.tif"][0] == "corrupt" and "zip bomb" in errors["bomb.tif"][1]
    assert errors["zstd.tif"][0] == "unsupported" and "zstd" in errors["zstd.tif"][1]
    assert {("link.tif", "symlink"), ("inner/nested.zip", "nested_archive"), ("__MACOSX", "hidden")} <= skipped
    done = {p.parent.relative_to(out).as_posix() for p in out.rglob("metadata.json") if ".tessq" not in p.parts}
    assert done == {"ok", "bzip", "_../escape/evil", "abs/rooted"}  # names that would escape OUT stay inside it
    assert not list((tmp_path / "tmp").iterdir())


def test_tar_links_devices_and_non_utf8_names_are_handled_like_the_folder_case(tmp_path: Path) -> None:
    tif = write_tiff(tmp_path / "src/ok.tif", seed=1).read_bytes()
    archive = tmp_path / "odd.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes = b"", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in attrs.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if data else None)

        add("d/ok.tif", tif, mtime=1_700_000_000)
        add("d/hard.tif", type=tarfile.LNKTYPE, linkname="d/ok.tif")
        add("d/soft.tif", type=tarfile.SYMTYPE, linkname="ok.tif")
        add("d/dev.tif", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    # a GNU tar name that is not UTF-8 (latin-1 'é'): the folder case refuses such a name, so does this one
    with tarfile.open(tmp_path / "latin.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\u00e9.tif")
        info.size = len(tif)
        tf.addfile(info, io.BytesIO(tif))
    env = clean_env(tmp_path)
    assert scanned_skips(env, tmp_path, archive, tmp_path / "out") == {("d/soft.tif", "symlink")}
    proc = run(env, tmp_path, archive, tmp_path / "out")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    rep = json.loads((tmp_path / "out/batch_report.json").read_text())
    assert [(e["file"], e["type"]) for e in rep["errors"]] == [("d/dev.tif", "unsupported")], rep["errors"]
    assert (tmp_path / "out/d/ok/metadata.json").is_file() and (tmp_path / "out/d/hard/metadata.json").is_file()
    proc = run(env, tmp_path, tmp_path / "latin.tar", tmp_path / "out2")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    rep = json.loads((tmp_path / "out2/batch_report.json").read_text())
    assert [e["type"] for e in rep["errors"]] == ["unsupported_name"], rep["errors"]


# ---------------------------------------------------------------- size: ZIP64 over 4 GB, 100k members


class _SparseWriter(io.RawIOBase):
    """A file that seeks over runs of zeros instead of writing them (a sparse file on disk)."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "w+b")  # noqa: SIM115
        self._zero = bytes(1 << 20)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        view = memoryview(data)
        if len(view) == len(self._zero) and view == self._zero:
            self._fh.seek(len(view), os.SEEK_CUR)
        else:
            self._fh.write(view)
        return len(view)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.truncate()
            self._fh.close()
        super().close()


def test_a_zip64_archive_over_4_gb_reads_members_past_the_4_gb_mark_in_place(reference: dict, tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    writer = _SparseWriter(archive)
    with zipfile.ZipFile(writer, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open(zipfile.ZipInfo("padding/zeros.bin"), "w", force_zip64=True) as member:
            zero = bytes(1 << 20)
            for _ in range(4200):  # 4.1 GiB of zeros, never written to disk
                member.write(zero)
        for path, rel in members(reference["root"]):
            zf.write(path, rel)
    writer.close()
    st = archive.stat()
    if st.st_blocks * 512 > 512 * 1024 * 1024:
        pytest.skip("this file system does not keep files sparse; a 4 GB test archive would fill the disk")
    assert st.st_size > 4 * 1024**3
    offsets = [zi.header_offset for zi in zipfile.ZipFile(archive).infolist() if zi.filename.endswith("a.tif")]
    assert offsets and min(offsets) > 2**32  # the TIFFs sit past the 4 GB mark
    out = tmp_path / "out"
    proc = run(clean_env(tmp_path), tmp_path, archive, out)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert slice_hashes(out) == reference["slices"]


def test_an_archive_with_100k_members_is_listed_and_scanned(tmp_path: Path) -> None:
    tif = write_tiff(tmp_path / "src/a.tif", seed=1).read_bytes()
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(100_000):
            zf.writestr(f"notes/{i // 1000:03d}/n{i:06d}.txt", b"x")
        for i in range(3):
            zf.writestr(f"img/{i}.tif", tif)
    env = clean_env(tmp_path)
    proc = tessq_cmd("scan", str(archive), "--out", str(tmp_path / "out"), MIN, "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["found"], summary["queued"]) == (3, 3)


# ---------------------------------------------------------------- from S3 (moto server)


def archive_on_s3(name: str, reference: dict, tmp_path: Path, s3_endpoint: str) -> tuple[str, str, dict[str, str]]:
    """The seed tree packed as `name` and uploaded to a new bucket: (bucket, the archive's URL, the CLI's env)."""
    from tests.s3server import DUMMY_ENV
    from tests.s3tools import new_bucket, s3_client

    archive = tmp_path / name
    BUILDERS[name](reference["root"], archive)
    bucket = new_bucket(s3_endpoint)
    s3_client(s3_endpoint).upload_file(str(archive), bucket, f"uploads/{name}")
    env = {**clean_env(tmp_path), **DUMMY_ENV, "TESSQ_S3_ENDPOINT_URL": s3_endpoint}
    return bucket, f"s3://{bucket}/uploads/{name}", env


@pytest.mark.parametrize("name", ["zipfile-stored.zip", "zipfile-deflated.zip", "tarfile.tar", "tarfile.tar.gz"])
def test_an_archive_on_s3_is_read_in_place_by_ranged_gets_and_gives_the_folder_output(
    name: str, reference: dict, tmp_path: Path, s3_endpoint: str
) -> None:
    _, url, env = archive_on_s3(name, reference, tmp_path, s3_endpoint)
    out = tmp_path / "out"
    proc = run(env, tmp_path, url, out, "--workers", "2")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert slice_hashes(out) == reference["slices"]
    assert summary_of(out) == reference["summary"]
    meta = json.loads((out / "dup/a.tif/metadata.json").read_text())
    assert meta["source"]["absolute_path"] == f"{url}/dup/a.tif"
    assert meta["source"]["sha256"] == reference["sha256"]["dup/a.tif"]
    assert not list((tmp_path / "tmp").iterdir())
    again = json.loads(
        tessq_cmd("scan", url, "--out", str(out), MIN, "--json", env=env, cwd=tmp_path, check=True).stdout
    )
    assert (again["queued"], again["requeued"], again["already_done"]) == (0, 0, len(SEED_DONE))


@pytest.mark.parametrize("name", ["zipfile-stored.zip", "tarfile.tar"])
def test_an_archive_on_s3_cut_to_an_s3_output_gives_the_folder_slices_and_a_rescan_queues_nothing(
    name: str, reference: dict, tmp_path: Path, s3_endpoint: str
) -> None:
    from tests.s3tools import download

    bucket, url, env = archive_on_s3(name, reference, tmp_path, s3_endpoint)
    env["TESSQ_WORKSPACE"] = str(tmp_path / "ws")  # an S3 OUT holds no state: the workspace is local
    out = f"s3://{bucket}/cut"
    proc = run(env, tmp_path, url, out, "--workers", "2")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the seed tree's corrupt TIFF
    local = download(s3_endpoint, bucket, "cut", tmp_path / "dl")
    assert slice_hashes(local) == reference["slices"]
    assert summary_of(local) == reference["summary"]
    assert not list((tmp_path / "tmp").iterdir())  # member spools and upload dirs are removed
    again = json.loads(tessq_cmd("scan", url, "--out", out, MIN, "--json", env=env, cwd=tmp_path, check=True).stdout)
    assert (again["queued"], again["requeued"], again["already_done"]) == (0, 0, len(SEED_DONE))


# ---------------------------------------------------------------- in process: members as sources


def test_member_paths_are_made_safe_and_never_point_outside_the_tree() -> None:
    from tessq.storage.archive import safe_rel

    assert safe_rel("a/b.tif") == "a/b.tif"
    assert safe_rel("./a//b.tif") == "a/b.tif"
    assert safe_rel("/etc/x.tif") == "etc/x.tif"
    assert safe_rel("../../x.tif") == "_../_../x.tif"
    assert safe_rel("win\\dir\\x.tif") == "win/dir/x.tif"
    assert safe_rel("./") is None


def test_a_tar_gz_without_indexed_gzip_is_still_read_member_by_member(
    reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq.cut import tiff
    from tessq.storage import archive

    monkeypatch.setattr(archive, "indexed_gzip_available", lambda: False)
    path = tmp_path / "plain.tgz"
    tar_with("w:gz")(reference["root"], path)
    member = archive.member(path, "dup/a.tif")
    assert tiff.probe(member).width == 96  # the header, from the decompressed stream
    spool = member.fetch(tmp_path)
    digest = hashlib.sha256(Path(spool).read_bytes()).hexdigest()
    assert digest == member.spool_sha256 == reference["sha256"]["dup/a.tif"]
    member.close()
    assert not Path(spool).exists()


def test_a_member_of_a_changed_or_shrunken_archive_is_a_source_change(tmp_path: Path) -> None:
    from tessq.errors import SourceChangedError, SourceModifiedError
    from tessq.storage import archive

    path = tmp_path / "a.zip"
    tif = write_tiff(tmp_path / "x.tif").read_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.tif", tif)
        zf.writestr("y.tif", tif)
    member = archive.member(path, "x.tif")
    assert member.stat().st_size == len(tif)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("y.tif", tif)
    os.utime(path, (1, 1))
    with pytest.raises(SourceModifiedError):
        member.stat()
    with pytest.raises(SourceChangedError, match="no longer in the archive"):
        archive.member(path, "x.tif")


@pytest.mark.parametrize("one_shot", [True, False], ids=["libdeflate-at-once", "zlib-ng-streamed"])
def test_deflate_data_that_disagrees_with_its_declared_size_or_crc_is_corrupt(
    one_shot: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq.errors import CorruptImageError
    from tessq.storage import archive

    if not one_shot:
        monkeypatch.setattr(archive, "ONE_SHOT_MAX", 0)

    tif = write_tiff(tmp_path / "x.tif").read_bytes()
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("short.tif", tif)
        zf.writestr("long.tif", tif)

    def size(value: int) -> Callable[[bytearray, int, bool], None]:
        def patch(buf: bytearray, pos: int, central: bool) -> None:
            struct.pack_into("<I", buf, pos + (24 if central else 22), value)

        return patch

    data = _patch_zip(path.read_bytes(), b"short.tif", size(len(tif) - 100))  # declared smaller: CRC differs
    path.write_bytes(_patch_zip(data, b"long.tif", size(len(tif) + 100)))  # declared larger: data ends early
    for name, why in (
        ("short.tif", "CRC-32|longer than its declared size"),
        ("long.tif", "before the member's declared size"),
    ):
        with pytest.raises(CorruptImageError, match=why):
            archive.member(path, name).fetch(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "x.tif"]  # no spool left behind


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_bzip2_and_lzma_members_that_disagree_with_their_declared_size_or_crc_or_are_damaged_are_corrupt(
    method: int, tmp_path: Path
) -> None:
    from tessq.errors import CorruptImageError
    from tessq.storage import archive

    tif = write_tiff(tmp_path / "x.tif", 256, 256).read_bytes()
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", method) as zf:
        for name in ("short.tif", "long.tif", "damaged.tif", "fine.tif"):
            zf.writestr(name, tif)
        damaged = next(i for i in zf.infolist() if i.filename == "damaged.tif")

    def size(value: int) -> Callable[[bytearray, int, bool], None]:
        def patch(buf: bytearray, pos: int, central: bool) -> None:
            struct.pack_into("<I", buf, pos + (24 if central else 22), value)

        return patch

    data = _patch_zip(path.read_bytes(), b"short.tif", size(len(tif) - 100))
    data = bytearray(_patch_zip(data, b"long.tif", size(len(tif) + 100)))
    start = damaged.header_offset + 30 + len(b"damaged.tif") + len(damaged.extra)
    middle = start + damaged.compress_size // 2
    data[middle : middle + 64] = bytes(64)  # no longer a valid stream from here on
    path.write_bytes(bytes(data))
    for name, why in (
        ("short.tif", "CRC-32"),
        ("long.tif", "before the member's declared size"),
        ("damaged.tif", r"data is damaged|CRC-32|before the member's declared size"),
    ):
        with pytest.raises(CorruptImageError, match=why):
            archive.member(path, name).fetch(tmp_path)
    spool = archive.member(path, "fine.tif").fetch(tmp_path)
    assert Path(spool).read_bytes() == tif
    Path(spool).unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "x.tif"]  # no spool left behind


@pytest.mark.parametrize("one_shot", [True, False], ids=["libdeflate-at-once", "zlib-ng-streamed"])
def test_damaged_deflate_data_is_a_corrupt_member_not_a_crash(
    one_shot: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq.errors import CorruptImageError
    from tessq.storage import archive

    if not one_shot:
        monkeypatch.setattr(archive, "ONE_SHOT_MAX", 0)
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.tif", write_tiff(tmp_path / "x.tif", 256, 256).read_bytes())
        info = zf.infolist()[0]
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, 26)
    middle = 30 + name_len + extra_len + info.compress_size // 2
    data[middle : middle + 64] = b"\xff" * 64  # not a valid deflate stream from here on
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match=r"deflate data is damaged|CRC-32"):
        archive.member(path, "x.tif").fetch(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "x.tif"]  # no spool left behind


@pytest.mark.parametrize(
    ("name", "mode", "files"),
    [("data.tgz", "w:gz", [".gzidx", ".json"]), ("data.tar", "w", [".json"]), ("data.tar.xz", "w:xz", [".json"])],
)
def test_a_tar_scan_saves_its_listing_so_workers_started_apart_need_not_read_every_header_again(
    reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, mode: str, files: list[str]
) -> None:
    """A TAR has no central directory (listing one on S3 costs a GET per member) and a .tar.gz must be
    decompressed whole to be listed: the scan's listing is saved for the workers."""
    archive = tmp_path / name
    tar_with(mode)(reference["root"], archive)
    env, out = clean_env(tmp_path), tmp_path / "out"
    tessq_cmd("scan", str(archive), "--out", str(out), MIN, env=env, cwd=tmp_path, check=True)
    saved = sorted(p.suffix for p in (out / ".tessq" / "archives").iterdir())
    assert saved == files
    # a worker process loads the saved listing: it never lists the archive itself
    from tessq.storage import archive as arc

    monkeypatch.setitem(arc._STATE, "dir", out / ".tessq")  # what queue.configure sets in a worker
    monkeypatch.setattr(arc.Archive, "load", lambda self: pytest.fail("listed the archive again"))
    member = arc.member(archive, "dup/a.tif")
    assert member.info.size == (reference["root"] / "dup/a.tif").stat().st_size
    proc = tessq_cmd("workers", str(out), "--workers", "1", "--drain", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert slice_hashes(out) == reference["slices"]


def test_a_tar_gz_member_declaring_more_bytes_than_the_archive_holds_fails_at_scan_and_spools_nothing(
    tmp_path: Path,
) -> None:
    import gzip

    tif = write_tiff(tmp_path / "src/ok.tif", seed=1).read_bytes()
    ok = tarfile.TarInfo("ok.tif")
    ok.size = len(tif)
    liar = tarfile.TarInfo("liar.tif")
    liar.size = 10**12  # a terabyte declared, a small TIFF present: a bomb must not get far
    pad = b"\x00" * (-len(tif) % tarfile.BLOCKSIZE)
    body = ok.tobuf() + tif + pad + liar.tobuf() + tif + pad
    archive = tmp_path / "liar.tar.gz"
    archive.write_bytes(gzip.compress(body))
    env, out = clean_env(tmp_path), tmp_path / "out"
    proc = run(env, tmp_path, archive, out)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    rep = json.loads((out / "batch_report.json").read_text())
    assert [(e["file"], e["type"]) for e in rep["errors"]] == [("liar.tif", "corrupt")], rep["errors"]
    assert "truncated" in rep["errors"][0]["message"]
    assert (out / "ok/metadata.json").is_file()
    assert not list((tmp_path / "tmp").iterdir())


def test_an_earlier_output_packed_into_the_archive_is_skipped_as_tessq_output(reference: dict, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(reference["root"], tree)
    shutil.copytree(reference["out"] / "dup", tree / "old_run" / "dup")  # image folders tessq wrote, TIFF-free
    write_tiff(tree / "old_run" / "dup" / "a.tif" / "stray.tif", seed=9)  # even a TIFF inside one is not input
    archive = tmp_path / "with_output.zip"
    zip_with(zipfile.ZIP_DEFLATED)(tree, archive)
    env = clean_env(tmp_path)
    skipped = scanned_skips(env, tmp_path, archive, tmp_path / "out")
    assert {("old_run/dup/a.tif", "tessq_output"), ("old_run/dup/a.TIFF", "tessq_output")} <= skipped
    proc = run(env, tmp_path, archive, tmp_path / "out")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert slice_hashes(tmp_path / "out") == reference["slices"]

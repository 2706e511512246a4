"""S3 input and output against a real moto S3 server: every in/out combination, ranged reads, safe commits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tifffile

from tests.conftest import seed_tree, tessq_cmd, write_tiff
from tests.s3server import DUMMY_ENV, s3_endpoint  # noqa: F401  (fixture)
from tests.s3tools import assert_bit_exact, download, keys, new_bucket, s3_client, upload_tree

MIN = "--min-size=32"
SEED_DONE = {
    "project_alpha/survey_001/aerial_photo_001",
    "project_alpha/survey_001/aerial_photo_002",
    "unicode ü dir/photo with space é",
    "dup/a.tif",
    "dup/a.TIFF",
}


@pytest.fixture
def s3_env(sqlite_env: dict[str, str], s3_endpoint: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir()
    return {**sqlite_env, **DUMMY_ENV, "TESSQ_S3_ENDPOINT_URL": s3_endpoint, "TMPDIR": str(tmp_path / "tmp")}


@pytest.fixture
def in_process_s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """tessq.storage.s3 in this process, pointed at moto (a fresh client per test)."""
    from tessq.storage import s3 as remote

    monkeypatch.setenv("TESSQ_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("TESSQ_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("TESSQ_DB_URL", raising=False)
    monkeypatch.delenv("TESSQ_QUEUE_URL", raising=False)
    remote._CLIENT.reset()
    yield remote
    remote._CLIENT.reset()


def report(env: dict[str, str], cwd: Path) -> dict:
    return json.loads(tessq_cmd("report", "--json", env=env, cwd=cwd, check=True).stdout)


def image_folders(names: list[str]) -> set[str]:
    return {n.rsplit("/", 1)[0] for n in names if n.endswith("/metadata.json")}


def test_s3_in_and_s3_out_mirrors_the_tree_and_every_image_reassembles_bit_exact(
    tmp_path: Path, s3_env: dict, s3_endpoint: str
) -> None:
    src = tmp_path / "src"
    expected = seed_tree(src)
    bucket = new_bucket(s3_endpoint)
    upload_tree(s3_endpoint, src, bucket, "raw")
    env = {**s3_env, "TESSQ_S3_SPOOL_MAX_BYTES": "1"}  # workers read every image by ranged GETs, no spool
    proc = tessq_cmd(
        "run", f"s3://{bucket}/raw/", f"s3://{bucket}/processed/", MIN, "--workers", "2", env=env, cwd=tmp_path
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the corrupt file: the distinct exit status
    summary = report(env, tmp_path)["batch_summary"]
    assert (
        summary["total_images_found"],
        summary["successfully_processed"],
        summary["skipped"],
        summary["errors"],
        summary["folders_skipped"],
    ) == (expected["found"], expected["done"], expected["skipped"], expected["failed"], expected["folders_skipped"])
    out_keys = keys(s3_endpoint, bucket, "processed")
    assert image_folders(out_keys) == SEED_DONE
    assert not any(k.startswith(".git") or "tessq-tmp" in k for k in out_keys)
    assert "batch_report.json" in out_keys
    batch = assert_bit_exact(download(s3_endpoint, bucket, "processed", tmp_path / "dl"), src, expected["done"])
    assert {b["job"]["input_dir"] for b in batch} == {f"s3://{bucket}/raw"}
    meta = json.loads((tmp_path / "dl/dup/a.tif/metadata.json").read_text())
    assert meta["source"]["absolute_path"] == f"s3://{bucket}/raw/dup/a.tif"
    verify = tessq_cmd("verify", "--json", env=env, cwd=tmp_path)
    assert verify.returncode == 0 and json.loads(verify.stdout)["identical"] == expected["done"], verify.stdout
    assert not list((tmp_path / "tmp").iterdir())  # spools and upload dirs are removed


def test_local_in_and_s3_out_uploads_the_same_layout_and_a_rerun_redoes_nothing(
    tmp_path: Path, s3_env: dict, s3_endpoint: str
) -> None:
    src = tmp_path / "src"
    expected = seed_tree(src)
    bucket = new_bucket(s3_endpoint)
    out = f"s3://{bucket}/cut"
    tessq_cmd("run", str(src), out, MIN, "--workers", "2", env=s3_env, cwd=tmp_path)
    assert image_folders(keys(s3_endpoint, bucket, "cut")) == SEED_DONE
    assert_bit_exact(download(s3_endpoint, bucket, "cut", tmp_path / "dl"), src, expected["done"])
    first = s3_client(s3_endpoint).head_object(Bucket=bucket, Key="cut/dup/a.tif/metadata.json")["ETag"]
    again = json.loads(
        tessq_cmd("scan", str(src), "--out", out, MIN, "--json", env=s3_env, cwd=tmp_path, check=True).stdout
    )
    assert again["queued"] == 0 and again["requeued"] == 0 and again["already_done"] == expected["done"]
    assert s3_client(s3_endpoint).head_object(Bucket=bucket, Key="cut/dup/a.tif/metadata.json")["ETag"] == first
    assert (tmp_path / "ws/.tessq" / "batch_processing.log").is_file()  # the log stays in the workspace


def test_s3_in_and_local_out_spools_small_objects_and_redoes_a_replaced_one(
    tmp_path: Path, s3_env: dict, s3_endpoint: str
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    expected = seed_tree(src)
    bucket = new_bucket(s3_endpoint)
    upload_tree(s3_endpoint, src, bucket, "raw")
    proc = tessq_cmd("run", f"s3://{bucket}/raw", str(out), MIN, "--workers", "2", env=s3_env, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert {str(p.parent.relative_to(out)) for p in out.rglob("metadata.json")} == SEED_DONE
    assert_bit_exact(out, src, expected["done"])
    assert (out / "batch_report.json").is_file()
    before = json.loads((out / "dup/a.tif/batch_metadata.json").read_text())["started_at"]
    write_tiff(src / "dup/a.tif", 70, 90, seed=42)  # replaced on S3: new size and LastModified
    s3_client(s3_endpoint).upload_file(str(src / "dup/a.tif"), bucket, "raw/dup/a.tif")
    scan = json.loads(
        tessq_cmd(
            "scan", f"s3://{bucket}/raw", "--out", str(out), MIN, "--json", env=s3_env, cwd=tmp_path, check=True
        ).stdout
    )
    assert scan["requeued"] == 1 and scan["already_done"] == expected["done"] - 1
    tessq_cmd("workers", "--workers", "1", "--drain", env=s3_env, cwd=tmp_path, check=True)
    assert json.loads((out / "dup/a.tif/batch_metadata.json").read_text())["started_at"] != before
    assert_bit_exact(out, src, expected["done"])


def test_scan_reads_tiff_headers_with_a_few_ranged_gets_never_whole_objects(
    tmp_path: Path, in_process_s3, s3_endpoint: str
) -> None:
    from tessq import pipeline
    from tessq.options import SliceOptions

    src = tmp_path / "src"
    for i in range(4):
        write_tiff(src / f"plates/strip_{i}.tif", 1200, 1100, seed=i)  # 4 MB uncompressed, striped
        write_tiff(src / f"tiles/tile_{i}.tif", 1100, 1200, seed=i, tile=(256, 256), compression="zlib")
    (src / "thumbs").mkdir()
    (src / "thumbs/a.jpg").write_bytes(b"\xff\xd8\xff")
    bucket = new_bucket(s3_endpoint)
    total = upload_tree(s3_endpoint, src, bucket, "raw")
    ranges: list[str | None] = []

    def record(request, **_: object) -> None:  # every GetObject request as sent on the wire
        value = request.headers.get("Range")
        ranges.append(value.decode() if isinstance(value, bytes) else value)

    in_process_s3.client().meta.events.register("before-send.s3.GetObject", record)
    ws = pipeline.open_workspace(tmp_path / "ws")
    traffic = dict(in_process_s3.TRAFFIC)
    summary = pipeline.scan_and_enqueue(
        f"s3://{bucket}/raw", f"s3://{bucket}/out", SliceOptions(min_size=1024), workspace=ws
    )
    fetched = in_process_s3.TRAFFIC["get_bytes"] - traffic["get_bytes"]
    requests = in_process_s3.TRAFFIC["get_requests"] - traffic["get_requests"]
    assert summary.found == 8 and summary.queued == 8 and summary.folders_skipped == {"no_tiff": 1}
    assert len(ranges) == requests <= 2 * 8  # at most two GETs per image
    assert all(r and r.startswith("bytes=") for r in ranges), ranges  # every one of them ranged
    assert fetched < total / 50, (fetched, total)  # headers only: under 2 % of the bytes


def test_a_region_of_a_tiled_s3_image_fetches_only_the_tiles_it_needs(
    tmp_path: Path, in_process_s3, s3_endpoint: str
) -> None:
    from tessq.cut.tiff import RegionReader, reference_pixels

    path = write_tiff(tmp_path / "big.tif", 2048, 2048, seed=3, tile=(256, 256))  # 12 MB, 64 tiles
    bucket = new_bucket(s3_endpoint)
    s3_client(s3_endpoint).upload_file(str(path), bucket, "raw/big.tif")
    source = in_process_s3.RemoteSource(f"s3://{bucket}/raw/big.tif")
    before = in_process_s3.TRAFFIC["get_bytes"]
    with RegionReader(source) as reader:
        band = reader.read(256, 512, 0, 512)  # one tile row, two tile columns: 2 tiles of 64
    fetched = in_process_s3.TRAFFIC["get_bytes"] - before
    assert (band == reference_pixels(path)[256:512, 0:512]).all()
    assert fetched < 4 * 256 * 256 * 3 + 128 * 1024, fetched  # ~2 tiles plus the header blocks
    assert tifffile.TiffFile(path).pages.first.is_tiled


def test_an_object_replaced_while_it_is_read_fails_instead_of_mixing_versions(
    tmp_path: Path, in_process_s3, s3_endpoint: str
) -> None:
    from tessq.cut.tiff import RegionReader
    from tessq.errors import SourceChangedError

    path = write_tiff(tmp_path / "a.tif", 1024, 1024, seed=1)
    bucket = new_bucket(s3_endpoint)
    s3_client(s3_endpoint).upload_file(str(path), bucket, "a.tif")
    with RegionReader(in_process_s3.RemoteSource(f"s3://{bucket}/a.tif")) as reader:
        reader.read(0, 16)
        write_tiff(tmp_path / "b.tif", 1024, 1024, seed=2)
        s3_client(s3_endpoint).upload_file(str(tmp_path / "b.tif"), bucket, "a.tif")
        with pytest.raises(SourceChangedError, match=f"s3://{bucket}/a.tif: object was replaced"):
            reader.read(900, 1024)


def test_committing_an_image_folder_uploads_metadata_last_and_drops_stale_slices(
    tmp_path: Path, in_process_s3, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3_endpoint)
    client = s3_client(s3_endpoint)
    for name in ("slice_9_old.png", "metadata.json"):
        client.put_object(Bucket=bucket, Key=f"out/x/img/{name}", Body=b"old")
    order: list[str] = []
    real_put = in_process_s3.put_file
    monkeypatch.setattr(in_process_s3, "put_file", lambda p, url: (order.append(p.name), real_put(p, url)))
    with in_process_s3.OutputCommitter(f"s3://{bucket}/out", "x/img") as committer:
        committer.local_dir.mkdir()
        for name in ("slice_0.png", "slice_1.png", "batch_metadata.json", "metadata.json"):
            (committer.local_dir / name).write_bytes(name.encode())
        committed = committer.commit(lambda: True)
        tmp = committer.tmp
    assert committed["url"] == f"s3://{bucket}/out/x/img" and committed["objects"] == 4
    assert order[-2:] == ["batch_metadata.json", "metadata.json"]
    assert keys(s3_endpoint, bucket, "out/x/img") == [
        "batch_metadata.json",
        "metadata.json",
        "slice_0.png",
        "slice_1.png",
    ]
    assert not tmp.exists()


def test_a_worker_that_lost_its_lease_uploads_nothing(tmp_path: Path, in_process_s3, s3_endpoint: str) -> None:
    from tessq.errors import LeaseLostError

    bucket = new_bucket(s3_endpoint)
    with in_process_s3.OutputCommitter(f"s3://{bucket}/out", "img") as committer:
        committer.local_dir.mkdir()
        (committer.local_dir / "metadata.json").write_bytes(b"{}")
        with pytest.raises(LeaseLostError, match="lease lost"):
            committer.commit(lambda: False)
    assert keys(s3_endpoint, bucket, "out") == []


def test_a_missing_bucket_is_a_clear_error_before_anything_is_recorded(tmp_path: Path, s3_env: dict) -> None:
    proc = tessq_cmd("scan", "s3://no-such-bucket-tessq/raw", "--out", str(tmp_path / "out"), env=s3_env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no-such-bucket-tessq" in proc.stderr + proc.stdout and "does not exist" in proc.stderr + proc.stdout

"""tessellate_image end to end: folder contract, metadata, PNG/TIFF decisions, streaming, atomicity, errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessq.cut import core
from tessq.cut.tiff import TiffInfo
from tessq.cut.verify import verify_image
from tessq.errors import ImageTooSmallError, SourceChangedError, SourceModifiedError
from tessq.options import SliceOptions
from tessq.storage import folder
from tests.tiffgen import PNG_VARIANTS, VARIANTS, write_variant

SMALL = SliceOptions(min_size=1)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_slices_bit_exact(tmp_path: Path, name: str) -> None:
    path, _ = write_variant(tmp_path, name)
    out = tmp_path / "out" / name
    result = core.tessellate_image(path, out, SMALL, relative_path=f"sub/{name}.tif")
    meta = json.loads((out / "metadata.json").read_text())
    assert result["slices"] == 8 == len(meta["slices"])
    assert meta["output"]["format"] == ("png" if name in PNG_VARIANTS else "tiff")
    if meta["output"]["format"] == "tiff":
        assert meta["output"]["reason"]
    assert sorted(os.listdir(out)) == sorted(
        [r["file"] for r in meta["slices"]] + ["metadata.json", "batch_metadata.json"]
    )
    check = verify_image(out, path)
    assert check["overall_identical"], check


# metadata.json's keys and their order: existing readers (and byte-for-byte reruns) rely on both
METADATA_KEYS = [
    "schema",
    "schema_version",
    "created_utc",
    "tool",
    "source",
    "original_image",
    "grid",
    "output",
    "georef",
    "slices",
    "totals",
]
SOURCE_KEYS = [
    "relative_path",
    "absolute_path",
    "bytes",
    "mtime",
    "sha256",
    "width",
    "height",
    "dtype",
    "samples",
    "bits_per_sample",
    "sample_format",
    "photometric",
    "decoded_photometric",
    "extra_samples",
    "compression",
    "predictor",
    "layout",
    "tile_shape",
    "rows_per_strip",
    "planar",
    "byteorder",
    "bigtiff",
    "orientation",
    "series",
    "level",
    "series_count",
    "series_kind",
    "series_shape",
    "levels",
    "page_index",
    "page_count",
    "colormap",
    "decoder",
    "tifffile_warnings",
]


@pytest.mark.parametrize("name", ["rgb8_tiled_lzw", "palette", "geotiff", "rgb16_bigendian"])
def test_metadata_json_keeps_its_key_set_and_order(tmp_path: Path, name: str) -> None:
    path, _ = write_variant(tmp_path, name)
    core.tessellate_image(path, tmp_path / "img", SMALL)
    meta = json.loads((tmp_path / "img" / "metadata.json").read_text())
    assert list(meta) == METADATA_KEYS
    assert list(meta["source"]) == SOURCE_KEYS


def test_every_tiff_info_field_is_in_metadata_json_or_excluded_on_purpose() -> None:
    names = {f.name for f in dataclasses.fields(TiffInfo)} - core.SOURCE_EXCLUDED
    assert {core.SOURCE_RENAMES.get(n, n) for n in names} <= set(SOURCE_KEYS)


def test_metadata_schema(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "rgb8_tiled_lzw")
    out = tmp_path / "img"
    core.tessellate_image(path, out, SMALL, relative_path="a/b.tif", batch_metadata={"job": 7})
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["schema_version"] == 1
    src = meta["source"]
    for key in (
        "relative_path",
        "absolute_path",
        "bytes",
        "mtime",
        "sha256",
        "width",
        "height",
        "dtype",
        "samples",
        "photometric",
        "compression",
        "layout",
        "series",
        "page_count",
    ):
        assert key in src
    assert src["relative_path"] == "a/b.tif" and src["layout"] == "tiled" and src["compression"] == "lzw"
    assert set(meta["grid"]) >= {"mode", "rows", "cols", "pieces", "tile_size", "overlap", "edge_policy"}
    first = meta["slices"][0]
    assert set(first) >= {"index", "row", "col", "x0", "y0", "x1", "y1", "file", "format", "bytes", "sha256"}
    assert first["file"] == f"slice_0_0_0_{first['x1']}_{first['y1']}.png"
    batch = json.loads((out / "batch_metadata.json").read_text())
    assert batch["job"] == 7 and {"read_s", "encode_s", "write_s", "total_s"} <= set(batch["timings"])
    assert "tessq" in batch["versions"]


def test_geotiff_slices_get_geotransforms_and_world_files(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "geotiff")
    out = tmp_path / "geo"
    core.tessellate_image(path, out, SliceOptions(min_size=1, world_files=True))
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["georef"]["crs"] == "EPSG:32633"
    assert meta["georef"]["geotransform"] == [500000.0, 10.0, 0.0, 4200000.0, 0.0, -10.0]
    rec = meta["slices"][5]
    assert rec["geotransform"][0] == 500000.0 + 10.0 * rec["x0"]
    assert rec["geotransform"][3] == 4200000.0 - 10.0 * rec["y0"]
    lines = (out / rec["world_file"]).read_text().split()
    assert rec["world_file"].endswith(".pgw") and float(lines[4]) == rec["geotransform"][0] + 5.0


def test_streaming_path_writes_the_same_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Band slices are encoded in one call, streamed ones chunk by chunk through the same compressor.
    path = tmp_path / "s.tif"
    data = np.random.default_rng(3).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    tifffile.imwrite(path, data, rowsperstrip=7, compression="zlib", metadata=None)
    core.tessellate_image(path, tmp_path / "band", SMALL)
    monkeypatch.setattr(core, "BAND_LIMIT_BYTES", 1000)
    monkeypatch.setattr(core, "STREAM_CHUNK_BYTES", 5000)
    core.tessellate_image(path, tmp_path / "stream", SMALL)
    for name in os.listdir(tmp_path / "band"):
        if name.endswith(".png"):
            band = imagecodecs.png_decode((tmp_path / "band" / name).read_bytes())
            stream = imagecodecs.png_decode((tmp_path / "stream" / name).read_bytes())
            assert band.dtype == stream.dtype and np.array_equal(band, stream)
            assert (tmp_path / "band" / name).read_bytes() == (tmp_path / "stream" / name).read_bytes()
    assert verify_image(tmp_path / "stream", path)["overall_identical"]


def test_streaming_tiff_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.tif"
    data = np.random.default_rng(4).random((300, 310)).astype(np.float32)
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib", metadata=None)
    monkeypatch.setattr(core, "BAND_LIMIT_BYTES", 1000)
    core.tessellate_image(path, tmp_path / "o", SMALL)
    assert verify_image(tmp_path / "o", path)["overall_identical"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    samples=st.sampled_from([1, 3, 4]),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "int16"]),
    n=st.integers(1, 9),
    tile=st.one_of(st.none(), st.integers(4, 40)),
    seed=st.integers(0, 99),
    tiled=st.booleans(),
)
def test_property_bit_exact_reassembly(tmp_path: Path, h, w, samples, dtype, n, tile, seed, tiled) -> None:
    rng = np.random.default_rng(seed)
    shape = (h, w, samples) if samples > 1 else (h, w)
    data = (rng.random(shape) * 1000).astype(dtype)
    path = tmp_path / f"p{seed}_{h}_{w}.tif"
    layout = {"tile": (16, 16)} if tiled else {"rowsperstrip": max(1, h // 3)}
    tifffile.imwrite(
        path,
        data,
        photometric="rgb" if samples >= 3 else "minisblack",
        extrasamples=[2] if samples == 4 else None,
        compression="zlib",
        metadata=None,
        **layout,
    )
    overlap = int(rng.integers(0, tile)) if tile else 0
    options = SliceOptions(min_size=1, num_pieces=n, tile_size=tile, overlap=overlap)
    out = tmp_path / f"o{seed}_{h}_{w}_{n}_{tile}"
    try:
        core.tessellate_image(path, out, options)
    except ImageTooSmallError:
        assert tile is None  # only an N grid can be infeasible (more columns than pixels)
        return
    check = verify_image(out, path)
    assert check["overall_identical"] and check["coverage_ok"], check


def test_too_small_and_missing(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "gray8")
    with pytest.raises(ImageTooSmallError, match="below the minimum size of 1024"):
        core.tessellate_image(path, tmp_path / "o", SliceOptions())
    with pytest.raises(SourceChangedError):
        core.tessellate_image(tmp_path / "nope.tif", tmp_path / "o2", SMALL)
    assert not (tmp_path / "o").exists()
    assert [p for p in os.listdir(tmp_path) if folder.is_leftover(p)] == []


def test_reprocessing_replaces_folder_atomically(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "gray8")
    out = tmp_path / "img"
    core.tessellate_image(path, out, SMALL)
    (out / "stale.txt").write_text("old")
    core.tessellate_image(path, out, SliceOptions(min_size=1, num_pieces=2))
    assert not (out / "stale.txt").exists() and len(json.loads((out / "metadata.json").read_text())["slices"]) == 2
    assert [p for p in os.listdir(tmp_path) if folder.is_leftover(p)] == []


def test_failure_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = write_variant(tmp_path, "gray8")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core, "_add_georef", boom)
    monkeypatch.setattr(core.geo, "read_georef", lambda tags: {"geotransform": [0, 1, 0, 0, 0, -1]})
    with pytest.raises(OSError) as info:
        core.tessellate_image(path, tmp_path / "img", SMALL)
    assert info.value.errno == 28
    assert os.listdir(tmp_path) == ["gray8.tif"]


def test_cleanup_stale(tmp_path: Path) -> None:
    (tmp_path / ".img.tessq-tmp.abcd").mkdir()
    (tmp_path / ".img.tessq-tmp.abcd" / "slice_0.png").write_bytes(b"x")
    (tmp_path / ".other.tessq-tmp.abcd").mkdir()
    removed = folder.cleanup_stale(tmp_path, "img")
    assert [p.name for p in removed] == [".img.tessq-tmp.abcd"]
    assert (tmp_path / ".other.tessq-tmp.abcd").exists()
    # crash between "move old aside" and "rename new in": the old complete folder comes back
    (tmp_path / ".img.tessq-old.ef01").mkdir()
    folder.cleanup_stale(tmp_path, "img")
    assert (tmp_path / "img").is_dir()


def test_a_source_rewritten_while_sliced_is_a_retryable_error_and_nothing_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "moving.tif"
    tifffile.imwrite(path, np.zeros((40, 40), np.uint8))
    real_write = core._write_slices

    def write_then_touch(*args: object, **kwargs: object) -> object:
        records = real_write(*args, **kwargs)
        os.utime(path, ns=(1, 1))  # another program rewrites the file mid-run
        return records

    monkeypatch.setattr(core, "_write_slices", write_then_touch)
    with pytest.raises(SourceModifiedError) as caught:
        core.tessellate_image(path, tmp_path / "out", SMALL)
    assert not caught.value.permanent  # the job system retries it and cuts the new content
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if ".tessq-tmp" in p.name]

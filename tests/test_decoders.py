"""Layouts tifffile refuses but GDAL and Pillow read: sliced through a fallback decoder, bit-exact against an
independent decoder of the same file (GDAL via rasterio where it reads it), with the decoder recorded."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from tessq.cut import core, tiff, tiffcodec
from tessq.cut.verify import decode_slice, load_metadata
from tessq.errors import ImageTooLargeError, UnsupportedImageError
from tessq.options import SliceOptions
from tests import tiffgen
from tests.s3server import s3_endpoint  # noqa: F401  (fixture)

CORPUS = Path("/work/shared/corpus/tiff")


def _gdal(path: Path) -> np.ndarray:
    rasterio = pytest.importorskip("rasterio")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as ds:
            arr = ds.read()
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)


def _pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _sliced(path: Path, out: Path, pieces: int = 4) -> tuple[dict[str, Any], np.ndarray]:
    """Slice with tessq, read the slices back and reassemble the whole image."""
    core.tessellate_image(path, out, SliceOptions(min_size=1, num_pieces=pieces))
    meta = load_metadata(out)
    src = meta["source"]
    whole: np.ndarray | None = None
    for rec in meta["slices"]:
        part = decode_slice(out / rec["file"], meta)
        if whole is None:
            whole = np.zeros((src["height"], src["width"], *part.shape[2:]), part.dtype)
        whole[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]] = part
    assert whole is not None
    return meta, whole


@pytest.mark.parametrize(
    ("h", "v", "compression"),
    [(4, 1, "lzw"), (2, 2, "none"), (2, 2, "lzw"), (2, 1, "deflate"), (2, 1, "none"), (4, 2, "deflate")],
    ids=["411-lzw", "420-none", "420-lzw", "422-deflate", "422-none", "4x2-deflate"],
)
def test_subsampled_ycbcr_without_jpeg(tmp_path: Path, h: int, v: int, compression: str) -> None:
    path = tiffgen.ycbcr_subsampled(tmp_path / "ycc.tif", h, v, compression)
    info = tiff.probe(path)
    assert info.decoder == "pillow-libtiff" and info.decoded_photometric == "rgb" and info.samples == 3
    meta, whole = _sliced(path, tmp_path / "out")
    assert meta["source"]["decoder"] == "pillow-libtiff"
    assert meta["source"]["decoded_photometric"] == "rgb"
    assert any("YCbCr converted to RGB by libtiff" in w for w in meta["source"]["tifffile_warnings"])
    assert np.array_equal(whole, _gdal(path))  # GDAL: its own libtiff build, its own RGBA reading


def test_ycbcr_444_without_jpeg_stays_with_tifffile(tmp_path: Path) -> None:
    """No subsampling: tifffile decodes it, and keeps the stored YCbCr samples (recorded as such)."""
    path = tiffgen.ycbcr_subsampled(tmp_path / "ycc444.tif", 1, 1, "lzw")
    info = tiff.probe(path)
    assert info.decoder == "tifffile" and info.decoded_photometric == "ycbcr"
    _, whole = _sliced(path, tmp_path / "out")
    assert np.array_equal(whole, tifffile.imread(path))


def test_planar_separate_rgb_jpeg(tmp_path: Path) -> None:
    path = tiffgen.planar_jpeg(tmp_path / "pj.tif", photometric=2, samples=3)
    with pytest.raises(Exception, match="colorspace"):
        tifffile.imread(path)  # what tifffile alone does with it
    meta, whole = _sliced(path, tmp_path / "out")
    assert meta["source"]["decoder"] == "pillow-libtiff" and meta["source"]["planar"] == "separate"
    assert np.array_equal(whole, _gdal(path))


def test_planar_separate_cmyk_jpeg_is_tifffile(tmp_path: Path) -> None:
    """tifffile decodes planar CMYK JPEG itself, to the same samples as Pillow (GDAL converts it to RGBA)."""
    path = tiffgen.planar_jpeg(tmp_path / "cmyk.tif", photometric=5, samples=4)
    meta, whole = _sliced(path, tmp_path / "out")
    assert meta["source"]["decoder"] == "tifffile" and meta["source"]["decoded_photometric"] == "separated"
    assert np.array_equal(whole, _pillow(path))


@pytest.mark.parametrize("name", ["imagetiff__libtiffpic_smallliz.tif", "imagetiff__libtiffpic_zackthecat.tif"])
def test_old_style_jpeg_corpus(tmp_path: Path, name: str) -> None:
    src = CORPUS / name
    if not src.exists():
        pytest.skip(f"{src} not found")
    meta, whole = _sliced(src, tmp_path / "out")
    assert meta["source"]["decoder"] == "pillow-libtiff" and meta["source"]["compression"] == "ojpeg"
    assert np.array_equal(whole, _gdal(src))


@pytest.mark.parametrize("length", [999_999, 10, 0])
def test_old_style_jpeg_bogus_interchange_length(tmp_path: Path, length: int) -> None:
    """smallliz with its JPEGInterchangeFormatLength rewritten: libtiff does not rely on it, nor does tessq."""
    src = CORPUS / "imagetiff__libtiffpic_smallliz.tif"
    if not src.exists():
        pytest.skip(f"{src} not found")
    path = tmp_path / "bogus.tif"
    shutil.copyfile(src, path)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.tags[514].valueoffset
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, offset, length)
    path.write_bytes(bytes(raw))
    meta, whole = _sliced(path, tmp_path / "out")
    assert meta["source"]["decoder"] == "pillow-libtiff"
    assert np.array_equal(whole, _gdal(src))


def test_old_style_jpeg_interchange_only_length_past_eof(tmp_path: Path) -> None:
    """Only JPEGInterchangeFormat locates the data and its Length runs past the end of the file."""
    good = tiffgen.ojpeg_interchange(tmp_path / "good.tif")
    bogus = tiffgen.ojpeg_interchange(tmp_path / "bogus.tif", bogus_length=5000)
    meta, whole = _sliced(bogus, tmp_path / "out")
    assert meta["source"]["decoder"] == "pillow-libtiff"
    assert any("past the end of the file" in w for w in meta["source"]["tifffile_warnings"])
    assert np.array_equal(whole, _pillow(good))


def test_float24_with_predictor_via_gdal(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    path, values = tiffgen.float24_predicted(tmp_path / "f24.tif")
    info = tiff.probe(path)
    assert info.decoder == "gdal" and info.dtype == "float32"
    meta, whole = _sliced(path, tmp_path / "out")
    assert meta["source"]["decoder"] == "gdal"
    assert np.array_equal(whole, values)  # the generator's own values: float24 is exact in float32


def test_float24_without_gdal_is_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiffcodec, "gdal_available", lambda: False)
    path, _ = tiffgen.float24_predicted(tmp_path / "f24.tif")
    for opener in (tiff.probe, tiff.RegionReader):
        with pytest.raises(UnsupportedImageError, match="unpredicting float24 not supported") as err:
            opener(path)
        assert "header" not in str(err.value) and "GDAL (rasterio) is not installed" in str(err.value)


@pytest.mark.parametrize("tiled", [False, True], ids=["strips", "tiles"])
def test_offset_arrays_longer_than_layout(tmp_path: Path, tiled: bool) -> None:
    """Extra offsets past the layout are ignored (tifffile trims strip arrays itself, not tile arrays)."""
    data = tiffgen.smooth(40, 30, samples=1)
    tags: dict[int, tuple[int, list[Any]]] = {258: (3, [8]), 259: (3, [1]), 262: (3, [1]), 277: (3, [1])}
    if tiled:
        padded = np.zeros((48, 32), np.uint8)
        padded[:40, :30] = data
        segs = [padded[y : y + 16, x : x + 16].tobytes() for y in range(0, 48, 16) for x in range(0, 32, 16)]
        path = tiffgen.write_raw_tiff(tmp_path / "long.tif", 30, 40, tags, segs, tile=(16, 16), extra_offsets=3)
        expected, note = 6, "the first 6 are used"
    else:
        tags[278] = (4, [8])
        segs = [data[y : y + 8].tobytes() for y in range(0, 40, 8)]
        path = tiffgen.write_raw_tiff(tmp_path / "long.tif", 30, 40, tags, segs, extra_offsets=3)
        expected, note = 5, "incorrect StripOffsets count"
    info = tiff.probe(path)
    assert info.decoder == "tifffile" and info.n_segments == expected
    assert any(note in w for w in info.warnings)
    _, whole = _sliced(path, tmp_path / "out")
    assert np.array_equal(whole, data)
    assert np.array_equal(whole, _gdal(path))  # libtiff agrees (Pillow's own raw reader does not: it
    # pastes every listed strip, extras included)


def test_whole_image_fallback_respects_memory_budget(tmp_path: Path) -> None:
    path = tiffgen.ycbcr_subsampled(tmp_path / "ycc.tif", 2, 2, "lzw", size=(64, 64))
    need = tiffcodec.pillow_memory(64, 64, "RGB")
    with pytest.raises(ImageTooLargeError, match="whole image at once") as err:
        tiff.RegionReader(path, memory_budget=need - 1)
    assert f"{need:,} bytes" in str(err.value)
    with tiff.RegionReader(path, memory_budget=need) as reader:
        assert reader.info.decoder == "pillow-libtiff"
        assert np.array_equal(reader.read(5, 40, 3, 50), _pillow(path)[5:40, 3:50])


@pytest.mark.parametrize("spool", [True, False], ids=["spooled", "ranged"])
def test_fallback_reads_s3_sources(
    tmp_path: Path,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    spool: bool,
) -> None:
    """A remote source goes to Pillow as its spooled copy, or as the ranged reader (no temp file)."""
    from tessq.storage import s3 as remote
    from tests.s3tools import new_bucket, s3_client

    monkeypatch.setenv("TESSQ_S3_ENDPOINT_URL", s3_endpoint)
    remote._CLIENT.reset()
    path = tiffgen.ycbcr_subsampled(tmp_path / "ycc.tif", 2, 2, "lzw")
    bucket = new_bucket(s3_endpoint)
    s3_client(s3_endpoint).upload_file(str(path), bucket, "ycc.tif")
    source = remote.RemoteSource(f"s3://{bucket}/ycc.tif")
    if spool:
        source.fetch(tmp_path)
    try:
        with tiff.RegionReader(source) as reader:
            assert reader.info.decoder == "pillow-libtiff"
            assert np.array_equal(reader.read(0, reader.info.height), _gdal(path))
    finally:
        source.close()
        remote._CLIENT.reset()

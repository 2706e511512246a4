"""Every refusal states its true reason: one test per error category that tifffile, imagecodecs or Pillow can
be made to raise, through tiffcodec.classify_decode_error (the one place that maps them)."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from tessq.cut import tiff, tiffcodec
from tessq.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from tests import tiffgen


def _garble_second_strip(path: Path) -> None:
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages.first.dataoffsets[1], tif.pages.first.databytecounts[1]
    raw = bytearray(path.read_bytes())
    raw[offset + 2 : offset + count] = bytes((i * 97 + 13) % 256 for i in range(count - 2))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("compression", "codec"),
    [("lzw", "lzw"), ("zlib", "deflate"), ("jpeg", "jpeg8"), ("zstd", "zstd"), ("packbits", "packbits")],
)
def test_garbled_strip_is_corrupt_naming_strip_and_codec(tmp_path: Path, compression: str, codec: str) -> None:
    path = tmp_path / "g.tif"
    tifffile.imwrite(path, tiffgen.smooth(), photometric="rgb", compression=compression, rowsperstrip=16, metadata=None)
    _garble_second_strip(path)
    info = tiff.probe(path)  # the headers are fine: scan accepts it
    assert info.decoder == "tifffile"
    expected = re.escape(f"g.tif: cannot decode strip 1 ({codec} codec: ")
    with pytest.raises(CorruptImageError, match=expected) as err, tiff.RegionReader(path) as reader:
        reader.read(0, info.height)
    assert "header" not in str(err.value)


def test_offset_arrays_shorter_than_layout_are_corrupt(tmp_path: Path) -> None:
    data = tiffgen.smooth(40, 32, samples=1)
    tiles = [data[y : y + 16, x : x + 16].tobytes() for y in range(0, 32, 16) for x in range(0, 32, 16)]
    tags = {258: (3, [8]), 259: (3, [1]), 262: (3, [1]), 277: (3, [1])}
    path = tiffgen.write_raw_tiff(tmp_path / "short.tif", 32, 40, tags, tiles, tile=(16, 16))  # needs 6
    with pytest.raises(CorruptImageError, match="has 4 offsets / 4 byte counts, the layout needs 6"):
        tiff.probe(path)


def test_codec_feature_tifffile_lacks_is_unsupported_not_broken_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NotImplementedError from tifffile's decoder set-up ("unpredicting float24 not supported")."""
    monkeypatch.setattr(tiffcodec, "gdal_available", lambda: False)
    path, _ = tiffgen.float24_predicted(tmp_path / "f24.tif")
    with pytest.raises(UnsupportedImageError, match="unpredicting float24 not supported") as err:
        tiff.RegionReader(path)
    assert "corrupt" not in str(err.value) and "header" not in str(err.value)


def test_unknown_compression_is_unsupported(tmp_path: Path) -> None:
    path, _ = tiffgen.write_variant(tmp_path, "gray8")
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags[259]
        raw[tag.valueoffset : tag.valueoffset + 2] = (52479).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedImageError, match=r"compression unknown\(52479\) is not supported"):
        tiff.probe(path)


def test_planar_separate_ycbcr_jpeg_is_unsupported_with_its_true_layout(tmp_path: Path) -> None:
    path = tiffgen.planar_jpeg(tmp_path / "pyc.tif", photometric=6, samples=3, subsampling=(2, 2))
    with pytest.raises(UnsupportedImageError, match="planar-separate chroma-subsampled YCbCr") as err:
        tiff.probe(path)
    assert "without JPEG" not in str(err.value) and "jpeg" in str(err.value)


def test_jpeg_planar_cmyk_is_never_called_without_jpeg(tmp_path: Path) -> None:
    """A stray YCbCrSubSampling tag on planar CMYK JPEG: tifffile says "without JPEG compression"; we don't,
    and Pillow/libtiff (which ignores the tag outside YCbCr) decodes it."""
    path = tiffgen.planar_jpeg(tmp_path / "cmyk.tif", photometric=5, samples=4, stray_subsampling=True)
    info = tiff.probe(path)
    assert not any("without JPEG" in w for w in info.warnings)
    assert info.decoder == "pillow-libtiff"
    with tiff.RegionReader(path) as reader, Image.open(path) as im:
        assert np.array_equal(reader.read(0, info.height), np.asarray(im))


def test_whole_image_fallback_over_budget_is_too_large(tmp_path: Path) -> None:
    path = tiffgen.ycbcr_subsampled(tmp_path / "y.tif", 2, 2, "lzw", size=(64, 64))
    with pytest.raises(ImageTooLargeError, match="Pillow/libtiff fallback decodes the whole image at once"):
        tiff.RegionReader(path, memory_budget=20_000)


def test_planar_rgb_jpeg_tifffile_cannot_read_is_unsupported_when_no_fallback_fits(tmp_path: Path) -> None:
    """tifffile's 'Bogus JPEG colorspace' on a sound file is its limitation, not corruption."""
    path = tiffgen.planar_jpeg(tmp_path / "pj.tif")
    with pytest.raises(ImageTooLargeError, match=r"Bogus JPEG colorspace; pillow-libtiff: .* over the memory budget"):
        tiff.RegionReader(path, memory_budget=2000)


@pytest.mark.parametrize(
    ("exc", "kind", "phrase"),
    [
        (MemoryError("Unable to allocate 3.5 TiB"), ImageTooLargeError, "needs more memory than available"),
        (Image.DecompressionBombError("exceeds limit"), ImageTooLargeError, "exceeds limit"),
        (NotImplementedError("unpredicting float24 not supported"), UnsupportedImageError, "float24"),
        (imagecodecs.DelayedImportError("jpegxl"), UnsupportedImageError, "codec for strip 0 is not available"),
        (ValueError("<COMPRESSION.SGILOG: 34676> not supported"), UnsupportedImageError, "SGILOG"),
        (imagecodecs.Jpeg8Error("Unsupported JPEG process: SOF type 0xc3"), UnsupportedImageError, "jpeg8 codec"),
        (imagecodecs.Jpeg8Error("Unsupported marker type 0x60"), CorruptImageError, "cannot decode strip 0"),
        (imagecodecs.Jpeg8Error("Bogus JPEG colorspace"), UnsupportedImageError, "Bogus JPEG colorspace"),
        (imagecodecs.DeflateError("inflate", "BAD_DATA"), CorruptImageError, "(deflate codec: inflate"),
        (imagecodecs.LzwError("imcd_lzw_decode", "IMCD_LZW_CORRUPT"), CorruptImageError, "(lzw codec"),
        (tifffile.TiffFileError("corrupted strip cannot be reshaped"), CorruptImageError, "cannot be reshaped"),
        (OSError("decoder error -2"), CorruptImageError, "Pillow/libtiff: decoder error -2"),
        (ValueError("buffer is smaller than requested size"), CorruptImageError, "ValueError"),
        (RecursionError("maximum recursion depth"), CorruptImageError, "TIFF structure is broken"),
    ],
)
def test_classify_decode_error(exc: BaseException, kind: type, phrase: str) -> None:
    got, reason = tiffcodec.classify_decode_error(exc, "strip 0")
    assert got is kind and phrase in reason


def test_real_io_errors_propagate_pillow_decode_errors_do_not() -> None:
    assert tiffcodec.is_io_error(OSError(errno.EIO, "Input/output error"))
    assert not tiffcodec.is_io_error(OSError("image file is truncated"))
    assert not tiffcodec.is_io_error(ValueError("x"))

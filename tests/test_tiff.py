"""TIFF probing and region reading: every variant decodes exactly as tifffile does; bad input -> our errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tessq.cut import tiff
from tessq.errors import CorruptImageError, ImageTooLargeError, SourceChangedError, UnsupportedImageError
from tests.tiffgen import VARIANTS, write_variant


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_region_reads_match_tifffile(tmp_path: Path, name: str) -> None:
    path, expected = write_variant(tmp_path, name)
    info = tiff.probe(path)
    assert (info.width, info.height) == (expected.shape[1], expected.shape[0])
    with tiff.RegionReader(path) as reader:
        whole = reader.read(0, info.height)
        assert whole.dtype == expected.dtype and np.array_equal(whole, expected)
        # odd regions that cut through strips and tiles
        for y0, y1, x0, x1 in ((3, 41, 5, 77), (40, 67, 0, 90), (0, 1, 89, 90)):
            assert np.array_equal(reader.read(y0, y1, x0, x1), expected[y0:y1, x0:x1])
    assert np.array_equal(tiff.reference_pixels(path), expected)


def test_probe_fields(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "rgb16_bigendian")
    info = tiff.probe(path)
    assert info.dtype == "uint16" and info.samples == 3 and info.photometric == "rgb"
    assert info.byteorder == ">" and not info.tiled and info.rows_per_strip == 5
    path, _ = write_variant(tmp_path, "planar_separate")
    assert tiff.probe(path).planar == "separate"
    path, _ = write_variant(tmp_path, "jpeg_ycbcr_tiled")
    info = tiff.probe(path)
    assert info.photometric == "ycbcr" and info.decoded_photometric == "rgb" and info.tiled
    path, _ = write_variant(tmp_path, "multipage")
    assert tiff.probe(path).n_pages == 2


def test_probe_is_header_only_and_fast(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    # a 20000x20000 header whose data we never read: probe must not decode
    tifffile.imwrite(path, shape=(20000, 20000), dtype=np.uint8, photometric="minisblack", metadata=None)
    start = time.perf_counter()
    for _ in range(20):
        tiff.probe(path)
    assert (time.perf_counter() - start) / 20 < 0.05


def test_errors_name_file_and_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=re.escape("empty.tif: file is empty")):
        tiff.probe(empty)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(CorruptImageError, match=re.escape("junk.tif: not a readable TIFF")):
        tiff.probe(junk)
    with pytest.raises(SourceChangedError, match="no longer exists"):
        tiff.probe(tmp_path / "missing.tif")


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "rgb8_striped_none")
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match=re.escape("cut.tif")), tiff.RegionReader(cut) as reader:
        reader.read(0, reader.info.height)


def test_garbled_compressed_data_is_corrupt(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "rgb8_tiled_lzw")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 200] = b"\xff" * 200
    path.write_bytes(bytes(raw))
    try:
        with tiff.RegionReader(path) as reader:
            reader.read(0, reader.info.height)
    except (CorruptImageError, UnsupportedImageError):
        pass  # either refusal is fine; a raw codec exception is not


def test_decompression_bomb_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), metadata=None)
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        width_tag, length_tag = page.tags[256], page.tags[257]
        for tag in (width_tag, length_tag):
            raw[tag.valueoffset : tag.valueoffset + 2] = (60000).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises((CorruptImageError, ImageTooLargeError), match=re.escape("bomb.tif")):
        tiff.probe(path)


def test_unsupported_compression(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "gray8")
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags[259]
        raw[tag.valueoffset : tag.valueoffset + 2] = (52479).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedImageError, match="compression"):
        tiff.probe(path)


def test_strip_decoded_once_across_bands(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    tifffile.imwrite(
        path,
        np.arange(100 * 10, dtype=np.uint16).reshape(100, 10),
        rowsperstrip=30,
        compression="zlib",
        metadata=None,
    )
    with tiff.RegionReader(path) as reader:
        for y0, y1 in ((0, 50), (50, 100)):  # strip 1 (rows 30-59) straddles both bands
            reader.read(y0, y1)
            reader.forget_above(y1)
        assert reader.segments_decoded == 4

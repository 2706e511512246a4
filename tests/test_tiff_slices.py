"""TIFF slices as written: Adobe Deflate at level 6, the planar layout, extra samples, the padded colour table,
strips or tiles, extra tags, and the stored dtype; each read back with tifffile.

Each test pins one rule of encode.write_tiff / encode_slice that a mutation run showed untested.
"""

from __future__ import annotations

import io

import numpy as np
import tifffile

from tessq.cut import encode
from tessq.options import SliceOptions


def read(data: bytes) -> tuple[tifffile.TiffPage, np.ndarray]:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        return page, page.asarray()


def test_a_tiff_slice_is_deflate_compressed_with_modest_strips_and_no_tifffile_metadata() -> None:
    array = np.random.default_rng(1).random((300, 1000), dtype=np.float32)
    kind = encode.slice_kind("float32", 1, "minisblack")
    data, ext = encode.encode_slice(array, kind, SliceOptions())
    page, got = read(data)
    assert ext == "tif" and np.array_equal(got, array)
    assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert page.rowsperstrip == (1 << 20) // (1000 * 4)
    assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
    assert page.description == ""  # metadata=None: no tifffile JSON in ImageDescription
    expected = io.BytesIO()  # the same settings by hand: level 6 exactly
    tifffile.imwrite(
        expected,
        array,
        photometric="minisblack",
        compression="zlib",
        compressionargs={"level": 6},
        rowsperstrip=page.rowsperstrip,
        metadata=None,
    )
    assert expected.getvalue() == data


def test_a_very_wide_tiff_slice_still_gets_at_least_one_row_per_strip() -> None:
    array = np.zeros((3, 300000), np.float64)
    data, _ = encode.encode_slice(array, encode.slice_kind("float64", 1, "minisblack"), SliceOptions())
    page, got = read(data)
    assert page.rowsperstrip == 1 and np.array_equal(got, array)


def test_multi_sample_one_bit_slices_are_written_planar_separate() -> None:
    array = np.random.default_rng(2).integers(0, 2, size=(9, 13, 3)).astype(bool)
    kind = encode.slice_kind("bool", 3, "rgb")
    data, _ = encode.encode_slice(array, kind, SliceOptions())
    page, got = read(data)
    assert page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    assert np.array_equal(np.moveaxis(got, 0, -1), array)
    assert np.array_equal(encode.tiff_planes(array, kind), np.moveaxis(array, -1, 0))
    flat = encode.slice_kind("bool", 1, "minisblack", slice_format="tiff")
    plane = array[..., 0]
    assert encode.tiff_planes(plane, flat) is plane


def test_contig_multi_sample_slices_keep_their_layout_and_extra_samples() -> None:
    array = np.random.default_rng(3).random((7, 5, 5), dtype=np.float32)
    kind = encode.slice_kind("float32", 5, "rgb", (2,))
    assert encode.tiff_planes(array, kind) is array
    data, _ = encode.encode_slice(array, kind, SliceOptions())
    page, got = read(data)
    assert page.planarconfig == tifffile.PLANARCONFIG.CONTIG and np.array_equal(got, array)
    assert page.photometric == tifffile.PHOTOMETRIC.RGB
    assert tuple(page.extrasamples) == (2, 0)


def test_a_palette_slice_keeps_its_table_padded_to_the_index_range() -> None:
    table = (np.arange(3 * 16).reshape(3, 16) * 999 % 65536).astype(np.uint16)
    kind = encode.slice_kind("uint8", 1, "palette", (), table)
    array = np.random.default_rng(4).integers(0, 16, size=(6, 6), dtype=np.uint8)
    data, _ = encode.encode_slice(array, kind, SliceOptions())
    page, got = read(data)
    assert page.photometric == tifffile.PHOTOMETRIC.PALETTE and np.array_equal(got, array)
    assert page.colormap.shape == (3, 256)
    assert np.array_equal(page.colormap[:, :16], table) and not page.colormap[:, 16:].any()


def test_a_one_bit_palette_slice_stores_8_bit_indices() -> None:
    table = (np.arange(6).reshape(3, 2) * 999).astype(np.uint16)
    kind = encode.slice_kind("bool", 1, "palette", (), table, 1, "tiff")
    array = np.random.default_rng(5).integers(0, 2, size=(4, 9)).astype(bool)
    stored = encode.stored_values(array, kind)
    assert stored.dtype == np.uint8 and np.array_equal(stored, array)
    same = np.zeros((2, 2), np.float32)
    assert encode.stored_values(same, encode.slice_kind("float32", 1, "minisblack")) is same
    data, _ = encode.encode_slice(array, kind, SliceOptions())
    page, got = read(data)
    assert got.dtype == np.uint8 and np.array_equal(got, array) and page.colormap.shape == (3, 256)


def test_tiles_from_an_iterator_shape_and_extra_tags() -> None:
    kind = encode.slice_kind("uint16", 1, "minisblack", slice_format="tiff")
    tiles = [np.full((16, 16), v, np.uint16) for v in range(4)]
    buf = io.BytesIO()
    encode.write_tiff(
        buf, iter(tiles), kind, shape=(32, 32), tile=(16, 16), extratags=[(65000, "s", 0, "tessq-test", True)]
    )
    page, got = read(buf.getvalue())
    assert page.is_tiled and (page.tilelength, page.tilewidth) == (16, 16) and got.dtype == np.uint16
    assert np.array_equal(got[:16, 16:], tiles[1]) and np.array_equal(got[16:, :16], tiles[2])
    assert page.tags[65000].value == "tessq-test"


def test_strips_of_the_requested_height_when_not_tiled() -> None:
    kind = encode.slice_kind("int16", 1, "minisblack")
    array = np.arange(40 * 8, dtype=np.int16).reshape(40, 8)
    buf = io.BytesIO()
    encode.write_tiff(buf, array, kind, rowsperstrip=7)
    page, got = read(buf.getvalue())
    assert page.rowsperstrip == 7 and not page.is_tiled and np.array_equal(got, array)

"""Slice encoding: the PNG/TIFF decision, PNG bytes decoding bit-exact, presets, streaming == one-shot."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tessq.cut import encode
from tessq.options import SliceOptions
from tests.tiffgen import smooth


def _decode(data: bytes, kind: encode.SliceKind) -> np.ndarray:
    if kind.format == "tiff":
        return tifffile.imread(io.BytesIO(data))
    if kind.color_type == 3:
        return np.asarray(Image.open(io.BytesIO(data)))
    out = imagecodecs.png_decode(data)
    return out != 0 if kind.bit_depth == 1 else out


@pytest.mark.parametrize(
    ("dtype", "samples", "photometric", "extra", "fmt", "color_type", "depth"),
    [
        ("uint8", 3, "rgb", (), "png", 2, 8),
        ("uint16", 3, "rgb", (), "png", 2, 16),
        ("uint16", 4, "rgb", (2,), "png", 6, 16),
        ("uint8", 1, "minisblack", (), "png", 0, 8),
        ("uint16", 2, "minisblack", (2,), "png", 4, 16),
        ("uint8", 1, "miniswhite", (), "png", 0, 8),
        ("bool", 1, "miniswhite", (), "png", 0, 1),
        ("float32", 1, "minisblack", (), "tiff", None, None),
        ("int16", 1, "minisblack", (), "tiff", None, None),
        ("uint32", 1, "minisblack", (), "tiff", None, None),
        ("uint8", 5, "minisblack", (), "tiff", None, None),
        ("uint8", 4, "separated", (), "tiff", None, None),
        ("uint8", 3, "minisblack", (), "tiff", None, None),
    ],
)
def test_kind_and_roundtrip(dtype, samples, photometric, extra, fmt, color_type, depth) -> None:
    kind = encode.slice_kind(dtype, samples, photometric, extra)
    assert kind.format == fmt and kind.color_type == color_type and kind.bit_depth == depth
    assert (kind.reason is None) == (fmt == "png")
    array = smooth(h=33, w=21, samples=samples, dtype=np.dtype(dtype))
    data, ext = encode.encode_slice(array, kind, SliceOptions())
    assert ext == ("png" if fmt == "png" else "tif")
    got = _decode(data, kind)
    assert got.shape == array.shape and np.array_equal(got, array)


def test_palette_png_keeps_table_and_indices() -> None:
    cmap = (np.arange(3 * 256).reshape(3, 256) % 256 * 257).astype(np.uint16)
    kind = encode.slice_kind("uint8", 1, "palette", (), cmap, 8)
    assert kind.format == "png" and kind.color_type == 3
    array = (smooth(samples=1) % 200).astype(np.uint8)
    data, _ = encode.encode_slice(array, kind, SliceOptions())
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P" and np.array_equal(np.asarray(img), array)
    assert img.getpalette()[:6] == [0, 0, 0, 0, 0, 0] or len(img.getpalette()) >= 3


def test_palette_with_16bit_table_goes_tiff_with_reason() -> None:
    cmap = (np.arange(3 * 256).reshape(3, 256) * 77 % 65536).astype(np.uint16)
    kind = encode.slice_kind("uint8", 1, "palette", (), cmap, 8)
    assert kind.format == "tiff" and "16-bit" in (kind.reason or "")
    array = (smooth(samples=1) % 16).astype(np.uint8)
    data, _ = encode.encode_slice(array, kind, SliceOptions())
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert np.array_equal(tif.pages.first.colormap, cmap)
        assert np.array_equal(tif.asarray(), array)


def test_format_tiff_forces_tiff() -> None:
    kind = encode.slice_kind("uint8", 3, "rgb", slice_format="tiff")
    assert kind.format == "tiff" and "requested" in (kind.reason or "")


@pytest.mark.parametrize("preset", ["fast", "balanced", "small"])
def test_presets_and_level_override_are_lossless(preset: str) -> None:
    array = smooth(h=50, w=70, samples=3, dtype=np.uint16)
    kind = encode.slice_kind("uint16", 3, "rgb")
    for options in (SliceOptions(png_preset=preset), SliceOptions(png_preset=preset, compress_level=0)):
        data, _ = encode.encode_slice(array, kind, options)
        assert np.array_equal(imagecodecs.png_decode(data), array)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    samples=st.sampled_from([1, 2, 3, 4]),
    dtype=st.sampled_from(["uint8", "uint16"]),
    method=st.sampled_from(list(encode.FILTERS)),
    seed=st.integers(0, 9),
)
def test_every_filter_roundtrips(h, w, samples, dtype, method, seed) -> None:
    rng = np.random.default_rng(seed)
    shape = (h, w, samples) if samples > 1 else (h, w)
    array = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)
    photometric = "rgb" if samples >= 3 else "minisblack"
    kind = encode.slice_kind(dtype, samples, photometric, (2,) if samples in (2, 4) else ())
    for engine in ("libdeflate", "zlib-ng-rle"):
        data = encode.png_encode(array, kind, method, engine, 1)
        assert np.array_equal(imagecodecs.png_decode(data), array)


def test_streaming_writer_writes_the_same_bytes_as_the_one_shot_encoder() -> None:
    array = smooth(h=97, w=61, samples=3)
    kind = encode.slice_kind("uint8", 3, "rgb")
    method, engine, level = encode.png_settings(SliceOptions())
    one_shot = encode.png_encode(array, kind, method, engine, level)
    assert np.array_equal(imagecodecs.png_decode(one_shot), array)
    buf = io.BytesIO()
    writer = encode.PngStreamWriter(buf, 61, 97, kind, method, engine, level)
    for y in range(0, 97, 10):
        writer.feed(array[y : y + 10])
    size, _ = writer.close()
    assert buf.getvalue() == one_shot and size == len(one_shot)


@pytest.mark.parametrize("bpp", [1, 2, 3, 4, 6, 8])
def test_avg_filter_is_the_png_definition(bpp: int) -> None:
    rows = np.random.default_rng(bpp).integers(0, 256, size=(17, 8 * bpp), dtype=np.uint8)
    above = np.vstack([np.zeros((1, rows.shape[1]), np.int32), rows[:-1].astype(np.int32)])
    left = np.hstack([np.zeros((17, bpp), np.int32), rows[:, :-bpp].astype(np.int32)])
    expected = (rows.astype(np.int32) - (left + above) // 2) % 256
    filtered = encode.filter_rows(rows, "avg", bpp)
    assert (filtered[:, 0] == encode.FILTERS["avg"]).all()
    assert np.array_equal(filtered[:, 1:], expected.astype(np.uint8))


def test_filter_blocks_match_unblocked(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.random.default_rng(1).integers(0, 256, size=(64, 30), dtype=np.uint8)
    whole = encode.filter_rows(rows, "paeth", 3)
    monkeypatch.setattr(encode, "FILTER_BLOCK_BYTES", 64)
    assert np.array_equal(encode.filter_rows(rows, "paeth", 3), whole)

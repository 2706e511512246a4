"""PNG encoder rules against their definitions: every filter byte for byte, sub-byte packing, Adler-32
combining, engine and preset choice, the thread count, chunk layout.

Each test pins one rule of tessq.cut.encode that round-trip tests alone would let change (found by a mutation run).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest

from tessq.cut import encode
from tessq.options import SliceOptions


def reference_filter(rows: np.ndarray, method: str, bpp: int, prev: np.ndarray | None = None) -> np.ndarray:
    """PNG specification section 9.2, pixel by pixel: raw neighbours a (left), b (above), c (above left)."""
    height, n = rows.shape
    out = np.zeros((height, n + 1), dtype=np.uint8)
    raw = rows.astype(np.int32)
    above_first = np.zeros(n, np.int32) if prev is None else prev.astype(np.int32)
    for y in range(height):
        out[y, 0] = encode.FILTERS[method]
        up_row = above_first if y == 0 else raw[y - 1]
        for x in range(n):
            a = raw[y, x - bpp] if x >= bpp else 0
            b = up_row[x]
            c = up_row[x - bpp] if x >= bpp else 0
            if method == "none":
                pred = 0
            elif method == "sub":
                pred = a
            elif method == "up":
                pred = b
            elif method == "avg":
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[y, x + 1] = (raw[y, x] - pred) % 256
    return out


@pytest.mark.parametrize("method", list(encode.FILTERS))
@pytest.mark.parametrize("bpp", [1, 3, 4])
def test_every_filter_is_the_png_definition(method: str, bpp: int) -> None:
    rows = np.random.default_rng(bpp).integers(0, 256, size=(9, 6 * bpp), dtype=np.uint8)
    assert np.array_equal(encode.filter_rows(rows, method, bpp), reference_filter(rows, method, bpp))


@pytest.mark.parametrize("method", list(encode.FILTERS))
def test_filters_of_a_band_use_the_raw_row_above_it(method: str) -> None:
    rng = np.random.default_rng(7)
    prev = rng.integers(0, 256, size=12, dtype=np.uint8)
    rows = rng.integers(0, 256, size=(5, 12), dtype=np.uint8)
    assert np.array_equal(encode.filter_rows(rows, method, 3, prev), reference_filter(rows, method, 3, prev))


def test_paeth_prefers_left_then_above_then_upper_left_on_ties() -> None:
    # rows built so that pa == pb, pb == pc and all-equal cases all occur
    rows = np.array([[10, 20, 10, 20, 30, 30], [20, 10, 20, 10, 30, 40], [0, 0, 0, 0, 0, 0]], dtype=np.uint8)
    assert np.array_equal(encode.filter_rows(rows, "paeth", 1), reference_filter(rows, "paeth", 1))


def test_blocked_filtering_carries_the_row_above_each_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.random.default_rng(2).integers(0, 256, size=(20, 8), dtype=np.uint8)
    prev = np.random.default_rng(3).integers(0, 256, size=8, dtype=np.uint8)
    monkeypatch.setattr(encode, "FILTER_BLOCK_BYTES", 24)  # three rows a block
    for method in ("up", "avg", "paeth"):
        assert np.array_equal(encode.filter_rows(rows, method, 2, prev), reference_filter(rows, method, 2, prev))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_sub_byte_indices_are_packed_leftmost_in_the_high_bits(depth: int) -> None:
    values = np.random.default_rng(depth).integers(0, 2**depth, size=(3, 11), dtype=np.uint8)
    bits = "".join(format(int(v), f"0{depth}b") for v in values[0])
    bits += "0" * (-len(bits) % 8)
    expected = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    packed = encode.pack_indices(values, depth)
    assert packed.shape == (3, len(expected)) and packed[0].tobytes() == expected


@pytest.mark.parametrize("split", [0, 1, 5000, 65520, 65521, 70000, 200000])
def test_adler32_combine_is_the_adler32_of_the_concatenation(split: int) -> None:
    data = np.random.default_rng(split).integers(0, 256, size=200001, dtype=np.uint8).tobytes()
    a, b = data[:split], data[split:]
    assert encode.adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data)
    ones = b"\xff" * 70000  # large sums: every modulo matters
    assert encode.adler32_combine(zlib.adler32(ones), zlib.adler32(ones), len(ones)) == zlib.adler32(ones + ones)


def test_auto_engine_is_isal_for_16_bit_and_zlib_ng_huffman_otherwise() -> None:
    assert encode.resolve_engine("auto", encode.slice_kind("uint16", 3, "rgb")) == "isal"
    assert encode.resolve_engine("auto", encode.slice_kind("uint8", 3, "rgb")) == "zlib-ng-huffman"
    assert encode.resolve_engine("auto", encode.slice_kind("bool", 1, "minisblack")) == "zlib-ng-huffman"
    assert encode.resolve_engine("zlib-ng-rle", encode.slice_kind("uint16", 3, "rgb")) == "zlib-ng-rle"


def test_presets_and_a_compress_level_choose_filter_engine_and_level() -> None:
    assert encode.png_settings(SliceOptions(png_preset="fast")) == ("sub", "isal", 1)
    assert encode.png_settings(SliceOptions(png_preset="balanced")) == ("up", "auto", 1)
    assert encode.png_settings(SliceOptions(png_preset="small")) == ("avg", "libdeflate", 12)
    assert encode.png_settings(SliceOptions(png_preset="fast", compress_level=7)) == ("sub", "libdeflate", 7)
    assert encode.png_settings(SliceOptions(compress_level=0))[1:] == ("libdeflate", 0)


def test_tessq_threads_sets_the_thread_count_and_nonsense_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSQ_THREADS", "3")
    assert encode.thread_count() == 3
    monkeypatch.setenv("TESSQ_THREADS", "1")
    assert encode.thread_count() == 1
    cores = len(os.sched_getaffinity(0))
    for nonsense in ("0", "-2", "two", " ", ""):
        monkeypatch.setenv("TESSQ_THREADS", nonsense)
        assert encode.thread_count() == cores, nonsense


@pytest.mark.parametrize(
    ("kind", "bpp"),
    [
        (encode.slice_kind("uint8", 1, "minisblack"), 1),
        (encode.slice_kind("uint16", 1, "minisblack"), 2),
        (encode.slice_kind("uint8", 2, "minisblack", (2,)), 2),
        (encode.slice_kind("uint16", 2, "minisblack", (2,)), 4),
        (encode.slice_kind("uint8", 3, "rgb"), 3),
        (encode.slice_kind("uint16", 3, "rgb"), 6),
        (encode.slice_kind("uint8", 4, "rgb", (2,)), 4),
        (encode.slice_kind("uint16", 4, "rgb", (2,)), 8),
        (encode.slice_kind("bool", 1, "minisblack"), 1),
    ],
)
def test_bytes_per_pixel_of_each_png_colour_type(kind: encode.SliceKind, bpp: int) -> None:
    assert encode._bytes_per_pixel(kind) == bpp


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, payload) of every chunk, each CRC checked."""
    assert png[:8] == encode.PNG_SIGNATURE
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        tag, payload = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + payload), tag
        out.append((tag, payload))
        pos += 12 + length
    return out


@pytest.mark.parametrize("engine", ["zlib-ng-huffman", "zlib-ng-rle", "isal", "libdeflate"])
def test_the_png_is_ihdr_idat_iend_with_a_valid_zlib_stream(engine: str) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=(13, 7, 3), dtype=np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    png = encode.png_encode(array, kind, "paeth", engine, 1)
    found = chunks(png)
    assert [tag for tag, _ in found] == [b"IHDR", b"IDAT", b"IEND"]
    assert found[0][1] == struct.pack(">IIBBBBB", 7, 13, 8, 2, 0, 0, 0)
    raw = zlib.decompress(found[1][1])
    assert raw == reference_filter(array.reshape(13, 21), "paeth", 3).tobytes()


def test_large_idat_data_is_split_at_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "IDAT_CHUNK", 100)
    array = np.random.default_rng(2).integers(0, 256, size=(40, 40), dtype=np.uint8)
    png = encode.png_encode(array, encode.slice_kind("uint8", 1, "minisblack"), "none", "zlib-ng-rle", 1)
    idats = [payload for tag, payload in chunks(png) if tag == b"IDAT"]
    assert len(idats) > 2 and all(len(p) == 100 for p in idats[:-1]) and 0 < len(idats[-1]) <= 100
    assert zlib.decompress(b"".join(idats))[:41] == b"\x00" + array[0].tobytes()


def test_sub_byte_pngs_are_not_filtered() -> None:
    array = np.random.default_rng(3).integers(0, 2, size=(6, 19)).astype(bool)
    kind = encode.slice_kind("bool", 1, "minisblack")
    png = encode.png_encode(array, kind, "paeth", "zlib-ng-rle", 1)
    raw = zlib.decompress(b"".join(p for t, p in chunks(png) if t == b"IDAT"))
    packed = np.packbits(array, axis=1)
    assert raw == b"".join(b"\x00" + row.tobytes() for row in packed)


def test_an_unknown_engine_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown deflate engine 'gzip'"):
        encode.png_encode(np.zeros((2, 2), np.uint8), encode.slice_kind("uint8", 1, "minisblack"), "none", "gzip")


def test_a_palette_png_carries_its_colour_table_in_plte() -> None:
    cmap = (np.arange(3 * 4).reshape(3, 4) * 257).astype(np.uint16)
    kind = encode.slice_kind("uint8", 1, "palette", (), cmap, 2)
    png = encode.png_encode(np.array([[0, 1, 2, 3]], np.uint8), kind)
    found = dict(chunks(png))
    assert found[b"PLTE"] == bytes([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
    assert found[b"IHDR"][8:10] == bytes([2, 3])  # 2-bit indices, colour type 3


def idat_stream(png: bytes) -> bytes:
    return b"".join(payload for tag, payload in chunks(png) if tag == b"IDAT")


def expected_segment(filtered: bytes, compressor: object) -> bytes:
    return compressor.compress(filtered) + compressor.flush(2)  # Z_SYNC_FLUSH in zlib, zlib-ng and ISA-L


@pytest.mark.parametrize(("level", "isal_level"), [(0, 0), (1, 1), (3, 3), (9, 3)])
def test_isal_segments_are_raw_deflate_at_isal_levels_0_to_3(level: int, isal_level: int) -> None:
    from isal import isal_zlib

    array = np.random.default_rng(level).integers(0, 65536, size=(6, 5, 3), dtype=np.uint16)
    kind = encode.slice_kind("uint16", 3, "rgb")
    filtered = encode.filter_rows(array.astype(">u2").view(np.uint8).reshape(6, -1), "up", 6).tobytes()
    z = isal_zlib.compressobj(isal_level, isal_zlib.DEFLATED, -15, 9)
    stream = idat_stream(encode.png_encode(array, kind, "up", "isal", level))
    assert stream == (
        encode.ZLIB_HEADER
        + expected_segment(filtered, z)
        + encode.FINAL_EMPTY_BLOCK
        + struct.pack(">I", zlib.adler32(filtered))
    )


def test_zlib_ng_segments_use_huffman_for_photos_and_rle_for_runs() -> None:
    from zlib_ng import zlib_ng

    def segment(array: np.ndarray, engine: str) -> bytes:
        stream = idat_stream(encode.png_encode(array, encode.slice_kind("uint8", 1, "minisblack"), "none", engine))
        return stream[2 : -len(encode.FINAL_EMPTY_BLOCK) - 4]

    def filtered(array: np.ndarray) -> bytes:
        return encode.filter_rows(array, "none", 1).tobytes()

    noisy = np.random.default_rng(1).integers(1, 256, size=(8, 64), dtype=np.uint8)
    runs = noisy.copy()
    runs[:, 8:] = 0  # most bytes zero
    huffman = zlib_ng.compressobj(1, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_HUFFMAN_ONLY)
    rle = zlib_ng.compressobj  # fresh per use
    assert segment(noisy, "zlib-ng-huffman") == expected_segment(filtered(noisy), huffman)
    assert segment(runs, "zlib-ng-huffman") == expected_segment(
        filtered(runs), rle(1, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_RLE)
    )
    assert segment(noisy, "zlib-ng-rle") == expected_segment(
        filtered(noisy), rle(1, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_RLE)
    )


@pytest.mark.parametrize("depth", [2, 4])
def test_two_and_four_bit_palette_pngs_decode_to_the_indices(depth: int) -> None:
    from PIL import Image

    entries = 2**depth
    cmap = (np.arange(3 * entries).reshape(3, entries) % 256 * 257).astype(np.uint16)
    kind = encode.slice_kind("uint8", 1, "palette", (), cmap, depth)
    assert kind.bit_depth == depth
    array = np.random.default_rng(depth).integers(0, entries, size=(5, 13), dtype=np.uint8)
    png = encode.png_encode(array, kind)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), array)


def test_each_segment_is_filtered_against_the_raw_row_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "FILTER_BLOCK_BYTES", 3 * 21)  # 3-row segments
    array = np.random.default_rng(8).integers(0, 256, size=(13, 7, 3), dtype=np.uint8)
    png = encode.png_encode(array, encode.slice_kind("uint8", 3, "rgb"), "up", "zlib-ng-rle", 1)
    assert zlib.decompress(idat_stream(png)) == reference_filter(array.reshape(13, 21), "up", 3).tobytes()


def test_flat_areas_without_zeros_still_go_to_huffman_in_the_huffman_engine() -> None:
    from zlib_ng import zlib_ng

    flat = np.full((8, 64), 7, np.uint8)  # runs, but no zero bytes: Huffman-only, where RLE would differ
    kind = encode.slice_kind("uint8", 1, "minisblack")
    filtered = encode.filter_rows(flat, "none", 1).tobytes()
    for engine, strategy in (("zlib-ng-huffman", zlib_ng.Z_HUFFMAN_ONLY), ("zlib-ng-rle", zlib_ng.Z_RLE)):
        stream = idat_stream(encode.png_encode(flat, kind, "none", engine))
        z = zlib_ng.compressobj(1, zlib_ng.DEFLATED, -15, 9, strategy)
        assert stream[2 : -len(encode.FINAL_EMPTY_BLOCK) - 4] == expected_segment(filtered, z), engine

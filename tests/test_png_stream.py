"""The streaming PNG writer: band by band it writes the one-shot encoder's bytes (segment engines), cuts IDAT at
the same boundaries, hashes what it writes, and refuses a wrong row count; libdeflate streams through zlib-ng.

Each test pins one rule of encode.PngStreamWriter that a mutation run showed untested.
"""

from __future__ import annotations

import hashlib
import io
import zlib

import imagecodecs
import numpy as np
import pytest
from zlib_ng import zlib_ng

from tessq.cut import encode


def streamed(
    array: np.ndarray, kind: encode.SliceKind, bands: list[int], method: str, engine: str, level: int = 1
) -> tuple[bytes, int, str]:
    """The PNG the writer makes from `array` fed in bands of the given heights (cycled)."""
    buf = io.BytesIO()
    writer = encode.PngStreamWriter(buf, array.shape[1], array.shape[0], kind, method, engine, level)
    y, i = 0, 0
    while y < array.shape[0]:
        step = bands[i % len(bands)]
        writer.feed(array[y : y + step])
        y, i = y + step, i + 1
    size, sha = writer.close()
    return buf.getvalue(), size, sha


@pytest.mark.parametrize("engine", ["zlib-ng-huffman", "zlib-ng-rle", "isal"])
@pytest.mark.parametrize("bands", [[1], [3], [4], [5, 2, 9], [40]])
def test_streamed_bands_are_byte_identical_to_the_one_shot_png(
    monkeypatch: pytest.MonkeyPatch, engine: str, bands: list[int]
) -> None:
    monkeypatch.setattr(encode, "FILTER_BLOCK_BYTES", 4 * 30)  # 4-row blocks: bands start and end inside them
    array = np.random.default_rng(len(bands)).integers(0, 256, size=(23, 10, 3), dtype=np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    for method in ("sub", "up", "avg", "paeth"):
        one_shot = encode.png_encode(array, kind, method, engine, 1)
        data, size, sha = streamed(array, kind, bands, method, engine)
        assert data == one_shot, method
        assert size == len(data) and sha == hashlib.sha256(data).hexdigest()


def test_streamed_idat_chunks_are_cut_where_the_one_shot_png_cuts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "IDAT_CHUNK", 64)
    monkeypatch.setattr(encode, "FILTER_BLOCK_BYTES", 3 * 40)
    array = np.random.default_rng(5).integers(0, 256, size=(31, 40), dtype=np.uint8)
    kind = encode.slice_kind("uint8", 1, "minisblack")
    one_shot = encode.png_encode(array, kind, "none", "zlib-ng-rle", 1)
    for bands in ([1], [7], [2, 13], [31]):
        assert streamed(array, kind, bands, "none", "zlib-ng-rle")[0] == one_shot, bands


def test_a_16_bit_stream_matches_the_one_shot_png() -> None:
    array = np.random.default_rng(6).integers(0, 65536, size=(17, 9, 4), dtype=np.uint16)
    kind = encode.slice_kind("uint16", 4, "rgb", (2,))
    one_shot = encode.png_encode(array, kind, "up", "auto", 1)
    assert streamed(array, kind, [4, 1], "up", "auto")[0] == one_shot
    assert np.array_equal(imagecodecs.png_decode(one_shot), array)


def test_a_sub_byte_stream_is_unfiltered_like_the_one_shot_png() -> None:
    array = np.random.default_rng(7).integers(0, 2, size=(12, 21)).astype(bool)
    kind = encode.slice_kind("bool", 1, "minisblack")
    one_shot = encode.png_encode(array, kind, "paeth", "zlib-ng-rle", 1)
    assert streamed(array, kind, [5], "paeth", "zlib-ng-rle")[0] == one_shot


@pytest.mark.parametrize("level", [0, 1, 2, 6, 12])
@pytest.mark.parametrize("bands", [[1], [6], [50]])
def test_a_libdeflate_stream_holds_the_same_pixels_through_zlib_ng(
    monkeypatch: pytest.MonkeyPatch, level: int, bands: list[int]
) -> None:
    monkeypatch.setattr(encode, "FILTER_BLOCK_BYTES", 5 * 24)  # blocks inside bands, too
    array = np.random.default_rng(level).integers(0, 256, size=(26, 8, 3), dtype=np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    data, size, sha = streamed(array, kind, bands, "paeth", "libdeflate", level)
    assert np.array_equal(imagecodecs.png_decode(data), array)
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
    idat = b"".join(payload for tag, payload in iter_chunks(data) if tag == b"IDAT")
    filtered = encode.filter_rows(array.reshape(26, 24), "paeth", 3)
    assert zlib.decompress(idat) == filtered.tobytes()  # one zlib stream with a valid Adler-32


def iter_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def test_the_zlib_ng_stand_in_uses_rle_for_fast_levels_and_the_zlib_level_otherwise() -> None:
    rows = np.zeros(4096, np.uint8).tobytes() + bytes(range(256)) * 16
    rle = (1, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_RLE)
    for level, settings in ((0, rle), (1, rle), (2, rle), (3, (3,)), (9, (9,)), (12, (9,))):
        expected = zlib_ng.compressobj(*settings)
        z = encode._zlib_stream("libdeflate", level)
        ours = z.compress(rows) + z.flush()
        assert zlib.decompress(ours) == rows
        assert len(ours) == len(expected.compress(rows) + expected.flush()), level
    z = encode._zlib_stream("zlib-ng-rle", 1)
    assert zlib.decompress(z.compress(rows) + z.flush()) == rows


@pytest.mark.parametrize("fed", [9, 11])
def test_a_stream_with_the_wrong_row_count_is_refused(fed: int) -> None:
    kind = encode.slice_kind("uint8", 1, "minisblack")
    writer = encode.PngStreamWriter(io.BytesIO(), 4, 10, kind, "up", "zlib-ng-rle", 1)
    writer.feed(np.zeros((fed, 4), np.uint8))
    with pytest.raises(RuntimeError, match=f"PNG stream got {fed} rows, expected 10"):
        writer.close()

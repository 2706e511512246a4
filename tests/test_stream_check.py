"""The self-check of streamed slices: tessq's streaming PNG decoder gives libpng's pixels for any chunking and
mix of the None/Sub/Up filters, declines what it does not decode, refuses damaged data; a slice too big for one
band is decoded while it is written (on a thread, or inline), and a slice whose bytes do not hold the pixels fed
to the encoder fails its image, on either path and on the libpng fallback."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from tessq.cut import core, encode, selfcheck
from tessq.cut.pngdecode import PngRowDecoder, UnsupportedPng
from tessq.cut.verify import verify_image
from tessq.errors import SelfCheckError
from tessq.options import SliceOptions

KINDS = {  # name -> (channels, dtype, PNG colour type)
    "gray8": (1, np.uint8, 0),
    "graya8": (2, np.uint8, 4),
    "rgb8": (3, np.uint8, 2),
    "rgba8": (4, np.uint8, 6),
    "gray16": (1, np.uint16, 0),
    "rgb16": (3, np.uint16, 2),
}


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_with_row_filters(image: np.ndarray, filters: list[int], color: int) -> bytes:
    """A PNG written by this test's own filter code: row y filtered with filters[y] (0 None, 1 Sub, 2 Up)."""
    h, w = image.shape[:2]
    depth = image.dtype.itemsize * 8
    raw = np.ascontiguousarray(image.astype(image.dtype.newbyteorder(">"))).view(np.uint8).reshape(h, -1)
    bpp = raw.shape[1] // w
    lines = []
    for y in range(h):
        row = raw[y].astype(np.int16)
        if filters[y] == 1:
            left = np.concatenate([np.zeros(bpp, np.int16), row[:-bpp]])
            row = row - left
        elif filters[y] == 2:
            row = row - (raw[y - 1].astype(np.int16) if y else 0)
        lines.append(bytes([filters[y]]) + (row % 256).astype(np.uint8).tobytes())
    head = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", head)
        + _chunk(b"IDAT", zlib.compress(b"".join(lines)))
        + _chunk(b"IEND", b"")
    )


def stream_decode(data: bytes, step: int) -> np.ndarray:
    blocks: list[np.ndarray] = []
    decoder = PngRowDecoder(lambda rows: blocks.append(rows.copy()))
    for start in range(0, len(data), step):
        decoder.feed(data[start : start + step])
    decoder.finish()
    return np.concatenate(blocks)


def as_png_bytes(pixels: np.ndarray) -> np.ndarray:
    """libpng's decode as the rows of PNG bytes the streaming decoder hands on (16-bit big-endian)."""
    h = pixels.shape[0]
    return np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder(">"))).view(np.uint8).reshape(h, -1)


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("step", [1, 7, 40, 4096, 1 << 30], ids=["1B", "7B", "40B", "4KiB", "whole"])
def test_the_streaming_decoder_gives_libpngs_pixels_for_every_chunking_and_filter_mix(
    name: str, step: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PngRowDecoder, "INFLATE_STEP", 97)  # rows arrive in many blocks: Up/Sub across blocks
    channels, dtype, color = KINDS[name]
    rng = np.random.default_rng(len(name))
    shape = (23, 17, channels) if channels > 1 else (23, 17)
    image = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    data = png_with_row_filters(image, [int(f) for f in rng.integers(0, 3, 23)], color)
    if step == 1 and channels > 2:
        step = 3  # a byte at a time once per dtype is enough for the suite's time
    assert np.array_equal(imagecodecs.png_decode(data), image)  # the test's own PNG is what libpng reads
    assert np.array_equal(stream_decode(data, step), as_png_bytes(image))


@pytest.mark.parametrize("preset", ["balanced", "fast"])
def test_the_streaming_decoder_reads_what_tessqs_encoder_writes(preset: str) -> None:
    image = np.random.default_rng(5).integers(0, 255, (300, 200, 3)).astype(np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    method, engine, level = encode.PRESETS[preset]
    data = encode.png_encode(image, kind, method, engine, level)
    assert np.array_equal(stream_decode(data, 65536), as_png_bytes(image))


def test_the_streaming_decoder_declines_avg_paeth_palette_and_low_bit_pngs() -> None:
    image = np.random.default_rng(6).integers(0, 255, (40, 30, 3)).astype(np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    for method in ("avg", "paeth"):
        with pytest.raises(UnsupportedPng, match="row filter"):
            stream_decode(encode.png_encode(image, kind, method, "zlib-ng-rle", 1), 1 << 20)
    palette = io.BytesIO()
    Image.fromarray(image[:, :, 0] // 16, mode="L").convert("P").save(palette, format="PNG")
    with pytest.raises(UnsupportedPng):
        stream_decode(palette.getvalue(), 1 << 20)


@pytest.mark.parametrize("content", ["photo", "flat"])
def test_the_streaming_decoder_reads_a_big_slice_in_many_blocks_like_libpng(content: str) -> None:
    shape = (300, 1500, 3)  # 1.35 MB of rows; flat: a few KiB that inflate past one step's output
    rng = np.random.default_rng(8)
    image = rng.integers(0, 255, shape).astype(np.uint8) if content == "photo" else np.full(shape, 7, np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    data = encode.png_encode(image, kind, "up", "auto", 1)
    assert np.array_equal(stream_decode(data, 65536), as_png_bytes(image))


def test_the_streaming_decoder_gives_the_same_rows_wherever_the_bytes_are_split() -> None:
    image = np.random.default_rng(12).integers(0, 255, (6, 5, 3)).astype(np.uint8)
    data = png_with_row_filters(image, [0, 1, 2, 2, 1, 0], 2)
    at = data.index(b"IDAT") - 4
    data = data[:at] + _chunk(b"tEXt", b"Comment\x00split me") + _chunk(b"tIME", bytes(7)) + data[at:]
    want = as_png_bytes(image)
    for cut in range(1, len(data)):
        blocks: list[np.ndarray] = []
        decoder = PngRowDecoder(lambda rows, blocks=blocks: blocks.append(rows.copy()))
        decoder.feed(data[:cut])
        decoder.feed(data[cut:])
        decoder.finish()
        assert np.array_equal(np.concatenate(blocks), want), cut


def _with_ihdr_byte(data: bytes, offset: int, value: int) -> bytes:
    """The PNG with one IHDR field byte changed (offset into the 13-byte body) and its CRC fixed."""
    body = bytearray(data[16:29])
    body[offset] = value
    return data[:8] + _chunk(b"IHDR", bytes(body)) + data[33:]


def test_the_streaming_decoder_refuses_what_it_cannot_check() -> None:
    image = np.random.default_rng(10).integers(0, 255, (20, 10)).astype(np.uint8)
    data = png_with_row_filters(image, [2] * 20, 0)
    with pytest.raises(UnsupportedPng):
        stream_decode(_with_ihdr_byte(data, 12, 1), 1 << 20)  # Adam7 interlaced
    with pytest.raises(UnsupportedPng):
        stream_decode(_with_ihdr_byte(data, 11, 1), 1 << 20)  # an unknown filter method
    with pytest.raises(ValueError, match="incomplete"):
        stream_decode(data[:8] + _chunk(b"IEND", b""), 1 << 20)  # no IHDR, no IDAT
    with pytest.raises(ValueError, match="not a PNG"):
        stream_decode(b"GIF89a" + data[6:], 1 << 20)


def test_the_streaming_decoder_refuses_a_damaged_chunk_a_truncated_stream_and_a_missing_end() -> None:
    image = np.random.default_rng(7).integers(0, 255, (20, 10)).astype(np.uint8)
    data = png_with_row_filters(image, [2] * 20, 0)
    damaged = bytearray(data)
    damaged[60] ^= 0x40  # inside the IDAT chunk: its CRC no longer matches
    with pytest.raises(ValueError, match="CRC mismatch"):
        stream_decode(bytes(damaged), 1 << 20)
    with pytest.raises(ValueError, match="IEND"):
        stream_decode(data[:-12], 1 << 20)  # no IEND: the file stops early
    idat_start = data.index(b"IDAT") - 4
    body = zlib.compress(bytes(np.zeros(5 * 11, np.uint8)))  # 5 rows of 10 bytes + filter bytes, 20 declared
    short = data[:idat_start] + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="5 rows"):
        stream_decode(short, 1 << 20)
    rows = zlib.decompress(data[idat_start + 8 : data.index(b"IEND") - 8])
    long = data[:idat_start] + _chunk(b"IDAT", zlib.compress(rows + rows[:11])) + _chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="more than 20 rows"):
        stream_decode(long, 1 << 20)
    unended = data[:idat_start] + _chunk(b"IDAT", zlib.compress(rows)[:-4]) + _chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="incomplete"):
        stream_decode(unended, 1 << 20)  # every row there, but no Adler-32: the stream never ended


@pytest.fixture(autouse=True)
def _own_pool() -> Iterator[None]:
    yield
    encode._POOL.reset()  # the next test gets the pool its own environment asks for


def big_source(tmp_path: Path, dtype: str = "uint8") -> tuple[Path, SliceOptions]:
    """An image whose grid rows exceed a small memory budget, so its PNG slices are streamed."""
    src = tmp_path / f"big_{dtype}.tif"
    top = 255 if dtype == "uint8" else 65535
    pixels = np.random.default_rng(3).integers(0, top, (400, 300, 3), endpoint=True).astype(dtype)
    tifffile.imwrite(src, pixels, photometric="rgb", rowsperstrip=16)
    return src, SliceOptions(min_size=1, num_pieces=2, memory_budget=60_000, self_check="full")


@pytest.mark.parametrize("threads", ["1", "2"], ids=["inline", "on-a-thread"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_a_streamed_slice_is_checked_while_written_without_decoding_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: str, dtype: str
) -> None:
    monkeypatch.setenv("TESSQ_THREADS", threads)
    encode._POOL.reset()  # the pool TESSQ_THREADS asks for (none with 1)
    monkeypatch.setattr(selfcheck, "decode", lambda *a: pytest.fail("decoded a streamed slice whole"))
    decoded_on: set[str] = set()
    feed = PngRowDecoder.feed

    def feed_noting_the_thread(self: PngRowDecoder, data: bytes) -> None:
        decoded_on.add(threading.current_thread().name)
        feed(self, data)

    monkeypatch.setattr(PngRowDecoder, "feed", feed_noting_the_thread)
    src, options = big_source(tmp_path, dtype)
    summary = core.tessellate_image(src, tmp_path / "out", options)
    assert summary["slices"] == 2
    assert decoded_on == ({"slice-check"} if threads == "2" else {"MainThread"})
    assert verify_image(tmp_path / "out", src)["overall_identical"]


@pytest.mark.parametrize("threads", ["1", "2"], ids=["inline", "on-a-thread"])
@pytest.mark.parametrize("preset", ["balanced", "small"], ids=["streaming-decoder", "libpng-fallback"])
def test_a_streamed_slice_that_does_not_hold_the_pixels_fed_fails_its_image_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: str, preset: str
) -> None:
    monkeypatch.setenv("TESSQ_THREADS", threads)
    encode._POOL.reset()
    feed = encode.PngStreamWriter.feed

    def wrong_pixels(self: encode.PngStreamWriter, array: np.ndarray) -> None:
        array = array.copy()
        array[0, 0] ^= 1  # an encoder bug: one sample of every band is off by one bit
        feed(self, array)

    monkeypatch.setattr(encode.PngStreamWriter, "feed", wrong_pixels)
    src, options = big_source(tmp_path)
    options = SliceOptions(**{**options.__dict__, "png_preset": preset})
    out = tmp_path / "out"
    with pytest.raises(SelfCheckError, match="decodes to different pixels"):
        core.tessellate_image(src, out, options)
    assert not out.exists()


def test_stream_digests_of_fed_and_decoded_pixels_agree_for_16_bit_rows() -> None:
    image = np.random.default_rng(9).integers(0, 65535, (12, 9, 3)).astype(np.uint16)
    kind = encode.slice_kind("uint16", 3, "rgb")
    digest = selfcheck.StreamDigest(kind)
    digest.update(image)
    digest.written(encode.png_encode(image, kind, "up", "auto", 1))
    digest.check_file(Path("unused.png"), "s.png", "src.tif")  # decoded as written: the file is never read
    assert hashlib.blake2b(image.data, digest_size=20).digest() == digest._hash.digest()


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("row_filter", [0, 1, 2], ids=["none", "sub", "up"])
def test_verifys_whole_slice_decoder_gives_libpngs_pixels_for_each_filter_it_takes(name: str, row_filter: int) -> None:
    from tessq.cut.pngdecode import fast_png_decode

    channels, dtype, color = KINDS[name]
    rng = np.random.default_rng(row_filter)
    shape = (19, 13, channels) if channels > 1 else (19, 13)
    image = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    got = fast_png_decode(png_with_row_filters(image, [row_filter] * 19, color))
    assert got is not None and got.dtype == image.dtype and np.array_equal(got, image)


def test_verifys_whole_slice_decoder_leaves_other_pngs_to_libpng_and_refuses_damaged_ones() -> None:
    from tessq.cut.pngdecode import fast_png_decode

    image = np.random.default_rng(13).integers(0, 255, (20, 10)).astype(np.uint8)
    assert fast_png_decode(png_with_row_filters(image, [0, 1, 2] * 6 + [0, 1], 0)) is None  # mixed filters
    kind = encode.slice_kind("uint8", 1, "minisblack")
    assert fast_png_decode(encode.png_encode(image, kind, "avg", "zlib-ng-rle", 1)) is None
    data = png_with_row_filters(image, [2] * 20, 0)
    assert fast_png_decode(_with_ihdr_byte(data, 12, 1)) is None  # interlaced
    assert fast_png_decode(b"GIF89a" + data[6:]) is None
    damaged = bytearray(data)
    damaged[60] ^= 0x40
    with pytest.raises(ValueError, match="CRC mismatch"):
        fast_png_decode(bytes(damaged))
    at = data.index(b"IDAT") - 4
    short = data[:at] + _chunk(b"IDAT", zlib.compress(bytes(5 * 11))) + _chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="rows of 11 expected"):
        fast_png_decode(short)
    with pytest.raises(ValueError, match="no IHDR or IDAT"):
        fast_png_decode(data[:8] + _chunk(b"IEND", b""))
    split = (
        data[:at] + _chunk(b"IDAT", data[at + 8 : at + 20]) + _chunk(b"IDAT", data[at + 20 : data.index(b"IEND") - 8])
    )
    assert np.array_equal(fast_png_decode(split + _chunk(b"IEND", b"")), image)  # IDAT split in two chunks
    assert np.array_equal(fast_png_decode(data + b"trailing"), image)  # bytes after IEND are ignored

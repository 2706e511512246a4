"""An independent PNG decoder for `tessq verify` and the self-check of streamed slices: ISA-L inflate plus numpy
unfiltering for the None/Sub/Up filters tessq writes, so a slice is not checked by the library that wrote it
(None / UnsupportedPng: let libpng decode it). Whole (fast_png_decode) or as the bytes arrive (PngRowDecoder).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from isal import isal_zlib
from zlib_ng import zlib_ng

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # the colour types decoded here -> samples: gray, RGB, gray+alpha, RGBA


def _decodable(ihdr: tuple[int, ...]) -> bool:
    """Whether an unpacked IHDR (width, height, depth, colour, method, filter, interlace) is one decoded here:
    8/16-bit gray/RGB(A), the standard compression and filter methods, not interlaced."""
    _, _, depth, color, method, filtering, interlace = ihdr
    return depth in (8, 16) and color in CHANNELS and not (method or filtering or interlace)


def fast_png_decode(data: bytes) -> np.ndarray | None:
    """Decode a PNG whose rows all use one of the filters None, Sub or Up (tessq's fast presets), 8/16-bit
    gray/RGB(A), not interlaced: chunk CRCs checked, IDAT inflated by ISA-L (3x libpng's whole decode here;
    the Adler-32 and the exact length are checked), rows unfiltered by numpy accumulation. None for any other
    PNG (the caller then decodes with libpng). Its code shares nothing with tessq's encoder."""
    if data[:8] != PNG_SIGNATURE:
        return None
    view, pos, ihdr, idat = memoryview(data), 8, None, []
    while pos + 12 <= len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        tag, end = bytes(view[pos + 4 : pos + 8]), pos + 12 + n
        if end > len(data):
            raise ValueError(f"truncated {tag!r} chunk")
        body = view[pos + 8 : pos + 8 + n]
        if zlib_ng.crc32(body, zlib_ng.crc32(tag)) != int.from_bytes(data[end - 4 : end], "big"):
            raise ValueError(f"CRC mismatch in the {tag!r} chunk at byte {pos}")
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos = end
    if ihdr is None or not idat:
        raise ValueError("no IHDR or IDAT chunk")
    if not _decodable(ihdr):
        return None
    width, height, depth, color = ihdr[:4]
    channels = CHANNELS[color]
    bpp = channels * depth // 8
    raw = isal_zlib.decompress(b"".join(idat))
    if len(raw) != height * (width * bpp + 1):
        raise ValueError(f"IDAT holds {len(raw)} bytes, {height} rows of {width * bpp + 1} expected")
    rows = np.frombuffer(raw, np.uint8).reshape(height, width * bpp + 1)
    types = np.unique(rows[:, 0])
    if types.size != 1 or types[0] > 2:
        return None
    out = np.array(rows[:, 1:])  # uint8 additions wrap mod 256, as PNG's do
    if types[0] == 2:  # Up: each row adds the reconstructed row above (a loop of row-wide vector adds)
        for y in range(1, height):
            np.add(out[y], out[y - 1], out=out[y])
    elif types[0] == 1:  # Sub: each pixel adds the reconstructed pixel to its left
        pixels = out.reshape(height, width, bpp)
        for x in range(1, width):
            np.add(pixels[:, x], pixels[:, x - 1], out=pixels[:, x])
    if depth == 16:
        out = np.ascontiguousarray(out).view(">u2").astype(np.uint16)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.ascontiguousarray(out).reshape(shape)


class UnsupportedPng(ValueError):
    """A PNG this decoder leaves to libpng (a filter other than None/Sub/Up, a palette, < 8 bits, interlace)."""


class PngRowDecoder:
    """The streamed twin of fast_png_decode: a PNG decoded as its bytes arrive (`feed`, in file order), its
    reconstructed scanlines handed to `on_rows` a block at a time (uint8, PNG byte order), so a slice too big
    to decode whole is checked in a few MiB while it is written. Chunk CRCs, the IDAT's Adler-32 and exact
    length are checked; rows may mix the None, Sub and Up filters (UnsupportedPng for any other PNG)."""

    INFLATE_STEP = 1 << 20  # compressed bytes per inflate call, and the most inflated per call

    def __init__(self, on_rows: Callable[[np.ndarray], None]) -> None:
        self._on_rows = on_rows
        self._buf = bytearray()
        self._started = False
        self._ended = False
        self._inflate: Any = None
        self._raw = bytearray()  # inflated, not yet whole rows
        self._prev: np.ndarray | None = None
        self.width = self.height = self.rows = 0
        self._bpp = self._rowbytes = 0

    def feed(self, data: bytes | memoryview) -> None:
        if not self._buf:  # the usual case, whole chunks per write: parsed in place, nothing copied
            with memoryview(data) as view:
                used = self._parse(view)
                self._buf += view[used:]
            return
        self._buf += data
        with memoryview(self._buf) as view:
            used = self._parse(view)
        del self._buf[:used]

    def finish(self) -> None:
        """Raise ValueError unless the whole PNG arrived: IEND, every row, a complete zlib stream."""
        if not self._ended:
            raise ValueError("the PNG ends before its IEND chunk")
        if self._inflate is None or not self._inflate.eof:
            raise ValueError("the IDAT zlib stream is incomplete")
        if self.rows != self.height or self._raw:
            raise ValueError(f"IDAT holds {self.rows} rows and {len(self._raw)} bytes, {self.height} rows expected")

    def _parse(self, view: memoryview) -> int:
        """Handle the complete chunks at the start of `view`; the bytes used."""
        pos = 0
        if not self._started:
            if len(view) < 8:
                return 0
            if bytes(view[:8]) != PNG_SIGNATURE:
                raise ValueError("not a PNG (no signature)")
            self._started, pos = True, 8
        while len(view) - pos >= 12:
            n = int.from_bytes(view[pos : pos + 4], "big")
            if len(view) - pos < 12 + n:
                break
            tag, body = bytes(view[pos + 4 : pos + 8]), view[pos + 8 : pos + 8 + n]
            if zlib_ng.crc32(body, zlib_ng.crc32(tag)) != int.from_bytes(view[pos + 8 + n : pos + 12 + n], "big"):
                raise ValueError(f"CRC mismatch in a {tag!r} chunk")
            if self._ended:
                pass  # chunks after IEND are ignored, as readers do
            elif tag == b"IHDR":
                self._header(bytes(body))
            elif tag == b"IDAT":
                self._idat(body)
            elif tag == b"IEND":
                self._ended = True
            body.release()
            pos += 12 + n
        return pos

    def _header(self, body: bytes) -> None:
        ihdr = struct.unpack(">IIBBBBB", body)
        width, height, depth, color, method, filtering, interlace = ihdr
        if not _decodable(ihdr):
            raise UnsupportedPng(
                f"depth {depth}, colour type {color}, methods {method}/{filtering}, interlace {interlace}"
            )
        self.width, self.height = width, height
        self._bpp = CHANNELS[color] * depth // 8
        self._rowbytes = width * self._bpp + 1
        self._prev = np.zeros(width * self._bpp, np.uint8)
        self._inflate = isal_zlib.decompressobj()

    def _idat(self, body: memoryview) -> None:
        if self._inflate is None:
            raise ValueError("IDAT before IHDR")
        for start in range(0, len(body), self.INFLATE_STEP):
            data = body[start : start + self.INFLATE_STEP]
            while data:
                if self._inflate.eof:
                    raise ValueError("data after the end of the IDAT zlib stream")
                self._raw += self._inflate.decompress(data, self.INFLATE_STEP)
                data = self._inflate.unconsumed_tail
                self._rows_ready()

    def _rows_ready(self) -> None:
        count = len(self._raw) // self._rowbytes
        if not count:
            return
        if self.rows + count > self.height:
            raise ValueError(f"IDAT holds more than {self.height} rows")
        with memoryview(self._raw) as view:
            rows = np.frombuffer(view[: count * self._rowbytes], np.uint8).reshape(count, self._rowbytes)
            out = self._unfilter(rows)
            del rows
        del self._raw[: count * self._rowbytes]
        self.rows += count
        self._on_rows(out)

    def _unfilter(self, rows: np.ndarray) -> np.ndarray:
        """Reconstruct a block of scanlines (uint8 additions wrap mod 256, as PNG's do)."""
        assert self._prev is not None
        out = np.array(rows[:, 1:])
        prev = self._prev
        for y, kind in enumerate(rows[:, 0].tolist()):
            line = out[y]
            if kind == 2:
                np.add(line, prev, out=line)
            elif kind == 1:
                pixels = line.reshape(self.width, self._bpp)
                np.cumsum(pixels, axis=0, dtype=np.uint8, out=pixels)
            elif kind != 0:
                raise UnsupportedPng(f"row filter {kind} (only None, Sub and Up are decoded here)")
            prev = line
        self._prev = out[-1]
        return out

"""An independent PNG decoder for `tessq verify`: ISA-L inflate plus numpy unfiltering for the None/Sub/Up
filters tessq writes, so a slice is not checked by the library that wrote it (None: let libpng decode it).
"""

from __future__ import annotations

import struct

import numpy as np
from isal import isal_zlib
from zlib_ng import zlib_ng

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    width, height, depth, color, method, filtering, interlace = ihdr
    if depth not in (8, 16) or color not in (0, 2, 4, 6) or method or filtering or interlace:
        return None
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
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

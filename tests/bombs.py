"""Hand-built hostile TIFFs for the memory bound (issue #19 item 6): numpy writes the big offset arrays."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def tiled_bomb(path: Path, side: int = 46000, tile: int = 16, *, distinct: int = 1, sparse: bool = False) -> Path:
    """A *valid* side x side 8-bit gray deflate TIFF of tile x tile tiles, every tile pointing at one of
    `distinct` tiny blobs (the issue's bomb: 46000x46000, 16x16 tiles = 8.27M tiles, a 66 MB file).
    sparse: the first `distinct` tiles have their blob, every other one is empty (offset 0, byte count 0),
    as GDAL writes sparse files: legitimate."""
    across = -(-side // tile)
    n = across * across
    blobs = [zlib.compress(bytes([i % 256]) * (tile * tile), 9) for i in range(distinct)]
    data = b"".join(blobs)
    starts = np.cumsum([0] + [len(b) for b in blobs[:-1]]) + 8
    offsets = np.resize(np.asarray(starts, dtype="<u4"), n)
    counts = np.resize(np.asarray([len(b) for b in blobs], dtype="<u4"), n)
    if sparse:
        offsets[distinct:] = 0
        counts[distinct:] = 0
    tags = {
        256: (4, [side]),
        257: (4, [side]),
        258: (3, [8]),
        259: (3, [8]),
        262: (3, [1]),
        277: (3, [1]),
        322: (3, [tile]),
        323: (3, [tile]),
    }
    pad = b"\0" if len(data) % 2 else b""
    ifd_off = 8 + len(data) + len(pad)
    n_tags = len(tags) + 2
    ext_off = ifd_off + 2 + 12 * n_tags + 4
    entries = b""
    for tag in sorted(tags):
        typ, vals = tags[tag]
        raw = struct.pack(f"<{len(vals)}{'H' if typ == 3 else 'I'}", *vals)
        entries += struct.pack("<HHI", tag, typ, len(vals)) + raw.ljust(4, b"\0")
    entries += struct.pack("<HHII", 324, 4, n, ext_off)
    entries += struct.pack("<HHII", 325, 4, n, ext_off + 4 * n)
    with open(path, "wb") as fh:
        fh.write(
            b"II*\0"
            + struct.pack("<I", ifd_off)
            + data
            + pad
            + struct.pack("<H", n_tags)
            + entries
            + struct.pack("<I", 0)
        )
        fh.write(offsets.tobytes())
        fh.write(counts.tobytes())
    return path

"""Measure PNG encoder choices (filter x libdeflate level, Pillow, imagecodecs) on photo-like slices.

Prints MB/s of raw pixels (one thread) and output size relative to Pillow's default level; the table in
tessq/cut/encode.py's docstring and the preset choice come from this script.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tessq.cut import encode
from tessq.samples import photo_like


def _time(fn, slices: list[np.ndarray], repeat: int = 2) -> tuple[float, int]:
    best = float("inf")
    size = 0
    for _ in range(repeat):
        t = time.perf_counter()
        size = sum(len(fn(s)) for s in slices)
        best = min(best, time.perf_counter() - t)
    return best, size


def _pillow(level: int):
    def enc(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    return enc


def main(height: int = 3072, width: int = 4096, samples: int = 3, dtype: str = "uint8") -> None:
    img = photo_like(height, width, samples, dtype, seed=1)
    rows, cols = 2, 4
    slices = [
        np.ascontiguousarray(
            img[r * height // rows : (r + 1) * height // rows, c * width // cols : (c + 1) * width // cols]
        )
        for r in range(rows)
        for c in range(cols)
    ]
    raw = sum(s.nbytes for s in slices)
    kind = encode.slice_kind(dtype, samples, "rgb" if samples >= 3 else "minisblack")
    candidates = {}
    if dtype == "uint8":
        candidates["Pillow level 6 (default)"] = _pillow(6)
        candidates["Pillow level 1"] = _pillow(1)
    candidates["imagecodecs.png_encode level 1"] = lambda a: imagecodecs.png_encode(a, level=1)
    for method, flag in (("paeth", 128), ("avg", 64)):  # libpng filter flags, Z_RLE = strategy 3
        candidates[f"libpng {method} + zlib Z_RLE"] = lambda a, f=flag: imagecodecs.png_encode(
            a, level=1, strategy=3, filter=f
        )
    for method in ("up", "sub", "avg", "paeth"):
        for level in (1, 2, 12):
            candidates[f"{method:5s} + libdeflate {level}"] = lambda a, m=method, lv=level: encode.png_encode(
                a, kind, m, "libdeflate", lv
            )
    for method in ("up", "sub", "avg"):
        candidates[f"{method:5s} + zlib-ng Z_RLE"] = lambda a, m=method: encode.png_encode(a, kind, m, "zlib-ng-rle", 1)
    ref = None
    print(f"{len(slices)} slices of {slices[0].shape} {dtype}, {raw / 1e6:.1f} MB raw")
    print(f"{'encoder':36s} {'MB/s':>7s} {'bytes':>12s} {'vs ref':>7s} {'ratio':>6s}")
    for name, fn in candidates.items():
        seconds, size = _time(fn, slices)
        ref = ref or size
        print(f"{name:36s} {raw / seconds / 1e6:7.1f} {size:12,d} {size / ref:7.3f} {raw / size:6.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

"""Deflate engine x PNG filter on photo-like RGB8, RGB16 and gray8 slices (and a flat/graphic check).

MB/s of raw pixels through filter + compress in ONE thread (TESSQ_THREADS=1 is forced; CPU seconds, best of
--repeat), bytes relative to Pillow's default level (libpng level 6 for RGB16, which Pillow cannot write).
The table in tessq/cut/encode.py's docstring and the presets come from this script.

Usage: python scripts/bench_engines.py [--repeat 3] [--kinds rgb8,rgb16,gray8,flat]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ["TESSQ_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagecodecs
import numpy as np
from PIL import Image

from tessq.cut import encode
from tessq.samples import photo_like

KINDS = {"rgb8": (3, "uint8"), "rgb16": (3, "uint16"), "gray8": (1, "uint8"), "flat": (3, "uint8")}
ENGINES = [
    ("zlib-ng-huffman", 1),
    ("zlib-ng-rle", 1),
    ("isal", 0),
    ("isal", 1),
    ("isal", 2),
    ("isal", 3),
    ("libdeflate", 1),
    ("libdeflate", 4),
]


def slices_of(kind: str, h: int = 3072, w: int = 4096) -> list[np.ndarray]:
    samples, dtype = KINDS[kind]
    img = photo_like(h, w, samples, dtype, seed=1)
    if kind == "flat":  # an aerial mosaic's nodata border + a flat graphic block
        img[:, : w // 3] = 0
        img[h // 2 :, w // 2 :] = (200, 180, 40)
    return [
        np.ascontiguousarray(img[r * h // 2 : (r + 1) * h // 2, c * w // 4 : (c + 1) * w // 4])
        for r in range(2)
        for c in range(4)
    ]


def pillow6(a: np.ndarray) -> int:
    if a.dtype == np.uint16 and a.ndim == 3:
        return len(imagecodecs.png_encode(a, level=6))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.tell()


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--kinds", default="rgb8,rgb16,gray8,flat")
    p.add_argument("--filters", default="up,sub,avg,paeth")
    args = p.parse_args(argv)
    print(f"{'image':6s} {'filter':6s} {'engine':18s} {'MB/s':>6s} {'vs Pil6':>8s}")
    for name in args.kinds.split(","):
        samples, dtype = KINDS[name]
        sl = slices_of(name)
        raw = sum(s.nbytes for s in sl)
        kind = encode.slice_kind(dtype, samples, "rgb" if samples == 3 else "minisblack")
        ref = sum(pillow6(s) for s in sl)
        print(
            f"# {name}: {len(sl)} slices {sl[0].shape} {dtype}, {raw / 1e6:.1f} MB raw, Pillow-6 ratio {raw / ref:.2f}",
            flush=True,
        )
        rows = []
        for method in args.filters.split(","):
            for engine, level in ENGINES:
                best, size = float("inf"), 0
                for _ in range(args.repeat):
                    t = time.process_time()
                    size = sum(len(encode.png_encode(s, kind, method, engine, level)) for s in sl)
                    best = min(best, time.process_time() - t)
                label = f"{engine}-{level}" if engine in ("isal", "libdeflate") else engine
                rows.append((name, method, label, raw / best / 1e6, size / ref))
                print(f"{name:6s} {method:6s} {label:18s} {raw / best / 1e6:6.0f} {size / ref:8.3f}", flush=True)
        ok = [r for r in rows if r[4] <= 1.0]
        if ok:
            top = max(ok, key=lambda r: r[3])
            print(f"# {name}: fastest at <= 1.00x Pillow-6: {top[1]} + {top[2]} {top[3]:.0f} MB/s {top[4]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])

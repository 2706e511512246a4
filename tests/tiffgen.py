"""Test helper: writes real TIFF variants with tifffile and returns the pixels tessq must reproduce.

Each variant is (name -> writer); `write_variant(dir, name)` returns (path, expected interleaved array).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

H, W = 67, 90  # deliberately not multiples of strip/tile sizes


def smooth(h: int = H, w: int = W, samples: int = 3, dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    """Photo-ish pixels: gradients plus noise, so codecs and filters see realistic data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 2 + y * 3) % 256
    dt = np.dtype(dtype)
    shape = (h, w, samples) if samples > 1 else (h, w)
    noise = rng.integers(0, 8, size=shape)
    img = (base[..., None] + noise) if samples > 1 else base + noise
    if dt.kind == "b":
        return (img % 7) > 3
    if dt.kind == "f":
        return (img.astype(dt) / 7.0 - 3.0).astype(dt)
    if dt.kind == "i":
        return (img - 128).astype(dt) * (257 if dt.itemsize > 1 else 1)
    scale = (2 ** (8 * dt.itemsize) - 1) // 255
    return (img % 256 * scale).astype(dt)


def _write(path: Path, data: np.ndarray, **kwargs: Any) -> None:
    kwargs.setdefault("metadata", None)
    tifffile.imwrite(path, data, **kwargs)


Writer = Callable[[Path], np.ndarray]


def _variant(
    data_fn: Callable[[], np.ndarray],
    expect_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    **kwargs: Any,
) -> Writer:
    def write(path: Path) -> np.ndarray:
        data = data_fn()
        _write(path, data, **kwargs)
        return expect_fn(data) if expect_fn else data

    return write


def _planar(path: Path) -> np.ndarray:
    data = smooth(samples=3)
    _write(path, np.moveaxis(data, -1, 0), photometric="rgb", planarconfig="separate", rowsperstrip=16)
    return data


def _palette(path: Path) -> np.ndarray:
    data = smooth(samples=1) % 16
    cmap = (np.arange(3 * 256).reshape(3, 256) * 5 % 256 * 257).astype(np.uint16)
    _write(path, data.astype(np.uint8), photometric="palette", colormap=cmap)
    return data.astype(np.uint8)


def _palette16(path: Path) -> np.ndarray:
    data = (smooth(samples=1) % 16).astype(np.uint8)
    cmap = (np.arange(3 * 256).reshape(3, 256) * 77 % 65536).astype(np.uint16)  # not 8-bit exact
    _write(path, data, photometric="palette", colormap=cmap)
    return data


def _geotiff(path: Path) -> np.ndarray:
    data = smooth(samples=1, dtype=np.uint16)
    extratags = [
        (33550, 12, 3, (10.0, 10.0, 0.0), True),  # ModelPixelScale
        (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 4200000.0, 0.0), True),  # ModelTiepoint
        (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),  # GeoKeys
    ]
    _write(path, data, photometric="minisblack", extratags=extratags)
    return data


def _multipage(path: Path) -> np.ndarray:
    first = smooth(samples=3, seed=1)
    with tifffile.TiffWriter(path) as tw:
        tw.write(first, photometric="rgb", metadata=None)
        tw.write(smooth(samples=3, seed=2)[:30, :40], photometric="rgb", metadata=None)
    return first


def _jpeg(path: Path) -> np.ndarray:
    data = smooth(samples=3)
    _write(path, data, photometric="rgb", compression="jpeg", rowsperstrip=16)
    return tifffile.imread(path)  # lossy on write: the decoded pixels are the truth


def _ycbcr_jpeg(path: Path) -> np.ndarray:
    data = smooth(samples=3)
    _write(path, data, photometric="ycbcr", compression="jpeg", tile=(32, 32))
    return tifffile.imread(path)


VARIANTS: dict[str, Writer] = {
    "rgb8_striped_none": _variant(lambda: smooth(), photometric="rgb", rowsperstrip=7),
    "rgb8_tiled_lzw": _variant(lambda: smooth(), photometric="rgb", tile=(32, 48), compression="lzw"),
    "rgb8_deflate_pred": _variant(
        lambda: smooth(), photometric="rgb", compression="zlib", predictor=True, rowsperstrip=10
    ),
    "rgb8_packbits": _variant(lambda: smooth(), photometric="rgb", compression="packbits"),
    "rgb8_zstd_tiled": _variant(lambda: smooth(), photometric="rgb", compression="zstd", tile=(16, 16)),
    "rgb8_bigtiff": _variant(lambda: smooth(), photometric="rgb", bigtiff=True, rowsperstrip=9),
    "rgb16_bigendian": _variant(
        lambda: smooth(dtype=np.uint16), photometric="rgb", byteorder=">", rowsperstrip=5
    ),
    "rgb16_tiled_deflate": _variant(
        lambda: smooth(dtype=np.uint16), photometric="rgb", compression="zlib", tile=(32, 32)
    ),
    "rgba8": _variant(lambda: smooth(samples=4), photometric="rgb", extrasamples=[2]),
    "gray8": _variant(lambda: smooth(samples=1), photometric="minisblack"),
    "gray16_lzw_pred": _variant(
        lambda: smooth(samples=1, dtype=np.uint16),
        photometric="minisblack",
        compression="lzw",
        predictor=True,
    ),
    "graya16": _variant(
        lambda: smooth(samples=2, dtype=np.uint16), photometric="minisblack", extrasamples=[2]
    ),
    "miniswhite8": _variant(lambda: smooth(samples=1), photometric="miniswhite"),
    "bilevel": _variant(lambda: smooth(samples=1, dtype=bool), photometric="miniswhite"),
    "bilevel_black": _variant(
        lambda: smooth(samples=1, dtype=bool), photometric="minisblack", rowsperstrip=8
    ),
    "float32": _variant(
        lambda: smooth(samples=1, dtype=np.float32), photometric="minisblack", compression="zlib"
    ),
    "int16": _variant(lambda: smooth(samples=1, dtype=np.int16), photometric="minisblack"),
    "uint32": _variant(lambda: smooth(samples=1, dtype=np.uint32), photometric="minisblack"),
    "five_samples": _variant(lambda: smooth(samples=5), photometric="minisblack", planarconfig="contig"),
    "cmyk": _variant(lambda: smooth(samples=4), photometric="separated"),
    "planar_separate": _planar,
    "palette": _palette,
    "palette16bit_table": _palette16,
    "geotiff": _geotiff,
    "multipage": _multipage,
    "jpeg_rgb": _jpeg,
    "jpeg_ycbcr_tiled": _ycbcr_jpeg,
}

PNG_VARIANTS = {
    "rgb8_striped_none",
    "rgb8_tiled_lzw",
    "rgb8_deflate_pred",
    "rgb8_packbits",
    "rgb8_zstd_tiled",
    "rgb8_bigtiff",
    "rgb16_bigendian",
    "rgb16_tiled_deflate",
    "rgba8",
    "gray8",
    "gray16_lzw_pred",
    "graya16",
    "miniswhite8",
    "bilevel",
    "bilevel_black",
    "planar_separate",
    "palette",
    "geotiff",
    "multipage",
    "jpeg_rgb",
    "jpeg_ycbcr_tiled",
}


def write_variant(directory: Path, name: str) -> tuple[Path, np.ndarray]:
    path = Path(directory) / f"{name}.tif"
    expected = VARIANTS[name](path)
    return path, expected

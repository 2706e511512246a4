"""Deterministic sample data: photo-like pixels (smooth structure + texture + sensor noise) and the demo tree.

Rows depend only on (seed, global row), so a huge image can be generated band by band with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# (amplitude, x frequency, y frequency) in cycles per 1000 px: a few broad gradients/shapes, then texture.
_TERMS = ((60.0, 0.7, 0.4), (35.0, -1.3, 2.1), (20.0, 3.1, -2.3), (9.0, 17.0, 11.0), (6.0, -29.0, 37.0))


def photo_like_rows(
    y0: int, y1: int, width: int, samples: int = 3, dtype: str = "uint8", seed: int = 0, noise: float = 2.5
) -> np.ndarray:
    """Rows y0:y1 of a photo-like image, shape (rows, width[, samples]); same output however it is banded."""
    noise_rows = _noise(y0, y1, width, samples, seed) * noise
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)
    chans = []
    for s in range(samples):
        acc = np.full((y1 - y0, width), 128.0, dtype=np.float32)
        for k, (amp, fx, fy) in enumerate(_TERMS):
            phase = (seed * 7 + s * 13 + k * 3) % 17 / 17 * 2 * np.pi
            ax = 2 * np.pi * fx / 1000 * (1 + 0.1 * s)
            ay = 2 * np.pi * fy / 1000
            # separable form of sin(ax*x + ay*y + phase): two outer products, no per-pixel trig
            acc += amp * np.sin(ys * ay + phase)[:, None] * np.cos(xs * ax)[None, :]
            acc += amp * np.cos(ys * ay + phase)[:, None] * np.sin(xs * ax)[None, :]
        acc += noise_rows[s]
        chans.append(acc)
    img = np.stack(chans, axis=-1) if samples > 1 else chans[0]
    if np.dtype(dtype) == np.uint16:
        return np.clip(img * 256.0, 0, 65535).astype(np.uint16)
    return np.clip(img, 0, 255).astype(np.dtype(dtype))


_NOISE_BLOCK = 64


def _noise(y0: int, y1: int, width: int, samples: int, seed: int) -> np.ndarray:
    """Gaussian noise (samples, rows, width) drawn per globally aligned block of rows, so any banding agrees."""
    blocks = []
    for b in range(y0 // _NOISE_BLOCK, (y1 - 1) // _NOISE_BLOCK + 1):
        rng = np.random.default_rng([seed, b, width])
        blocks.append(rng.standard_normal((samples, _NOISE_BLOCK, width), dtype=np.float32))
    start = y0 - (y0 // _NOISE_BLOCK) * _NOISE_BLOCK
    return np.concatenate(blocks, axis=1)[:, start : start + (y1 - y0)]


def photo_like(height: int, width: int, samples: int = 3, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """A whole photo-like image (use photo_like_rows for images that should not be held at once)."""
    return photo_like_rows(0, height, width, samples, dtype, seed)


def write_sample_tiff(
    path: Path,
    height: int,
    width: int,
    *,
    samples: int = 3,
    dtype: str = "uint8",
    seed: int = 0,
    band_rows: int = 512,
    **tiff_kwargs: Any,
) -> Path:
    """Write a photo-like TIFF band by band (never the whole image in memory)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (height, width, samples) if samples > 1 else (height, width)
    photometric = "rgb" if samples in (3, 4) else "minisblack"

    tile = tiff_kwargs.get("tile")
    if tile is None:
        tiff_kwargs.setdefault("rowsperstrip", band_rows)

    def chunks() -> Iterator[np.ndarray]:
        """Strips, or tiles padded to full tile size: the segments tifffile expects from an iterator."""
        step = tile[0] if tile else tiff_kwargs["rowsperstrip"]
        for y0 in range(0, height, step):
            band = photo_like_rows(y0, min(y0 + step, height), width, samples, dtype, seed)
            if not tile:  # uncompressed strips are written as they come
                yield band
                continue
            for x0 in range(0, width, tile[1]):
                piece = np.zeros((tile[0], tile[1], *band.shape[2:]), dtype=band.dtype)
                part = band[:, x0 : x0 + tile[1]]
                piece[: part.shape[0], : part.shape[1]] = part
                yield piece

    extrasamples = [tifffile.EXTRASAMPLE.UNASSALPHA] if samples == 4 else None
    if not tile and tiff_kwargs.get("compression") not in (None, "none"):
        # tifffile encodes compressed strips only from whole pages: fine for sample-sized images.
        data = photo_like(height, width, samples, dtype, seed)
        tifffile.imwrite(path, data, photometric=photometric, extrasamples=extrasamples, **tiff_kwargs)
        return path
    tifffile.imwrite(
        path, chunks(), shape=shape, dtype=dtype, photometric=photometric, extrasamples=extrasamples, **tiff_kwargs
    )
    return path


def make_sample_tree(root: Path, size: int = 1024) -> dict[str, Any]:
    """The seed's example tree, with the variants and the junk real trees have.

    Returns the expected outcome so the demo (and tests) can check the report against it.
    """
    from PIL import Image as PILImage

    s = size
    write_sample_tiff(
        root / "project_alpha/survey_001/aerial_photo_001.tif",
        s,
        s + s // 3,
        seed=1,
        compression="lzw",
        rowsperstrip=64,
    )
    write_sample_tiff(
        root / "project_alpha/survey_001/aerial_photo_002.tif",
        s + s // 4,
        s,
        samples=1,
        dtype="uint16",
        seed=2,
        tile=(256, 256),
        compression="zlib",
    )
    write_sample_tiff(
        root / "project_alpha/survey_002/scan_0003.tiff", s, s, samples=4, seed=3, compression="zstd", tile=(256, 256)
    )
    write_sample_tiff(root / "project_gamma/bigendian_scan.tif", s, s, seed=4, byteorder=">")
    thumb = photo_like(96, 128, seed=5)
    PILImage.fromarray(thumb).save(root / "project_alpha/survey_001/thumbnail_001.jpg", quality=85)
    (root / "project_beta/crops").mkdir(parents=True, exist_ok=True)
    for i in (1, 2):
        PILImage.fromarray(photo_like(120, 160, seed=10 + i)).save(root / f"project_beta/crops/crop_00{i}.jpg")
    write_sample_tiff(root / "project_beta/preview_small.tif", 256, 256, seed=6)
    damaged = root / "project_beta/damaged_scan.tif"
    write_sample_tiff(damaged, s // 2 + 512, s, seed=7)
    damaged.write_bytes(damaged.read_bytes()[:1024])  # truncated in transfer: header present, pixels gone
    (root / "project_beta/README.txt").write_text("field notes, not an image\n")
    return {"found": 6, "done": 4, "skipped": 1, "errors": 1, "folders_skipped": 1}

"""Test helper: writes real TIFF variants with tifffile and returns the pixels tessq must reproduce.

Each variant is (name -> writer); `write_variant(dir, name)` returns (path, expected interleaved array).
"""

from __future__ import annotations

import math
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
    "rgb16_bigendian": _variant(lambda: smooth(dtype=np.uint16), photometric="rgb", byteorder=">", rowsperstrip=5),
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
    "graya16": _variant(lambda: smooth(samples=2, dtype=np.uint16), photometric="minisblack", extrasamples=[2]),
    "miniswhite8": _variant(lambda: smooth(samples=1), photometric="miniswhite"),
    "bilevel": _variant(lambda: smooth(samples=1, dtype=bool), photometric="miniswhite"),
    "bilevel_black": _variant(lambda: smooth(samples=1, dtype=bool), photometric="minisblack", rowsperstrip=8),
    "float32": _variant(lambda: smooth(samples=1, dtype=np.float32), photometric="minisblack", compression="zlib"),
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


# -- hand-built TIFFs for layouts tifffile does not write (subsampled YCbCr, float24 + predictor, ...) -------
_TYPE_FORMAT = {3: "H", 4: "I", 5: "II", 12: "d"}  # SHORT, LONG, RATIONAL (num, den), DOUBLE


def write_raw_tiff(
    path: Path,
    width: int,
    height: int,
    tags: dict[int, tuple[int, list[Any]]],
    segments: list[bytes],
    *,
    tile: tuple[int, int] | None = None,
    extra_offsets: int = 0,
    offset_tags: tuple[int, int] = (273, 279),
) -> Path:
    """A little-endian classic TIFF with the given tags and already-encoded strips/tiles, nothing more.

    `tags` maps tag -> (TIFF type, values); offsets and byte counts are added here. `extra_offsets` appends
    that many bogus (zero-length) entries past what the layout needs, as some writers do. `offset_tags`
    (513, 514) writes JPEGInterchangeFormat/Length instead of StripOffsets/ByteCounts (old-style JPEG)."""
    import struct

    data = bytearray(b"II*\x00\x00\x00\x00\x00")
    offsets, counts = [], []
    for seg in segments:
        offsets.append(len(data))
        counts.append(len(seg))
        data += seg
        if len(data) % 2:
            data += b"\x00"
    offsets += [offsets[-1]] * extra_offsets
    counts += [0] * extra_offsets
    all_tags = dict(tags)
    all_tags[256] = (4, [width])
    all_tags[257] = (4, [height])
    if tile:
        all_tags[322], all_tags[323] = (4, [tile[1]]), (4, [tile[0]])
        all_tags[324], all_tags[325] = (4, offsets), (4, counts)
    else:
        all_tags[offset_tags[0]], all_tags[offset_tags[1]] = (4, offsets), (4, counts)
    entries = []
    for code in sorted(all_tags):
        typ, values = all_tags[code]
        fmt = _TYPE_FORMAT[typ]
        flat = [v for pair in values for v in pair] if typ == 5 else list(values)
        payload = struct.pack("<" + fmt[0] * len(flat), *flat)
        if len(payload) <= 4:
            entries.append(struct.pack("<HHI", code, typ, len(values)) + payload.ljust(4, b"\x00"))
        else:
            entries.append(struct.pack("<HHII", code, typ, len(values), len(data)))
            data += payload
            if len(data) % 2:
                data += b"\x00"
    ifd = len(data)
    data += struct.pack("<H", len(entries)) + b"".join(entries) + b"\x00\x00\x00\x00"
    data[4:8] = struct.pack("<I", ifd)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def ycbcr_subsampled(
    path: Path, h: int, v: int, compression: str = "lzw", size: tuple[int, int] = (48, 61), rps: int = 16
) -> Path:
    """Uncompressed/LZW/deflate YCbCr with YCbCrSubSampling (h, v), packed in data units as TIFF 6.0 says:
    per h x v block, its h*v luma samples, then Cb, then Cr. Width/height need not be multiples of h/v."""
    import zlib

    import imagecodecs

    height, width = size
    rng = np.random.default_rng(h * 10 + v)
    y = ((np.mgrid[0:height, 0:width].sum(axis=0) * 3) % 200 + 30 + rng.integers(0, 20, (height, width))).astype(
        np.uint8
    )
    bw, rows_per_strip = math.ceil(width / h), rps
    segments = []
    for y0 in range(0, height, rows_per_strip):
        y1 = min(height, y0 + rows_per_strip)
        units = bytearray()
        for by in range(y0, y1, v):
            for bx in range(bw):
                block = np.zeros((v, h), np.uint8)
                part = y[by : min(by + v, y1), bx * h : min(bx * h + h, width)]
                block[: part.shape[0], : part.shape[1]] = part
                units += block.tobytes()
                units += bytes([(bx * 37 + by * 5) % 256, (200 - bx * 11 - by * 3) % 256])
        raw = bytes(units)
        if compression == "lzw":
            raw = imagecodecs.lzw_encode(raw)
        elif compression == "deflate":
            raw = zlib.compress(raw)
        segments.append(raw)
    codes = {"none": 1, "lzw": 5, "deflate": 8}
    tags: dict[int, tuple[int, list[Any]]] = {
        258: (3, [8, 8, 8]),
        259: (3, [codes[compression]]),
        262: (3, [6]),
        277: (3, [3]),
        278: (4, [rows_per_strip]),
        284: (3, [1]),
        530: (3, [h, v]),
        532: (5, [(0, 1), (255, 1), (128, 1), (255, 1), (128, 1), (255, 1)]),  # ReferenceBlackWhite
    }
    return write_raw_tiff(path, width, height, tags, segments)


def planar_jpeg(
    path: Path,
    photometric: int = 2,
    samples: int = 3,
    size: tuple[int, int] = (40, 56),
    subsampling: tuple[int, int] | None = None,
    stray_subsampling: bool = False,
) -> Path:
    """Planar-separate JPEG: one grayscale JPEG per plane and strip, without the JFIF marker (as libtiff and
    GDAL write them). With `subsampling` (YCbCr), the Cb and Cr planes are stored at reduced size;
    `stray_subsampling` only adds a YCbCrSubSampling tag (2, 2), which a non-YCbCr image ignores."""
    import imagecodecs

    height, width = size
    data = smooth(height, width, samples=samples)
    rps = 16
    h, v = subsampling or (1, 1)
    segments = []
    for s in range(samples):
        plane = data[:, :, s] if s == 0 or not subsampling else data[::v, ::h, s]
        step = rps if s == 0 or not subsampling else rps // v
        for y0 in range(0, plane.shape[0], step):
            stream = imagecodecs.jpeg8_encode(np.ascontiguousarray(plane[y0 : y0 + step]), level=90)
            segments.append(_strip_jfif(bytes(stream)))
    tags: dict[int, tuple[int, list[Any]]] = {
        258: (3, [8] * samples),
        259: (3, [7]),
        262: (3, [photometric]),
        277: (3, [samples]),
        278: (4, [rps]),
        284: (3, [2]),
    }
    if subsampling or stray_subsampling:
        tags[530] = (3, list(subsampling or (2, 2)))
    return write_raw_tiff(path, width, height, tags, segments)


def _strip_jfif(stream: bytes) -> bytes:
    """The JPEG without its APP0 (JFIF) segment: libtiff's streams have none, and tifffile decides the
    colour space from that marker."""
    if stream[2:4] == b"\xff\xe0":
        length = int.from_bytes(stream[4:6], "big")
        return stream[:2] + stream[4 + length :]
    return stream


def float24_predicted(path: Path, size: tuple[int, int] = (24, 40), compression: int = 8) -> tuple[Path, np.ndarray]:
    """24-bit floats with the floating-point predictor (3), deflate: returns (path, the float32 values).

    The values are chosen representable in float24 (1 sign, 7 exponent, 16 mantissa bits), so float32 holds
    them exactly; the predictor is TIFF Technical Note 3's byte-plane shuffle plus horizontal differencing."""
    import zlib

    import imagecodecs

    height, width = size
    values = (np.mgrid[0:height, 0:width].sum(axis=0).astype(np.float32) / 8 - 3).astype(np.float32)
    raw24 = np.frombuffer(imagecodecs.float24_encode(values, byteorder="<"), np.uint8).reshape(height, width, 3)
    # TN3: within a row, bytes most-significant first, grouped by byte plane, then byte-wise differences
    planes = raw24[:, :, ::-1].transpose(0, 2, 1).reshape(height, width * 3)
    diff = planes.copy()
    diff[:, 1:] = planes[:, 1:] - planes[:, :-1]
    strip = diff.astype(np.uint8).tobytes()
    encoded = zlib.compress(strip) if compression == 8 else strip
    tags: dict[int, tuple[int, list[Any]]] = {
        258: (3, [24]),
        259: (3, [compression]),
        262: (3, [1]),
        277: (3, [1]),
        278: (4, [height]),
        284: (3, [1]),
        317: (3, [3]),
        339: (3, [3]),
    }
    return write_raw_tiff(path, width, height, tags, [encoded]), imagecodecs.float24_decode(
        imagecodecs.float24_encode(values, byteorder="<"), byteorder="<"
    ).reshape(height, width)


def ojpeg_interchange(path: Path, size: tuple[int, int] = (32, 48), bogus_length: int = 0) -> Path:
    """Old-style JPEG (compression 6) located only by JPEGInterchangeFormat; its Length is off by
    `bogus_length` bytes (files in the wild have it wrong, libtiff does not rely on it)."""
    import imagecodecs

    height, width = size
    stream = bytes(imagecodecs.jpeg8_encode(smooth(height, width), level=90, colorspace="rgb", outcolorspace="ycbcr"))
    tags: dict[int, tuple[int, list[Any]]] = {
        258: (3, [8, 8, 8]),
        259: (3, [6]),
        262: (3, [6]),
        277: (3, [3]),
        278: (4, [height]),
        284: (3, [1]),
        512: (3, [1]),
        530: (3, [2, 2]),
    }
    path = write_raw_tiff(path, width, height, tags, [stream], offset_tags=(513, 514))
    if bogus_length:
        import struct

        raw = bytearray(path.read_bytes())
        ifd = struct.unpack_from("<I", raw, 4)[0]
        for i in range(struct.unpack_from("<H", raw, ifd)[0]):
            entry = ifd + 2 + 12 * i
            if struct.unpack_from("<H", raw, entry)[0] == 514:
                struct.pack_into("<I", raw, entry + 8, len(stream) + bogus_length)
        path.write_bytes(bytes(raw))
    return path

"""Writing one slice losslessly: decide PNG vs TIFF for the pixels (`slice_kind`), encode (`encode_slice`).

PNG is a minimal hand-written container (IHDR/PLTE/IDAT/IEND) around numpy-vectorised filters and a deflate
engine. The fast engines compress the filtered scanlines in independent row blocks of ~256 KiB ("segments",
as pigz does): each block gets a fresh raw-deflate compressor ended by a sync flush, the segments are
concatenated behind a zlib header, closed by an empty final block and the Adler-32 (combined from the
blocks'). Every PNG reader sees one ordinary zlib stream (tested with libpng, libspng, Pillow and OpenCV);
the cost is ~5 bytes per block. Because a segment depends on its block alone, the blocks are filtered and
compressed by a per-process thread pool (zlib-ng, ISA-L and numpy release the GIL) and the one-shot,
streamed and threaded encodings of one preset are byte-identical.

Engines: `zlib-ng-huffman` = zlib-ng Huffman-only per block, Z_RLE for blocks with > 25% zero bytes (runs:
nodata borders, flat areas, graphics, where RLE is both smaller and faster); `zlib-ng-rle` = Z_RLE for every
block; `isal` = Intel ISA-L (the `isal` package) level 0-3; `libdeflate` (imagecodecs) one-shot, levels
1-12; `auto` = isal level 1 for 16-bit samples, zlib-ng-huffman otherwise.
ISA-L blocks compressed on the pool's threads are valid deflate but their bytes can differ between runs
(measured: 2 distinct outputs in 60 encodes of one 16-bit slice, all decoding to the same pixels); zlib-ng's are
byte-identical one-shot, streamed and threaded.

Measurements (scripts/bench_engines.py, 2-core VM under load from other jobs, so +-15%; 8 photo-like
1024x1536 slices of each kind; MB/s of raw pixels through filter + compress in one thread, CPU time; bytes
vs Pillow's default level, libpng level 6 for RGB16 which Pillow cannot write):

    filter + engine          RGB8 MB/s  x Pil6    RGB16 MB/s  x Pil6    gray8 MB/s  x Pil6    flat* x Pil6
    up    zlib-ng-huffman        166    0.997          81    0.999         138    0.999          0.998
    up    zlib-ng-rle            151    0.998          91    0.999         115    0.999          0.998
    up    isal-1                 182    1.066         176    0.998         197    1.068          1.079
    sub   zlib-ng-huffman        151    1.002          97    1.000         137    0.999          1.004
    sub   isal-1                 186    1.070         205    0.999         213    1.069          1.083
    sub   isal-2                 189    1.098         225    0.999         167    1.093          1.111
    avg   zlib-ng-huffman        143    0.936          94    0.984         151    0.937          0.938
    avg   zlib-ng-rle            133    0.937          84    0.984         107    0.937          0.939
    avg   isal-1                 156    1.034         121    0.982         142    1.034          1.050
    avg   libdeflate-1            97    1.042          80    0.983          93    1.038          1.052
    avg   libdeflate-4            41    0.980          57    0.988          37    0.980          0.984
    paeth zlib-ng-huffman         55    1.013          51    1.004          49    1.014          1.112**
    paeth isal-1                  56    1.074          67    1.002          60    1.075          1.087
    isal-0 (any filter)      129-141 1.56-1.79      91-132  1.34-1.36     142-192 1.54-1.76
    (*flat: RGB8 with a 1/3 nodata border and a flat block; **before the zero-fraction switch to RLE)

ISA-L is the fastest deflate here, but on 8-bit photos its Huffman coding gives 3-7% more bytes than Pillow
(+10% vs zlib-ng at the same filter, measured: block size, memLevel and sync-flush spacing do not change
that), so it is the default only for 16-bit samples, where it is 2-3x faster at <= 1.00x. fpng (8-bit only)
is faster still but ~1.17x Pillow's bytes (the issue's measurement); libdeflate loses on both counts at
level 1 and is kept for `small`. For 8-bit, Huffman-only beats Z_RLE on photo blocks (RLE finds no runs
after the filter) and the zero-fraction switch keeps RLE's advantage on flat content.

Presets (options.png_preset; options.compress_level switches to libdeflate at that level, preset's filter):
    fast     = Sub filter, ISA-L level 1              fastest; ~1.07x Pillow-6 on 8-bit, ~1.00x on 16-bit
    balanced = Up filter,  auto (zlib-ng Huffman/RLE   ~165 MB/s per core, <= 1.00x Pillow-6 (0.997 on the
               for 8-bit, ISA-L 1 for 16-bit)         bench corpus: a thin margin)  <- default
    small    = Avg filter, libdeflate level 12         ~18 MB/s, smallest on flat/graphic content too
The previous default (Avg + zlib-ng Z_RLE, 0.94x Pillow-6) is ~15% slower per core; it is no preset any more
(PRESETS here is the one place to bring it back).
"""

from __future__ import annotations

import io
import os
import struct
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple, cast

import imagecodecs
import numpy as np
import tifffile
from isal import isal_zlib
from zlib_ng import zlib_ng

from tessq import defaults, hashing
from tessq.options import SliceOptions
from tessq.perprocess import PerProcess

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDAT_CHUNK = 1 << 24  # split IDAT at 16 MiB (any size is legal below 2**31; smaller keeps buffers small)
FILTERS = {"none": 0, "sub": 1, "up": 2, "avg": 3, "paeth": 4}
PRESETS: dict[str, tuple[str, str, int]] = {  # filter, deflate engine, level
    "fast": ("sub", "isal", 1),
    "balanced": ("up", "auto", 1),
    "small": ("avg", "libdeflate", 12),
}
# Engines compressing row blocks independently (pigz-style segments, see _deflate_segment), in threads.
SEGMENT_ENGINES = ("zlib-ng-huffman", "zlib-ng-rle", "isal")
# zlib-ng-huffman: a filtered block with more zero bytes than this has runs (flat areas, nodata borders,
# graphics) and goes to Z_RLE, which is both smaller and faster there; photo blocks (~12% zeros after the
# filter) get Huffman coding alone, ~10% faster than Z_RLE at the same bytes (RLE finds no runs in them).
RLE_ZERO_FRACTION = 0.25
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary (FLEVEL 0: informational only)
FINAL_EMPTY_BLOCK = b"\x03\x00"  # an empty final block with fixed codes: ends a stream of sync-flushed segments
TIFF_COMPRESSION = ("zlib", 6)  # Adobe Deflate: lossless, readable everywhere; TIFF slices are the rare case

# photometric names tifffile.imwrite can carry through unchanged
_TIFF_WRITABLE_PHOTOMETRIC = {"minisblack", "miniswhite", "rgb", "palette", "separated", "cielab"}


@dataclass(frozen=True)
class SliceKind:
    """How the slices of one image are written; `reason` says why a slice is TIFF (None for PNG)."""

    format: str  # 'png' | 'tiff'
    ext: str
    dtype: str
    samples: int
    color_type: int | None = None  # PNG colour type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA
    bit_depth: int | None = None  # PNG bit depth: 1, 8 or 16
    palette: bytes | None = field(default=None, repr=False)  # PLTE payload for palette PNGs
    tiff_photometric: str | None = None
    tiff_extrasamples: tuple[int, ...] = ()
    tiff_planar: str = "contig"  # 'separate' for multi-sample 1-bit: tifffile packs contig 1-bit samples wrongly
    colormap: Any = field(default=None, repr=False, compare=False)  # uint16 (3, n) for palette TIFF slices
    reason: str | None = None
    note: str | None = None  # lossless but worth saying (e.g. MINISWHITE stored values in a gray PNG)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "dtype": self.dtype, "samples": self.samples}
        if self.format == "png":
            out.update(png_color_type=self.color_type, png_bit_depth=self.bit_depth)
        else:
            out.update(
                tiff_photometric=self.tiff_photometric,
                tiff_compression=TIFF_COMPRESSION[0],
                tiff_planar=self.tiff_planar,
            )
        if self.reason:
            out["reason"] = self.reason
        if self.note:
            out["note"] = self.note
        return out


def slice_kind(
    dtype: str,
    samples: int,
    photometric: str,
    extra_samples: tuple[int, ...] = (),
    colormap: np.ndarray | None = None,
    bits_per_sample: int | None = None,
    slice_format: str = "png",
) -> SliceKind:
    """PNG when PNG holds these pixels exactly, else TIFF of the same dtype/samples with the reason."""
    dt = np.dtype(dtype)
    png_reason = _png_refusal(dt, samples, photometric, extra_samples, colormap)
    if slice_format == "png" and png_reason is None:
        return _png_kind(dt, samples, photometric, extra_samples, colormap, bits_per_sample)
    reason = png_reason if slice_format == "png" else "TIFF slices requested (format=tiff)"
    tiff_photometric = photometric if photometric in _TIFF_WRITABLE_PHOTOMETRIC else "minisblack"
    note = None
    if tiff_photometric != photometric:
        note = f"source photometric {photometric} written as minisblack samples (values unchanged)"
    stored = dt
    if tiff_photometric == "palette" and samples == 1 and colormap is not None and dt.kind == "b":
        stored = np.dtype(np.uint8)  # a 1-bit palette TIFF slice is written with 8-bit indices, same values
        note = "1-bit palette indices written as 8-bit indices with the same colour table"
    if tiff_photometric == "palette" and (
        colormap is None or stored.kind != "u" or stored.itemsize > 2 or samples != 1
    ):
        tiff_photometric = "minisblack"
        note = "palette indices (and any extra samples) written as minisblack; the colour table is in metadata.json"
    if tiff_photometric == "rgb" and samples < 3:
        tiff_photometric = "minisblack"
    planar = "separate" if dt.kind == "b" and samples > 1 else "contig"
    extras: tuple[int, ...] = ()
    base = {"rgb": 3, "separated": max(samples - len(extra_samples), 1), "cielab": 3}.get(tiff_photometric, 1)
    if samples > base:
        extras = tuple(extra_samples[: samples - base]) or (0,) * (samples - base)
        extras = extras + (0,) * (samples - base - len(extras))
    return SliceKind(
        format="tiff",
        ext="tif",
        dtype=str(stored),
        samples=samples,
        tiff_photometric=tiff_photometric,
        tiff_extrasamples=extras,
        tiff_planar=planar,
        colormap=colormap if tiff_photometric == "palette" else None,
        reason=reason,
        note=note,
    )


def _png_refusal(
    dt: np.dtype, samples: int, photometric: str, extra: tuple[int, ...], colormap: np.ndarray | None
) -> str | None:
    """Why PNG cannot hold these pixels exactly, or None when it can."""
    if photometric == "palette":
        return _palette_png_refusal(dt, samples, colormap)
    if dt.kind == "f":
        return f"PNG cannot hold floating-point samples ({dt})"
    if dt.kind == "i":
        return f"PNG cannot hold signed samples ({dt})"
    if dt.kind == "b":
        return None if samples == 1 else f"PNG has no {samples}-sample 1-bit format"
    if dt.kind != "u" or dt.itemsize > 2:
        return f"PNG holds at most 16-bit unsigned samples, image is {dt}"
    if photometric in ("minisblack", "miniswhite"):
        if samples == 1 or (samples == 2 and len(extra) == 1):
            return None
        return f"{samples} samples under {photometric} ({len(extra)} marked extra) do not fit gray or gray+alpha PNG"
    if photometric == "rgb":
        if samples == 3 or (samples == 4 and len(extra) == 1):
            return None
        return f"RGB with {samples} samples does not fit RGB or RGBA PNG"
    return f"PNG has no {photometric} colour model"


def _palette_png_refusal(dt: np.dtype, samples: int, colormap: np.ndarray | None) -> str | None:
    """Why a palette PNG (PLTE, indices of 1-8 bits) cannot hold this palette image exactly, or None."""
    if samples != 1 or dt.kind not in "ub" or dt.itemsize != 1:
        return f"palette indices of {dt} with {samples} sample(s) do not fit a palette PNG (at most 8-bit indices)"
    if colormap is None:
        return "palette image without a colour table"
    cmap = np.asarray(colormap)
    if cmap.ndim != 2 or cmap.shape[0] != 3 or cmap.shape[1] > 256:
        return f"colour table of shape {cmap.shape} does not fit PNG's PLTE"
    if np.any(cmap % 257):
        return "colour table has 16-bit entries that PNG's 8-bit PLTE would round"
    return None


def _png_kind(
    dt: np.dtype,
    samples: int,
    photometric: str,
    extra: tuple[int, ...],
    colormap: np.ndarray | None,
    bits_per_sample: int | None,
) -> SliceKind:
    note = None
    if photometric == "miniswhite":
        note = "MINISWHITE: stored values kept (0 = white), a PNG viewer shows them inverted"
    if extra and extra[0] == 1:
        note = "associated (premultiplied) alpha stored as-is in the PNG alpha channel"
    if bits_per_sample and dt.kind == "u" and bits_per_sample not in (8, 16):
        note = f"{bits_per_sample}-bit samples stored unchanged in {dt.itemsize * 8}-bit PNG samples"
    if photometric == "palette":
        return _palette_png_kind(dt, colormap, bits_per_sample)
    if dt.kind == "b":
        return SliceKind("png", "png", "bool", 1, color_type=0, bit_depth=1, note=note)
    depth = dt.itemsize * 8
    color_type = {("gray", 1): 0, ("gray", 2): 4, ("rgb", 3): 2, ("rgb", 4): 6}[
        ("rgb" if photometric == "rgb" else "gray", samples)
    ]
    return SliceKind("png", "png", str(dt), samples, color_type=color_type, bit_depth=depth, note=note)


def _palette_png_kind(dt: np.dtype, colormap: np.ndarray | None, bits_per_sample: int | None) -> SliceKind:
    """Palette PNG at the source's index depth (1, 2, 4 or 8 bits), the colour table in PLTE."""
    cmap = np.asarray(colormap)
    entries = cmap.shape[1]
    depth = bits_per_sample if bits_per_sample in (1, 2, 4, 8) and entries <= 2 ** (bits_per_sample or 8) else 8
    palette = (cmap // 257).astype(np.uint8).T.tobytes()
    note = f"{depth}-bit palette indices with the colour table ({entries} entries) in PLTE"
    return SliceKind(
        "png", "png", str(dt), 1, color_type=3, bit_depth=depth, palette=palette, colormap=colormap, note=note
    )


# -- PNG ---------------------------------------------------------------------------------------------------
def _chunk(tag: bytes, payload: bytes | memoryview) -> bytes:
    crc = zlib_ng.crc32(payload, zlib_ng.crc32(tag))
    return struct.pack(">I", len(payload)) + tag + bytes(payload) + struct.pack(">I", crc)


def _png_rows(array: np.ndarray, kind: SliceKind) -> np.ndarray:
    """The image as PNG scanline bytes (height, rowbytes) uint8: packed bits, big-endian 16-bit."""
    if kind.bit_depth == 1:
        return np.packbits(array.astype(bool, copy=False), axis=1)
    if kind.bit_depth in (2, 4):
        return pack_indices(array, kind.bit_depth)
    height = array.shape[0]
    if array.dtype.itemsize == 2:
        array = array.astype(">u2", copy=False)
    if array.dtype.itemsize == 1 and array.strides[-1] == 1 and (array.ndim == 2 or array.strides[1] == array.shape[2]):
        # a column of a band: each row is contiguous, so rows can be filtered in place, without a copy
        return array.view(np.uint8).reshape(height, -1)
    return np.ascontiguousarray(array).view(np.uint8).reshape(height, -1)


def pack_indices(array: np.ndarray, depth: int) -> np.ndarray:
    """(height, width) values below 2**depth -> PNG rows of `depth`-bit samples, leftmost in the high bits."""
    per_byte = 8 // depth
    height, width = array.shape
    padded = np.zeros((height, -(-width // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :width] = array
    groups = padded.reshape(height, -1, per_byte)
    out = np.zeros(groups.shape[:2], dtype=np.uint8)
    for k in range(per_byte):
        out |= groups[:, :, k] << np.uint8(8 - depth * (k + 1))
    return out


# Filter and compress in row blocks of about this size: the block stays in L2 cache between the two passes.
FILTER_BLOCK_BYTES = 256 * 1024


def filter_rows(rows: np.ndarray, method: str, bpp: int, prev: np.ndarray | None = None) -> np.ndarray:
    """PNG-filter scanlines (height, n) uint8 -> (height, n + 1) with the filter byte, block by block."""
    height, n = rows.shape
    block = max(1, FILTER_BLOCK_BYTES // max(n, 1))
    if height <= block:
        return _filter_block(rows, method, bpp, prev)
    out = np.empty((height, n + 1), dtype=np.uint8)
    for y in range(0, height, block):
        out[y : y + block] = _filter_block(rows[y : y + block], method, bpp, prev if y == 0 else rows[y - 1])
    return out


def _filter_block(rows: np.ndarray, method: str, bpp: int, prev: np.ndarray | None = None) -> np.ndarray:
    """PNG-filter scanlines (height, n) uint8 -> (height, n + 1) with the filter byte; vectorised.

    Encoding filters use raw (unfiltered) neighbours, so every row is independent given its predecessor.
    `prev` is the raw row above the first one (streaming), or None at the top of the image.
    """
    height, n = rows.shape
    out = np.empty((height, n + 1), dtype=np.uint8)
    out[:, 0] = FILTERS[method]
    body = out[:, 1:]
    if method == "none":
        body[...] = rows
        return out
    above = np.empty_like(rows)
    above[0] = 0 if prev is None else prev
    above[1:] = rows[:-1]
    if method == "up":
        np.subtract(rows, above, out=body)
    elif method == "sub":
        body[:, :bpp] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=body[:, bpp:])
    elif method == "avg":
        # floor((left + above) / 2) in uint8, without widening: (a & b) + ((a ^ b) >> 1)
        left, up = rows[:, :-bpp], above[:, bpp:]
        mean = np.bitwise_xor(left, up)
        mean >>= 1
        mean += np.bitwise_and(left, up)
        np.subtract(rows[:, bpp:], mean, out=body[:, bpp:])
        np.subtract(rows[:, :bpp], above[:, :bpp] >> 1, out=body[:, :bpp])
    elif method == "paeth":
        a = np.zeros_like(rows, dtype=np.int16)
        a[:, bpp:] = rows[:, :-bpp]
        b = above.astype(np.int16)
        c = np.zeros_like(a)
        c[:, bpp:] = b[:, :-bpp]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)
        np.subtract(rows, pred, out=body)
    else:
        raise ValueError(f"unknown PNG filter {method!r}")
    return out


def _bytes_per_pixel(kind: SliceKind) -> int:
    if (kind.bit_depth or 8) < 8:
        return 1
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[kind.color_type or 0]
    return max(1, channels * (kind.bit_depth or 8) // 8)


def _png_head(width: int, height: int, kind: SliceKind) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, kind.bit_depth, kind.color_type, 0, 0, 0)
    head = PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
    if kind.color_type == 3 and kind.palette:
        head += _chunk(b"PLTE", kind.palette)
    return head


# -- threads -----------------------------------------------------------------------------------------------
def thread_count() -> int:
    """Threads per process for block encoding and tile decoding: the cores this process may use, or
    TESSQ_THREADS (1 = everything inline, no pool)."""
    return _threads_asked() or defaults.usable_cores()


def _threads_asked() -> int | None:
    """TESSQ_THREADS when it is a positive whole number, else None (nonsense is ignored)."""
    env = os.environ.get("TESSQ_THREADS")
    return int(env) if env and env.strip().isdigit() and int(env) > 0 else None


_POOL: PerProcess[ThreadPoolExecutor | None] = PerProcess(
    lambda: ThreadPoolExecutor(thread_count(), thread_name_prefix="tessq-codec") if thread_count() > 1 else None
)
_CORES_TAKEN = threading.Event()  # set: every core of the host has an image of its own (cores_busy)


def cores_taken(taken: bool) -> None:
    """Tell this process whether every core already has an image to cut (see cores_busy; a worker says so as
    it claims an image and at each heartbeat). While it does, the codec pool only adds hand-offs (measured:
    cutting inline took 0.92x the wall, 12 images, 2 workers on 2 cores, 12 paired runs), so images are cut
    inline; when cores would idle (one big image, the tail of a batch) the pool puts them to work. An explicit
    TESSQ_THREADS keeps its pool either way. The pixels written are the same both ways (and the bytes, but for
    ISA-L blocks compressed on the pool, whose bytes may vary from run to run)."""
    if taken:
        _CORES_TAKEN.set()
    else:
        _CORES_TAKEN.clear()


def cores_busy(waiting: int, running_here: int, workers_here: int, cores: int | None = None) -> bool:
    """Whether every core of this host already has an image: this host's running images (this one included)
    are at least its cores, or images wait and this host runs at least a worker per core (an idle one takes
    the next image at once)."""
    cores = cores or defaults.usable_cores()
    return running_here >= cores or (waiting > 0 and workers_here >= cores)


def thread_pool() -> ThreadPoolExecutor | None:
    """This process's codec thread pool (None when one thread, or while cores_taken). zlib-ng, ISA-L,
    imagecodecs and numpy's ufuncs release the GIL, so the pool puts idle cores to work on one image without
    new processes. Jobs submitted to it never wait on the pool themselves (no nested waits: no deadlock)."""
    if _CORES_TAKEN.is_set() and _threads_asked() is None:
        return None
    return _POOL.get()


def ordered_map(fn: Any, items: Iterable[Any], window: int | None = None) -> Iterable[Any]:
    """fn over items in the pool, results in order, at most `window` jobs in flight (bounded memory);
    inline when there is no pool."""
    pool = thread_pool()
    if pool is None:
        for item in items:
            yield fn(item)
        return
    window = window or 2 * thread_count()
    pending: list[Future[Any]] = []
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        for fut in pending:
            fut.cancel()


# -- deflate in independent segments -----------------------------------------------------------------------
_ADLER_BASE = 65521


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """zlib's adler32_combine: the Adler-32 of A + B from those of A and B and len(B)."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (adler2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)


def _deflate_segment(data: np.ndarray, engine: str, level: int) -> bytes:
    """Raw deflate of one filtered row block by a fresh compressor, ended by a sync flush (byte-aligned, not
    final): segments concatenate into one valid deflate stream (as pigz does), and each segment's bytes
    depend on that block alone, so one-shot, streamed and threaded encodings are byte-identical."""
    if engine == "isal":
        z = isal_zlib.compressobj(min(max(level, 0), 3), isal_zlib.DEFLATED, -15, 9)
        return z.compress(data) + z.flush(isal_zlib.Z_SYNC_FLUSH)
    strategy = zlib_ng.Z_RLE
    if engine == "zlib-ng-huffman" and data.size - np.count_nonzero(data) <= RLE_ZERO_FRACTION * data.size:
        strategy = zlib_ng.Z_HUFFMAN_ONLY
    zng = zlib_ng.compressobj(1, zlib_ng.DEFLATED, -15, 9, strategy)
    return zng.compress(data) + zng.flush(zlib_ng.Z_SYNC_FLUSH)


def _segment_job(job: tuple[np.ndarray, np.ndarray | None, str, int, str, int]) -> tuple[bytes, int, int]:
    """Filter + compress one row block: (deflate segment, Adler-32 of the filtered bytes, their length)."""
    rows, prev, method, bpp, engine, level = job
    filtered = _filter_block(rows, method, bpp, prev)
    return _deflate_segment(filtered, engine, level), zlib_ng.adler32(filtered), filtered.nbytes


def _block_rows(rowbytes: int) -> int:
    return max(1, FILTER_BLOCK_BYTES // max(rowbytes, 1))


def _blocks(rows: np.ndarray, prev: np.ndarray | None, method: str, bpp: int, engine: str, level: int) -> Iterable[Any]:
    block = _block_rows(rows.shape[1])
    for y in range(0, rows.shape[0], block):
        yield rows[y : y + block], (prev if y == 0 else rows[y - 1]), method, bpp, engine, level


def resolve_engine(engine: str, kind: SliceKind) -> str:
    """'auto': ISA-L for 16-bit samples (3-4x faster than zlib-ng there at <= Pillow-6 bytes), zlib-ng Huffman
    (+ RLE for runs) for 8-bit and fewer bits, where ISA-L's Huffman coding costs 7-10% more bytes."""
    if engine != "auto":
        return engine
    return "isal" if (kind.bit_depth or 8) == 16 else "zlib-ng-huffman"


class PngSettings(NamedTuple):
    """How PNG slices are compressed: row filter, deflate engine and its level (one image's are computed once)."""

    filter: str
    engine: str
    level: int


def png_settings(options: SliceOptions) -> PngSettings:
    """(filter, engine, level) for the options' preset; compress_level means libdeflate at that level."""
    method, engine, level = PRESETS[options.png_preset]
    if options.compress_level is not None:
        engine, level = "libdeflate", options.compress_level
    return PngSettings(method, engine, level)


def _zlib_stream(engine: str, level: int) -> Any:
    """libdeflate's stand-in when streaming (zlib-ng): Z_RLE for its fast levels, else zlib level <= 9."""
    if engine == "libdeflate" and level <= 2:
        return zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_RLE)
    return zlib_ng.compressobj(min(max(level, 0), 9))


def png_encode(array: np.ndarray, kind: SliceKind, method: str = "avg", engine: str = "auto", level: int = 1) -> bytes:
    """Whole-array PNG: numpy filters, then segments compressed by the thread pool, libdeflate in one go, or
    the zlib-ng stream compressor block by block."""
    height, width = array.shape[:2]
    method = "none" if (kind.bit_depth or 8) < 8 else method  # filters do not help packed sub-byte data
    engine = resolve_engine(engine, kind)
    rows = _png_rows(array, kind)
    bpp = _bytes_per_pixel(kind)
    if engine in SEGMENT_ENGINES:
        parts, adler = [ZLIB_HEADER], 1
        for segment, seg_adler, length in ordered_map(_segment_job, _blocks(rows, None, method, bpp, engine, level)):
            parts.append(segment)
            adler = adler32_combine(adler, seg_adler, length)
        parts += [FINAL_EMPTY_BLOCK, struct.pack(">I", adler)]
        data: bytes | bytearray = b"".join(parts)
    elif engine == "libdeflate":
        # any buffer will do (the stub names bytes only): the filtered rows are not copied
        data = imagecodecs.deflate_encode(cast(bytes, filter_rows(rows, method, bpp)), level=min(level, 12))
    else:
        raise ValueError(f"unknown deflate engine {engine!r}")
    out = [_png_head(width, height, kind)]
    view = memoryview(data)
    for start in range(0, max(len(view), 1), IDAT_CHUNK):
        out.append(_chunk(b"IDAT", view[start : start + IDAT_CHUNK]))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _compress_rows(z: Any, rows: np.ndarray, method: str, bpp: int, prev: np.ndarray | None) -> list[bytes]:
    """Filter + compress scanlines one cache-sized block at a time (`prev`: the raw row above, if any)."""
    height, n = rows.shape
    block = max(1, FILTER_BLOCK_BYTES // max(n, 1))
    out = []
    for y in range(0, height, block):
        above = prev if y == 0 else rows[y - 1]
        out.append(z.compress(_filter_block(rows[y : y + block], method, bpp, above)))
    return out


class PngStreamWriter:
    """A PNG written row band by row band into an open file, hashing what it writes.

    Segment engines: rows are gathered into the same row blocks as png_encode's (counted from the slice's
    top), so the file is byte-identical to the one-shot encoding; IDAT chunks are cut at the same 16 MiB
    boundaries. libdeflate (the `small` preset, one-shot only) streams with zlib-ng at level <= 9 instead,
    so a streamed `small` slice differs in bytes (not in pixels) from a one-shot one."""

    def __init__(self, fh: IO[bytes], width: int, height: int, kind: SliceKind, method: str, engine: str, level: int):
        self.fh, self.kind, self.height = fh, kind, height
        self.method = "none" if (kind.bit_depth or 8) < 8 else method
        self.engine, self.level = resolve_engine(engine, kind), level
        self.bpp = _bytes_per_pixel(kind)
        self.sha = hashing.new_hash()
        self.size = 0
        self.rows_written = 0
        self._prev: np.ndarray | None = None  # the last raw row fed (the row above the next block)
        self._left: np.ndarray | None = None  # raw rows fed but not yet a whole block
        self._left_prev: np.ndarray | None = None
        self._adler = 1
        self._segmented = self.engine in SEGMENT_ENGINES
        self._z = None if self._segmented else _zlib_stream(self.engine, level)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._write(_png_head(width, height, kind))
        if self._segmented:
            self._add(ZLIB_HEADER)

    def _write(self, data: bytes) -> None:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)

    def _add(self, data: bytes) -> None:
        if data:
            self._pending.append(data)
            self._pending_bytes += len(data)
        if self._pending_bytes >= IDAT_CHUNK:
            buf = b"".join(self._pending)
            cut = len(buf) // IDAT_CHUNK * IDAT_CHUNK
            view = memoryview(buf)
            for start in range(0, cut, IDAT_CHUNK):
                self._write(_chunk(b"IDAT", view[start : start + IDAT_CHUNK]))
            rest = bytes(view[cut:])
            self._pending, self._pending_bytes = ([rest] if rest else []), len(rest)

    def _flush_idat(self) -> None:
        if self._pending:
            self._write(_chunk(b"IDAT", b"".join(self._pending)))
            self._pending, self._pending_bytes = [], 0

    def feed(self, array: np.ndarray) -> None:
        rows = _png_rows(array, self.kind)
        self.rows_written += rows.shape[0]
        if not self._segmented:
            self._add(b"".join(_compress_rows(self._z, rows, self.method, self.bpp, self._prev)))
            self._prev = rows[-1].copy()
            return
        block = _block_rows(rows.shape[1])
        jobs: list[tuple[np.ndarray, np.ndarray | None, str, int, str, int]] = []
        start = 0
        if self._left is not None:  # complete the block begun by the previous feed
            start = min(block - self._left.shape[0], rows.shape[0])
            self._left = np.concatenate([self._left, rows[:start]])
            if self._left.shape[0] == block:
                jobs.append((self._left, self._left_prev, self.method, self.bpp, self.engine, self.level))
                self._left = None
        full_end = start + (rows.shape[0] - start) // block * block
        for y in range(start, full_end, block):
            prev = rows[y - 1] if y > 0 else self._prev
            jobs.append((rows[y : y + block], prev, self.method, self.bpp, self.engine, self.level))
        if full_end < rows.shape[0] and self._left is None:
            self._left_prev = rows[full_end - 1].copy() if full_end > 0 else self._prev
            self._left = rows[full_end:].copy()
        for segment, seg_adler, length in ordered_map(_segment_job, jobs):
            self._add(segment)
            self._adler = adler32_combine(self._adler, seg_adler, length)
        self._prev = rows[-1].copy()

    def close(self) -> tuple[int, str]:
        if self.rows_written != self.height:
            raise RuntimeError(f"PNG stream got {self.rows_written} rows, expected {self.height}")
        if self._segmented:
            if self._left is not None:
                segment, seg_adler, length = _segment_job(
                    (self._left, self._left_prev, self.method, self.bpp, self.engine, self.level)
                )
                self._add(segment)
                self._adler = adler32_combine(self._adler, seg_adler, length)
                self._left = None
            self._add(FINAL_EMPTY_BLOCK + struct.pack(">I", self._adler))
        else:
            assert self._z is not None  # not segmented: one zlib stream
            self._add(self._z.flush())
        self._flush_idat()
        self._write(_chunk(b"IEND", b""))
        return self.size, self.sha.hexdigest()


# -- TIFF --------------------------------------------------------------------------------------------------
def stored_values(array: np.ndarray, kind: SliceKind) -> np.ndarray:
    """The pixels as the slice stores them: the same values, in the slice's dtype (1-bit palette -> uint8)."""
    if array.dtype != np.dtype(kind.dtype):
        return array.astype(kind.dtype)
    return array


def tiff_planes(array: np.ndarray, kind: SliceKind) -> np.ndarray:
    """Our (height, width[, samples]) layout -> what tifffile.imwrite takes for the slice's planar config."""
    if kind.tiff_planar == "separate" and array.ndim == 3:
        return np.moveaxis(array, -1, 0)
    return array


def write_tiff(
    target: Any,
    data: Any,
    kind: SliceKind,
    shape: tuple[int, ...] | None = None,
    rowsperstrip: int | None = None,
    tile: tuple[int, int] | None = None,
    extratags: Sequence[tuple[Any, ...]] | None = None,
) -> None:
    """tifffile.imwrite for slices; `data` is an array in tifffile's layout (tiff_planes) or an iterator of
    tiles in tifffile's order (then give its `shape`: (samples, h, w) for planar-separate slices).

    `extratags`: tifffile's (code, dtype, count, value, writeonce) tuples, e.g. a slice's GeoTIFF tags."""
    kwargs: dict[str, Any] = {
        "photometric": kind.tiff_photometric,
        "compression": TIFF_COMPRESSION[0],
        "compressionargs": {"level": TIFF_COMPRESSION[1]},
        "metadata": None,
    }
    if kind.samples > 1:
        kwargs["planarconfig"] = kind.tiff_planar
    if kind.tiff_extrasamples:
        kwargs["extrasamples"] = list(kind.tiff_extrasamples)
    if kind.colormap is not None:
        cmap = np.asarray(kind.colormap, dtype=np.uint16)
        entries = 2 ** (8 * np.dtype(kind.dtype).itemsize)
        if cmap.shape[1] < entries:  # e.g. a 4-bit palette decoded to uint8: unused entries stay black
            cmap = np.pad(cmap, ((0, 0), (0, entries - cmap.shape[1])))
        kwargs["colormap"] = cmap[:, :entries]
    if shape is not None:
        kwargs.update(shape=shape, dtype=np.dtype(kind.dtype))
    if tile is not None:
        kwargs["tile"] = tile
    elif rowsperstrip:
        kwargs["rowsperstrip"] = rowsperstrip
    if extratags:
        kwargs["extratags"] = list(extratags)
    tifffile.imwrite(target, data, **kwargs)


def encode_slice(
    array: np.ndarray,
    kind: SliceKind,
    options: SliceOptions,
    extratags: Sequence[tuple[Any, ...]] | None = None,
    png: PngSettings | None = None,
) -> tuple[bytes, str]:
    """The one entry point for writing a slice held in memory: (file bytes, extension). `extratags` go into
    TIFF slices only (PNG has no place for GeoTIFF tags: those get sidecar files); `png` is the image's
    png_settings(options), computed once by the caller that cuts many slices."""
    if kind.format == "png":
        method, engine, level = png or png_settings(options)
        return png_encode(array, kind, method, engine, level), kind.ext
    array = stored_values(array, kind)
    # modest strips so readers of the slice do not need to decode it whole
    rps = max(1, (1 << 20) // max(1, array.shape[1] * kind.samples * array.dtype.itemsize))
    buf = io.BytesIO()
    write_tiff(buf, tiff_planes(array, kind), kind, rowsperstrip=rps, extratags=extratags)
    return buf.getvalue(), kind.ext

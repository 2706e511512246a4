"""Opening TIFFs: header-only probing (`probe`, which also picks the decoder) and a region reader that decodes
only the strips/tiles a band needs with tifffile, or delegates to a fallback decoder (tiffcodec) it cannot.

Every failure on bad input becomes an ImageError naming the file, classified by tiffcodec.classify_decode_error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import tifffile
from tifffile import COMPRESSION, PHOTOMETRIC, TIFF

from tessq import defaults, storage
from tessq.cut import tiffcodec
from tessq.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    SourceChangedError,
    UnsupportedImageError,
)

JPEG_COMPRESSIONS = frozenset({6, 7, 33007, 34892})
# Decoded segments kept for the next band (a strip straddling two grid rows is decoded once, not twice).
SEGMENT_CACHE_BYTES = 64 * 1024 * 1024
READ_BUFFER_BYTES = 4 * 1024 * 1024  # compressed bytes fetched per file read pass


@dataclass(frozen=True)
class TiffInfo:
    """What the headers say about the image tessq will slice (one page of one series), without pixels."""

    path: str
    width: int
    height: int
    dtype: str  # numpy dtype of the decoded samples ('bool' for 1-bit)
    samples: int  # samples per pixel after interleaving
    photometric: str  # as stored in the file
    decoded_photometric: str  # what the decoded pixels are ('rgb' for YCbCr JPEG, which tifffile converts)
    compression: str
    tiled: bool
    planar: str  # 'contig' | 'separate' (separate is delivered interleaved)
    bits_per_sample: int
    sample_format: str
    extra_samples: tuple[int, ...]
    predictor: int
    tile_shape: tuple[int, int] | None
    rows_per_strip: int | None
    n_segments: int
    n_pages: int
    n_series: int
    series: int
    level: int
    n_levels: int
    page_index: int
    series_kind: str
    series_shape: tuple[int, ...]
    bigtiff: bool
    byteorder: str  # '<' little-endian (II) or '>' big-endian (MM)
    is_geotiff: bool
    has_colormap: bool
    orientation: int
    file_bytes: int
    warnings: tuple[str, ...] = field(default=())
    # who decodes the pixels: "tifffile" (strip/tile at a time), "pillow-libtiff" (whole image, for layouts
    # tifffile refuses; YCbCr comes out as RGB converted by libtiff) or "gdal" (windowed, when installed)
    decoder: str = tiffcodec.TIFFFILE_DECODER

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def raw_bytes(self) -> int:
        """Bytes of the decoded image in memory."""
        return self.width * self.height * self.samples * self.itemsize

    @property
    def row_bytes(self) -> int:
        return self.width * self.samples * self.itemsize


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < 20:
            self.messages.append(record.getMessage()[:300])


@contextlib.contextmanager
def captured_tifffile_warnings() -> Iterator[list[str]]:
    """Collect tifffile's logged warnings (recorded in metadata) instead of spraying them on stderr."""
    logger = logging.getLogger("tifffile")
    handler = _WarningCollector()
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum(value).name).lower()
    except ValueError:
        return f"unknown({value})"


def _open_tifffile(path: Path) -> tifffile.TiffFile:
    """TiffFile or our error: missing file -> SourceChangedError, OSError (EIO...) propagates.

    An s3:// source (URL or storage.RemoteSource) is read through ranged GETs, or from its spooled copy; an
    archive member as a byte range of the archive, its spool or its stream (storage.tiff_target)."""
    target: Any
    target, size, offset = storage.tiff_target(path)
    try:
        if offset is not None:
            return tifffile.TiffFile(target, offset=offset, size=size)
        return tifffile.TiffFile(target)
    except FileNotFoundError as exc:
        raise SourceChangedError(path, "file no longer exists") from exc
    except (tifffile.TiffFileError, ValueError, KeyError, IndexError, struct_error()) as exc:
        if (os.path.getsize(path) if size is None else size) == 0:
            raise CorruptImageError(path, "file is empty (0 bytes)") from exc
        raise CorruptImageError(path, f"not a readable TIFF ({_short(exc)})") from exc
    except (MemoryError, OverflowError, RecursionError) as exc:
        raise CorruptImageError(path, f"TIFF structure is broken ({_short(exc)})") from exc


def struct_error() -> type[Exception]:
    import struct

    return struct.error


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _select_page(tif: tifffile.TiffFile, path: Path, series: int, level: int) -> tuple[Any, dict[str, Any]]:
    """The page tessq slices: series `series`, pyramid level `level`, its first page."""
    try:
        all_series = tif.series
    except Exception:  # tifffile's series parsers are heuristic; fall back to plain pages
        all_series = []
    ctx: dict[str, Any] = {"n_series": len(all_series)}
    if all_series:
        if series >= len(all_series):
            raise UnsupportedImageError(path, f"series {series} requested, file has {len(all_series)}")
        s = all_series[series]
        levels = s.levels
        if level >= len(levels):
            raise UnsupportedImageError(path, f"pyramid level {level} requested, series has {len(levels)}")
        lv = levels[level]
        pages = [p for p in lv.pages if p is not None]
        if not pages:
            raise CorruptImageError(path, f"series {series} has no readable page")
        page = pages[0]
        if not isinstance(page, tifffile.TiffPage):
            page = page.aspage()
        ctx.update(series_kind=str(s.kind).lower(), series_shape=tuple(int(v) for v in s.shape), n_levels=len(levels))
    else:
        if series or level:
            raise UnsupportedImageError(path, "tifffile finds no image series in this file")
        try:
            page = tif.pages.first
        except Exception as exc:
            raise CorruptImageError(path, "no readable image directory (IFD) in the file") from exc
        ctx.update(series_kind="pages", series_shape=tuple(page.shape), n_levels=1)
    return page, ctx


def _page_info(tif: tifffile.TiffFile, page: Any, path: Path, ctx: dict[str, Any], warns: list[str]) -> TiffInfo:
    """Build TiffInfo and refuse what cannot be sliced, from tags only."""
    if page.dtype is None:
        raise UnsupportedImageError(
            path,
            f"sample type not supported (SampleFormat {int(page.sampleformat)}, {page.bitspersample}-bit)",
        )
    if page.imagedepth > 1:
        raise UnsupportedImageError(path, f"volumetric image (ImageDepth {page.imagedepth}) is not supported")
    width, height = int(page.imagewidth), int(page.imagelength)
    if width < 1 or height < 1:
        raise CorruptImageError(path, f"image has no pixels ({width}x{height})")
    planar_separate = page.planarconfig == 2 and page.samplesperpixel > 1
    samples = int(page.samplesperpixel)
    photometric = int(page.photometric)
    compression = int(page.compression)
    decoded_photometric = photometric
    if photometric == 6 and compression in JPEG_COMPRESSIONS and not page.extrasamples and not planar_separate:
        decoded_photometric = 2  # tifffile's JPEG decoder converts YCbCr to RGB
    try:
        n_pages = len(tif.pages)
    except Exception:
        n_pages = 1
    orientation = page.tags.valueof(274, 1)
    return TiffInfo(
        path=str(path),
        width=width,
        height=height,
        dtype=str(np.dtype(page.dtype)),
        samples=samples,
        photometric=_enum_name(PHOTOMETRIC, photometric),
        decoded_photometric=_enum_name(PHOTOMETRIC, decoded_photometric),
        compression=_enum_name(COMPRESSION, compression),
        tiled=bool(page.is_tiled),
        planar="separate" if planar_separate else "contig",
        bits_per_sample=int(page.bitspersample),
        sample_format=_enum_name(tifffile.SAMPLEFORMAT, int(page.sampleformat)),
        extra_samples=tuple(int(v) for v in page.extrasamples),
        predictor=int(page.predictor),
        tile_shape=(int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None,
        rows_per_strip=None if page.is_tiled else int(page.rowsperstrip),
        n_segments=len(page.dataoffsets),
        n_pages=n_pages,
        n_series=ctx["n_series"],
        series=ctx.get("series", 0),
        level=ctx.get("level", 0),
        n_levels=ctx["n_levels"],
        page_index=int(page.index) if isinstance(page.index, int) else int(page.index[0]),
        series_kind=ctx["series_kind"],
        series_shape=ctx["series_shape"],
        bigtiff=bool(tif.is_bigtiff),
        byteorder=tif.byteorder,
        is_geotiff=bool(page.is_geotiff),
        has_colormap=page.colormap is not None if photometric == 3 else False,
        orientation=int(orientation) if isinstance(orientation, int) else 1,
        file_bytes=int(tif.filehandle.size),
        warnings=tuple(warns),
    )


def _check_layout(page: Any, info: TiffInfo, path: Path, memory_budget: int) -> TiffInfo:
    """Refuse broken layouts and sizes that would be a decompression bomb, whoever decodes the pixels.

    Offset/byte-count arrays longer than the layout needs are accepted (tifffile and libtiff ignore the
    extras; only the first `expected` are used); shorter ones are corrupt."""
    compression = int(page.compression)
    pixels = info.width * info.height
    if pixels > defaults.MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            path,
            f"header declares {info.width}x{info.height} = {pixels:,} px, limit is {defaults.MAX_IMAGE_PIXELS:,}",
        )
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) == 0 or len(counts) == 0:
        raise CorruptImageError(path, "no strip or tile offsets (image data missing)")
    expected = _expected_segments(page)
    if len(offsets) < expected or len(counts) < expected:
        raise CorruptImageError(
            path, f"has {len(offsets)} offsets / {len(counts)} byte counts, the layout needs {expected}"
        )
    if len(offsets) > expected or len(counts) > expected:
        note = (
            f"{len(offsets)} offsets / {len(counts)} byte counts where the layout needs {expected}:"
            f" the first {expected} are used, the rest ignored"
        )
        info = replace(info, n_segments=expected, warnings=(*info.warnings, note))
    offsets, counts = offsets[:expected], counts[:expected]
    _check_segment_count(info, path, memory_budget, expected)
    _check_shared_segments(info, path, offsets, counts)
    ends = np.asarray(offsets, dtype=np.uint64) + np.asarray(counts, dtype=np.uint64)
    past = np.nonzero(ends > info.file_bytes)[0]
    if len(past) and compression == 6:
        # old-style JPEG: JPEGInterchangeFormatLength is often wrong and libtiff does not rely on it
        note = f"{len(past)} old-style JPEG segment length(s) run past the end of the file: read up to it"
        info = replace(info, warnings=(*info.warnings, note))
    elif len(past):
        kind = "tile" if info.tiled else "strip"
        raise CorruptImageError(
            path,
            f"truncated: {len(past)} {kind}(s) end past the end of the file ({info.file_bytes:,} bytes),"
            f" first is {kind} {int(past[0])}",
        )
    if compression == 1 and not page.is_subsampled:
        # uncompressed data must be in the file in full: declared size against the stored byte counts
        stored = int(np.sum(np.asarray(counts, dtype=np.uint64)))
        planes = info.samples if info.planar == "separate" else 1
        per_row = math.ceil(info.width * (info.samples // planes) * info.bits_per_sample / 8)
        need = planes * info.height * per_row
        if stored < need:
            raise CorruptImageError(path, f"uncompressed image needs {need:,} bytes, its strips hold {stored:,}")
    elif compression != 1 and page.dtype is not None:
        # a compressed strip/tile is decoded whole: refuse one whose decoded size alone breaks the budget
        chunk = math.prod(page.chunks) * np.dtype(page.dtype).itemsize
        if chunk > memory_budget:
            raise ImageTooLargeError(
                path,
                f"one compressed strip/tile decodes to {chunk:,} bytes, over the memory budget {memory_budget:,}",
            )
    return info


# What each strip/tile costs the reader before any pixel is decoded: tifffile's offset and byte-count entries
# and tessq's segment record (measured: ~300 bytes), and a decode call of its own (~40 us).
SEGMENT_BOOKKEEPING_BYTES = 320
SEGMENT_COUNT_FLOOR = 100_000  # never refused for their count below this many strips/tiles (any budget)
SHARED_CHECK_MIN = 10_000  # from this many strips/tiles, data shared between them is looked for
SHARED_MAX_FRACTION = 0.01  # more than this share of non-empty segments pointing at another's data: crafted


def _check_segment_count(info: TiffInfo, path: Path, memory_budget: int, n: int) -> None:
    """Refuse a layout whose strips/tiles are so many that their bookkeeping alone breaks the memory budget
    (half of it; the pixel buffers need the rest): the issue's bomb, 46000x46000 in 16x16 tiles, has 8.27M
    tiles, 2.6 GB of bookkeeping and ~6 min of per-tile calls. Real files (256/512 tiles, strips of a few
    rows) stay far below: a 10 Gpx image in 128x128 tiles has 610,000."""
    need = n * SEGMENT_BOOKKEEPING_BYTES
    if n > SEGMENT_COUNT_FLOOR and need > memory_budget // 2:
        if info.tiled and info.tile_shape:
            what = f"tiles of {'x'.join(str(v) for v in info.tile_shape)} px"
        else:
            what = f"strips of {info.rows_per_strip} row(s)"
        raise ImageTooLargeError(
            path,
            f"{n:,} {what}: their bookkeeping alone needs ~{need / 2**20:,.0f} MiB, over half the"
            f" memory budget ({memory_budget / 2**20:,.0f} MiB); rewrite it with larger tiles (e.g. gdal_translate"
            " -co TILED=YES -co BLOCKXSIZE=256 -co BLOCKYSIZE=256)",
        )


def _check_shared_segments(info: TiffInfo, path: Path, offsets: Any, counts: Any) -> None:
    """Refuse many strips/tiles pointing at the same bytes: writers give every segment its own data (sparse
    files write offset 0 / byte count 0 for empty tiles: those are not counted), so a file where more than 1%
    of 10,000+ segments share another's data was crafted to decode far more than it stores."""
    if len(offsets) < SHARED_CHECK_MIN:
        return
    offs = np.asarray(offsets, dtype=np.uint64)
    cnts = np.asarray(counts, dtype=np.uint64)
    stored = offs[(offs > 0) & (cnts > 0)]
    if len(stored) < SHARED_CHECK_MIN:
        return
    shared = len(stored) - len(np.unique(stored))
    if shared > SHARED_MAX_FRACTION * len(stored):
        kind = "tiles" if info.tiled else "strips"
        raise ImageTooLargeError(
            path,
            f"{shared:,} of {len(stored):,} {kind} point at data another one already uses: a crafted file"
            " (decompression bomb), refused",
        )


def _expected_segments(page: Any) -> int:
    """Strips/tiles the layout needs (planes x rows x columns), as tifffile computes it."""
    return math.prod(page.chunked)


def _tifffile_refusal(page: Any, info: TiffInfo, path: Path) -> ImageError | None:
    """Why tifffile cannot decode this page, or None when it can: from tags, its decoder set-up, and for the
    layouts its support is partial for (old-style JPEG, planar-separate JPEG) a trial decode of one segment."""
    compression = int(page.compression)
    jpeg = compression in JPEG_COMPRESSIONS
    if compression != 1 and compression not in TIFF.DECOMPRESSORS:
        return UnsupportedImageError(path, f"compression {info.compression} is not supported by the decoders")
    if page.is_subsampled and page.photometric != 6 and (not jpeg or info.planar == "separate"):
        # tifffile's own message here says "without JPEG compression", also for JPEG: give the true one
        return UnsupportedImageError(
            path,
            f"tifffile refuses {'planar-separate ' if info.planar == 'separate' else ''}{info.photometric}"
            f" {info.compression} data that carries a YCbCrSubSampling tag"
            " (meaningless outside YCbCr)",
        )
    if page.is_subsampled and page.photometric == 6 and not jpeg:
        return UnsupportedImageError(
            path,
            f"chroma-subsampled YCbCr ({_subsampling(page)}) with {info.compression} compression is not"
            " supported by tifffile (only JPEG-compressed YCbCr may be subsampled there)",
        )
    if page.is_subsampled and page.photometric == 6 and info.planar == "separate":
        return UnsupportedImageError(
            path,
            f"planar-separate chroma-subsampled YCbCr ({_subsampling(page)}) {info.compression} is not"
            " supported by tifffile",
        )
    try:
        page.keyframe.init_decode()
    except Exception as exc:  # e.g. NotImplementedError "unpredicting float24 not supported"
        return tiffcodec.decode_error(path, exc, f"{info.compression} {info.sample_format} {info.bits_per_sample}-bit")
    if compression == 6 or (jpeg and info.planar == "separate"):
        return _trial_decode(page, info, path)
    return None


def _subsampling(page: Any) -> str:
    h, v = page.subsampling or (2, 2)
    names = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (4, 1): "4:1:1"}
    return f"{names.get((h, v), 'subsampling')} {h}x{v}"


def _trial_decode(page: Any, info: TiffInfo, path: Path) -> ImageError | None:
    """Decode the first stored segment with tifffile: None if that works, else the classified failure."""
    kf = page.keyframe
    expected = _expected_segments(page)
    for index in range(expected):
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        if offset and count:
            break
    else:
        return None  # no stored segment: nothing to decode, tifffile fills nodata
    try:
        fh = page.parent.filehandle
        with fh.lock:
            fh.seek(offset)
            data = fh.read(count)
        kf.decode(data, index, jpegtables=page.jpegtables, jpegheader=kf.jpegheader, _fullsize=False)
    except OSError:
        raise
    except Exception as exc:
        kind = "tile" if info.tiled else "strip"
        return tiffcodec.decode_error(path, exc, f"{kind} {index}")
    return None


# classes of page tifffile refuses and the fallback decoders are trusted with (peers decode them identically)
def _fallback_class(page: Any, info: TiffInfo) -> str | None:
    compression = int(page.compression)
    if compression == 6:
        return "old-style JPEG"
    if page.is_subsampled:
        return "chroma-subsampled YCbCr" if page.photometric == 6 else "stray YCbCrSubSampling tag"
    if compression in JPEG_COMPRESSIONS and info.planar == "separate":
        return "planar-separate JPEG"
    if info.sample_format == "ieeefp" and info.bits_per_sample == 24:
        return "24-bit float"
    return None


def _fallback_decoders(page: Any, info: TiffInfo, cls: str) -> tuple[str, ...]:
    """Fallbacks worth trying, in order, for a page tifffile refuses.

    Pillow/libtiff first (a tessq dependency); GDAL only for 24-bit floats, the one class Pillow has no mode
    for. Planar-separate YCbCr gets none: Pillow fails on it, and GDAL alone gives no second opinion."""
    if page.photometric == 6 and info.planar == "separate":
        return ()
    if cls == "24-bit float":
        return (tiffcodec.GDAL_DECODER,)
    return (tiffcodec.PILLOW_DECODER,)


def _fallback_target(path: Any) -> Any:
    """What a fallback decoder opens: the local path, or the remote source's spool/ranged reader."""
    return storage.fallback_target(path)


def _choose_decoder(page: Any, info: TiffInfo, path: Any, memory_budget: int) -> TiffInfo:
    """tifffile where it decodes the page, else a fallback that does (recorded in info.decoder), else the
    true reason why not.

    Old-style JPEG goes to libtiff first even where tifffile decodes it: the format is libtiff's own, the peers
    (GDAL, Pillow) both read it through libtiff, and tifffile's plain-JPEG reading of it differs from theirs
    (chroma upsampling; it also trusts JPEGInterchangeFormatLength, which writers got wrong)."""
    ojpeg = int(page.compression) == 6
    refusal = None if ojpeg else _tifffile_refusal(page, info, path)
    if refusal is None and not ojpeg:
        return info
    cls = _fallback_class(page, info)
    if cls is None:
        assert refusal is not None
        raise refusal
    chosen, tried, too_large = _try_fallbacks(page, info, path, memory_budget, cls)
    if chosen is not None:
        if refusal is not None:
            note = f"tifffile cannot decode this page ({refusal.reason}); decoded by {chosen.decoder}"
        else:
            note = f"old-style JPEG: decoded by {chosen.decoder} as GDAL and Pillow do (tifffile's differs)"
        if chosen.decoder == tiffcodec.GDAL_DECODER:
            note += f" {_gdal_version()}, region by region"
        else:
            note += ", whole image at once"
        if page.photometric == 6:
            note += " (YCbCr converted to RGB by libtiff)"
        return replace(chosen, warnings=(*chosen.warnings, note))
    if refusal is None:
        refusal = _tifffile_refusal(page, info, path)
        if refusal is None:  # tifffile decodes it, libtiff could not be used: say the pixels may differ
            note = (
                f"old-style JPEG decoded by tifffile, not libtiff ({'; '.join(tried)});"
                " pixels may differ from what GDAL and Pillow give"
            )
            return replace(info, warnings=(*info.warnings, note))
    if too_large is not None:
        raise ImageTooLargeError(path, f"{refusal.reason}; {'; '.join(tried)}")
    raise type(refusal)(path, f"{refusal.reason}; no fallback decodes this {cls} ({'; '.join(tried)})")


def _try_fallbacks(
    page: Any, info: TiffInfo, path: Any, memory_budget: int, cls: str
) -> tuple[TiffInfo | None, list[str], ImageTooLargeError | None]:
    """The first fallback that decodes this page exactly as stored (info with its decoder), else the reasons."""
    if not isinstance(page.index, int):
        return None, ["the fallback decoders read top-level pages only"], None
    if info.orientation not in (0, 1):
        # libtiff's RGBA interface re-orients to top-left, tessq slices pixels as stored: they would differ
        return None, [f"no fallback decoder for orientation {info.orientation}"], None
    if page.photometric == 6 and page.extrasamples:
        return None, ["YCbCr with extra samples has no exact fallback"], None
    # YCbCr comes out of libtiff as RGB; every other photometric keeps its samples
    want_samples = 3 if page.photometric == 6 else info.samples
    decoders = _fallback_decoders(page, info, cls)
    if not decoders:
        return None, ["Pillow/libtiff cannot read planar-separate YCbCr (libtiff's RGBA interface is contiguous)"], None
    tried: list[str] = []
    too_large: ImageTooLargeError | None = None
    target = _fallback_target(path)
    for decoder in decoders:
        try:
            if decoder == tiffcodec.PILLOW_DECODER:
                dtype, samples, photometric = tiffcodec.pillow_plan(
                    target, info.page_index, info.width, info.height, memory_budget
                )
            else:
                dtype, samples, photometric, _ = tiffcodec.gdal_plan(target, info.page_index, info.width, info.height)
        except ImageTooLargeError as exc:
            too_large = too_large or exc
            tried.append(f"{decoder}: {exc.reason}")
            continue
        except UnsupportedImageError as exc:
            tried.append(f"{decoder}: {exc.reason}")
            continue
        if dtype != info.dtype or samples != want_samples:
            tried.append(f"{decoder} decodes {dtype} x{samples}, expected {info.dtype} x{want_samples}")
            continue
        if page.photometric != 6:
            photometric = info.decoded_photometric  # only YCbCr changes meaning (libtiff converts it to RGB)
        return replace(info, decoder=decoder, dtype=dtype, samples=samples, decoded_photometric=photometric), [], None
    return None, tried, too_large


def _gdal_version() -> str:
    try:
        import rasterio

        return str(rasterio.__gdal_version__)
    except ImportError:
        return "?"


def _header_failure(path: Any, exc: Exception) -> ImageError:
    """A tifffile failure while parsing tags: classified, so a codec problem is never blamed on the header."""
    kind, reason = tiffcodec.classify_decode_error(exc, "the page")
    if kind is CorruptImageError and not isinstance(exc, tifffile.TiffFileError | NotImplementedError):
        reason = f"TIFF header is broken ({_short(exc)})"
    return kind(path, reason)


def _as_path(path: str | Path | storage.Source) -> Path:
    """A local name as a Path; an S3 URL or a source object (storage.readable) stands in for one: this module
    opens it only through storage.tiff_target/fallback_target and names it with str()."""
    return cast(Path, storage.readable(path))


def probe(path: str | Path, series: int = 0, level: int = 0) -> TiffInfo:
    """Header-only description of the image tessq would slice; raises our ImageError types for bad input.

    Also decides who decodes it (info.decoder); for old-style and planar-separate JPEG that costs one trial
    segment decode, for a fallback a Pillow/GDAL header parse."""
    path = _as_path(path)
    with captured_tifffile_warnings() as warns:
        tif = _open_tifffile(path)
        try:
            page, ctx = _select_page(tif, path, series, level)
            ctx.update(series=series, level=level)
            info = _page_info(tif, page, path, ctx, warns)
            info = _check_layout(page, info, path, defaults.MEMORY_BUDGET_BYTES)
            return _choose_decoder(page, info, path, defaults.MEMORY_BUDGET_BYTES)
        except ImageError:
            raise
        except OSError:
            raise
        except Exception as exc:  # any tifffile parse error on a hostile header
            raise _header_failure(path, exc) from exc
        finally:
            tif.close()


@dataclass(frozen=True)
class _Segment:
    index: int
    plane: int
    y: int
    x: int
    h: int
    w: int


class RegionReader:
    """Reads pixel regions of one page, decoding only the strips/tiles that touch each region.

    Arrays come back interleaved (height, width[, samples]) in native byte order, with exactly the values
    tifffile's page.asarray() gives (planar-separate transposed, YCbCr JPEG as RGB, MINISWHITE as stored,
    palette as indices). Where probe chose a fallback (info.decoder), reads are served by it instead: exactly
    the values Pillow/libtiff (whole image, decoded on first read) or GDAL (by region) give.
    """

    def __init__(
        self, path: str | Path | storage.Source, series: int = 0, level: int = 0, memory_budget: int | None = None
    ):
        self.path = _as_path(path)
        self.memory_budget = memory_budget or defaults.MEMORY_BUDGET_BYTES
        self._fallback: tiffcodec.PillowReader | tiffcodec.GdalReader | None = None
        self._fallback_rows = 1
        with captured_tifffile_warnings() as warns:
            self._tif = _open_tifffile(self.path)
            try:
                self.page, ctx = _select_page(self._tif, self.path, series, level)
                ctx.update(series=series, level=level)
                self.info = _page_info(self._tif, self.page, self.path, ctx, warns)
                self.info = _check_layout(self.page, self.info, self.path, self.memory_budget)
                self.info = _choose_decoder(self.page, self.info, self.path, self.memory_budget)
                if self.info.decoder == tiffcodec.TIFFFILE_DECODER:
                    self._segments = self._layout()
                    self.page.keyframe.init_decode()
                else:
                    self._segments = []
                    self._fallback = self._open_fallback()
            except ImageError:
                self._tif.close()
                raise
            except OSError:
                self._tif.close()
                raise
            except Exception as exc:
                self._tif.close()
                raise _header_failure(self.path, exc) from exc
        self.warnings: list[str] = list(self.info.warnings)
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._cache_bytes = 0
        self._whole: np.ndarray | None = None
        self.segments_decoded = 0

    def _open_fallback(self) -> tiffcodec.PillowReader | tiffcodec.GdalReader:
        info, target = self.info, _fallback_target(self.path)
        if info.decoder == tiffcodec.PILLOW_DECODER:
            # whole image in memory: band boundaries cost nothing
            return tiffcodec.PillowReader(self.path, target, info.page_index, info.dtype, info.samples)
        _, _, _, self._fallback_rows = tiffcodec.gdal_plan(target, info.page_index, info.width, info.height)
        return tiffcodec.GdalReader(target, info.page_index, info.dtype, info.samples)

    # -- layout -------------------------------------------------------------------------------------
    def _layout(self) -> list[_Segment]:
        """Where every strip/tile lands in the image, with the same index arithmetic as tifffile."""
        info = self.info
        planes = info.samples if info.planar == "separate" else 1
        segs = []
        if info.tiled:
            th, tw = info.tile_shape or (1, 1)
            gy, gx = math.ceil(info.height / th), math.ceil(info.width / tw)
            for i in range(info.n_segments):  # extra offsets past the layout are ignored (as tifffile does)
                plane, r, c = i // (gy * gx), (i // gx) % gy, i % gx
                y, x = r * th, c * tw
                segs.append(_Segment(i, plane, y, x, min(th, info.height - y), min(tw, info.width - x)))
        else:
            rps = min(info.rows_per_strip or info.height, info.height)
            gy = math.ceil(info.height / rps)
            for i in range(info.n_segments):
                plane, y = i // gy, (i % gy) * rps
                segs.append(_Segment(i, plane, y, 0, min(rps, info.height - y), info.width))
        if planes and len(segs) != planes * (len(segs) // max(planes, 1)):
            raise CorruptImageError(self.path, "strip/tile count does not match the planes")
        return segs

    @property
    def band_alignment(self) -> int:
        """Rows per strip/tile row: bands aligned to it decode every segment once."""
        if self._fallback is not None:
            return self._fallback_rows
        if self.info.tiled and self.info.tile_shape:
            return self.info.tile_shape[0]
        return max(1, min(self.info.rows_per_strip or 1, self.info.height))

    # -- reading ------------------------------------------------------------------------------------
    def _needs_whole_page(self) -> bool:
        """NDPI-style single JPEG strips are only decodable whole (tifffile special-cases them)."""
        kf = self.page.keyframe
        return kf.jpegheader is not None and 273 in self.page.tags and self.page.is_tiled

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """Pixels of rows y0:y1, columns x0:x1, interleaved, native byte order."""
        info = self.info
        x1 = info.width if x1 is None else x1
        if not (0 <= y0 < y1 <= info.height and 0 <= x0 < x1 <= info.width):
            raise ValueError(f"region {x0},{y0},{x1},{y1} outside {info.width}x{info.height}")
        try:
            if self._fallback is not None:
                return self._fallback.read(y0, y1, x0, x1)
            if self._needs_whole_page():
                return self._read_whole()[y0:y1, x0:x1].copy()
            return self._read_segments(y0, y1, x0, x1)
        except ImageError:
            raise
        except Exception as exc:  # codec errors: truncated/garbled strips, unsupported variants
            if tiffcodec.is_io_error(exc):
                raise
            raise tiffcodec.decode_error(self.path, exc, f"rows {y0}-{y1}") from exc

    def _read_whole(self) -> np.ndarray:
        if self._whole is None:
            if self.info.raw_bytes > self.memory_budget:
                raise UnsupportedImageError(
                    self.path,
                    f"this layout ({self.info.compression} single-strip) decodes only whole; "
                    f"{self.info.raw_bytes:,} bytes exceed the memory budget {self.memory_budget:,}",
                )
            try:
                self._whole = _interleave(self.page.asarray(maxworkers=1), self.info)
            except ImageError:
                raise
            except Exception as exc:
                if tiffcodec.is_io_error(exc):
                    raise
                raise tiffcodec.decode_error(self.path, exc, "the single-strip image") from exc
        return self._whole

    def _read_segments(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        info, page = self.info, self.page
        dtype = np.dtype(info.dtype)
        shape: tuple[int, ...] = (y1 - y0, x1 - x0) + ((info.samples,) if info.samples > 1 else ())
        out = np.empty(shape, dtype=dtype)
        wanted = [s for s in self._segments if s.y < y1 and s.y + s.h > y0 and s.x < x1 and s.x + s.w > x0]
        todo = [s for s in wanted if s.index not in self._cache]
        kf = page.keyframe
        decodeargs: dict[str, Any] = {"_fullsize": False}
        if kf.compression in JPEG_COMPRESSIONS:
            decodeargs["jpegtables"] = page.jpegtables
            decodeargs["jpegheader"] = kf.jpegheader
        by_index = {s.index: s for s in wanted}
        for s in wanted:
            if s.index in self._cache:
                self._paste(out, s, self._cache[s.index], y0, y1, x0, x1)
        if todo and self._raw_rows:
            for s in todo:
                part, seg = self._read_rows(s, max(y0, s.y), min(y1, s.y + s.h))
                self._paste(out, part, seg, y0, y1, x0, x1)
            return out
        if todo:
            from tessq.cut.encode import ordered_map

            fh = self._tif.filehandle
            offsets, counts = page.dataoffsets, page.databytecounts

            def decode(item: tuple[bytes, int]) -> tuple[int, np.ndarray]:
                data, index = item
                try:
                    seg, _, _ = kf.decode(data, index, **decodeargs)
                except Exception as exc:  # name the strip/tile and the codec's own reason
                    if tiffcodec.is_io_error(exc):
                        raise
                    kind = "tile" if info.tiled else "strip"
                    raise tiffcodec.decode_error(self.path, exc, f"{kind} {index}") from exc
                return index, seg

            raw: Iterable[Any] = fh.read_segments(
                [offsets[s.index] for s in todo],
                [counts[s.index] for s in todo],
                indices=[s.index for s in todo],
                sort=True,
                flat=True,
                buffersize=READ_BUFFER_BYTES,
            )
            # segments are read in file order here and decoded by the codec thread pool (imagecodecs releases
            # the GIL), a few in flight; each is pasted as soon as it is decoded: the band is never held twice
            decoded = ordered_map(decode, raw) if len(todo) > 1 and kf.compression != 1 else map(decode, raw)
            for index, seg in decoded:
                self.segments_decoded += 1
                s = by_index[index]
                self._paste(out, s, seg, y0, y1, x0, x1)
                if s.y + s.h > y1:  # still needed by the next band
                    self._remember(index, seg)
        return out

    @property
    def _raw_rows(self) -> bool:
        """Uncompressed, byte-aligned samples: rows can be read straight from the file, no strip decode."""
        kf, info = self.page.keyframe, self.info
        return (
            kf.compression == 1
            and kf.predictor == 1
            and kf.fillorder == 1
            and info.dtype != "bool"
            and info.bits_per_sample == 8 * info.itemsize
            and not kf.is_subsampled
        )

    def _read_rows(self, s: _Segment, ya: int, yb: int) -> tuple[_Segment, np.ndarray | None]:
        """Rows ya:yb of one uncompressed strip/tile, read directly (a 600 MB single strip costs a band)."""
        page, info = self.page, self.info
        offset, count = int(page.dataoffsets[s.index]), int(page.databytecounts[s.index])
        if count == 0 or offset == 0:
            return _Segment(s.index, s.plane, ya, s.x, yb - ya, s.w), None
        spp = 1 if info.planar == "separate" else info.samples
        seg_w = info.tile_shape[1] if info.tiled and info.tile_shape else info.width
        row_bytes = seg_w * spp * info.itemsize
        fh = self._tif.filehandle
        with fh.lock:
            fh.seek(offset + (ya - s.y) * row_bytes)
            data = fh.read((yb - ya) * row_bytes)
        if len(data) != (yb - ya) * row_bytes:
            raise CorruptImageError(self.path, f"strip/tile {s.index} is truncated")
        dtype = np.dtype(info.dtype).newbyteorder(">" if info.byteorder == ">" else "<")  # TIFF: II or MM
        arr = np.frombuffer(data, dtype=dtype).reshape(1, yb - ya, seg_w, spp)
        self.segments_decoded += 1
        return _Segment(s.index, s.plane, ya, s.x, yb - ya, s.w), arr

    def _paste(self, out: np.ndarray, s: _Segment, seg: np.ndarray | None, y0: int, y1: int, x0: int, x1: int) -> None:
        info = self.info
        ya, yb = max(y0, s.y), min(y1, s.y + s.h)
        xa, xb = max(x0, s.x), min(x1, s.x + s.w)
        if seg is None:
            value: Any = self.page.keyframe.nodata
            src = None
        else:
            # seg is (depth, length, width, contig samples); clip like tifffile's asarray
            src = seg[0, ya - s.y : yb - s.y, xa - s.x : xb - s.x]
        dst_rows, dst_cols = slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)
        if info.planar == "separate":
            target = out[dst_rows, dst_cols, s.plane]
            if src is None:
                target[...] = value
            else:
                target[...] = src[..., 0]
        elif info.samples > 1:
            out[dst_rows, dst_cols, :] = value if src is None else src
        else:
            out[dst_rows, dst_cols] = value if src is None else src[..., 0]

    def _remember(self, index: int, seg: np.ndarray | None) -> None:
        size = 0 if seg is None else seg.nbytes
        if size > SEGMENT_CACHE_BYTES:
            return
        self._cache[index] = seg
        self._cache_bytes += size
        while self._cache_bytes > SEGMENT_CACHE_BYTES and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= 0 if old is None else old.nbytes

    def forget_above(self, y: int) -> None:
        """Drop cached segments that end at or above row y (bands only move down)."""
        for index in [i for i in self._cache if self._segments[i].y + self._segments[i].h <= y]:
            seg = self._cache.pop(index)
            self._cache_bytes -= 0 if seg is None else seg.nbytes

    def close(self) -> None:
        self._cache.clear()
        self._whole = None
        if self._fallback is not None:
            self._fallback.close()
        self._tif.close()

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- extras for metadata --------------------------------------------------------------------------
    def colormap(self) -> np.ndarray | None:
        if self.info.photometric != "palette":
            return None
        cmap = self.page.colormap
        return None if cmap is None else np.asarray(cmap)


def _interleave(array: np.ndarray, info: TiffInfo) -> np.ndarray:
    """tifffile's page.asarray() layout -> ours: (S, Y, X) planar-separate becomes (Y, X, S); native order."""
    if info.planar == "separate" and array.ndim == 3 and array.shape[0] == info.samples:
        array = np.moveaxis(array, 0, -1)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


def reference_pixels(path: str | Path, series: int = 0, level: int = 0) -> np.ndarray:
    """The whole chosen page as tifffile's own page.asarray() decodes it, in our layout (tests/verify)."""
    with captured_tifffile_warnings(), tifffile.TiffFile(path) as tif:
        page, ctx = _select_page(tif, Path(path), series, level)
        info = _page_info(tif, page, Path(path), {**ctx, "series": series, "level": level}, [])
        return _interleave(page.asarray(maxworkers=1), info)

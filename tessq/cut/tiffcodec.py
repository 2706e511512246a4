"""Decode failures and fallback decoders: the one map from tifffile/imagecodecs/Pillow exceptions to tessq's
error categories, and whole-image (Pillow/libtiff) or windowed (GDAL) readers for layouts tifffile refuses.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from tessq.errors import CorruptImageError, ImageError, ImageTooLargeError, UnsupportedImageError

PILLOW_DECODER = "pillow-libtiff"
GDAL_DECODER = "gdal"
TIFFFILE_DECODER = "tifffile"

# Peak bytes per pixel of Pillow's own image memory for a mode, beside the numpy copy we hand out: Pillow
# stores 3- and 4-band 8-bit images as 32-bit pixels; libtiff's RGBA decoding adds one strip/tile buffer only.
_PILLOW_BYTES_PER_PIXEL = {"L": 1, "RGB": 4, "RGBA": 4, "CMYK": 4}
# Pillow modes we hand on, and what their numpy view is: (dtype, samples, decoded photometric)
_PILLOW_MODES: dict[str, tuple[str, int, str]] = {
    "L": ("uint8", 1, "minisblack"),
    "RGB": ("uint8", 3, "rgb"),
    "RGBA": ("uint8", 4, "rgb"),
    "CMYK": ("uint8", 4, "separated"),
}


@functools.cache
def _codec_errors() -> tuple[type[BaseException], ...]:
    """imagecodecs' exception classes; looked up on first use, because each getattr imports a codec module
    (70 ms at start-up for every tessq command otherwise)."""
    return tuple(
        cls
        for name in dir(imagecodecs)
        if name.endswith("Error") and name != "DelayedImportError"
        for cls in [getattr(imagecodecs, name)]
        if isinstance(cls, type) and issubclass(cls, Exception)
    )


# messages that name a missing feature, not damaged data. libjpeg says "Unsupported marker type" for garbage,
# so only its feature messages ("Unsupported JPEG process", "... color conversion", "... data precision") count
_UNSUPPORTED_PHRASES = (
    "not supported",
    "not implemented",
    "not available",
    "unsupported jpeg process",
    "unsupported color conversion",
    "unsupported jpeg data precision",
    # tifffile asks libjpeg for RGB from the one-component planes of planar-separate RGB JPEG (no JFIF marker)
    "bogus jpeg colorspace",
)


def classify_decode_error(exc: BaseException, what: str = "pixel data") -> tuple[type[ImageError], str]:
    """The tessq category and a true reason for an exception raised while parsing or decoding a TIFF.

    `what` names the part being decoded ("strip 3", "tile 0", "the image"); the reason never blames the
    header for a codec failure, nor calls a missing feature corruption."""
    text = _short(exc)
    lowered = text.lower()
    if isinstance(exc, ImageError):
        return type(exc), exc.reason
    if isinstance(exc, MemoryError):
        return ImageTooLargeError, f"decoding {what} needs more memory than available ({text})"
    if isinstance(exc, imagecodecs.DelayedImportError | ImportError):
        return UnsupportedImageError, f"the codec for {what} is not available in this installation ({text})"
    if isinstance(exc, NotImplementedError):
        return UnsupportedImageError, f"{what}: {text}"
    if isinstance(exc, _codec_errors()):
        codec = type(exc).__name__.removesuffix("Error").lower()
        if codec == "imcd":  # imagecodecs' own codecs (LZW, PackBits...) share one class: name it from the call
            found = re.search(r"imcd_(\w+?)_(?:de|en)code", text)
            codec = found.group(1) if found else codec
        if any(p in lowered for p in _UNSUPPORTED_PHRASES):
            return UnsupportedImageError, f"{what}: {codec} codec: {text}"
        return CorruptImageError, f"cannot decode {what} ({codec} codec: {text})"
    if isinstance(exc, ValueError) and any(p in lowered for p in _UNSUPPORTED_PHRASES):
        return UnsupportedImageError, f"{what}: {text}"  # tifffile: "<COMPRESSION.X> not supported"
    if isinstance(exc, tifffile.TiffFileError):
        return CorruptImageError, f"cannot decode {what} ({text})"
    if _is_pillow_error(exc):
        if "decompression bomb" in lowered or "exceeds limit" in lowered:
            return ImageTooLargeError, f"{what}: {text}"
        return CorruptImageError, f"cannot decode {what} (Pillow/libtiff: {text})"
    if isinstance(exc, OverflowError | RecursionError):
        return CorruptImageError, f"TIFF structure is broken ({text})"
    # anything else (ValueError, IndexError, struct.error, zlib.error...) is data that does not parse
    return CorruptImageError, f"cannot decode {what} ({type(exc).__name__}: {text})"


def decode_error(path: Any, exc: BaseException, what: str = "pixel data") -> ImageError:
    """classify_decode_error as a ready-to-raise ImageError naming the file."""
    if isinstance(exc, ImageError):
        return exc
    kind, reason = classify_decode_error(exc, what)
    return kind(path, reason)


def is_io_error(exc: BaseException) -> bool:
    """A real I/O failure (disk, network) that must propagate, unlike Pillow's errno-less decode OSErrors."""
    return isinstance(exc, OSError) and not _is_pillow_error(exc)


def _is_pillow_error(exc: BaseException) -> bool:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError | Image.DecompressionBombError):
        return True
    # Pillow reports decode failures ("decoder error -2", "image file is truncated") as bare OSErrors
    return type(exc) is OSError and exc.errno is None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- Pillow/libtiff ---------------------------------------------------------------------------------------
# Pillow consults the module global READ_LIBTIFF while it parses a frame: we set it under a lock so that
# uncompressed subsampled YCbCr also goes through libtiff (Pillow's own raw decoder would misread it).
_LIBTIFF_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_libtiff() -> Any:
    from PIL import TiffImagePlugin

    with _LIBTIFF_LOCK:
        old = TiffImagePlugin.READ_LIBTIFF
        TiffImagePlugin.READ_LIBTIFF = True
        try:
            yield
        finally:
            TiffImagePlugin.READ_LIBTIFF = old


def _open_pillow(target: Any, page_index: int) -> Any:
    from PIL import Image

    with _pillow_libtiff():
        im = Image.open(target)
        try:
            if page_index:
                im.seek(page_index)
        except BaseException:
            im.close()
            raise
    return im


def pillow_plan(target: Any, page_index: int, width: int, height: int, memory_budget: int) -> tuple[str, int, str]:
    """(dtype, samples, decoded photometric) Pillow/libtiff would decode this page to, from its headers only.

    Raises UnsupportedImageError when Pillow would not decode it through libtiff into a mode we keep exactly,
    ImageTooLargeError when the whole-image decode would break the memory budget."""
    try:
        im = _open_pillow(target, page_index)
    except Exception as exc:
        if is_io_error(exc):
            raise
        raise UnsupportedImageError("", f"Pillow/libtiff cannot open it either ({_short(exc)})") from exc
    try:
        tile = im.tile[0] if im.tile else None
        if tile is None or tile.codec_name != "libtiff":
            raise UnsupportedImageError("", "Pillow would not decode it through libtiff")
        if im.size != (width, height):
            raise UnsupportedImageError("", f"Pillow sees {im.size[0]}x{im.size[1]}, tifffile {width}x{height}")
        if im.mode not in _PILLOW_MODES:
            raise UnsupportedImageError("", f"Pillow decodes it to mode {im.mode}, which tessq does not slice")
        dtype, samples, photometric = _PILLOW_MODES[im.mode]
        need = pillow_memory(width, height, im.mode)
        if need > memory_budget:
            raise ImageTooLargeError(
                "",
                f"the Pillow/libtiff fallback decodes the whole image at once: about {need:,} bytes for"
                f" {width}x{height} px, over the memory budget {memory_budget:,}",
            )
        return dtype, samples, photometric
    finally:
        im.close()


def pillow_decode(target: Any, page_index: int = 0) -> np.ndarray:
    """The whole page as Pillow decodes it with libtiff forced (also for uncompressed data)."""
    im = _open_pillow(target, page_index)
    try:
        im.load()
        return np.asarray(im)
    finally:
        im.close()


def pillow_memory(width: int, height: int, mode: str) -> int:
    """Peak bytes of a whole-image Pillow decode: Pillow's image plus our numpy copy of it."""
    dtype, samples, _ = _PILLOW_MODES.get(mode, ("uint8", 4, ""))
    return width * height * (_PILLOW_BYTES_PER_PIXEL.get(mode, 4) + samples * np.dtype(dtype).itemsize)


class PillowReader:
    """Whole-image decode through Pillow's libtiff reader, served by regions (same read() as RegionReader).

    Memory: pillow_memory() bytes while decoding, raw_bytes afterwards; callers refuse images over budget."""

    name = PILLOW_DECODER

    def __init__(self, path: Any, target: Any, page_index: int, dtype: str, samples: int) -> None:
        self.path, self.target, self.page_index = path, target, page_index
        self.dtype, self.samples = np.dtype(dtype), samples
        self._whole: np.ndarray | None = None

    def _decode(self) -> np.ndarray:
        if self._whole is None:
            try:
                arr = pillow_decode(self.target, self.page_index)
            except Exception as exc:
                if is_io_error(exc):
                    raise
                raise decode_error(self.path, exc, "the image with Pillow/libtiff") from exc
            want = self.samples if self.samples > 1 else None
            got = arr.shape[2] if arr.ndim == 3 else None
            if arr.dtype != self.dtype or got != want:
                raise UnsupportedImageError(
                    self.path, f"Pillow/libtiff decoded {arr.dtype} x{got or 1}, expected {self.dtype} x{want or 1}"
                )
            self._whole = np.ascontiguousarray(arr)
        return self._whole

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._decode()[y0:y1, x0:x1].copy()

    def close(self) -> None:
        self._whole = None


# -- GDAL (optional: rasterio is not a tessq dependency) --------------------------------------------------
def gdal_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_gdal() -> Any:
    """GDAL's log off and rasterio's warnings (NotGeoreferencedWarning...) silenced: tessq reports its own."""
    import rasterio

    with warnings.catch_warnings(), rasterio.Env(CPL_LOG="/dev/null"):
        warnings.simplefilter("ignore")
        yield


def _gdal_name(path: str, page_index: int) -> str:
    # GDAL's GTiff driver opens directory N of a multi-page file as GTIFF_DIR:N:path (1-based)
    return f"GTIFF_DIR:{page_index + 1}:{path}" if page_index else path


def gdal_plan(path: Any, page_index: int, width: int, height: int) -> tuple[str, int, str, int]:
    """(dtype, samples, decoded photometric, block rows) GDAL would read this page as; headers only."""
    if not isinstance(path, str | Path) or not gdal_available():
        raise UnsupportedImageError(
            "", "GDAL (rasterio) is not installed" if not gdal_available() else "GDAL reads local files only"
        )
    import rasterio

    try:
        with _quiet_gdal(), rasterio.open(_gdal_name(str(path), page_index)) as ds:
            dtypes = set(ds.dtypes)
            if (ds.width, ds.height) != (width, height) or len(dtypes) != 1:
                raise UnsupportedImageError("", f"GDAL sees {ds.width}x{ds.height} px with bands {ds.dtypes}")
            dtype = dtypes.pop()
            if dtype not in ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"):
                raise UnsupportedImageError("", f"GDAL decodes it to {dtype}")
            structure = ds.tags(ns="IMAGE_STRUCTURE")
            # GDAL reads YCbCr non-JPEG through libtiff's RGBA interface: RGB comes out
            ycbcr = structure.get("SOURCE_COLOR_SPACE") == "YCbCr"
            photometric = "rgb" if ycbcr else ("minisblack" if ds.count < 3 else "rgb")
            return dtype, ds.count, photometric, int(ds.block_shapes[0][0])
    except ImageError:
        raise
    except Exception as exc:
        raise UnsupportedImageError("", f"GDAL cannot open it either ({_short(exc)})") from exc


class GdalReader:
    """Windowed reads through GDAL (rasterio): memory is one region plus GDAL's block cache (GDAL_CACHEMAX)."""

    name = GDAL_DECODER

    def __init__(self, path: Any, page_index: int, dtype: str, samples: int) -> None:
        import rasterio

        self.path, self.samples, self.dtype = path, samples, np.dtype(dtype)
        self._env = _quiet_gdal()
        self._env.__enter__()
        try:
            self._ds = rasterio.open(_gdal_name(str(path), page_index))
        except BaseException:
            self._env.__exit__(None, None, None)
            raise

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        from rasterio.windows import Window

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = self._ds.read(window=Window(x0, y0, x1 - x0, y1 - y0))
        except Exception as exc:
            if is_io_error(exc) and not type(exc).__module__.startswith("rasterio"):
                raise
            raise decode_error(self.path, exc, f"rows {y0}-{y1} with GDAL") from exc
        if arr.dtype != self.dtype:
            raise UnsupportedImageError(self.path, f"GDAL decoded {arr.dtype}, expected {self.dtype}")
        out = arr[0] if self.samples == 1 else np.moveaxis(arr, 0, -1)
        return np.ascontiguousarray(out)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ds.close()
        with contextlib.suppress(Exception):
            self._env.__exit__(None, None, None)

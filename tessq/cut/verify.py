"""Reassembly and bit-exact verification of an image folder: `verify_image` (against the source's pixels,
region by region, or against the recorded hashes), `reconstruct` (band by band), `verify_images_identical`.

PNG slices are decoded with imagecodecs (Pillow truncates 16-bit RGB); palette PNGs with Pillow (indices).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from tessq import hashing, storage
from tessq.cut import bits
from tessq.cut.tiff import RegionReader, captured_tifffile_warnings, reference_pixels
from tessq.defaults import METADATA_FILENAME
from tessq.errors import ImageError, VerificationError

RECONSTRUCT_TILE = 256
# A grid row of the source is read once for all its slices up to this size; above it, slice by slice.
VERIFY_BAND_BYTES = 96 * 1024 * 1024
# What `problems` entries name (one per slice and kind): the slice file is missing, cannot be decoded, holds
# other pixels (count, max difference), has another shape or dtype, carries another colour table, or only its
# bytes changed (hash) with the same pixels; 'source' problems concern the source image, not one slice.
PROBLEM_KINDS = ("missing", "decode_error", "pixels", "shape", "dtype", "colour_table", "hash", "source")


def load_metadata(image_dir: str | Path) -> dict[str, Any]:
    path = Path(image_dir) / METADATA_FILENAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise VerificationError(f"{image_dir}: no metadata.json (not a complete tessq image folder)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{path}: unreadable metadata ({exc})") from exc


def decode_slice(path: Path, meta: dict[str, Any], data: bytes | None = None) -> np.ndarray:
    """A slice file's pixels in the source's layout and dtype (1-bit back to bool); `data`: its bytes if read."""
    data = path.read_bytes() if data is None else data
    output = meta.get("output", {})
    if path.suffix.lower() == ".png":
        if output.get("png_color_type") == 3:
            array = np.asarray(Image.open(io.BytesIO(data)))  # palette indices, not expanded colours
        else:
            from tessq.cut.pngdecode import fast_png_decode

            fast = fast_png_decode(data)  # None-, Sub- and Up-filtered PNGs; everything else by libpng
            array = imagecodecs.png_decode(data) if fast is None else fast
    else:
        with captured_tifffile_warnings():  # tags copied from the source (a GDAL_NODATA tifffile cannot parse)
            array = tifffile.imread(io.BytesIO(data))
        if output.get("tiff_planar") == "separate" and array.ndim == 3:
            array = np.moveaxis(array, 0, -1)  # planar-separate slices (multi-sample 1-bit) back to interleaved
    if meta["source"]["dtype"] == "bool":
        array = array != 0
    return array


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(pixels that differ in any sample's bits, max absolute difference): floats bit for bit (bits.py), so a
    NaN matches only itself; two dtypes are compared by value."""
    if a.shape != b.shape:
        return int(max(a.size, b.size)), float("inf")
    if a.dtype == b.dtype and np.array_equal(bits.bit_view(a), bits.bit_view(b)):
        return 0, 0.0  # the common case, at memory speed (the per-pixel reduction below is 10x slower)
    if a.dtype.kind == "b" or b.dtype.kind == "b":
        a, b = a.astype(np.uint8), b.astype(np.uint8)
    same_width = a.dtype.kind == b.dtype.kind and a.dtype.itemsize == b.dtype.itemsize
    same = (bits.bit_view(a) == bits.bit_view(b)) if same_width else a == b
    if same.ndim > 2:  # a pixel differs when any of its samples does
        same = same.reshape(*same.shape[:2], -1).all(axis=-1)
    different = int(same.size - np.count_nonzero(same))
    if not different:
        return 0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return different, float(np.nanmax(delta)) if np.any(~np.isnan(delta)) else float("nan")


def _coverage_ok(meta: dict[str, Any]) -> bool:
    """Every source pixel lies in at least one slice (counted per row/column span, no pixel array)."""
    width, height = meta["source"]["width"], meta["source"]["height"]
    cover_x = np.zeros(width + 1, dtype=np.int64)
    cover_y = np.zeros(height + 1, dtype=np.int64)
    for rec in meta["slices"]:
        cover_x[rec["x0"]] += 1
        cover_x[rec["x1"]] -= 1
        cover_y[rec["y0"]] += 1
        cover_y[rec["y1"]] -= 1
    return bool(np.all(np.cumsum(cover_x)[:-1] > 0) and np.all(np.cumsum(cover_y)[:-1] > 0))


def verify_image(image_dir: str | Path, source: str | Path | storage.Source | None = None) -> dict[str, Any]:
    """Compare every slice with the source's pixels (region by region), or with recorded hashes if no source.

    `source` defaults to the absolute path recorded in metadata.json when that file still exists.
    """
    image_dir = Path(image_dir)
    meta = load_metadata(image_dir)
    src_meta = meta["source"]
    if source is None and Path(src_meta["absolute_path"]).exists():
        source = src_meta["absolute_path"]
    result: dict[str, Any] = {
        "image_dir": str(image_dir),
        "compared_with": "source" if source is not None else "hashes",
        "source": str(source) if source is not None else None,
        "overall_identical": False,
        "shape_match": True,
        "dtype_match": True,
        "pixels_different": 0,
        "max_abs_diff": 0.0,
        "slices_checked": 0,
        "slices_total": len(meta["slices"]),
        "hashes_ok": True,
        "hash_mismatches": [],
        "coverage_ok": _coverage_ok(meta),
        "errors": [],
        "problems": [],  # structured: {"file", "kind" (PROBLEM_KINDS), "detail", ...} per slice and kind
    }
    reader = None
    if source is not None:
        try:
            reader = RegionReader(source, src_meta.get("series", 0), src_meta.get("level", 0))
        except ImageError as exc:
            _problem(result, None, "source", str(exc))
        if reader is not None and (reader.info.width, reader.info.height) != (
            src_meta["width"],
            src_meta["height"],
        ):
            result["shape_match"] = False
            _problem(result, None, "source", "source dimensions differ from metadata.json")
    try:
        # grid row by grid row: the source's band is read (and its strips/tiles decoded) once for all slices
        for _, group in groupby(meta["slices"], key=lambda r: (r["y0"], r["y1"])):
            recs = list(group)
            band, xa = _source_band(reader, recs, src_meta, result)
            for rec in recs:
                _check_slice(image_dir, meta, rec, reader, result, band, xa)
            del band
            if reader is not None:
                reader.forget_above(recs[0]["y1"])
    finally:
        if reader is not None:
            reader.close()
    result["overall_identical"] = bool(
        not result["errors"]
        and result["hashes_ok"]
        and result["shape_match"]
        and result["dtype_match"]
        and result["pixels_different"] == 0
        and result["coverage_ok"]
        and result["slices_checked"] == result["slices_total"]
        and (reader is not None or source is None)
    )
    return result


def _problem(
    result: dict[str, Any], file: str | None, kind: str, detail: str, error: bool = True, **extra: Any
) -> None:
    """Record one finding: structured in `problems`, and as text in `errors` when it is an error."""
    result["problems"].append({"file": file, "kind": kind, "detail": detail, **extra})
    if error:
        result["errors"].append(f"{file}: {detail}" if file else detail)


def _source_band(
    reader: RegionReader | None, recs: list[dict[str, Any]], src: dict[str, Any], result: dict[str, Any]
) -> tuple[np.ndarray | None, int]:
    """The source pixels of one grid row (all its slices) when that fits VERIFY_BAND_BYTES, else None."""
    xa, xb = min(r["x0"] for r in recs), max(r["x1"] for r in recs)
    if reader is None or len(recs) < 2:
        return None, xa
    itemsize = np.dtype(src["dtype"]).itemsize if src["dtype"] != "bool" else 1
    if (recs[0]["y1"] - recs[0]["y0"]) * (xb - xa) * src["samples"] * itemsize > VERIFY_BAND_BYTES:
        return None, xa
    try:
        return reader.read(recs[0]["y0"], recs[0]["y1"], xa, xb), xa
    except ImageError:
        return None, xa  # read again slice by slice, so the error is reported against each slice


def _check_slice(
    image_dir: Path,
    meta: dict[str, Any],
    rec: dict[str, Any],
    reader: RegionReader | None,
    result: dict[str, Any],
    band: np.ndarray | None = None,
    band_x0: int = 0,
) -> None:
    name = rec["file"]
    path = image_dir / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        result["hashes_ok"] = False
        _problem(result, name, "missing", "missing")
        return
    hash_ok = hashing.bytes_digest(data) == rec["sha256"]
    if not hash_ok:
        result["hashes_ok"] = False
        result["hash_mismatches"].append(name)
    try:
        got = decode_slice(path, meta, data)
    except Exception as exc:  # a damaged slice is a finding, not a crash
        _problem(result, name, "decode_error", f"cannot decode ({exc})")
        return
    del data
    src = meta["source"]
    expected_shape = (rec["y1"] - rec["y0"], rec["x1"] - rec["x0"]) + ((src["samples"],) if src["samples"] > 1 else ())
    findings = 0
    if got.shape != expected_shape:
        result["shape_match"] = False
        _problem(result, name, "shape", f"shape {list(got.shape)}, expected {list(expected_shape)}", error=False)
        findings += 1
    if not _colour_table_ok(path, meta, reader):
        _problem(result, name, "colour_table", "colour table differs from the source's")
        findings += 1
    if str(got.dtype) != src["dtype"]:
        result["dtype_match"] = False
        _problem(result, name, "dtype", f"dtype {got.dtype}, expected {src['dtype']}", error=False)
        findings += 1
    if reader is not None:
        try:
            if band is not None:
                want = band[:, rec["x0"] - band_x0 : rec["x1"] - band_x0]
            else:
                want = reader.read(rec["y0"], rec["y1"], rec["x0"], rec["x1"])
        except ImageError as exc:
            _problem(result, name, "source", str(exc))
            return
        different, max_diff = _diff(got, want)
        result["pixels_different"] += different
        result["max_abs_diff"] = max(result["max_abs_diff"], max_diff)
        if different and got.shape == want.shape:
            _problem(
                result,
                name,
                "pixels",
                f"{different} pixel(s) differ (max abs difference {max_diff:g})",
                error=False,
                pixels_different=different,
                max_abs_diff=max_diff,
            )
            findings += 1
    if not hash_ok and not findings:
        detail = "file bytes differ from the recorded sha256" + (" (same pixels)" if reader is not None else "")
        _problem(result, name, "hash", detail, error=False)
    result["slices_checked"] += 1


def slice_colour_table(path: Path) -> np.ndarray | None:
    """A palette slice's colour table as TIFF stores it, uint16 (3, entries); None for other slices."""
    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            palette = np.asarray(im.getpalette() or [], dtype=np.uint16)
        return (palette.reshape(-1, 3).T * 257).astype(np.uint16)
    with tifffile.TiffFile(path) as tif:
        cmap = tif.pages.first.colormap
    return None if cmap is None else np.asarray(cmap, dtype=np.uint16)


def _colour_table_ok(path: Path, meta: dict[str, Any], reader: RegionReader | None) -> bool:
    """A palette slice carries the source's colour table (from the source, else from metadata.json)."""
    output = meta.get("output", {})
    if output.get("png_color_type") != 3 and output.get("tiff_photometric") != "palette":
        return True
    source_table = reader.colormap() if reader is not None else meta["source"].get("colormap")
    if source_table is None:
        return True  # a table too big for metadata.json and no source to read it from: nothing to compare
    want = np.asarray(source_table, dtype=np.uint16)
    got = slice_colour_table(path)
    entries = want.shape[1]
    return got is not None and got.shape[1] >= entries and np.array_equal(got[:, :entries], want)


def reconstruct(image_dir: str | Path, dest: str | Path) -> Path:
    """Rebuild the source image from its slices as a tiled TIFF, one tile row at a time.

    Memory: the decoded slices of the grid rows that the current tile row touches, plus that tile row.
    """
    image_dir, dest = Path(image_dir), Path(dest)
    meta = load_metadata(image_dir)
    src = meta["source"]
    width, height, samples = src["width"], src["height"], src["samples"]
    dtype = np.dtype(src["dtype"])
    shape = (height, width) + ((samples,) if samples > 1 else ())
    tile = RECONSTRUCT_TILE
    slices = sorted(meta["slices"], key=lambda r: (r["y0"], r["x0"]))

    def tiles() -> Iterator[np.ndarray]:
        cache: dict[int, np.ndarray] = {}
        for ty in range(0, height, tile):
            ty1 = min(ty + tile, height)
            band = np.zeros((ty1 - ty, width, *shape[2:]), dtype=dtype)
            for rec in slices:
                if rec["y1"] <= ty or rec["y0"] >= ty1:
                    continue
                if rec["index"] not in cache:
                    cache[rec["index"]] = decode_slice(image_dir / rec["file"], meta)
                part = cache[rec["index"]]
                ya, yb = max(ty, rec["y0"]), min(ty1, rec["y1"])
                band[ya - ty : yb - ty, rec["x0"] : rec["x1"]] = part[ya - rec["y0"] : yb - rec["y0"]]
            for index in [i for i, _ in cache.items() if _slice_y1(meta, i) <= ty1]:
                del cache[index]
            for tx in range(0, width, tile):
                yield band[:, tx : tx + tile]

    photometric = "rgb" if samples in (3, 4) and src["decoded_photometric"] == "rgb" else "minisblack"
    extrasamples = [0] * (samples - (3 if photometric == "rgb" else 1)) if samples > 1 else []
    tifffile.imwrite(
        dest,
        tiles(),
        shape=shape,
        dtype=dtype,
        tile=(tile, tile),
        photometric=photometric,
        planarconfig="contig" if samples > 1 else None,
        compression="zlib",
        metadata=None,
        extrasamples=extrasamples or None,
    )
    return dest


def _slice_y1(meta: dict[str, Any], index: int) -> int:
    return meta["slices"][index]["y1"]


def _whole_image(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".png":
        return imagecodecs.png_decode(path.read_bytes())
    if path.suffix.lower() in (".tif", ".tiff"):
        return reference_pixels(path)
    return imagecodecs.imread(str(path))


def verify_images_identical(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    """The seed's check: do two images hold the same pixels? (`overall_identical`).

    Each side is an image file (the original TIFF, a reconstructed TIFF, a PNG) or a tessq image folder (or
    its metadata.json): a folder is compared slice by slice with the other side, the original file, without
    reassembling it (the result is then `verify_image`'s: overall_identical, shape_match, dtype_match,
    pixels_different, max_abs_diff, ...)."""
    a_path, b_path = Path(path_a), Path(path_b)
    folder = _image_folder(b_path) or _image_folder(a_path)
    if folder is not None:
        other = a_path if _image_folder(b_path) is not None else b_path
        return verify_image(folder, other)
    a, b = _whole_image(a_path), _whole_image(b_path)
    different, max_diff = _diff(a, b)
    return {
        "overall_identical": a.shape == b.shape and a.dtype == b.dtype and different == 0,
        "shape_match": a.shape == b.shape,
        "dtype_match": a.dtype == b.dtype,
        "shape_a": list(a.shape),
        "shape_b": list(b.shape),
        "dtype_a": str(a.dtype),
        "dtype_b": str(b.dtype),
        "pixels_different": different,
        "max_abs_diff": max_diff,
    }


def _image_folder(path: Path) -> Path | None:
    """The tessq image folder `path` names (the folder itself or its metadata.json), else None."""
    if path.is_dir() and (path / METADATA_FILENAME).is_file():
        return path
    if path.name == METADATA_FILENAME and path.is_file():
        return path.parent
    return None

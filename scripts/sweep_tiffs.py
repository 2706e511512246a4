"""Cut every TIFF of a folder with tessq and compare the reassembled slices with tifffile, GDAL and Pillow.

For TIFF test data written by other software (fetched from libtiff, TwelveMonkeys, commons-imaging,
OpenImageIO, rio-tiler...): every file must be cut bit-exact against tifffile's decoding (or, where tessq
chose a fallback decoder, against that decoder's peers) or be refused with a reason. One JSON line per file,
then a summary; exit 1 if any file was cut differently from tifffile's own decoding or crashed.

    python scripts/sweep_tiffs.py DIR [--jsonl OUT.jsonl]

GDAL and Pillow disagreeing with tessq is printed, not failed: they convert where tessq keeps the stored
values (Pillow inverts MINISWHITE bilevel, GDAL turns CMYK and YCbCr into RGB, JPEG decoders upsample
chroma differently).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tessq.cut import bits, core, tiff, tiffcodec
from tessq.cut.verify import decode_slice, load_metadata
from tessq.errors import ImageError
from tessq.options import SliceOptions


def gdal_pixels(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        bands = ds.read()
    return bands[0] if bands.shape[0] == 1 else np.moveaxis(bands, 0, -1)


def pillow_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def compare(cut: np.ndarray, other: np.ndarray) -> str:
    if cut.shape != other.shape:
        return f"shape {cut.shape} vs {other.shape}"
    if cut.dtype != other.dtype:
        return "same (as values)" if np.array_equal(cut.astype(np.float64), other.astype(np.float64)) else "DIFF"
    if bits.identical(cut, other):
        return "same"
    return f"DIFF ({bits.count_different(cut, other)} of {cut.size})"


def reassembled(out: Path) -> tuple[np.ndarray, dict[str, Any]]:
    meta = load_metadata(out)
    src = meta["source"]
    canvas: np.ndarray | None = None
    for rec in meta["slices"]:
        piece = decode_slice(out / rec["file"], meta)
        if canvas is None:
            canvas = np.zeros((src["height"], src["width"], *piece.shape[2:]), dtype=piece.dtype)
        canvas[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]] = piece
    assert canvas is not None
    return canvas, meta


def peer(reader: Callable[[Path], np.ndarray], path: Path, cut: np.ndarray | None) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = reader(path)
    except Exception as exc:
        return f"cannot read ({type(exc).__name__}: {str(exc)[:80]})"
    return "reads" if cut is None else compare(cut, other)


def sweep_one(path: Path, options: SliceOptions) -> dict[str, Any]:
    row: dict[str, Any] = {"file": path.name}
    cut: np.ndarray | None = None
    work = Path(tempfile.mkdtemp(prefix="tessq-sweep-"))
    try:
        core.tessellate_image(path, work / "img", options)
        cut, meta = reassembled(work / "img")
        src = meta["source"]
        row["tessq"] = f"cut by {src['decoder']}: {src.get('photometric')} {src.get('compression')} {cut.dtype}"
        row["decoder"] = src["decoder"]
    except ImageError as exc:
        row["tessq"] = f"refused ({type(exc).__name__}): {exc.reason}"
    except Exception as exc:
        row["tessq"] = f"CRASH {type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc()[-800:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row["tifffile"] = peer(tiff.reference_pixels, path, cut)
    row["gdal"] = peer(gdal_pixels, path, cut)
    row["pillow"] = peer(pillow_pixels, path, cut)
    return row


def wrong(row: dict[str, Any]) -> bool:
    """Cut, by tifffile's decoder, to other pixels than tifffile's own decoding gives; or a crash."""
    if row["tessq"].startswith("CRASH"):
        return True
    return row.get("decoder") == tiffcodec.TIFFFILE_DECODER and row["tifffile"] != "same"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--jsonl", type=Path, help="also write the rows here")
    parser.add_argument("--pieces", type=int, default=4)
    args = parser.parse_args()
    options = SliceOptions(min_size=1, num_pieces=args.pieces, self_check="full")
    files = sorted(p for p in args.folder.rglob("*") if p.is_file() and p.suffix.lower() in (".tif", ".tiff"))
    rows = []
    sink = args.jsonl.open("w") if args.jsonl else None
    for path in files:
        row = sweep_one(path, options)
        row["file"] = str(path.relative_to(args.folder))
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
    outcome = Counter(r["tessq"].split()[0] for r in rows)
    bad = [r["file"] for r in rows if wrong(r)]
    print(f"{len(rows)} files: {dict(outcome)}; cut unlike tifffile or crashed: {len(bad)}", file=sys.stderr)
    for name in bad:
        print(f"  {name}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

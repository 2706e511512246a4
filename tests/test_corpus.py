"""Every real TIFF of the shared corpus either slices and reassembles bit-exact against tifffile's own
decoding of the chosen page (against GDAL's where a fallback decoder cut it), or is refused with one of our
ImageError types and a readable reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tessq.cut import core, tiff, tiffcodec
from tessq.cut.verify import decode_slice, load_metadata
from tessq.errors import ImageError
from tessq.options import SliceOptions


def _find_corpus() -> Path:
    """TESSQ_CORPUS, else ../shared/corpus/tiff beside the checkout, else the workplace's /work/shared copy."""
    if os.environ.get("TESSQ_CORPUS"):
        return Path(os.environ["TESSQ_CORPUS"])
    candidates = [Path(__file__).resolve().parents[2] / "shared/corpus/tiff", Path("/work/shared/corpus/tiff")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


CORPUS = _find_corpus()
FILES = sorted(p for p in CORPUS.glob("*") if p.suffix.lower() in (".tif", ".tiff")) if CORPUS.is_dir() else []


# tifffile refuses these (or, for old-style JPEG, decodes them unlike libtiff); Pillow/libtiff decodes them
FALLBACK_DECODED = {
    "imagetiff__libtiffpic_smallliz.tif",  # old-style JPEG, tables in JPEGQTables/DCTables/ACTables
    "imagetiff__libtiffpic_zackthecat.tif",  # old-style JPEG, tiled
    "imagetiff__libtiffpic_ycbcr-cat.tif",  # YCbCr 4:2:0, LZW
    "imagetiff__libtiffpic_dscf0013.tif",  # YCbCr 4:2:2, uncompressed
    "pillow__old-style-jpeg-compression.tif",
    "pillow__old-style-jpeg-compression-no-samplesperpixel.tif",
}


def _reference(path: Path, decoder: str) -> np.ndarray:
    """tifffile's own decode; for a fallback's output an independent decoder's: GDAL if installed, else
    Pillow/libtiff read directly (then only the slicing is checked, not the decoder)."""
    if decoder == tiffcodec.TIFFFILE_DECODER:
        return tiff.reference_pixels(path)
    try:
        import rasterio
    except ImportError:
        assert decoder == tiffcodec.PILLOW_DECODER
        return tiffcodec.pillow_decode(str(path))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as ds:
            arr = ds.read()
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)


@pytest.mark.skipif(not FILES, reason=f"corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corpus_file(tmp_path: Path, path: Path) -> None:
    out = tmp_path / "img"
    try:
        core.tessellate_image(path, out, SliceOptions(min_size=1, num_pieces=4))
    except ImageError as exc:
        assert exc.reason and str(path) in str(exc)
        assert path.name not in FALLBACK_DECODED, str(exc)
        return
    meta = load_metadata(out)
    decoder = meta["source"]["decoder"]
    assert (decoder != tiffcodec.TIFFFILE_DECODER) == (path.name in FALLBACK_DECODED), decoder
    reference = _reference(path, decoder)
    assert reference.shape[:2] == (meta["source"]["height"], meta["source"]["width"])
    for rec in meta["slices"]:
        got = decode_slice(out / rec["file"], meta)
        want = reference[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]]
        assert got.shape == want.shape
        assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), rec["file"]

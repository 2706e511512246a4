"""Every real TIFF of the shared corpus either slices and reassembles bit-exact against tifffile's own
decoding of the chosen page, or is refused with one of our ImageError types and a readable reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tessq import core, tiff
from tessq.errors import ImageError
from tessq.options import SliceOptions
from tessq.verify import decode_slice, load_metadata


def _find_corpus() -> Path:
    """TESSQ_CORPUS, else ../shared/corpus/tiff beside the checkout, else the workplace's /work/shared copy."""
    if os.environ.get("TESSQ_CORPUS"):
        return Path(os.environ["TESSQ_CORPUS"])
    candidates = [Path(__file__).resolve().parents[2] / "shared/corpus/tiff", Path("/work/shared/corpus/tiff")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


CORPUS = _find_corpus()
FILES = (
    sorted(p for p in CORPUS.glob("*") if p.suffix.lower() in (".tif", ".tiff")) if CORPUS.is_dir() else []
)


@pytest.mark.skipif(not FILES, reason=f"corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corpus_file(tmp_path: Path, path: Path) -> None:
    out = tmp_path / "img"
    try:
        core.tessellate_image(path, out, SliceOptions(min_size=1, num_pieces=4))
    except ImageError as exc:
        assert exc.reason and str(path) in str(exc)
        return
    meta = load_metadata(out)
    reference = tiff.reference_pixels(path)
    assert reference.shape[:2] == (meta["source"]["height"], meta["source"]["width"])
    for rec in meta["slices"]:
        got = decode_slice(out / rec["file"], meta)
        want = reference[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]]
        assert got.shape == want.shape
        assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), rec["file"]

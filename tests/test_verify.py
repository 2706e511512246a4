"""Verification and reassembly: source comparison, hash-only mode, tamper detection, reconstruct()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from tessq.cut import core
from tessq.cut.verify import reconstruct, verify_image, verify_images_identical
from tessq.options import SliceOptions
from tests.tiffgen import write_variant

SMALL = SliceOptions(min_size=1)


def test_hash_mode_when_source_gone(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "rgb16_bigendian")
    out = tmp_path / "img"
    core.tessellate_image(path, out, SMALL)
    path.unlink()
    result = verify_image(out)
    assert result["compared_with"] == "hashes" and result["overall_identical"] and result["hashes_ok"]


def test_tampered_slice_is_detected(tmp_path: Path) -> None:
    path, _ = write_variant(tmp_path, "gray16_lzw_pred")
    out = tmp_path / "img"
    core.tessellate_image(path, out, SMALL)
    meta = json.loads((out / "metadata.json").read_text())
    victim = out / meta["slices"][3]["file"]
    data = tifffile.imread(path)[: meta["slices"][3]["y1"] - meta["slices"][3]["y0"], :10]
    import imagecodecs

    victim.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(data)))
    result = verify_image(out, path)
    assert not result["overall_identical"] and not result["hashes_ok"]
    assert result["pixels_different"] > 0 or not result["shape_match"]


def test_reconstruct_round_trip(tmp_path: Path) -> None:
    for name in ("rgb16_tiled_deflate", "bilevel", "float32", "graya16"):
        path, expected = write_variant(tmp_path, name)
        out = tmp_path / f"img_{name}"
        core.tessellate_image(path, out, SliceOptions(min_size=1, tile_size=20, overlap=5))
        rebuilt = reconstruct(out, tmp_path / f"{name}_rebuilt.tif")
        assert np.array_equal(tifffile.imread(rebuilt), expected)
        assert verify_images_identical(path, rebuilt)["overall_identical"]


def test_verify_images_identical_detects_difference(tmp_path: Path) -> None:
    a = np.zeros((10, 10), np.uint8)
    b = a.copy()
    b[3, 4] = 9
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    result = verify_images_identical(tmp_path / "a.tif", tmp_path / "b.tif")
    assert not result["overall_identical"] and result["pixels_different"] == 1 and result["max_abs_diff"] == 9

"""Data correctness on the classes real files showed: multi-sample 1-bit images, palette images of every index
depth, and the worker's self-check that keeps a slice that does not decode to its pixels from being done."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from tessq.cut import bits, core, encode, selfcheck
from tessq.cut.verify import verify_image, verify_images_identical
from tessq.errors import SelfCheckError
from tessq.options import SliceOptions

rasterio = pytest.importorskip("rasterio")
SMALL = SliceOptions(min_size=1)
H, W = 45, 61  # odd sizes: rows of 1-bit samples end mid-byte, tiles are partial


def gdal_write(path: Path, bands: np.ndarray, **profile: object) -> Path:
    """Write (count, h, w) with GDAL, an independent TIFF writer, and return the path."""
    count, h, w = bands.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype="uint8", **profile) as ds:
            ds.write(bands)
    return path


def gdal_read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as ds:
            return ds.read()


def slices_reassembled(out: Path) -> np.ndarray:
    """The image rebuilt from its slices with Pillow/tifffile, independent of tessq's verify."""
    meta = json.loads((out / "metadata.json").read_text())
    src = meta["source"]
    canvas = None
    for rec in meta["slices"]:
        path = out / rec["file"]
        if path.suffix == ".png":
            piece = np.asarray(Image.open(path))
        else:
            piece = tifffile.imread(path)
            if meta["output"].get("tiff_planar") == "separate" and piece.ndim == 3:
                piece = np.moveaxis(piece, 0, -1)
        if canvas is None:
            canvas = np.zeros((src["height"], src["width"], *piece.shape[2:]), dtype=np.uint8)
        canvas[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]] = piece
    assert canvas is not None
    return canvas


@pytest.mark.parametrize("samples", [3, 4])
@pytest.mark.parametrize("interleave", ["pixel", "band"])
@pytest.mark.parametrize("compress", ["none", "packbits", "deflate"])
@pytest.mark.parametrize("tiled", [False, True])
def test_multi_sample_1bit_images_slice_bit_exact(
    tmp_path: Path, samples: int, interleave: str, compress: str, tiled: bool
) -> None:
    bits = np.random.default_rng(samples).integers(0, 2, (samples, H, W)).astype(np.uint8)
    profile: dict[str, object] = {"nbits": 1, "photometric": "RGB", "interleave": interleave, "compress": compress}
    if samples == 4:
        profile["alpha"] = "UNSPECIFIED"
    if tiled:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    src = gdal_write(tmp_path / "rgb1.tif", bits, **profile)
    out = tmp_path / "out"
    core.tessellate_image(src, out, SMALL)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"]["bits_per_sample"] == 1 and meta["source"]["samples"] == samples
    assert meta["output"]["format"] == "tiff"
    assert np.array_equal(slices_reassembled(out), np.moveaxis(gdal_read(src), 0, -1))
    assert verify_image(out, src)["overall_identical"]


def test_a_streamed_multi_sample_1bit_slice_is_exact(tmp_path: Path) -> None:
    bits = np.random.default_rng(7).integers(0, 2, (3, 300, 200)).astype(np.uint8)
    src = gdal_write(
        tmp_path / "rgb1.tif",
        bits,
        nbits=1,
        photometric="RGB",
        compress="deflate",
        tiled=True,
        blockxsize=16,
        blockysize=16,
    )
    out = tmp_path / "out"
    options = SliceOptions(min_size=1, num_pieces=1, memory_budget=100_000)  # band over budget: streamed slice
    core.tessellate_image(src, out, options)
    assert np.array_equal(slices_reassembled(out), np.moveaxis(gdal_read(src), 0, -1))


def _palette_tiff(path: Path, bits: int, cmap16: np.ndarray, seed: int = 0) -> np.ndarray:
    entries = cmap16.shape[1]
    idx = np.random.default_rng(seed).integers(0, entries, (H, W)).astype(np.uint8)
    if bits == 8:
        tifffile.imwrite(path, idx, photometric="palette", colormap=cmap16)
    else:  # GDAL packs the sub-byte indices; tifffile would widen them to 8 bits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(
                path, "w", driver="GTiff", width=W, height=H, count=1, dtype="uint8", nbits=bits, photometric="palette"
            ) as ds:
                ds.write(idx, 1)
                ds.write_colormap(1, {i: (*tuple(int(c) // 257 for c in cmap16[:, i]), 255) for i in range(entries)})
    return idx


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_palette_images_give_palette_pngs_at_the_source_depth(tmp_path: Path, bits: int) -> None:
    entries = 2**bits
    table = np.random.default_rng(bits).integers(0, 256, (3, entries)).astype(np.uint16) * 257
    src = tmp_path / f"pal{bits}.tif"
    _palette_tiff(src, bits, table, seed=bits)
    with tifffile.TiffFile(src) as tif:
        assert tif.pages[0].bitspersample == bits
        colormap = tif.pages[0].colormap
    out = tmp_path / "out"
    core.tessellate_image(src, out, SMALL)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["output"]["format"] == "png"
    assert meta["output"]["png_color_type"] == 3 and meta["output"]["png_bit_depth"] == bits
    for rec in meta["slices"]:
        with Image.open(out / rec["file"]) as im:
            assert im.mode == "P"
            palette = np.asarray(im.getpalette()[: 3 * entries], dtype=np.uint16).reshape(-1, 3).T
            assert np.array_equal(palette * 257, colormap)  # the colour table travels with every slice
    with tifffile.TiffFile(src) as tif:
        expected = tif.pages[0].asarray()
    assert np.array_equal(_indices(out), expected.astype(np.uint8))
    assert verify_image(out, src)["overall_identical"]


def _indices(out: Path) -> np.ndarray:
    meta = json.loads((out / "metadata.json").read_text())
    canvas = np.zeros((meta["source"]["height"], meta["source"]["width"]), dtype=np.uint8)
    for rec in meta["slices"]:
        canvas[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]] = np.asarray(Image.open(out / rec["file"]))
    return canvas


@pytest.mark.parametrize("bits", [1, 8])
def test_palette_with_a_16bit_colour_table_gives_palette_tiffs_with_that_table(tmp_path: Path, bits: int) -> None:
    entries = 2**bits
    table = np.random.default_rng(3).integers(0, 65536, (3, entries)).astype(np.uint16)
    table[0, 0] = 1  # certainly not a multiple of 257
    src = tmp_path / "pal.tif"
    idx = _palette_tiff(src, bits, table // 257 * 257, seed=4)
    _patch_colormap(src, table)  # no writer we have writes a 16-bit table at 1 bit: patch the tag's values
    out = tmp_path / "out"
    core.tessellate_image(src, out, SMALL)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["output"]["format"] == "tiff" and meta["output"]["tiff_photometric"] == "palette"
    for rec in meta["slices"]:
        with tifffile.TiffFile(out / rec["file"]) as tif:
            page = tif.pages[0]
            assert np.array_equal(page.colormap[:, :entries], table)
            assert np.array_equal(page.asarray(), idx[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]])
    assert verify_image(out, src)["overall_identical"]


def _patch_colormap(path: Path, table: np.ndarray) -> None:
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[320]
        offset, byteorder = tag.valueoffset, tif.byteorder
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(table.astype(byteorder + "u2").tobytes())
    with tifffile.TiffFile(path) as tif:
        assert np.array_equal(tif.pages[0].colormap, table)


def test_self_check_accepts_what_libpng_decodes_to_the_same_pixels() -> None:
    pixels = np.random.default_rng(0).integers(0, 65535, (20, 30, 3)).astype(np.uint16)
    kind = encode.slice_kind("uint16", 3, "rgb")
    data, _ = encode.encode_slice(pixels, kind, SMALL)
    selfcheck.check_slice(data, pixels, kind, "slice_0.png", "x.tif")
    assert np.array_equal(imagecodecs.png_decode(data), pixels)


@pytest.mark.parametrize("damage", ["other pixels", "truncated", "wrong shape"], ids=["pixels", "truncated", "shape"])
def test_self_check_names_the_slice_that_does_not_decode_to_its_pixels(damage: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    other = pixels.copy()
    other[5, 7, 1] ^= 1
    if damage == "other pixels":
        data, _ = encode.encode_slice(other, kind, SMALL)
    elif damage == "truncated":
        data = encode.encode_slice(pixels, kind, SMALL)[0][:-40]
    else:
        data, _ = encode.encode_slice(pixels[:-1], kind, SMALL)
    with pytest.raises(SelfCheckError) as err:
        selfcheck.check_slice(data, pixels, kind, "slice_3_r1_c0.png", "a/b.tif")
    assert err.value.kind == "self_check"
    assert "slice_3_r1_c0.png" in str(err.value) and str(err.value).startswith("a/b.tif")


def test_a_slice_that_fails_the_self_check_is_never_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.random.default_rng(2).integers(0, 255, (40, 40, 3)).astype(np.uint8), photometric="rgb")
    real = encode.encode_slice

    def off_by_one(array: np.ndarray, kind: encode.SliceKind, options: SliceOptions, **kw: Any) -> tuple[bytes, str]:
        return real(array ^ np.uint8(1), kind, options, **kw)  # an encoder bug: every value changed

    monkeypatch.setattr(encode, "encode_slice", off_by_one)
    out = tmp_path / "out" / "a"
    with pytest.raises(SelfCheckError):
        core.tessellate_image(src, out, SliceOptions(min_size=1, self_check="full"))
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []
    core.tessellate_image(src, out, SliceOptions(min_size=1, self_check="off"))  # the flag turns it off
    assert (out / "metadata.json").exists()


def test_streamed_png_slices_are_self_checked(tmp_path: Path) -> None:
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, np.random.default_rng(3).integers(0, 255, (400, 300, 3)).astype(np.uint8), photometric="rgb")
    out = tmp_path / "out"
    summary = core.tessellate_image(src, out, SliceOptions(min_size=1, num_pieces=2, memory_budget=60_000))
    assert summary["timings"]["check_s"] >= 0
    assert verify_image(out, src)["overall_identical"]


def test_sample_mode_checks_the_first_and_last_slice_until_a_kind_has_proven_itself_then_one_per_image() -> None:
    rgb = encode.slice_kind("uint8", 3, "rgb")
    options = SliceOptions(min_size=1, png_preset="fast")  # a kind key no other test in this process proved
    first = selfcheck.plan("sample", rgb, options, 8, "a.tif")
    assert first.wants(0) and first.wants(7) and 2 <= sum(first.wants(i) for i in range(8)) <= 3
    first.passed()
    later = selfcheck.plan("sample", rgb, options, 8, "b.tif")
    assert sum(later.wants(i) for i in range(8)) == 1
    assert later.sampled == selfcheck.plan("sample", rgb, options, 8, "b.tif").sampled  # the same on reruns
    palette = encode.slice_kind("uint8", 1, "palette", (), np.zeros((3, 4), np.uint16), 2)
    tiff = encode.slice_kind("float32", 1, "minisblack")
    for risky in (palette, tiff):
        proven = selfcheck.plan("sample", risky, options, 8, "c.tif")
        proven.passed()
        assert all(selfcheck.plan("sample", risky, options, 8, "d.tif").wants(i) for i in range(8))
    assert not any(selfcheck.plan("off", rgb, options, 8, "e.tif").wants(i) for i in range(8))
    assert all(selfcheck.plan("full", rgb, options, 8, "e.tif").wants(i) for i in range(8))


def test_verify_notices_a_palette_slice_whose_colour_table_changed(tmp_path: Path) -> None:
    table = np.random.default_rng(5).integers(0, 256, (3, 16)).astype(np.uint16) * 257
    src = tmp_path / "pal4.tif"
    _palette_tiff(src, 4, table, seed=5)
    out = tmp_path / "out"
    core.tessellate_image(src, out, SMALL)
    assert verify_image(out, src)["overall_identical"]
    first = json.loads((out / "metadata.json").read_text())["slices"][0]["file"]
    with Image.open(out / first) as im:
        indices = np.asarray(im)
        palette = im.getpalette()
    palette[0] ^= 0xFF  # entry 0's red changed, indices untouched
    swapped = Image.fromarray(indices, mode="P")
    swapped.putpalette(palette)
    swapped.save(out / first, bits=4)
    result = verify_image(out, src)
    assert not result["overall_identical"]
    assert any("colour table differs" in e for e in result["errors"])


def _nan_raster(dtype: str, h: int = 70, w: int = 90) -> np.ndarray:
    """A float DEM as GIS tools write them: NaN nodata borders, a NaN with its own payload, -0.0 and inf."""
    rng = np.random.default_rng(11)
    data = (rng.random((h, w)) * 900 - 100).astype(dtype)
    data[:5] = np.nan
    data[:, -7:] = np.nan
    data[_signed_zero(h, w)] = -0.0
    data[h // 2 + 1, w // 2 + 1] = np.inf
    bits_dtype = np.dtype(f"u{data.dtype.itemsize}")
    payload = data.view(bits_dtype)
    payload[_odd_nan(h, w)] = payload[0, 0] | bits_dtype.type(1)  # a quiet NaN with another payload
    return data


def _signed_zero(h: int, w: int) -> tuple[int, int]:
    return h // 2, w // 2


def _odd_nan(h: int, w: int) -> tuple[int, int]:
    return h * 3 // 4, w // 3


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", ">f4"])
def test_a_float_raster_with_nan_nodata_is_cut_done_and_verified_bit_for_bit(
    tmp_path: Path, sqlite_env: dict[str, str], dtype: str
) -> None:
    from tests.conftest import tessq_cmd

    data = _nan_raster(dtype)
    src = tmp_path / "in" / "dem.tif"
    src.parent.mkdir()
    tifffile.imwrite(src, data, compression="zlib", predictor=dtype != "float16", tile=(32, 32))
    out = tmp_path / "out"
    run = tessq_cmd("run", str(src.parent), str(out), "--min-size=1", "--self-check=full", env=sqlite_env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr  # the self-check took NaN for a changed pixel before
    meta = json.loads((out / "dem" / "metadata.json").read_text())
    want = tifffile.imread(src)
    for rec in meta["slices"]:
        got = tifffile.imread(out / "dem" / rec["file"])
        piece = want[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]]
        assert got.dtype.kind == "f" and got.dtype.itemsize == piece.dtype.itemsize
        assert bits.identical(got, piece), rec["file"]  # NaN payloads and the sign of zero kept
    check = tessq_cmd("verify", "--json", str(out), env=sqlite_env, cwd=tmp_path)
    assert check.returncode == 0 and json.loads(check.stdout)["identical"] == 1, check.stdout + check.stderr


def test_the_self_check_and_verify_tell_a_nan_payload_or_a_signed_zero_from_the_value_encoded(tmp_path: Path) -> None:
    data = _nan_raster("float32", 20, 24)
    kind = encode.slice_kind("float32", 1, "minisblack")
    written = io.BytesIO()
    tifffile.imwrite(written, data)
    selfcheck.check_slice(written.getvalue(), data, kind, "s.tif", "dem.tif")  # NaN is itself: passes
    for change in (_odd_nan(20, 24), _signed_zero(20, 24)):
        other = data.copy()
        raw = other.view(np.uint32)
        raw[change] ^= np.uint32(0x80000000 if np.isfinite(other[change]) else 0x2)
        with pytest.raises(SelfCheckError, match="1 values differ"):
            selfcheck.check_slice(written.getvalue(), other, kind, "s.tif", "dem.tif")
    assert bits.count_different(np.array([0.0]), np.array([-0.0])) == 1
    assert bits.identical(np.array([np.nan]), np.array([np.nan]))
    a, b, c = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.tif"
    tifffile.imwrite(a, data)
    tifffile.imwrite(b, data)
    tifffile.imwrite(c, other)
    assert verify_images_identical(a, b)["overall_identical"]
    changed = verify_images_identical(a, c)
    assert not changed["overall_identical"] and changed["pixels_different"] == 1

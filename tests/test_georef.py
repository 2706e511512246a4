"""Georeferenced slices as GIS tools see them: each slice opened with GDAL (rasterio) must show the source's CRS
and the source's transform shifted to the slice, for GeoTIFF slices and for PNG + world file + .aux.xml."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from tessq.cut import core, geo
from tessq.options import SliceOptions

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("pyproj")
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import Affine, from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402

H, W = 61, 83  # odd sizes, so slices differ in size and offsets are not round
USER_WKT = (
    'PROJCS["custom TM",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
    'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",13.5],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'
)
# (crs, transform, AREA_OR_POINT) of sources GDAL writes itself, so their tags are what GIS users have
GDAL_SOURCES: dict[str, tuple[Any, Affine, str]] = {
    "projected": ("EPSG:32633", from_origin(500000.0, 4200000.0, 10.0, 10.0), "Area"),
    "geographic": ("EPSG:4326", from_origin(10.0, 50.0, 0.001, 0.0005), "Area"),
    "transformation": ("EPSG:32633", Affine(10.0, 2.5, 500000.0, 1.5, -10.0, 4200000.0), "Area"),
    "point": ("EPSG:4326", from_origin(-3.0, 41.0, 0.01, 0.01), "Point"),
    "user_defined": (USER_WKT, from_origin(480000.0, 5100000.0, 2.0, 2.0), "Area"),
}


def _pixels(dtype: Any = np.uint8) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return ((x * 7 + y * 13) % 251).astype(dtype)


def _gdal_source(path: Path, case: str, dtype: Any = np.uint8, **extra: Any) -> Path:
    crs, transform, area_or_point = GDAL_SOURCES[case]
    profile = {"driver": "GTiff", "width": W, "height": H, "count": 1, "dtype": np.dtype(dtype).name}
    with rasterio.open(path, "w", crs=CRS.from_user_input(crs), transform=transform, **profile, **extra) as ds:
        ds.write(_pixels(dtype), 1)
        ds.update_tags(AREA_OR_POINT=area_or_point)
    return path


def _cut(source: Path, out: Path, fmt: str, world_files: bool = True) -> dict[str, Any]:
    core.tessellate_image(source, out, SliceOptions(num_pieces=4, min_size=0, world_files=world_files, format=fmt))
    return json.loads((out / "metadata.json").read_text())


def _open(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning would only hide the assertion below
        return rasterio.open(path)


def _assert_slices_match_source(source: Path, out: Path, meta: dict[str, Any], fmt: str) -> None:
    with _open(source) as src:
        src_crs, src_transform = src.crs, src.transform
        assert src_crs is not None and not src_transform.is_identity
        for rec in meta["slices"]:
            assert rec["format"] == fmt
            with _open(out / rec["file"]) as ds:
                assert ds.crs == src_crs, rec["file"]
                want = src_transform @ Affine.translation(rec["x0"], rec["y0"])
                assert ds.transform.almost_equals(want, precision=1e-9), (rec["file"], ds.transform, want)
                assert np.allclose(rec["geotransform"], want.to_gdal())  # metadata.json agrees with GDAL
                region = src.read(1, window=Window(rec["x0"], rec["y0"], rec["width"], rec["height"]))
                assert np.array_equal(ds.read(1), region)  # still bit-exact
                if fmt == "tiff":
                    assert ds.nodata == src.nodata or (np.isnan(ds.nodata) and np.isnan(src.nodata))
                    assert ds.tags().get("AREA_OR_POINT") == src.tags().get("AREA_OR_POINT")


@pytest.mark.parametrize("fmt", ["tiff", "png"])
@pytest.mark.parametrize("case", sorted(GDAL_SOURCES))
def test_gis_tools_read_crs_and_transform_of_every_slice(tmp_path: Path, case: str, fmt: str) -> None:
    source = _gdal_source(tmp_path / f"{case}.tif", case)
    out = tmp_path / "out"
    meta = _cut(source, out, fmt)
    _assert_slices_match_source(source, out, meta, fmt)
    with _open(source) as src:  # what tessq recorded is what GDAL reads from the source
        assert np.allclose(meta["georef"]["geotransform"], src.transform.to_gdal())
    for rec in meta["slices"]:
        assert (out / rec["world_file"]).is_file()
        if fmt == "png":
            assert rec["aux_xml"] == rec["file"] + ".aux.xml" and (out / rec["aux_xml"]).is_file()
        else:
            assert "aux_xml" not in rec  # the GeoTIFF keys inside the slice say it all
    assert "srs_note" not in meta["georef"]
    assert meta["georef"].get("slice_geotiff", False) is (fmt == "tiff")


def test_pixel_is_point_keeps_its_raster_type_and_tiepoint_convention(tmp_path: Path) -> None:
    source = _gdal_source(tmp_path / "point.tif", "point")
    meta = _cut(source, tmp_path / "out", "tiff")
    rec = meta["slices"][3]
    with tifffile.TiffFile(tmp_path / "out" / rec["file"]) as tif:
        tags = tif.pages[0].tags
        keys = geo._geokeys(tags.valueof(geo.GEO_KEY_DIRECTORY))
        tie = tags.valueof(geo.MODEL_TIEPOINT)
    assert keys[geo.GT_RASTER_TYPE] == 2
    # the tiepoint is the centre of the slice's first pixel, as in the source (GDAL's corner is half a pixel off)
    gt = rec["geotransform"]
    assert tie[:3] == (0.0, 0.0, 0.0)
    assert tie[3] == pytest.approx(gt[0] + 0.5 * gt[1]) and tie[4] == pytest.approx(gt[3] + 0.5 * gt[5])


def test_model_transformation_pixel_is_point_source(tmp_path: Path) -> None:
    # ModelTransformation under PixelIsPoint (tifffile-written; GDAL itself shifts the matrix by half a pixel)
    source = tmp_path / "mt_point.tif"
    matrix = (10.0, 2.0, 0.0, 500000.0, 1.0, -10.0, 0.0, 4200000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    keys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2, 3072, 0, 1, 32633)
    extratags = [(geo.MODEL_TRANSFORMATION, 12, 16, matrix, True), (geo.GEO_KEY_DIRECTORY, 3, len(keys), keys, True)]
    tifffile.imwrite(source, _pixels(np.uint16), metadata=None, extratags=extratags)
    for fmt in ("tiff", "png"):
        out = tmp_path / fmt
        meta = _cut(source, out, fmt)
        assert meta["georef"]["raster_type"] == "PixelIsPoint"
        _assert_slices_match_source(source, out, meta, fmt)


def test_dem_slices_are_geotiffs_with_nodata_and_metadata_but_not_stale_statistics(tmp_path: Path) -> None:
    source = _gdal_source(tmp_path / "dem.tif", "projected", np.float32, nodata=-9999.0)
    with rasterio.open(source, "r+") as ds:
        ds.update_tags(units="metre")
        ds.update_tags(1, STATISTICS_MINIMUM="0", STATISTICS_MAXIMUM="250", source_band="dem")
    out = tmp_path / "out"
    meta = _cut(source, out, "png")  # float: TIFF whatever was asked
    assert meta["output"]["format"] == "tiff" and {"GDAL_NODATA", "GDAL_METADATA"} <= set(meta["georef"]["tags"])
    _assert_slices_match_source(source, out, meta, "tiff")
    with _open(out / meta["slices"][1]["file"]) as ds:
        assert ds.nodata == -9999.0
        assert ds.tags()["units"] == "metre" and ds.tags(1)["source_band"] == "dem"
        assert "STATISTICS_MAXIMUM" not in ds.tags(1)  # the source's statistics are not the slice's


def test_streamed_tiff_slices_are_geotiffs_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _gdal_source(tmp_path / "big.tif", "transformation", np.uint16)
    monkeypatch.setattr(core, "BAND_LIMIT_BYTES", 1000)  # every slice goes through _stream_tiff_slice
    out = tmp_path / "out"
    _assert_slices_match_source(source, out, _cut(source, out, "tiff"), "tiff")


def test_gcp_source_slices_keep_shifted_gcps(tmp_path: Path) -> None:
    source = tmp_path / "gcps.tif"
    ties = (0, 0, 0, 500000, 4200000, 0, 82, 0, 0, 500820, 4200000, 0, 0, 60, 0, 500000, 4199400, 0)
    keys = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633)
    tags = [(geo.MODEL_TIEPOINT, 12, len(ties), ties, True), (geo.GEO_KEY_DIRECTORY, 3, len(keys), keys, True)]
    tifffile.imwrite(source, _pixels(), metadata=None, extratags=tags)
    out = tmp_path / "out"
    meta = _cut(source, out, "tiff")
    rec = meta["slices"][3]
    with _open(source) as src, _open(out / rec["file"]) as ds:
        (src_gcps, src_crs), (gcps, crs) = src.gcps, ds.gcps
        assert crs == src_crs and len(gcps) == len(src_gcps) == 3
        for a, b in zip(src_gcps, gcps, strict=True):
            assert (b.col, b.row, b.x, b.y) == (a.col - rec["x0"], a.row - rec["y0"], a.x, a.y)


def test_without_pyproj_or_gdal_the_world_file_is_written_and_metadata_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyproj", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "rasterio.io", None)
    source = _gdal_source(tmp_path / "p.tif", "projected")
    out = tmp_path / "out"
    meta = _cut(source, out, "png")
    assert "pyproj" in meta["georef"]["srs_note"]
    for rec in meta["slices"]:
        assert (out / rec["world_file"]).is_file() and "aux_xml" not in rec
    assert not list(out.glob("*.aux.xml"))


def test_pam_sidecar_matches_what_gdal_writes(tmp_path: Path) -> None:
    # GDAL's own PAM for a PNG with EPSG:4326: WKT1 with dataAxisToSRSAxisMapping="2,1" (lat/long CRS, x/y data)
    source = _gdal_source(tmp_path / "g.tif", "geographic")
    out = tmp_path / "out"
    meta = _cut(source, out, "png")
    text = (out / meta["slices"][0]["aux_xml"]).read_text()
    assert text.startswith('<PAMDataset>\n  <SRS dataAxisToSRSAxisMapping="2,1">GEOGCS["WGS 84"')
    assert text.rstrip().endswith("</SRS>\n</PAMDataset>")
    with _open(out / meta["slices"][0]["file"]) as ds:
        assert ds.crs.to_epsg() == 4326


def test_no_sidecars_without_world_files(tmp_path: Path) -> None:
    source = _gdal_source(tmp_path / "p.tif", "projected")
    out = tmp_path / "out"
    meta = _cut(source, out, "png", world_files=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [r["file"] for r in meta["slices"]] + ["metadata.json", "batch_metadata.json"]
    )


def test_an_epsg_code_pyproj_does_not_know_gets_what_gdal_reads_and_a_note(tmp_path: Path) -> None:
    source = tmp_path / "odd.tif"
    keys = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 30000)  # no such projected CRS in PROJ's database
    tags = [
        (geo.MODEL_PIXEL_SCALE, 12, 3, (1.0, 1.0, 0.0), True),
        (geo.MODEL_TIEPOINT, 12, 6, (0.0, 0.0, 0.0, 100.0, 200.0, 0.0), True),
        (geo.GEO_KEY_DIRECTORY, 3, len(keys), keys, True),
    ]
    tifffile.imwrite(source, _pixels(), metadata=None, extratags=tags)
    out = tmp_path / "out"
    meta = _cut(source, out, "png")
    assert "EPSG:30000" in meta["georef"]["srs_note"]
    _assert_slices_match_source(source, out, meta, "png")  # GDAL makes a LOCAL_CS of it, for source and slices

"""GeoTIFF georeferencing: the source's geotransform and CRS, each slice's shifted geotransform, GeoTIFF tags
for TIFF slices, and the sidecars of PNG slices (world file + GDAL PAM `.aux.xml` holding the SRS).

Geotransforms use GDAL's order (x_origin, x_pixel, x_rot, y_origin, y_rot, y_pixel) for the pixel corner.

TIFF slices are GeoTIFFs: the source's GeoKeyDirectory/GeoDoubleParams/GeoAsciiParams, GDAL_NODATA and
GDAL_METADATA (minus whole-image STATISTICS_*) copied, and ModelTiepoint+ModelPixelScale, ModelTransformation
or the GCPs shifted in *raster* space by the slice's (x0, y0). Shifting raster coordinates rather than
recomputing from the corner geotransform keeps the source's own convention (PixelIsArea/PixelIsPoint,
GTRasterTypeGeoKey copied unchanged), so any reader interprets a slice exactly as it interprets the source.

PNG slices cannot hold GeoTIFF keys, so `--world-files` writes `slice.pgw` (the affine transform) and
`slice.png.aux.xml`, a GDAL PAM file with `<SRS>`: GDAL reads PAM for every raster format, so gdalinfo,
rasterio and QGIS (which opens rasters through GDAL) see the CRS; ArcGIS reads `.aux.xml` too. No `.prj`:
GDAL's PNG driver does not read one (checked with GDAL 3.10: .pgw + .prj opens with no CRS), so it would be a
second copy of the SRS that the main tools ignore. The WKT comes from pyproj for an EPSG code (the optional
`geo` extra) or, for user-defined geokeys, from GDAL via rasterio when installed; without either the world file
is still written and metadata.json's georef says why there is no `.aux.xml`.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import tifffile

MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION, GEO_KEY_DIRECTORY = 33550, 33922, 34264, 34735
GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS, GDAL_METADATA, GDAL_NODATA = 34736, 34737, 42112, 42113
GT_RASTER_TYPE, GEOGRAPHIC_TYPE, PROJECTED_CS_TYPE = 1025, 2048, 3072
USER_DEFINED = 32767
WORLD_FILE_EXT = {"png": "pgw", "tif": "tfw", "tiff": "tfw"}
PAM_SUFFIX = ".aux.xml"
_GEO_TAG_NAMES = (
    (MODEL_PIXEL_SCALE, "ModelPixelScale"),
    (MODEL_TIEPOINT, "ModelTiepoint"),
    (MODEL_TRANSFORMATION, "ModelTransformation"),
    (GEO_KEY_DIRECTORY, "GeoKeyDirectory"),
    (GEO_DOUBLE_PARAMS, "GeoDoubleParams"),
    (GEO_ASCII_PARAMS, "GeoAsciiParams"),
)
_GDAL_TAG_NAMES = ((GDAL_NODATA, "GDAL_NODATA"), (GDAL_METADATA, "GDAL_METADATA"))
# Band statistics GDAL caches in GDAL_METADATA describe the whole source, not a slice: dropped from slices
_STATISTICS_ITEM = re.compile(r"\s*<Item\s+name=\"STATISTICS_[^\"]*\"[^>]*>.*?</Item>", re.DOTALL)


def _geokeys(directory: Any) -> dict[int, Any]:
    """Short-valued keys of a GeoKeyDirectory (the ones carrying codes such as EPSG numbers)."""
    keys: dict[int, Any] = {}
    if directory is None or len(directory) < 4:
        return keys
    values = [int(v) for v in directory]
    for i in range(values[3]):
        entry = values[4 + 4 * i : 8 + 4 * i]
        if len(entry) < 4:
            break
        key_id, location, _count, value = entry
        if location == 0:
            keys[key_id] = value
    return keys


def read_georef(tags: Any) -> dict[str, Any] | None:
    """Georeferencing of a page from its tags (tifffile TiffTags), or None when it has none usable."""
    scale = tags.valueof(MODEL_PIXEL_SCALE)
    tie = tags.valueof(MODEL_TIEPOINT)
    matrix = tags.valueof(MODEL_TRANSFORMATION)
    keys = _geokeys(tags.valueof(GEO_KEY_DIRECTORY))
    present = [name for tag, name in _GEO_TAG_NAMES if tags.valueof(tag) is not None]
    if not present:
        return None
    # GDAL also writes these without georeferencing (e.g. a nodata value), so they only join the list
    present += [name for tag, name in _GDAL_TAG_NAMES if tags.valueof(tag) is not None]
    gt: list[float] | None = None
    note = None
    if matrix is not None and len(matrix) >= 16:
        m = [float(v) for v in matrix]
        gt = [m[3], m[0], m[1], m[7], m[4], m[5]]
    elif scale is not None and tie is not None and len(scale) >= 2 and len(tie) >= 6:
        if len(tie) > 6:
            note = f"{len(tie) // 6} tiepoints: the first one and ModelPixelScale define the affine transform"
        sx, sy = float(scale[0]), float(scale[1])
        i, j, x, y = float(tie[0]), float(tie[1]), float(tie[3]), float(tie[4])
        gt = [x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy]
    elif tie is not None:
        note = "tiepoints (GCPs) without a pixel scale: no affine geotransform"
    raster_type = {1: "PixelIsArea", 2: "PixelIsPoint"}.get(keys.get(GT_RASTER_TYPE, 1), "PixelIsArea")
    if gt is not None and raster_type == "PixelIsPoint":
        # the model point is the pixel centre; shift to the corner as GDAL does by default
        gt[0] -= 0.5 * gt[1] + 0.5 * gt[2]
        gt[3] -= 0.5 * gt[4] + 0.5 * gt[5]
    epsg = keys.get(PROJECTED_CS_TYPE) or keys.get(GEOGRAPHIC_TYPE)
    if epsg in (None, 0, USER_DEFINED):
        epsg = None
    return {
        "geotransform": gt,
        "epsg": epsg,
        "crs": f"EPSG:{epsg}" if epsg else None,
        "raster_type": raster_type,
        "tags": present,
        "note": note,
    }


def slice_geotransform(gt: list[float], x0: int, y0: int) -> list[float]:
    """The geotransform of a slice whose top-left pixel is (x0, y0) in the source."""
    return [gt[0] + x0 * gt[1] + y0 * gt[2], gt[1], gt[2], gt[3] + x0 * gt[4] + y0 * gt[5], gt[4], gt[5]]


def world_file_text(gt: list[float]) -> str:
    """ESRI world file: A, D, B, E, then the centre of the top-left pixel (C, F)."""
    c = gt[0] + 0.5 * gt[1] + 0.5 * gt[2]
    f = gt[3] + 0.5 * gt[4] + 0.5 * gt[5]
    return "\n".join(repr(float(v)) for v in (gt[1], gt[4], gt[2], gt[5], c, f)) + "\n"


def world_file_name(slice_file: str) -> str:
    """slice_0_....png -> slice_0_....pgw (tif -> tfw)."""
    stem, _, ext = slice_file.rpartition(".")
    return f"{stem}.{WORLD_FILE_EXT.get(ext.lower(), 'wld')}"


# -- GeoTIFF tags of TIFF slices ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GeoTags:
    """The source page's raw GeoTIFF/GDAL tags, kept to make each TIFF slice a GeoTIFF (not in metadata.json)."""

    pixel_scale: tuple[float, ...] | None = None
    tiepoints: tuple[float, ...] | None = None
    transformation: tuple[float, ...] | None = None
    geokeys: tuple[int, ...] | None = None
    double_params: tuple[float, ...] | None = None
    ascii_params: str | None = None
    gdal_nodata: str | None = None
    gdal_metadata: str | None = None


def _floats(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def read_geotags(tags: Any) -> GeoTags | None:
    """The raw tags of a georeferenced page (tifffile TiffTags), or None when it has no GeoTIFF tags."""
    if all(tags.valueof(tag) is None for tag, _ in _GEO_TAG_NAMES):
        return None
    keys = tags.valueof(GEO_KEY_DIRECTORY)
    # tag.value, not valueof: tifffile parses GDAL_NODATA into a number in the page's dtype, but the slice
    # must carry the source's exact string (e.g. "nan", or "-9999" on a uint8 band that GDAL then ignores)
    raw = {code: getattr(tags.get(code), "value", None) for code, _ in _GDAL_TAG_NAMES}
    return GeoTags(
        pixel_scale=_floats(tags.valueof(MODEL_PIXEL_SCALE)),
        tiepoints=_floats(tags.valueof(MODEL_TIEPOINT)),
        transformation=_floats(tags.valueof(MODEL_TRANSFORMATION)),
        geokeys=None if keys is None else tuple(int(v) for v in keys),
        double_params=_floats(tags.valueof(GEO_DOUBLE_PARAMS)),
        ascii_params=_text(tags.valueof(GEO_ASCII_PARAMS)),
        gdal_nodata=_text(raw[GDAL_NODATA]),
        gdal_metadata=_text(raw[GDAL_METADATA]),
    )


def _shifted_model(g: GeoTags, x0: int, y0: int) -> list[tuple[Any, ...]]:
    """ModelTransformation, or ModelPixelScale + ModelTiepoint(s), for a slice at (x0, y0) of the source."""
    if g.transformation is not None and len(g.transformation) >= 16:
        # raster (i, j) of the slice is (i + x0, j + y0) of the source: only the translation column moves
        m = list(g.transformation[:16])
        for row in (0, 4, 8):
            m[row + 3] += m[row] * x0 + m[row + 1] * y0
        return [(MODEL_TRANSFORMATION, 12, 16, tuple(m), True)]
    tie, scale = g.tiepoints, g.pixel_scale
    out: list[tuple[Any, ...]] = []
    if tie is not None and len(tie) >= 6 and scale is not None and len(scale) >= 2 and scale[0] and scale[1]:
        # GDAL uses the first tiepoint with the scale (further ones are ignored): move it to the slice's (0, 0)
        i, j, k, x, y, z = tie[:6]
        out.append((MODEL_PIXEL_SCALE, 12, len(scale), scale, True))
        out.append((MODEL_TIEPOINT, 12, 6, (0.0, 0.0, k, x + (x0 - i) * scale[0], y - (y0 - j) * scale[1], z), True))
    elif tie is not None and len(tie) >= 6:
        # tiepoints without a scale are GCPs: each keeps its model point, its raster point moves with the slice
        gcps = [v - (x0 if n % 6 == 0 else y0 if n % 6 == 1 else 0) for n, v in enumerate(tie[: len(tie) // 6 * 6])]
        out.append((MODEL_TIEPOINT, 12, len(gcps), tuple(gcps), True))
        if scale is not None:
            out.append((MODEL_PIXEL_SCALE, 12, len(scale), scale, True))
    return out


def slice_gdal_metadata(text: str | None) -> str | None:
    """GDAL_METADATA for a slice: the source's items without the whole-image band statistics."""
    if text is None:
        return None
    cleaned = _STATISTICS_ITEM.sub("", text)
    return None if "<Item" not in cleaned else cleaned


def geotiff_tags(g: GeoTags, x0: int, y0: int) -> list[tuple[Any, ...]]:
    """tifffile `extratags` making the slice at (x0, y0) a GeoTIFF georeferenced like its part of the source."""
    out = _shifted_model(g, x0, y0)
    if g.geokeys is not None:
        out.append((GEO_KEY_DIRECTORY, 3, len(g.geokeys), g.geokeys, True))
    if g.double_params is not None:
        out.append((GEO_DOUBLE_PARAMS, 12, len(g.double_params), g.double_params, True))
    if g.ascii_params is not None:
        out.append((GEO_ASCII_PARAMS, "s", 0, g.ascii_params, True))
    if g.gdal_nodata is not None:
        out.append((GDAL_NODATA, "s", 0, g.gdal_nodata, True))
    metadata = slice_gdal_metadata(g.gdal_metadata)
    if metadata is not None:
        out.append((GDAL_METADATA, "s", 0, metadata, True))
    return out


# -- SRS sidecar of PNG slices -----------------------------------------------------------------------------
def _wkt_from_pyproj(epsg: int) -> tuple[str, str] | None:
    """(WKT, dataAxisToSRSAxisMapping) for an EPSG code, or None without pyproj."""
    try:
        import pyproj
    except ImportError:
        return None
    try:
        crs = pyproj.CRS.from_epsg(epsg)
    except pyproj.exceptions.CRSError:
        return None  # a code PROJ's database does not know: GDAL gets its chance next
    try:
        # WKT1 as GDAL writes it into PAM files itself; readable by GDAL 2 and ArcGIS too
        wkt = crs.to_wkt("WKT1_GDAL")
    except pyproj.exceptions.CRSError:
        wkt = None
    wkt = wkt or crs.to_wkt("WKT2_2019")
    # the mapping must describe the axes of the WKT as written, which for WKT1 can differ from the EPSG
    # definition (EPSG:3035 is northing/easting, its WKT1 without AXIS parses as easting/northing)
    return wkt, _axis_mapping(pyproj.CRS.from_wkt(wkt))


def _axis_mapping(crs: Any) -> str:
    """GDAL's traditional-GIS-order mapping: data is (x=east, y=north) even where the CRS says lat/long first."""
    axes = [a.direction.lower() for a in crs.axis_info[:2]]
    swapped = len(axes) == 2 and axes[0] in ("north", "south") and axes[1] in ("east", "west")
    return "2,1" if swapped else "1,2"


def _wkt_from_gdal(g: GeoTags) -> str | None:
    """WKT of the source's geokeys as GDAL reads them (a 1x1 GeoTIFF in memory), or None without rasterio."""
    try:
        from rasterio.io import MemoryFile
    except ImportError:
        return None
    keep = (GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS)
    buf = io.BytesIO()
    tags = [t for t in geotiff_tags(g, 0, 0) if t[0] in keep]
    tifffile.imwrite(buf, np.zeros((1, 1), np.uint8), metadata=None, extratags=tags)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: the probe has keys but no transform
            with MemoryFile(buf.getvalue()) as mem, mem.open() as ds:
                crs = ds.crs
        return crs.to_wkt() if crs else None
    except Exception:  # keys GDAL cannot make a CRS of: the slices still get their world files
        return None


def srs_wkt(epsg: int | None, g: GeoTags | None) -> tuple[str | None, str | None, str | None]:
    """(WKT, axis mapping or None, note): the source's SRS for a PAM sidecar, or (None, None, why not)."""
    if epsg:
        found = _wkt_from_pyproj(epsg)
        if found:
            return found[0], found[1], None
    wkt = _wkt_from_gdal(g) if g is not None and g.geokeys is not None else None
    if wkt:
        # no mapping attribute: GDAL then applies traditional GIS order, as wanted
        note = f"EPSG:{epsg}: pyproj missing or without this code, SRS as GDAL reads the geokeys" if epsg else None
        return wkt, None, note
    if epsg:
        why = "pyproj (pip install 'tessq[geo]') or GDAL (rasterio) found no WKT for it"
        return None, None, f"EPSG:{epsg} not written as .aux.xml: {why}; only the world file was written"
    if g is None or g.geokeys is None:
        return None, None, "no GeoKeyDirectory: the CRS is unknown, only the world file was written"
    why = "needs rasterio (GDAL) to read the geokeys, or GDAL could not"
    return None, None, f"user-defined CRS not written as .aux.xml: {why}; only the world file was written"


def pam_xml(wkt: str, axis_mapping: str | None) -> str:
    """A GDAL PAM file (`slice.png.aux.xml`) holding only the SRS; the world file keeps the transform."""
    attr = f' dataAxisToSRSAxisMapping="{axis_mapping}"' if axis_mapping else ""
    return f"<PAMDataset>\n  <SRS{attr}>{escape(wkt)}</SRS>\n</PAMDataset>\n"


def pam_name(slice_file: str) -> str:
    """slice_0_....png -> slice_0_....png.aux.xml (GDAL looks for the full file name plus .aux.xml)."""
    return slice_file + PAM_SUFFIX

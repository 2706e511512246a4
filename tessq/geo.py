"""GeoTIFF georeferencing: the source's affine geotransform and CRS, each slice's shifted geotransform,
and world-file (.pgw/.tfw) text.

Geotransforms use GDAL's order (x_origin, x_pixel, x_rot, y_origin, y_rot, y_pixel) for the pixel corner.
"""

from __future__ import annotations

from typing import Any

MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION, GEO_KEY_DIRECTORY = 33550, 33922, 34264, 34735
GT_RASTER_TYPE, GEOGRAPHIC_TYPE, PROJECTED_CS_TYPE = 1025, 2048, 3072
USER_DEFINED = 32767
WORLD_FILE_EXT = {"png": "pgw", "tif": "tfw", "tiff": "tfw"}


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
    present = [
        name
        for tag, name in (
            (MODEL_PIXEL_SCALE, "ModelPixelScale"),
            (MODEL_TIEPOINT, "ModelTiepoint"),
            (MODEL_TRANSFORMATION, "ModelTransformation"),
            (GEO_KEY_DIRECTORY, "GeoKeyDirectory"),
        )
        if tags.valueof(tag) is not None
    ]
    if not present:
        return None
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

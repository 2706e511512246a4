"""The PNG/TIFF decision for each kind of source: the reason a slice is TIFF, the notes, the TIFF layout and
the record in metadata.json.

Each test pins one rule of encode.slice_kind / SliceKind.describe that a mutation run showed untested.
"""

from __future__ import annotations

import numpy as np
import pytest

from tessq.cut.encode import TIFF_COMPRESSION, slice_kind

GRAY_TABLE = (np.arange(3 * 16).reshape(3, 16) % 16 * 257).astype(np.uint16)  # 8-bit entries


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("float32", 1, "minisblack"), "PNG cannot hold floating-point samples (float32)"),
        (("int16", 1, "minisblack"), "PNG cannot hold signed samples (int16)"),
        (("bool", 3, "rgb"), "PNG has no 3-sample 1-bit format"),
        (("uint32", 1, "minisblack"), "PNG holds at most 16-bit unsigned samples, image is uint32"),
        (
            ("uint8", 3, "minisblack", (2,)),
            "3 samples under minisblack (1 marked extra) do not fit gray or gray+alpha PNG",
        ),
        (("uint8", 2, "miniswhite"), "2 samples under miniswhite (0 marked extra) do not fit gray or gray+alpha PNG"),
        (("uint8", 4, "rgb"), "RGB with 4 samples does not fit RGB or RGBA PNG"),
        (("uint8", 5, "rgb", (2,)), "RGB with 5 samples does not fit RGB or RGBA PNG"),
        (("uint8", 2, "rgb"), "RGB with 2 samples does not fit RGB or RGBA PNG"),
        (("uint8", 3, "ycbcr"), "PNG has no ycbcr colour model"),
        (
            ("uint16", 1, "palette", (), GRAY_TABLE),
            "palette indices of uint16 with 1 sample(s) do not fit a palette PNG (at most 8-bit indices)",
        ),
        (
            ("uint8", 2, "palette", (), GRAY_TABLE),
            "palette indices of uint8 with 2 sample(s) do not fit a palette PNG (at most 8-bit indices)",
        ),
        (("uint8", 1, "palette"), "palette image without a colour table"),
        (
            ("uint8", 1, "palette", (), np.zeros((3, 257), np.uint16)),
            "colour table of shape (3, 257) does not fit PNG's PLTE",
        ),
        (
            ("uint8", 1, "palette", (), np.zeros((4, 16), np.uint16)),
            "colour table of shape (4, 16) does not fit PNG's PLTE",
        ),
        (("uint8", 1, "palette", (), np.zeros(48, np.uint16)), "colour table of shape (48,) does not fit PNG's PLTE"),
        (
            ("uint8", 1, "palette", (), GRAY_TABLE + 1),
            "colour table has 16-bit entries that PNG's 8-bit PLTE would round",
        ),
    ],
)
def test_a_slice_is_tiff_with_the_reason_png_cannot_hold_it(args: tuple, reason: str) -> None:
    kind = slice_kind(*args)
    assert (kind.format, kind.ext, kind.reason) == ("tiff", "tif", reason)


@pytest.mark.parametrize(
    ("args", "color_type", "depth"),
    [
        (("uint8", 1, "minisblack"), 0, 8),
        (("uint16", 1, "miniswhite"), 0, 16),
        (("uint8", 2, "minisblack", (2,)), 4, 8),
        (("uint8", 3, "rgb"), 2, 8),
        (("uint16", 4, "rgb", (1,)), 6, 16),
        (("bool", 1, "minisblack"), 0, 1),
        (("bool", 1, "palette", (), GRAY_TABLE[:, :2], 1), 3, 1),
        (("uint8", 1, "palette", (), GRAY_TABLE, 4), 3, 4),
        (("uint8", 1, "palette", (), GRAY_TABLE, 2), 3, 8),  # 16 entries need more than 2 bits: 8-bit indices
        (("uint8", 1, "palette", (), GRAY_TABLE, None), 3, 8),
        (("uint8", 1, "palette", (), GRAY_TABLE[:, :4], 2), 3, 2),
    ],
)
def test_pngs_get_the_colour_type_and_depth_of_their_samples(args: tuple, color_type: int, depth: int) -> None:
    kind = slice_kind(*args)
    assert (kind.format, kind.ext, kind.reason) == ("png", "png", None)
    assert (kind.color_type, kind.bit_depth, kind.samples) == (color_type, depth, args[1])


def test_png_notes_say_what_is_stored_unchanged() -> None:
    assert slice_kind("uint8", 1, "minisblack").note is None
    assert slice_kind("uint8", 1, "miniswhite").note == (
        "MINISWHITE: stored values kept (0 = white), a PNG viewer shows them inverted"
    )
    assert slice_kind("uint8", 4, "rgb", (1,)).note == (
        "associated (premultiplied) alpha stored as-is in the PNG alpha channel"
    )
    assert slice_kind("uint8", 4, "rgb", (2,)).note is None
    assert slice_kind("uint16", 1, "minisblack", (), None, 12).note == (
        "12-bit samples stored unchanged in 16-bit PNG samples"
    )
    assert slice_kind("uint16", 1, "minisblack", (), None, 16).note is None
    assert slice_kind("uint8", 1, "minisblack", (), None, 8).note is None
    assert slice_kind("uint8", 1, "palette", (), GRAY_TABLE, 4).note == (
        "4-bit palette indices with the colour table (16 entries) in PLTE"
    )


def test_a_palette_png_keeps_the_table_as_8_bit_rgb_triples() -> None:
    kind = slice_kind("uint8", 1, "palette", (), GRAY_TABLE[:, :2], 8)
    assert kind.palette == bytes([0, 0, 0, 1, 1, 1])
    assert kind.colormap is not None and kind.dtype == "uint8"
    assert slice_kind("uint8", 3, "rgb").palette is None


def test_tiff_slices_keep_writable_photometrics_and_say_when_one_is_written_as_minisblack() -> None:
    assert slice_kind("float32", 3, "rgb").tiff_photometric == "rgb"
    assert slice_kind("float32", 1, "miniswhite").tiff_photometric == "miniswhite"
    ycc = slice_kind("uint8", 3, "ycbcr")
    assert ycc.tiff_photometric == "minisblack"
    assert ycc.note == "source photometric ycbcr written as minisblack samples (values unchanged)"
    assert slice_kind("float32", 1, "minisblack").note is None


def test_a_requested_tiff_says_so_even_when_png_would_do() -> None:
    kind = slice_kind("uint8", 1, "minisblack", slice_format="tiff")
    assert (kind.format, kind.reason, kind.tiff_photometric) == (
        "tiff",
        "TIFF slices requested (format=tiff)",
        "minisblack",
    )
    assert slice_kind("float32", 1, "minisblack", slice_format="tiff").reason == "TIFF slices requested (format=tiff)"


def test_palette_tiff_slices_keep_their_table_when_tiff_can_hold_it() -> None:
    table16 = (np.arange(3 * 16).reshape(3, 16) * 999 % 65536).astype(np.uint16)
    kept = slice_kind("uint8", 1, "palette", (), table16)
    assert (kept.format, kept.tiff_photometric, kept.note) == ("tiff", "palette", None)
    assert kept.colormap is table16
    wide = slice_kind("uint16", 1, "palette", (), table16)
    assert (wide.tiff_photometric, wide.dtype) == ("palette", "uint16")


def test_a_one_bit_palette_tiff_is_written_with_8_bit_indices() -> None:
    table16 = (np.arange(6).reshape(3, 2) * 999).astype(np.uint16)
    kind = slice_kind("bool", 1, "palette", (), table16, 1, "tiff")
    assert (kind.tiff_photometric, kind.dtype) == ("palette", "uint8")
    assert kind.note == "1-bit palette indices written as 8-bit indices with the same colour table"


@pytest.mark.parametrize(
    "args",
    [
        ("uint8", 1, "palette"),  # no table
        ("int8", 1, "palette", (), GRAY_TABLE + 1),  # signed indices
        ("uint32", 1, "palette", (), GRAY_TABLE + 1),  # wider than 16 bits
        ("uint8", 2, "palette", (), GRAY_TABLE + 1),  # indices plus an extra sample
    ],
)
def test_palette_slices_tiff_cannot_hold_as_palette_are_minisblack_with_the_table_in_metadata(args: tuple) -> None:
    kind = slice_kind(*args, slice_format="tiff")
    assert (kind.tiff_photometric, kind.colormap) == ("minisblack", None)
    assert (
        kind.note == "palette indices (and any extra samples) written as minisblack; the colour table is in"
        " metadata.json"
    )


def test_rgb_with_fewer_than_three_samples_is_minisblack_in_tiff() -> None:
    assert slice_kind("uint8", 2, "rgb").tiff_photometric == "minisblack"
    assert slice_kind("uint8", 3, "rgb", slice_format="tiff").tiff_photometric == "rgb"


def test_multi_sample_one_bit_tiff_slices_are_planar_separate() -> None:
    assert slice_kind("bool", 3, "rgb").tiff_planar == "separate"
    assert slice_kind("bool", 1, "minisblack", slice_format="tiff").tiff_planar == "contig"
    assert slice_kind("uint8", 3, "rgb", slice_format="tiff").tiff_planar == "contig"


@pytest.mark.parametrize(
    ("args", "extras"),
    [
        (("float32", 3, "rgb"), ()),
        (("float32", 4, "rgb", (1,)), (1,)),
        (("float32", 5, "rgb", (2,)), (2, 0)),
        (("float32", 5, "rgb"), (0, 0)),
        (("float32", 2, "minisblack", (2,)), (2,)),
        (("float32", 1, "minisblack"), ()),
        (("uint8", 5, "separated", (2,)), (2,)),
        (("uint8", 4, "separated"), ()),
        (("uint8", 1, "separated", (2,)), ()),
        (("float32", 4, "cielab"), (0,)),
        (("float32", 3, "ycbcr"), (0, 0)),
    ],
)
def test_tiff_extra_samples_are_the_sources_then_unspecified(args: tuple, extras: tuple[int, ...]) -> None:
    assert slice_kind(*args, slice_format="tiff").tiff_extrasamples == extras


def test_the_metadata_record_of_a_png_kind() -> None:
    assert slice_kind("uint16", 3, "rgb").describe() == {
        "format": "png",
        "dtype": "uint16",
        "samples": 3,
        "png_color_type": 2,
        "png_bit_depth": 16,
    }
    assert slice_kind("uint8", 1, "miniswhite").describe()["note"].startswith("MINISWHITE")


def test_the_metadata_record_of_a_tiff_kind() -> None:
    assert slice_kind("float32", 1, "minisblack").describe() == {
        "format": "tiff",
        "dtype": "float32",
        "samples": 1,
        "tiff_photometric": "minisblack",
        "tiff_compression": TIFF_COMPRESSION[0],
        "tiff_planar": "contig",
        "reason": "PNG cannot hold floating-point samples (float32)",
    }
    assert TIFF_COMPRESSION == ("zlib", 6)
    assert slice_kind("uint8", 3, "ycbcr").describe()["note"].startswith("source photometric ycbcr")

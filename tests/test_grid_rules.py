"""Grid rules the coverage properties cannot see: tie-breaks, one-pixel images, errors, the grid record.

Each test pins one rule of tessq.cut.grid that a mutation run showed no other test would notice changing.
"""

from __future__ import annotations

import pytest

from tessq.cut.grid import GRID_EDGE_POLICY, TILE_EDGE_POLICY, choose_grid, describe_grid, grid_shape, plan_grid
from tessq.errors import ImageTooSmallError
from tessq.options import SliceOptions


def test_equally_square_grids_go_to_more_columns_on_a_square_or_landscape_image() -> None:
    assert choose_grid(2, 100, 100) == (1, 2)  # 50x100 and 100x50 pieces are equally far from square
    assert choose_grid(4, 200, 100) == (1, 4)  # 50x100 ties with 100x50: the landscape image gets columns


def test_equally_square_grids_go_to_more_rows_on_a_portrait_image() -> None:
    assert choose_grid(4, 100, 200) == (4, 1)  # 2x2 (50x100 pieces) ties with 4x1 (100x50)


def test_the_closest_to_square_wins_even_when_the_scores_round_to_the_same_integer() -> None:
    # 2x2 gives 900x500 pieces (|log| 0.59), 1x4 gives 450x1000 (0.80): only a fine comparison tells them apart
    assert choose_grid(4, 1800, 1000) == (2, 2)


def test_one_pixel_wide_or_high_images_are_cut_along_their_long_side() -> None:
    assert choose_grid(4, 1, 3) == (4, 1)
    assert choose_grid(4, 3, 1) == (1, 4)


def test_a_grid_of_no_pieces_is_refused_with_the_count() -> None:
    with pytest.raises(ValueError, match="number of pieces must be >= 1, got 0"):
        choose_grid(0, 10, 10)


@pytest.mark.parametrize("width,height", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("options", [SliceOptions(num_pieces=1), SliceOptions(tile_size=4)])
def test_an_image_without_pixels_on_either_side_is_too_small(width: int, height: int, options: SliceOptions) -> None:
    with pytest.raises(ImageTooSmallError) as caught:
        plan_grid(width, height, options, path="empty.tif")
    assert caught.value.path == "empty.tif"
    assert str(caught.value) == f"empty.tif: image has no pixels ({width}x{height})"


def test_the_error_names_the_image_or_says_image_when_no_path_is_given() -> None:
    with pytest.raises(ImageTooSmallError) as caught:
        plan_grid(0, 1, SliceOptions())
    assert str(caught.value) == "image: image has no pixels (0x1)"
    with pytest.raises(ImageTooSmallError) as too_many:
        plan_grid(3, 100, SliceOptions(grid=(1, 4)), path="x.tif")
    assert too_many.value.path == "x.tif"
    assert str(too_many.value) == "x.tif: a 1x4 grid (rows x cols) needs at least 4x1 px, image is 3x100"


def test_grid_shape_is_what_plan_grid_cuts() -> None:
    for options in (SliceOptions(tile_size=300, overlap=50), SliceOptions(grid=(3, 2)), SliceOptions(num_pieces=6)):
        boxes = plan_grid(1000, 700, options)
        assert grid_shape(1000, 700, options) == (boxes[-1].row + 1, boxes[-1].col + 1)
    assert grid_shape(1000, 700, SliceOptions(tile_size=300, overlap=50)) == (3, 4)
    assert grid_shape(1000, 700, SliceOptions(grid=(3, 2))) == (3, 2)


def test_the_grid_record_of_a_pieces_cut() -> None:
    options = SliceOptions(num_pieces=6)
    assert describe_grid(plan_grid(900, 600, options), options) == {
        "mode": "pieces",
        "rows": 2,
        "cols": 3,
        "pieces": 6,
        "requested_pieces": 6,
        "tile_size": None,
        "overlap": 0,
        "edge_policy": GRID_EDGE_POLICY,
    }
    assert GRID_EDGE_POLICY == "balanced"


def test_the_grid_record_of_a_tile_cut() -> None:
    options = SliceOptions(tile_size=256, overlap=16)
    boxes = plan_grid(1000, 500, options)
    assert describe_grid(boxes, options) == {
        "mode": "tile_size",
        "rows": 3,
        "cols": 5,
        "pieces": 15,
        "requested_pieces": None,
        "tile_size": 256,
        "overlap": 16,
        "edge_policy": TILE_EDGE_POLICY,
    }
    assert TILE_EDGE_POLICY == "shift-last-inward"


def test_the_grid_record_of_an_explicit_grid() -> None:
    options = SliceOptions(grid=(1, 3))
    record = describe_grid(plan_grid(90, 10, options), options)
    assert (record["mode"], record["rows"], record["cols"], record["pieces"]) == ("grid", 1, 3, 3)
    assert record["requested_pieces"] is None and record["edge_policy"] == GRID_EDGE_POLICY

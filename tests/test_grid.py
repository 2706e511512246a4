"""Grid geometry: grid choice, balanced edges, tile/overlap policy, names; exact coverage by property tests."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessq.cut.grid import balanced_edges, choose_grid, plan_grid, slice_name, tile_spans
from tessq.errors import ImageTooSmallError
from tessq.options import SliceOptions


def test_choose_grid_examples() -> None:
    assert choose_grid(8, 4096, 3072) == (2, 4)
    assert choose_grid(8, 2048, 3072) == (4, 2)
    assert choose_grid(7, 4000, 3000) == (1, 7)  # prime: strips across the long side
    assert choose_grid(7, 3000, 4000) == (7, 1)
    assert choose_grid(4, 1000, 1000) == (2, 2)
    assert choose_grid(1, 10, 10) == (1, 1)


def test_balanced_edges_differ_by_at_most_one() -> None:
    edges = balanced_edges(1001, 4)
    sizes = np.diff(edges)
    assert edges[0] == 0 and edges[-1] == 1001 and sizes.max() - sizes.min() <= 1


def test_explicit_grid_overrides_pieces() -> None:
    boxes = plan_grid(100, 50, SliceOptions(num_pieces=8, grid=(5, 1)))
    assert [(b.row, b.col) for b in boxes] == [(r, 0) for r in range(5)]


def test_too_small_for_grid_is_image_error() -> None:
    with pytest.raises(ImageTooSmallError, match="needs at least"):
        plan_grid(3, 100, SliceOptions(grid=(1, 4)), path="x.tif")


def test_tile_policy_shift_last_inward() -> None:
    assert tile_spans(1000, 256, 0) == [(0, 256), (256, 512), (512, 768), (744, 1000)]
    assert tile_spans(1000, 300, 50) == [(0, 300), (250, 550), (500, 800), (700, 1000)]
    assert tile_spans(100, 256, 10) == [(0, 100)]  # smaller than a tile: one tile of the full dimension
    assert tile_spans(512, 256, 0) == [(0, 256), (256, 512)]


def test_slice_name() -> None:
    box = plan_grid(10, 10, SliceOptions(grid=(1, 2)))[1]
    assert slice_name(box, "png") == "slice_1_5_0_10_10.png"


@settings(max_examples=80, deadline=None)
@given(w=st.integers(1, 400), h=st.integers(1, 400), n=st.integers(1, 24))
def test_pieces_cover_exactly_once(w: int, h: int, n: int) -> None:
    rows, cols = choose_grid(n, w, h)
    assert rows * cols == n
    if cols > w or rows > h:
        with pytest.raises(ImageTooSmallError):
            plan_grid(w, h, SliceOptions(num_pieces=n))
        return
    boxes = plan_grid(w, h, SliceOptions(num_pieces=n))
    assert len(boxes) == n and [b.index for b in boxes] == list(range(n))
    cover = np.zeros((h, w), dtype=np.int32)
    for b in boxes:
        cover[b.y0 : b.y1, b.x0 : b.x1] += 1
    assert (cover == 1).all()
    widths = {b.width for b in boxes}
    heights = {b.height for b in boxes}
    assert max(widths) - min(widths) <= 1 and max(heights) - min(heights) <= 1


@settings(max_examples=80, deadline=None)
@given(w=st.integers(1, 600), h=st.integers(1, 600), tile=st.integers(1, 300), data=st.data())
def test_tiles_cover_with_exact_sizes(w: int, h: int, tile: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    boxes = plan_grid(w, h, SliceOptions(tile_size=tile, overlap=overlap))
    cover = np.zeros((h, w), dtype=np.int32)
    for b in boxes:
        assert b.width == min(tile, w) and b.height == min(tile, h)  # no slivers, no padding
        assert 0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h
        cover[b.y0 : b.y1, b.x0 : b.x1] += 1
    assert (cover >= 1).all()
    # neighbours overlap by at least `overlap` (more only for the shifted last tile)
    xs = sorted({(b.x0, b.x1) for b in boxes})
    for (_, a1), (b0, _) in pairwise(xs):
        assert a1 - b0 >= overlap

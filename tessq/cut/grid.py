"""Pure geometry: whether an image of W x H pixels can be cut (`refusal`), into which boxes, and what each
box's file is called. No I/O and no pixels here, so every rule (eligibility, grid choice, balanced edges,
tile/overlap edge policy) is testable alone; scan, core and plan_grid all ask `refusal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from tessq.errors import ImageTooSmallError
from tessq.options import SliceOptions

# Tile mode edge policy, recorded in metadata.json: every tile is exactly tile_size (no slivers, no padding);
# tiles advance by stride = tile_size - overlap and the last tile of a row/column is shifted inward so that it
# ends exactly on the image edge (it then overlaps its neighbour by more than `overlap`). A dimension smaller
# than tile_size gets a single tile spanning the whole dimension.
TILE_EDGE_POLICY = "shift-last-inward"
GRID_EDGE_POLICY = "balanced"  # piece sizes differ by at most 1 px: edges at round(k * W / cols)


@dataclass(frozen=True)
class Box:
    """One slice: its row-major index, grid position, and pixel box (x1, y1 exclusive)."""

    index: int
    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def choose_grid(n: int, width: int, height: int) -> tuple[int, int]:
    """rows x cols == n whose tiles are closest to square for a width x height image.

    Among the divisor pairs, minimise |log(tile_w / tile_h)|; ties go to more columns on landscape images
    and more rows on portrait ones. A prime n therefore gives strips cut along the long side.
    """
    if n < 1:
        raise ValueError(f"number of pieces must be >= 1, got {n}")
    landscape = width >= height
    best: tuple[float, int, tuple[int, int]] | None = None
    for rows in range(1, n + 1):
        if n % rows:
            continue
        cols = n // rows
        score = abs(math.log((max(width, 1) / cols) / (max(height, 1) / rows)))
        tie = -cols if landscape else -rows
        key = (round(score, 12), tie, (rows, cols))
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2]


def balanced_edges(length: int, parts: int) -> list[int]:
    """parts+1 edges from 0 to length at round(k * length / parts), in integer arithmetic (no float drift)."""
    return [(2 * k * length + parts) // (2 * parts) for k in range(parts + 1)]


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/stop pairs of fixed-size tiles along one axis under the shift-last-inward policy."""
    if length <= tile:
        return [(0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return [(s, s + tile) for s in starts]


def grid_shape(width: int, height: int, options: SliceOptions) -> tuple[int, int]:
    """(rows, cols) that plan_grid will produce."""
    if options.tile_size is not None:
        return (
            len(tile_spans(height, options.tile_size, options.overlap)),
            len(tile_spans(width, options.tile_size, options.overlap)),
        )
    if options.grid is not None:
        return options.grid[0], options.grid[1]
    return choose_grid(options.num_pieces, width, height)


@dataclass(frozen=True)
class Refusal:
    """Why an image is not cut: an ImageError kind (the scan's skip reason, the worker's error type) and the
    message a user reads (without the file's path, which the caller adds)."""

    kind: str
    message: str


def refusal(width: int, height: int, options: SliceOptions) -> Refusal | None:
    """The one eligibility decision: None when an image of width x height px is cut with `options`."""
    if width < options.min_size or height < options.min_size:
        return Refusal(
            ImageTooSmallError.kind, f"{width}x{height} px is below the minimum size of {options.min_size} px"
        )
    return grid_refusal(width, height, options)


def grid_refusal(width: int, height: int, options: SliceOptions) -> Refusal | None:
    """The geometric part of `refusal` (what plan_grid needs whatever the minimum size): no empty piece."""
    if width < 1 or height < 1:
        return Refusal(ImageTooSmallError.kind, f"image has no pixels ({width}x{height})")
    if options.tile_size is None:
        rows, cols = grid_shape(width, height, options)
        if cols > width or rows > height:
            return Refusal(
                ImageTooSmallError.kind,
                f"a {rows}x{cols} grid (rows x cols) needs at least {cols}x{rows} px, image is {width}x{height}",
            )
    return None


def plan_grid(width: int, height: int, options: SliceOptions, *, path: str = "image") -> list[Box]:
    """All boxes for the image in row-major order; raises ImageTooSmallError when a piece would be empty."""
    refused = grid_refusal(width, height, options)
    if refused is not None:
        raise ImageTooSmallError(path, refused.message)
    if options.tile_size is not None:
        ys = tile_spans(height, options.tile_size, options.overlap)
        xs = tile_spans(width, options.tile_size, options.overlap)
    else:
        rows, cols = grid_shape(width, height, options)
        xe, ye = balanced_edges(width, cols), balanced_edges(height, rows)
        xs = list(pairwise(xe))
        ys = list(pairwise(ye))
    boxes: list[Box] = []
    for r, (y0, y1) in enumerate(ys):
        for c, (x0, x1) in enumerate(xs):
            boxes.append(Box(len(boxes), r, c, x0, y0, x1, y1))
    return boxes


def describe_grid(boxes: list[Box], options: SliceOptions) -> dict[str, Any]:
    """The grid section of metadata.json."""
    rows = max(b.row for b in boxes) + 1
    cols = max(b.col for b in boxes) + 1
    tiled = options.tile_size is not None
    return {
        "mode": options.mode,
        "rows": rows,
        "cols": cols,
        "pieces": len(boxes),
        "requested_pieces": options.num_pieces if options.mode == "pieces" else None,
        "tile_size": options.tile_size,
        "overlap": options.overlap,
        "edge_policy": TILE_EDGE_POLICY if tiled else GRID_EDGE_POLICY,
    }


def slice_name(box: Box, ext: str) -> str:
    """slice_<i>_<x0>_<y0>_<x1>_<y1>.<ext>: the output contract's file name."""
    return f"slice_{box.index}_{box.x0}_{box.y0}_{box.x1}_{box.y1}.{ext}"

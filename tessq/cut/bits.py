"""Bit-for-bit comparison of pixel arrays: what "lossless" means for the self-check and for verify.

Floating-point samples are compared as their bit patterns: NaN, the usual nodata of float rasters, is never
equal to itself by value but matches itself here (payload included), and -0.0 differs from 0.0."""

from __future__ import annotations

import numpy as np


def bit_view(array: np.ndarray) -> np.ndarray:
    """The array's samples as unsigned integers of the same width and native byte order (floats and complex
    as their IEEE bit patterns; complex128 as two uint64 on a new last axis); other dtypes unchanged."""
    if array.dtype.kind not in "fc":
        return array
    native = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("="), copy=False))
    if native.dtype.itemsize > 8:  # complex128: (re, im) bit patterns on a new last axis
        return native.view(np.uint64).reshape(*native.shape, 2)
    return native.view(np.dtype(f"u{native.dtype.itemsize}"))


def identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, same dtype kind and width, same bits in every sample."""
    if a.shape != b.shape or a.dtype.kind != b.dtype.kind or a.dtype.itemsize != b.dtype.itemsize:
        return False
    return bool(np.array_equal(bit_view(a), bit_view(b)))


def count_different(a: np.ndarray, b: np.ndarray) -> int:
    """How many samples of two same-shaped arrays differ in their bits (by value where the dtypes differ)."""
    if a.dtype.kind in "fc" and a.dtype.kind == b.dtype.kind and a.dtype.itemsize == b.dtype.itemsize:
        return int(np.count_nonzero(bit_view(a) != bit_view(b)))
    return int(np.count_nonzero(a != b))

"""The worker's self-check: every slice just written is decoded again by an independent reader (libpng via
imagecodecs for PNG, tifffile for TIFF) and compared with the pixels that were encoded, before the commit.

A mismatch raises SelfCheckError naming the slice, so the image fails with type `self_check` instead of done.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from tessq.encode import SliceKind, stored_values
from tessq.errors import SelfCheckError


def decoded_view(array: np.ndarray, kind: SliceKind) -> np.ndarray:
    """What the independent decoder returns for these pixels: libpng expands palette indices to their 8-bit
    RGB colours and scales 1-bit gray to 0/255; TIFF slices come back as stored."""
    if kind.format == "png":
        if kind.color_type == 3 and kind.palette is not None:
            table = np.frombuffer(kind.palette, dtype=np.uint8).reshape(-1, 3)
            return table[np.asarray(array, dtype=np.intp)]
        if kind.color_type == 0 and kind.bit_depth == 1:
            return np.asarray(array, dtype=bool).view(np.uint8) * np.uint8(255)
        return array
    return stored_values(array, kind)


def decode(data: bytes | Path, kind: SliceKind) -> np.ndarray:
    """Decode a slice file (bytes or path) with the independent reader, in our (height, width[, samples]) layout."""
    if isinstance(data, Path):
        data = data.read_bytes()
    if kind.format == "png":
        return np.asarray(imagecodecs.png_decode(data))
    decoded = tifffile.imread(io.BytesIO(data))
    if kind.tiff_planar == "separate" and decoded.ndim == 3:
        decoded = np.moveaxis(decoded, 0, -1)
    if not decoded.dtype.isnative:
        decoded = decoded.astype(decoded.dtype.newbyteorder("="))
    return decoded


def check_slice(data: bytes, array: np.ndarray, kind: SliceKind, name: str, source: Any) -> None:
    """Raise SelfCheckError unless `data` decodes to exactly `array` (the pixels encoded into slice `name`)."""
    expected = decoded_view(array, kind)
    try:
        decoded = decode(data, kind)
    except Exception as exc:  # an encoder bug that writes an unreadable file is the same failure
        raise SelfCheckError(source, f"slice {name} does not decode ({type(exc).__name__}: {exc})") from exc
    if decoded.shape != expected.shape:
        raise SelfCheckError(
            source, f"slice {name} decodes to shape {decoded.shape}, the encoded pixels are {expected.shape}"
        )
    if not np.array_equal(decoded, expected):
        differ = int(np.count_nonzero(decoded != expected))
        raise SelfCheckError(source, f"slice {name} decodes to different pixels ({differ:,} values differ)")


class StreamDigest:
    """Digest of the pixels fed to a streamed slice, chunk by chunk, in the decoder's view (for slices too big
    to keep in memory: the written file is decoded once and its digest compared)."""

    def __init__(self, kind: SliceKind) -> None:
        self.kind = kind
        self._hash = hashlib.blake2b(digest_size=20)

    def update(self, chunk: np.ndarray) -> None:
        self._hash.update(np.ascontiguousarray(decoded_view(chunk, self.kind)).data)

    def check_file(self, path: Path, name: str, source: Any) -> None:
        try:
            decoded = np.ascontiguousarray(decode(path, self.kind))
        except Exception as exc:
            raise SelfCheckError(source, f"slice {name} does not decode ({type(exc).__name__}: {exc})") from exc
        if hashlib.blake2b(decoded.data, digest_size=20).digest() != self._hash.digest():
            raise SelfCheckError(source, f"slice {name} decodes to different pixels than were encoded")

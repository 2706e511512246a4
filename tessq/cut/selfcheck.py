"""The worker's self-check: slices just written are decoded again by an independent reader (libpng via
imagecodecs for PNG, tifffile for TIFF; a streamed PNG slice by pngdecode's streaming decoder as it is
written, see StreamDigest) and compared with the pixels that were encoded, before the commit.

A mismatch raises SelfCheckError naming the slice, so the image fails with type `self_check` instead of done.
Decoding costs about as much as encoding (libpng decode ~1.0x tessq's encode per slice, measured), so the
default mode `sample` decodes every slice where the wrong-slice bugs of real files live (every TIFF slice,
palette and sub-byte PNGs) and, on the plain 8/16-bit PNG path, one slice per image, plus the first and the
last slice of the first image of each slice kind a worker process meets; `full` decodes every slice.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

from tessq.cut.bits import count_different, identical
from tessq.cut.encode import PngSettings, SliceKind, png_settings, stored_values
from tessq.cut.pngdecode import CHANNELS, PngRowDecoder, UnsupportedPng
from tessq.errors import SelfCheckError
from tessq.options import SliceOptions

# Slice kinds (with their PNG settings) whose every slice of one image decoded right in this process.
_proven: set[tuple[Any, ...]] = set()


def kind_key(kind: SliceKind, options: SliceOptions, png: PngSettings | None = None) -> tuple[Any, ...]:
    settings = (png or png_settings(options)) if kind.format == "png" else None
    return (
        kind.format,
        kind.dtype,
        kind.samples,
        kind.color_type,
        kind.bit_depth,
        kind.tiff_planar,
        kind.tiff_photometric,
        settings,
    )


def always_full(kind: SliceKind) -> bool:
    """Kinds off the plain PNG path: every slice decoded in `sample` mode too (where real files broke)."""
    return kind.format != "png" or kind.color_type == 3 or (kind.bit_depth or 8) < 8


@dataclass
class Plan:
    """Which slices of one image the self-check decodes: all, the sampled one (and the first and last slice while
    the image proves its kind), or none."""

    key: tuple[Any, ...]
    every: bool
    sampled: int | None
    proving: tuple[int, ...] = ()

    def wants(self, index: int) -> bool:
        return self.every or index == self.sampled or index in self.proving

    def passed(self) -> None:
        """The image's checked slices all decoded right: a kind checked in full, or on its first and last slice
        (the corner and the edge widths of the grid), is proven for this process."""
        if self.every or self.proving:
            _proven.add(self.key)


def plan(
    mode: str, kind: SliceKind, options: SliceOptions, n_slices: int, token: str, png: PngSettings | None = None
) -> Plan:
    """The check for one image; `token` (its path) picks the sampled slice, the same one on every rerun; `png`
    is the image's png_settings when the caller has them."""
    key = kind_key(kind, options, png)
    if mode == "off" or n_slices == 0:
        return Plan(key, False, None)
    if mode == "full" or always_full(kind):
        return Plan(key, True, None)
    sampled = zlib.crc32(token.encode("utf-8", "surrogateescape")) % n_slices
    if key not in _proven:  # a kind's first image: the first and the last slice too (encoder bugs are per kind)
        return Plan(key, False, sampled, (0, n_slices - 1))
    return Plan(key, False, sampled)


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
    if not identical(decoded, expected):
        differ = count_different(decoded, expected)
        raise SelfCheckError(source, f"slice {name} decodes to different pixels ({differ:,} values differ)")


class StreamDigest:
    """The self-check of a slice too big to keep in memory (streamed band by band): the pixels fed to the encoder
    are digested chunk by chunk (`update`), and so are the pixels its written bytes decode to.

    Plain 8/16-bit PNG slices are decoded while they are written (`written`: the writer's bytes, in order) by
    tessq's own streaming decoder (pngdecode.PngRowDecoder: ISA-L inflate, numpy unfiltering, chunk CRCs; it
    shares no code with the encoder and is tested against libpng), on a thread of its own when a codec pool is
    running, so the check holds a few MiB and overlaps the encoding instead of decoding 2x the slice at the
    end. Other kinds, or a PNG that decoder declines, are decoded whole by libpng/tifffile from the file
    (`check_file`), one slice at a time."""

    QUEUE = 1  # written chunks (<= one 16 MiB IDAT each) waiting for the decoding thread, beside the one decoded

    def __init__(self, kind: SliceKind, threaded: bool = False) -> None:
        self.kind = kind
        self._hash = hashlib.blake2b(digest_size=20)
        self._decoded = hashlib.blake2b(digest_size=20)
        self._decoder: PngRowDecoder | None = None
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        if kind.format == "png" and kind.color_type in CHANNELS and (kind.bit_depth or 8) in (8, 16):
            self._decoder = PngRowDecoder(self._digest_rows)
            if threaded:
                self._queue = queue.Queue(self.QUEUE)
                self._thread = threading.Thread(target=self._decode_queued, name="slice-check", daemon=True)
                self._thread.start()

    def update(self, chunk: np.ndarray) -> None:
        self._hash.update(np.ascontiguousarray(decoded_view(chunk, self.kind)).data)

    def written(self, data: bytes) -> None:
        """Bytes the writer has just written (immutable: they may wait in the queue)."""
        if self._queue is not None:
            self._queue.put(data)
        elif self._decoder is not None and self._error is None:
            self._decode(data)

    def _decode(self, data: bytes) -> None:
        try:
            assert self._decoder is not None
            self._decoder.feed(data)
        except BaseException as exc:  # kept for check_file: it decides between a fallback and a failure
            self._error = exc

    def _decode_queued(self) -> None:
        assert self._queue is not None
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is None:
                self._decode(data)
            del data  # not held while waiting for the next chunk

    def _digest_rows(self, rows: np.ndarray) -> None:
        if (self.kind.bit_depth or 8) == 16:
            rows = rows.view(">u2").astype(np.uint16)  # PNG's big-endian samples, in the decoder's native view
        self._decoded.update(rows.data)

    def stop(self) -> None:
        """End the decoding thread (after the slice's last byte, or when the cut is abandoned)."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def check_file(self, path: Path, name: str, source: Any) -> None:
        self.stop()
        if self._decoder is not None and not isinstance(self._error, UnsupportedPng):
            if self._error is None:
                try:
                    self._decoder.finish()
                except ValueError as exc:
                    self._error = exc
            if self._error is not None:
                raise SelfCheckError(
                    source, f"slice {name} does not decode ({type(self._error).__name__}: {self._error})"
                )
            if self._decoded.digest() != self._hash.digest():
                raise SelfCheckError(source, f"slice {name} decodes to different pixels than were encoded")
            return
        try:
            decoded = np.ascontiguousarray(decode(path, self.kind))
        except Exception as exc:
            raise SelfCheckError(source, f"slice {name} does not decode ({type(exc).__name__}: {exc})") from exc
        if hashlib.blake2b(decoded.data, digest_size=20).digest() != self._hash.digest():
            raise SelfCheckError(source, f"slice {name} decodes to different pixels than were encoded")

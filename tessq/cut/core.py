"""One image end to end: read the TIFF band by band, cut it into slices, encode them, write the image folder
atomically with metadata.json (the tessellation) and batch_metadata.json (how it was made).

Memory is bounded by the slice: a grid row is read whole only when it fits the band limit; otherwise strips or
tile rows stream into one PNG encoder per column, so no strip is decoded twice and no band is held whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path
from typing import IO, Any, Protocol, cast

import numpy as np

from tessq import __version__, defaults, hashing, storage
from tessq.cut import encode, geo, selfcheck
from tessq.cut.grid import Box, describe_grid, plan_grid, refusal, slice_name
from tessq.cut.tiff import RegionReader, TiffInfo
from tessq.defaults import BATCH_METADATA_FILENAME, METADATA_FILENAME
from tessq.errors import ImageTooSmallError, SourceChangedError, SourceModifiedError
from tessq.options import SliceOptions
from tessq.storage.folder import AtomicFolder, cleanup_stale

# A whole grid row is read at once below this size (and below options.memory_budget); above it, streaming.
# 96 MiB keeps ordinary photos (a 4096x3072 RGB band is 19 MB) on the fast one-shot path while a 16384x12288
# RGB image (300 MB bands) streams, within the 2 x slice + 200 MB target.
BAND_LIMIT_BYTES = 96 * 1024 * 1024
# Rows read per streaming step: at least one strip/tile row, about this many bytes.
STREAM_CHUNK_BYTES = 8 * 1024 * 1024
STREAM_TIFF_TILE = 256
HASH_THREAD_MIN_BYTES = 64 * 1024 * 1024  # sources from this size are hashed by a thread beside the slicing

# What an image is read from: a local file, an S3 object, or a member of an archive (all stat()-, open()- and
# resolve()-able, and accepted by tiff.RegionReader).
Source = storage.FileSource


class SourceStat(Protocol):
    """The part of a stat result core compares (os.stat_result, remote.ObjectStat, archive.MemberStat)."""

    @property
    def st_size(self) -> int: ...

    @property
    def st_mtime(self) -> float: ...

    @property
    def st_mtime_ns(self) -> int: ...


class _Timer:
    """Accumulates seconds per phase (read/encode/write)."""

    def __init__(self) -> None:
        self.totals = {"read_s": 0.0, "encode_s": 0.0, "write_s": 0.0, "check_s": 0.0}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start


class _SourceHasher:
    """The source file's digest (tessq.hashing). A big source is hashed by a thread beside the slicing (hashlib releases
    the GIL), so a lone worker on a many-core machine does not wait for it; a small one is hashed inline,
    where a thread would cost more in start-up and GIL hand-offs than it overlaps."""

    def __init__(self, path: Source, size: int) -> None:
        self.path = path
        self.digest: str | None = getattr(path, "spool_sha256", None)  # an S3 source hashed while fetched
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self.digest is None and size >= HASH_THREAD_MIN_BYTES:
            self._thread = threading.Thread(target=self._hash, name="source-sha256", daemon=True)
            self._thread.start()

    def _hash(self) -> None:
        try:
            with self.path.open("rb") as fh:
                self.digest = hashing.stream_digest(fh)
        except BaseException as exc:  # re-raised in the caller's thread
            self.error = exc

    def result(self) -> str:
        if self._thread is not None:
            self._thread.join()
        elif self.digest is None and self.error is None:
            self._hash()
        if isinstance(self.error, FileNotFoundError):
            raise SourceChangedError(str(self.path), "file vanished while it was being read")
        if self.error is not None:
            raise self.error
        assert self.digest is not None
        return self.digest


def tool_versions() -> dict[str, str]:
    """Versions recorded in both metadata files."""
    import imagecodecs
    import tifffile

    import tessq

    tessq_version = getattr(tessq, "__version__", "unknown")
    return {
        "tessq": tessq_version,
        "tifffile": tifffile.__version__,
        "imagecodecs": imagecodecs.__version__,
        "numpy": np.__version__,
    }


@dataclass(frozen=True)
class JobImage:
    """Which job's image is being cut, and by whom: the provenance written to batch_metadata.json."""

    input_dir: str
    output_dir: str
    image_id: int
    worker: str
    attempt: int


@dataclass
class CutResult:
    """What cutting one image produced: metadata.json's content, the per-slice records and the job system's
    summary fields. `to_dict()` is the dict tessellate_image has always returned."""

    metadata: dict[str, Any]
    records: list[dict[str, Any]]
    pixel_bytes: int
    dimensions: tuple[int, int]  # (width, height) of the source image
    source_state: tuple[int, float]  # (size, mtime) the source had when the cut began
    timings: dict[str, float]
    image_dir: str  # the final folder (or its URL, for an s3:// output)
    format: str  # "png" or "tiff"

    @property
    def n_slices(self) -> int:
        return len(self.records)

    @property
    def bytes_out(self) -> int:
        return sum(int(r["bytes"]) for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        """metadata.json's content, except that "slices" is the count and the records are under "slice_records"."""
        return {
            **self.metadata,
            "slice_records": self.records,
            "slices": self.n_slices,
            "bytes_out": self.bytes_out,
            "pixel_bytes": self.pixel_bytes,
            "timings": self.timings,
            "image_dir": self.image_dir,
            "format": self.format,
        }


def tessellate_image(
    source: str | os.PathLike[str] | storage.Source,
    image_dir: str | Path,
    options: SliceOptions | None = None,
    *,
    relative_path: str | None = None,
    batch_metadata: dict[str, Any] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Produce the complete image folder for `source` at `image_dir`; returns metadata plus a summary.

    `before_commit` runs just before the folder is renamed into place and may raise to abort it (the job
    system checks there that it still holds the image's lease, so a stalled worker never overwrites newer output).

    Raises ImageError subclasses for bad input (corrupt, unsupported, too small/large, source changed);
    OSError from the output side (ENOSPC, EIO) propagates unchanged. `source` may be an s3:// URL or a
    remote.RemoteSource: it is then read by ranged GETs (or from its spooled copy) and stat'ed by HeadObject.
    """
    prepared = prepare_image(source, image_dir, options, relative_path=relative_path, batch_metadata=batch_metadata)
    return prepared.commit(before_commit).to_dict()


class PreparedImage:
    """A complete image folder still under its temporary name: `commit()` makes it visible, `abandon()` drops it.

    The job system commits on another thread while the worker cuts the next image, so the fsync waits and the
    rename of one image overlap the encoding of the next."""

    def __init__(self, folder: AtomicFolder, result: CutResult, source: Source, before: SourceStat) -> None:
        self.folder, self.result, self.source, self.before = folder, result, source, before

    def commit(self, before_commit: Callable[[], None] | None = None) -> CutResult:
        """Check the source is unchanged and `before_commit` (the lease), make it durable, rename it into place."""
        try:
            _check_unchanged(self.source, self.before)
            if before_commit is not None:
                before_commit()
            self.folder.commit()
        except BaseException:
            self.folder.abandon()
            raise
        return self.result

    def abandon(self) -> None:
        self.folder.abandon()


def prepare_image(
    source: str | os.PathLike[str] | storage.Source,
    image_dir: str | Path,
    options: SliceOptions | None = None,
    *,
    relative_path: str | None = None,
    batch_metadata: dict[str, Any] | None = None,
    job: JobImage | None = None,
) -> PreparedImage:
    """Everything of `tessellate_image` but the commit: slices, metadata.json and batch_metadata.json written
    in a temporary folder beside `image_dir`; removed again on any error. Whether the source changed meanwhile
    is checked by the commit, the last moment before the folder becomes visible.

    A job's image (`job`) also gets its provenance in batch_metadata.json, and what crashed attempts left
    beside `image_dir` is cleaned (or an old folder moved aside by a crash put back) first."""
    options = options or SliceOptions()
    started = time.perf_counter()
    source, image_dir = _as_source(source), Path(image_dir)
    before = _stat_source(source, scanned=job is not None)
    batch = dict(batch_metadata or {})
    if job is not None:
        cleanup_stale(image_dir.parent, image_dir.name)
        batch = {**job_batch_metadata(job, options, before), **batch}
    timer = _Timer()
    with RegionReader(source, options.series, options.level, options.memory_budget) as reader:
        info = reader.info
        refused = refusal(info.width, info.height, options)
        if refused is not None:
            raise ImageTooSmallError(str(source), refused.message)
        boxes = plan_grid(info.width, info.height, options, path=str(source))
        colormap = reader.colormap()
        kind = encode.slice_kind(
            info.dtype,
            info.samples,
            info.decoded_photometric,
            info.extra_samples,
            colormap,
            info.bits_per_sample,
            options.format,
        )
        georef = geo.read_georef(reader.page.tags)
        geotags = geo.read_geotags(reader.page.tags) if georef else None
        if georef is not None and geotags is not None and kind.format == "tiff":
            georef["slice_geotiff"] = True  # the slices carry the geokeys themselves
        png = encode.png_settings(options) if kind.format == "png" else None
        hasher = _SourceHasher(source, before.st_size)
        folder = AtomicFolder.create(image_dir)
        try:
            check = selfcheck.plan(options.self_check, kind, options, len(boxes), str(source), png)
            records = _write_slices(_Cut(reader, kind, options, png, folder, timer, geotags, check), boxes)
            if georef and georef.get("geotransform"):
                _add_georef(records, georef, geotags, kind, folder, options.world_files, timer)
            source_sha = hasher.result()
            metadata = build_metadata(
                info,
                source,
                before,
                source_sha,
                relative_path,
                boxes,
                options,
                kind,
                png,
                records,
                georef,
                colormap,
                reader.warnings,
            )
            timings = {k: round(v, 4) for k, v in timer.totals.items()}
            timings["total_s"] = round(time.perf_counter() - started, 4)
            batch["timings"] = {**batch.get("timings", {}), **timings}
            batch["versions"] = {**batch.get("versions", {}), **tool_versions()}
            batch.setdefault("slice_options", options.to_dict())
            with timer.phase("write_s"):
                folder.write(BATCH_METADATA_FILENAME, _json_bytes(batch))
                # metadata.json last: a folder holding it is complete (and the rename makes it visible)
                folder.write(METADATA_FILENAME, _json_bytes(metadata))
        except BaseException:
            folder.abandon()
            raise
    timings["write_s"] = round(timer.totals["write_s"], 4)
    timings["total_s"] = round(time.perf_counter() - started, 4)
    result = CutResult(
        metadata=metadata,
        records=records,
        pixel_bytes=info.raw_bytes,
        dimensions=(info.width, info.height),
        source_state=(before.st_size, before.st_mtime),
        timings=timings,
        image_dir=str(image_dir),
        format=kind.format,
    )
    return PreparedImage(folder, result, source, before)


def _as_source(source: str | os.PathLike[str] | storage.Source) -> Source:
    return storage.source_at(source)


def _stat_source(source: Source, *, scanned: bool) -> SourceStat:
    try:
        return source.stat()
    except FileNotFoundError as exc:
        if scanned:
            why = "source file no longer exists (deleted or moved since the scan)"
            raise SourceChangedError(str(source), why) from None
        raise SourceChangedError(str(source), "file does not exist") from exc


def job_batch_metadata(job: JobImage, options: SliceOptions, before: SourceStat) -> dict[str, Any]:
    """batch_metadata.json's provenance for a job's image (timings and versions are added after the cut)."""
    return {
        "job": {"input_dir": job.input_dir, "output_dir": job.output_dir, "options": options.to_dict()},
        "image_id": job.image_id,
        "worker": job.worker,
        "attempt": job.attempt,
        "started_at": time.time(),
        "tessq_version": __version__,
        "source_size": before.st_size,
        "source_mtime": before.st_mtime,
    }


def _check_unchanged(source: Source, before: SourceStat) -> None:
    try:
        after = source.stat()
    except FileNotFoundError as exc:
        raise SourceChangedError(str(source), "file vanished while it was being sliced") from exc
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise SourceModifiedError(str(source), "file was modified while it was being sliced; it will be redone")


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n").encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- slicing ---------------------------------------------------------------------------------------------
@dataclass
class _Cut:
    """What every slice of one image is written with: the reader, the slice kind, options and PNG settings, the
    folder, the timer, the source's GeoTIFF tags (shifted into each TIFF slice) and the self-check plan."""

    reader: RegionReader
    kind: encode.SliceKind
    options: SliceOptions
    png: encode.PngSettings | None  # the image's PNG settings (None for TIFF slices)
    folder: AtomicFolder
    timer: _Timer
    geotags: geo.GeoTags | None
    check: selfcheck.Plan


def _write_slices(cut: _Cut, boxes: list[Box]) -> list[dict[str, Any]]:
    """Write every slice; one horizontal band (grid row) at a time, in row-major order."""
    info = cut.reader.info
    records: dict[int, dict[str, Any]] = {}
    band_limit = min(cut.options.memory_budget, BAND_LIMIT_BYTES)
    for (y0, y1), group in groupby(boxes, key=lambda b: (b.y0, b.y1)):
        row = list(group)
        xa, xb = min(b.x0 for b in row), max(b.x1 for b in row)
        band_bytes = (y1 - y0) * (xb - xa) * info.samples * info.itemsize
        if band_bytes <= band_limit:
            _band_slices(cut, row, records)
        elif cut.kind.format == "png":
            _stream_png_slices(cut, row, records)
        else:
            for box in row:
                records[box.index] = _stream_tiff_slice(cut, box)
        cut.reader.forget_above(y1)
    cut.check.passed()
    for index, record in records.items():
        record["self_checked"] = cut.check.wants(index)  # decoded again and compared before the commit
    return [records[b.index] for b in boxes]


def _record(box: Box, name: str, kind: encode.SliceKind, size: int, sha: str) -> dict[str, Any]:
    return {
        "index": box.index,
        "row": box.row,
        "col": box.col,
        "x0": box.x0,
        "y0": box.y0,
        "x1": box.x1,
        "y1": box.y1,
        "width": box.width,
        "height": box.height,
        "file": name,
        "format": kind.format,
        "bytes": size,
        "sha256": sha,
    }


def _band_slices(cut: _Cut, row: list[Box], records: dict[int, dict[str, Any]]) -> None:
    """Read the whole grid row once, cut the columns, encode each in one shot."""
    kind, timer = cut.kind, cut.timer
    y0, y1 = row[0].y0, row[0].y1
    xa, xb = min(b.x0 for b in row), max(b.x1 for b in row)
    with timer.phase("read_s"):
        band = cut.reader.read(y0, y1, xa, xb)
    pool = encode.thread_pool()
    checks: list[Any] = []  # self-checks running in the codec pool beside the next slice's encoding
    try:
        for box in row:
            pixels = band[:, box.x0 - xa : box.x1 - xa]
            with timer.phase("encode_s"):
                tags = _geotiff_tags(cut.geotags, kind, box)
                data, ext = encode.encode_slice(pixels, kind, cut.options, extratags=tags, png=cut.png)
                sha = hashing.bytes_digest(data)
            name = slice_name(box, ext)
            if cut.check.wants(box.index):
                if pool is None:
                    with timer.phase("check_s"):
                        selfcheck.check_slice(data, pixels, kind, name, cut.reader.path)
                else:
                    if len(checks) >= encode.thread_count():  # bounded: a few encoded slices held at most
                        with timer.phase("check_s"):
                            checks.pop(0).result()
                    checks.append(pool.submit(selfcheck.check_slice, data, pixels, kind, name, cut.reader.path))
            with timer.phase("write_s"):
                cut.folder.write(name, data)
            records[box.index] = _record(box, name, kind, len(data), sha)
            del data
        with timer.phase("check_s"):
            while checks:
                checks.pop(0).result()  # a SelfCheckError is raised here, before the commit
    finally:
        for fut in checks:
            fut.cancel()
    del band


def _chunk_rows(reader: RegionReader, width: int) -> int:
    """Rows per streaming step: whole strips/tile rows (decoded once), about STREAM_CHUNK_BYTES."""
    align = reader.band_alignment
    row_bytes = max(1, width * reader.info.samples * reader.info.itemsize)
    target = max(1, STREAM_CHUNK_BYTES // row_bytes)
    if reader.info.compression == "none" and align > target:
        return target  # uncompressed rows are read straight from the file: no need to honour strip size
    return max(align, target // align * align)


def _row_steps(y0: int, y1: int, step: int, align: int) -> Iterator[tuple[int, int]]:
    """Consecutive [ya, yb) covering [y0, y1); after the first, boundaries fall on multiples of `align`."""
    ya = y0
    while ya < y1:
        yb = min(y1, (ya // align) * align + step) if step % align == 0 else min(y1, ya + step)
        if yb <= ya:
            yb = min(y1, ya + step)
        yield ya, yb
        ya = yb


def _stream_png_slices(cut: _Cut, row: list[Box], records: dict[int, dict[str, Any]]) -> None:
    """Strips/tile rows of the grid row, one chunk at a time, into one streaming PNG writer per column."""
    reader, kind, timer = cut.reader, cut.kind, cut.timer
    y0, y1 = row[0].y0, row[0].y1
    xa, xb = min(b.x0 for b in row), max(b.x1 for b in row)
    assert cut.png is not None  # streamed PNG slices: the image's kind is PNG
    method, engine, level = cut.png
    pool = encode.thread_pool()
    files, writers = [], []
    digests = [
        selfcheck.StreamDigest(kind, threaded=pool is not None) if cut.check.wants(box.index) else None for box in row
    ]
    try:
        for box, digest in zip(row, digests, strict=True):
            fh = cut.folder.open_for_write(slice_name(box, kind.ext))
            files.append(fh)
            sink = fh if digest is None else cast(IO[bytes], _Tee(fh, digest.written))
            writers.append(encode.PngStreamWriter(sink, box.width, box.height, kind, method, engine, level))
        step = _chunk_rows(reader, xb - xa)
        for ya, yb in _row_steps(y0, y1, step, reader.band_alignment):
            with timer.phase("read_s"):
                chunk = reader.read(ya, yb, xa, xb)
            pending = []
            if pool is not None:  # the digests (hashlib releases the GIL) run beside the encoding
                pending = [
                    pool.submit(d.update, chunk[:, b.x0 - xa : b.x1 - xa])
                    for b, d in zip(row, digests, strict=True)
                    if d is not None
                ]
            with timer.phase("encode_s"):
                for box, writer in zip(row, writers, strict=True):
                    writer.feed(chunk[:, box.x0 - xa : box.x1 - xa])
            with timer.phase("check_s"):
                for fut in pending:
                    fut.result()
                if pool is None:
                    for box, digest in zip(row, digests, strict=True):
                        if digest is not None:
                            digest.update(chunk[:, box.x0 - xa : box.x1 - xa])
            del chunk
        with timer.phase("write_s"):
            for box, writer in zip(row, writers, strict=True):
                size, sha = writer.close()
                records[box.index] = _record(box, slice_name(box, kind.ext), kind, size, sha)
    finally:
        for fh in files:
            fh.close()
        for digest in digests:
            if digest is not None:
                digest.stop()
    with timer.phase("check_s"):
        # decoded as written (StreamDigest); a fallback decodes one whole slice at a time: two at once (tried,
        # in the pool) took the peak over 2 x slice + 200 MB
        for box, digest in zip(row, digests, strict=True):
            if digest is not None:
                name = slice_name(box, kind.ext)
                digest.check_file(cut.folder.path_for(name), name, reader.path)


class _Tee:
    """A file a PngStreamWriter writes into that also hands every written chunk to the slice's self-check."""

    def __init__(self, fh: IO[bytes], sink: Callable[[bytes], None]) -> None:
        self._fh, self._sink = fh, sink

    def write(self, data: bytes) -> int:
        written = self._fh.write(data)
        self._sink(bytes(data))
        return written


def _stream_tiff_slice(cut: _Cut, box: Box) -> dict[str, Any]:
    """A TIFF slice too big for one band: tiled TIFF written from row bands of this slice only.

    tifffile takes the tiles of a planar-separate slice plane by plane, so such a slice reads its rows once
    per sample (the rare multi-sample 1-bit case), keeping memory at one tile row."""
    reader, kind, timer = cut.reader, cut.kind, cut.timer
    tile = STREAM_TIFF_TILE
    separate = kind.tiff_planar == "separate" and kind.samples > 1
    planes: list[int | None] = list(range(kind.samples)) if separate else [None]
    if separate:
        shape: tuple[int, ...] = (kind.samples, box.height, box.width)
    else:
        shape = (box.height, box.width) + ((kind.samples,) if kind.samples > 1 else ())
    digest = selfcheck.StreamDigest(kind) if cut.check.wants(box.index) else None

    def tiles() -> Iterator[np.ndarray]:
        for plane in planes:
            for ya in range(box.y0, box.y1, tile):
                with timer.phase("read_s"):
                    band = encode.stored_values(reader.read(ya, min(ya + tile, box.y1), box.x0, box.x1), kind)
                if digest is not None and plane in (None, 0):  # the first pass sees every sample
                    digest.update(band)
                if plane is not None:
                    band = band[..., plane]
                for x in range(0, box.width, tile):
                    yield band[:, x : x + tile]

    name = slice_name(box, kind.ext)
    path = cut.folder.path_for(name)
    with timer.phase("encode_s"), cut.folder.open_for_write(name) as fh:
        extratags = _geotiff_tags(cut.geotags, kind, box)
        encode.write_tiff(fh, tiles(), kind, shape=shape, tile=(tile, tile), extratags=extratags)
    if digest is not None:
        with timer.phase("check_s"):
            digest.check_file(path, name, reader.path)
    with timer.phase("write_s"):
        sha = hashing.file_digest(path)
    return _record(box, name, kind, path.stat().st_size, sha)


def _geotiff_tags(geotags: geo.GeoTags | None, kind: encode.SliceKind, box: Box) -> list[tuple[Any, ...]] | None:
    """The GeoTIFF tags of one TIFF slice, or None (not georeferenced, or a PNG slice)."""
    if geotags is None or kind.format != "tiff":
        return None
    return geo.geotiff_tags(geotags, box.x0, box.y0)


def _add_georef(
    records: list[dict[str, Any]],
    georef: dict[str, Any],
    geotags: geo.GeoTags | None,
    kind: encode.SliceKind,
    folder: AtomicFolder,
    world_files: bool,
    timer: _Timer,
) -> None:
    """Per-slice geotransform + CRS; world files beside the slices when asked, and for PNG slices a GDAL PAM
    `.aux.xml` with the SRS (TIFF slices carry it in their own GeoTIFF keys)."""
    gt = georef["geotransform"]
    pam = None
    if world_files and kind.format == "png":
        wkt, mapping, note = geo.srs_wkt(georef.get("epsg"), geotags)
        pam = geo.pam_xml(wkt, mapping).encode() if wkt else None
        if note:
            georef["srs_note"] = note
    for rec in records:
        rec["geotransform"] = geo.slice_geotransform(gt, rec["x0"], rec["y0"])
        rec["crs"] = georef.get("crs")
        if world_files:
            name = geo.world_file_name(rec["file"])
            with timer.phase("write_s"):
                folder.write(name, geo.world_file_text(rec["geotransform"]).encode())
                if pam is not None:
                    folder.write(geo.pam_name(rec["file"]), pam)
            rec["world_file"] = name
            if pam is not None:
                rec["aux_xml"] = geo.pam_name(rec["file"])


# -- metadata --------------------------------------------------------------------------------------------
# metadata.json's "source" is every TiffInfo field but these (the path and size come from the stat of the file
# actually read; the rest are derived or internal), under these names; a new field is recorded by itself.
SOURCE_EXCLUDED = frozenset({"path", "file_bytes", "n_segments", "is_geotiff", "has_colormap", "warnings"})
SOURCE_RENAMES = {"tiled": "layout", "n_series": "series_count", "n_levels": "levels", "n_pages": "page_count"}
SOURCE_VALUES: dict[str, Callable[[Any], Any]] = {
    "tiled": lambda tiled: "tiled" if tiled else "striped",
    "byteorder": lambda order: "big-endian" if order == ">" else "little-endian",
    "tile_shape": lambda shape: list(shape) if shape else None,
}
# The schema's key order (existing files keep theirs); keys not listed (new fields) follow in field order.
SOURCE_ORDER = (
    "width",
    "height",
    "dtype",
    "samples",
    "bits_per_sample",
    "sample_format",
    "photometric",
    "decoded_photometric",
    "extra_samples",
    "compression",
    "predictor",
    "layout",
    "tile_shape",
    "rows_per_strip",
    "planar",
    "byteorder",
    "bigtiff",
    "orientation",
    "series",
    "level",
    "series_count",
    "series_kind",
    "series_shape",
    "levels",
    "page_index",
    "page_count",
    "colormap",
    "decoder",
    "tifffile_warnings",
)


def source_description(info: TiffInfo, colormap: np.ndarray | None, warnings: list[str]) -> dict[str, Any]:
    """metadata.json's description of the source image, derived from TiffInfo's fields (see SOURCE_EXCLUDED)."""
    described: dict[str, Any] = {}
    for f in fields(info):
        if f.name not in SOURCE_EXCLUDED:
            value = getattr(info, f.name)
            convert = SOURCE_VALUES.get(f.name, lambda v: list(v) if isinstance(v, tuple) else v)
            described[SOURCE_RENAMES.get(f.name, f.name)] = convert(value)
    described["colormap"] = colormap.tolist() if colormap is not None else None
    described["tifffile_warnings"] = list(warnings)
    rank = {key: i for i, key in enumerate(SOURCE_ORDER)}
    return dict(sorted(described.items(), key=lambda item: rank.get(item[0], len(rank))))


def build_metadata(
    info: TiffInfo,
    source: Source,
    stat: SourceStat,
    sha256: str,
    relative_path: str | None,
    boxes: list[Box],
    options: SliceOptions,
    kind: encode.SliceKind,
    png: encode.PngSettings | None,
    records: list[dict[str, Any]],
    georef: dict[str, Any] | None,
    colormap: np.ndarray | None,
    warnings: list[str],
) -> dict[str, Any]:
    """metadata.json, schema version defaults.METADATA_SCHEMA_VERSION (documented in README)."""
    output: dict[str, Any] = kind.describe()
    output["self_check"] = options.self_check
    if png is not None:
        method, engine, level = png
        engine = encode.resolve_engine(engine, kind)
        output["png"] = {"preset": options.png_preset, "filter": method, "engine": engine, "level": level}
    small_cmap = colormap is not None and colormap.size <= 3 * 256
    return {
        "schema": defaults.METADATA_SCHEMA,
        "schema_version": defaults.METADATA_SCHEMA_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": tool_versions(),
        "source": {
            "relative_path": relative_path if relative_path is not None else source.name,
            "absolute_path": str(source.resolve()),
            "bytes": stat.st_size,
            "mtime": stat.st_mtime,
            "sha256": sha256,
            **source_description(info, colormap if small_cmap else None, warnings),
        },
        # The seed's key: its batch-verification loop reads meta["original_image"]["path"] (same as source's).
        "original_image": {
            "path": str(source.resolve()),
            "filename": source.name,
            "relative_path": relative_path if relative_path is not None else source.name,
            "width": info.width,
            "height": info.height,
            "size_bytes": stat.st_size,
        },
        "grid": describe_grid(boxes, options),
        "output": output,
        "georef": georef,
        "slices": records,
        "totals": {
            "slices": len(records),
            "bytes_out": sum(r["bytes"] for r in records),
            "pixel_bytes": info.raw_bytes,
        },
    }

"""Per-image timings from the status table, for plots of a run (read-only).

`per_image_timings()` lists every finished image (done or failed) in the order it finished, with its
duration and its finish time relative to the first start, so a notebook can plot time per image or
throughput over the run without knowing the schema. Nothing here writes to the database; call it
after `pipeline.open_workspace()` (a `BatchTesselator` does that) so the models point at a workspace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypedDict

from tessq import storage
from tessq.jobs import db

FINISHED_STATES = (db.DONE, db.FAILED)


class Timing(TypedDict):
    """One finished image (per_image_timings explains the keys)."""

    rel_path: str
    input_dir: str
    source: str
    output_dir: str
    out_rel: str
    image_dir: str
    status: str
    worker: str | None
    attempts: int
    started_at: float | None
    finished_at: float
    duration_s: float | None
    t_s: float
    n_slices: int | None
    bytes_out: int | None
    pixel_bytes: int | None
    pixel_mb_per_s: float | None


def per_image_timings(statuses: Iterable[str] = FINISHED_STATES, input_dir: str | None = None) -> list[dict[str, Any]]:
    """One dict per finished image, ordered by finish time (then id).

    Keys: ``rel_path`` (relative to the job's input folder), ``input_dir``, ``source`` (the TIFF's
    path), ``output_dir``, ``out_rel`` (the image folder relative to ``output_dir``, what
    `export.export_zip` and `upload.files_to_ship` take), ``image_dir`` (its path: what
    `verify_image` and `reconstruct` take; complete only for done images; for an s3:// job both
    ``source`` and ``image_dir`` are URLs), ``status``, ``worker``
    (host:pid), ``attempts``, ``started_at`` / ``finished_at`` (epoch seconds, the database server's
    clock), ``duration_s`` (the worker's own measure of its last attempt), ``t_s`` (``finished_at``
    minus the earliest ``started_at`` of the rows returned: seconds into the run), ``n_slices``,
    ``bytes_out``, ``pixel_bytes`` and ``pixel_mb_per_s`` (decoded pixel megabytes per second of
    ``duration_s``, None when unknown). Rows without a ``finished_at`` are left out.

    `statuses` narrows the states (default: done and failed); `input_dir` keeps one job's images
    (an absolute path as recorded by the scan).
    """
    with db.session():
        rows = db.finished_rows(statuses, input_dir)
    return [dict(t) for t in timings(rows)]


def timings(rows: list[db.TimingRow]) -> list[Timing]:
    """per_image_timings of `rows` (pure: no database), in their order."""
    starts = [r.started_at for r in rows if r.started_at is not None]
    origin = min(starts) if starts else (rows[0].finished_at if rows else 0.0)
    return [timing(r, origin) for r in rows]


def timing(r: db.TimingRow, origin: float) -> Timing:
    """One image's entry, `origin` being the run's first start."""
    duration, pixels = r.duration_s, r.pixel_bytes
    return {
        "rel_path": r.rel_path,
        "input_dir": r.input_dir,
        "source": _join(r.input_dir, r.rel_path),
        "output_dir": r.output_dir,
        "out_rel": r.out_rel,
        "image_dir": _join(r.output_dir, r.out_rel),
        "status": r.status,
        "worker": r.worker,
        "attempts": r.attempts,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "duration_s": duration,
        "t_s": round(r.finished_at - origin, 3),
        "n_slices": r.n_slices,
        "bytes_out": r.bytes_out,
        "pixel_bytes": pixels,
        "pixel_mb_per_s": round(pixels / 1e6 / duration, 3) if pixels and duration else None,
    }


def _join(base: str, rel: str) -> str:
    """base/rel for a local folder or an S3 location (which Path would fold)."""
    return storage.join_text(base, rel)

"""One image as the queue's task: claim, lease guard and heartbeat, cut (tessq.cut.core), commit on a second
thread (Committer), finish; a failure is classified and retried or failed (settle_failure).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from huey.exceptions import TaskTimeout

from tessq import defaults, storage
from tessq.errors import LeaseLostError, OptionsChangedError, TessqError
from tessq.jobs import db
from tessq.jobs import queue as tq
from tessq.options import SliceOptions
from tessq.perprocess import PerProcess

if TYPE_CHECKING:
    from tessq.cut import core

log = logging.getLogger("tessq.worker")  # the name logs, filters and the report's log readers have always seen


def process_image(image_id: int) -> None:
    """The task: claim the image, cut it, hand it to this process's committer. Safe to receive twice."""
    worker = db.worker_identity()
    with db.session():
        claim = db.claim(image_id, worker, defaults.LEASE_S)
        row = db.image(image_id) if claim else None
        busy = (db.waiting(), db.running_here()) if claim else (0, 0)
    if claim is None or row is None:
        log.debug("image %s not claimable (done, taken or cancelled): message dropped", image_id)
        return
    _share_cores(*busy)
    heartbeat = _HEARTBEAT.get()
    heartbeat.watch(claim)
    started = time.monotonic()
    prepared: Prepared | None = None
    try:
        prepared = cut(row, claim)
        _COMMITTER.get().submit(claim, row, prepared, started)  # from here on the committer owns it
    except BaseException as exc:  # cut failed, or a signal/time limit came while waiting for the committer
        heartbeat.release(claim)
        if prepared is not None:
            prepared.abandon()
        if not isinstance(exc, KeyboardInterrupt):
            settle_failure(claim, row, exc, started)
            return
        # Hard stop (second Ctrl-C / SIGTERM during shutdown): give the image straight back.
        with db.session():
            if db.release_interrupted(claim):
                tq.enqueue([image_id], {image_id: row.pixel_bytes})
        raise


def settle_failure(claim: db.Claim, row: db.Image, exc: BaseException, started: float) -> None:
    """Record a failed attempt: failed at once, or back to the queue with backoff while attempts remain."""
    if isinstance(exc, LeaseLostError):  # someone else owns the image now: touch neither its row nor its folder
        log.warning("%s", exc)
        return
    if isinstance(exc, OptionsChangedError):  # cut with settings the job no longer has: cut again, no attempt spent
        _requeue_stale(claim, row, str(exc))
        return
    action, kind, message = classify(exc, row.rel_path, tq.time_limit(row.pixel_bytes))
    if action == "internal":
        log.error("unexpected error on %s", row.rel_path, exc_info=exc)
    if action == "fail" or claim.attempt >= defaults.MAX_ATTEMPTS:
        if action != "fail":
            message = f"{message} (gave up after {claim.attempt} attempts)"
        _fail(claim, kind, message, started)
    else:
        _retry(claim, row, kind, message)


def _commit(claim: db.Claim, row: db.Image, prepared: Prepared, started: float) -> None:
    """On the committer thread: lease check, fsyncs, rename, row marked done; failures settled like cut's."""
    try:
        result = prepared.commit(lease_guard(claim, row))
        _finish(claim, row, result, time.monotonic() - started)
    except BaseException as exc:
        settle_failure(claim, row, exc, started)
    finally:
        _HEARTBEAT.get().release(claim)


class Committer:
    """One thread per worker process makes cut images visible and records them done, while the main thread
    cuts the next image: an image's fsync waits and rename overlap the next one's encoding. At most one
    commit waits, so a worker holds at most two uncommitted folders. A stopping worker waits for it
    (huey's on_shutdown hook, queue.configure); a killed one leaves a temporary folder and a running row,
    which the reaper and the next attempt's cleanup_stale take care of."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._pending: Future[None] | None = None

    def submit(self, claim: db.Claim, row: db.Image, prepared: Prepared, started: float) -> None:
        """Queue the commit once the previous one is done; if this raises, the commit was not queued."""
        self.wait()
        self._pending = self._pool.submit(_commit, claim, row, prepared, started)

    def wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None


_COMMITTER = PerProcess(Committer)


def wait_for_commit() -> None:
    """Wait for this process's committer, if it has one (huey's on_shutdown hook: a stopping worker first
    commits the image it has cut)."""
    committer = _COMMITTER.made()
    if committer is None:
        return
    try:
        committer.wait()
    except Exception as exc:  # a stopping worker cannot settle it better; the reaper or a rescan will
        log.warning("worker stopping: the last commit could not be recorded (%s: %s)", type(exc).__name__, exc)


def _timed_out(exc: BaseException) -> bool:
    """huey raises TaskTimeout wherever the task is when its time runs out, so a decoder may have wrapped it
    (CorruptImageError from TaskTimeout): look down the chain of causes."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:  # a chain can loop back on itself
        chain.append(link)
        link = link.__cause__ or link.__context__
    return any(isinstance(link, TaskTimeout) for link in chain)


def classify(exc: BaseException, rel_path: str, limit: float) -> tuple[str, str, str]:
    """(action, error type, message) for a failure: 'fail' at once, or 'retry'/'internal' with backoff."""
    if _timed_out(exc):
        return "fail", "timeout", f"{rel_path}: timed out after {limit:g} s"
    if isinstance(exc, TessqError):
        return ("fail" if exc.permanent else "retry"), exc.kind, str(exc)
    if isinstance(exc, OSError):
        return "retry", "io", f"{rel_path}: {describe_os_error(exc)}"
    if isinstance(exc, Exception):  # a bug or a library failure we did not foresee
        return "internal", "internal", f"{rel_path}: {type(exc).__name__}: {exc}"
    raise exc  # SystemExit and friends are not ours to swallow


def _finish(claim: db.Claim, row: db.Image, result: core.CutResult, duration: float) -> None:
    with db.session():
        fenced = db.finish_done(
            claim,
            n_slices=result.n_slices,
            bytes_out=result.bytes_out,
            duration_s=duration,
            options_hash=row.job.options_hash,
            pixel_bytes=result.pixel_bytes,
            source_state=result.source_state,
            dimensions=result.dimensions,
        )
    if fenced:
        log.info("done %s (%d slices, %.2f s)", row.rel_path, result.n_slices, duration)
    elif options_changed(row):
        _requeue_stale(claim, row, f"{row.rel_path}: the job's settings changed while it was committed")
    else:
        log.warning("%s: lease was lost before finishing; the other holder's result stands", row.rel_path)


class Prepared(Protocol):
    """What cut() hands to the committer: core.PreparedImage, or Committed for images with an S3 side."""

    def commit(self, before_commit: Callable[[], None] | None = None) -> core.CutResult: ...

    def abandon(self) -> None: ...


@dataclass
class Committed:
    """An image already committed by cut() (an S3 side is committed within its open source/upload)."""

    result: core.CutResult

    def commit(self, before_commit: Callable[[], None] | None = None) -> core.CutResult:
        return self.result

    def abandon(self) -> None:  # committed: nothing to take back
        pass


def _prepare(row: db.Image, claim: db.Claim, source: storage.Source, image_dir: Path) -> Prepared:
    """Cut the claimed image into a temporary folder beside image_dir (core writes its provenance too)."""
    from tessq.cut import core  # heavy imports (tifffile, imagecodecs): not needed by the other commands

    options = SliceOptions.from_dict(json.loads(row.job.options))
    job = core.JobImage(
        input_dir=row.job.input_dir,
        output_dir=row.job.output_dir,
        image_id=claim.image_id,
        worker=claim.worker,
        attempt=claim.attempt,
    )
    return core.prepare_image(source, image_dir, options, relative_path=row.rel_path, job=job)


def cut(row: db.Image, claim: db.Claim) -> Prepared:
    """Slice one claimed image into a temporary folder beside its output folder; raise on any problem.

    Local in and out: the folder is handed back uncommitted, for this process's committer thread. Otherwise
    (an S3 object read by ranged GETs or spooled, an archive member read in place or spooled, an S3 output
    built in a temp dir and uploaded metadata.json last) the image is committed before this returns, while
    its source is still open and the lease still ours."""
    src, dst = _storages(row.job.input_dir, row.job.output_dir)
    if src.plain_files and dst.plain_files:
        with dst.output_folder(row.out_rel) as target:
            return _prepare(row, claim, src.source(row.rel_path), target.local_dir)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(src.opened_source(row.rel_path))
        target = stack.enter_context(dst.output_folder(row.out_rel))
        before_commit = lease_guard(claim, row) if dst.plain_files else None
        result = _prepare(row, claim, source, target.local_dir).commit(before_commit)
        url = target.commit(lambda: holds_lease(claim))["url"]
    return Committed(replace(result, image_dir=url))


@functools.lru_cache(maxsize=64)
def _storages(input_dir: str, output_dir: str) -> tuple[storage.Storage, storage.Storage]:
    """A job's input and output storage (remembered: a worker asks for every image of the job)."""
    return storage.at(input_dir), storage.at(output_dir)


def options_changed(row: db.Image) -> bool:
    """Whether the job's settings are no longer those `row` was claimed (and cut) with."""
    with db.session():
        return db.job_options_hash(row.job.get_id()) != row.job.options_hash


def _requeue_stale(claim: db.Claim, row: db.Image, message: str) -> None:
    log.info("%s; cutting it again with the new settings", message)
    with db.session():
        released = db.release_interrupted(claim)
    if released:
        tq.enqueue([claim.image_id], {claim.image_id: row.pixel_bytes})


def lease_guard(claim: db.Claim, row: db.Image) -> Callable[[], None]:
    """The check run just before a folder is renamed into place: a worker that lost its lease leaves it alone,
    and one that cut with settings the job no longer has (a scan changed them meanwhile) discards its folder."""

    def still_ours() -> None:
        if not holds_lease(claim):
            raise LeaseLostError(f"{row.rel_path}: lease lost before the folder was committed; output left alone")
        if options_changed(row):
            raise OptionsChangedError(f"{row.rel_path}: the job's settings changed while it was cut; discarded")

    return still_ours


def holds_lease(claim: db.Claim) -> bool:
    """Whether the image is still ours for at least half a lease (no one can reap it before the commit ends);
    a shorter lease is renewed (fenced on worker and attempt). False if another worker owns the image now."""
    with db.session():
        left = db.lease_left(claim)
        if left is None:
            return False
        return left >= defaults.LEASE_S / 2 or db.renew_lease(claim, defaults.LEASE_S)


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full writing {exc.filename or 'output'} (free space, then it is retried)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {exc.filename or exc}"
    return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)


def _fail(claim: db.Claim, kind: str, message: str, started: float) -> None:
    log.error("failed: %s", message)
    with db.session():
        db.finish_failed(claim, error_type=kind, message=message, duration_s=time.monotonic() - started)


def _retry(claim: db.Claim, row: db.Image, kind: str, message: str) -> None:
    """Back to the queue with exponential backoff (a delayed message; works from the committer thread too)."""
    delay = defaults.RETRY_DELAY_S * defaults.RETRY_BACKOFF ** (claim.attempt - 1)
    log.warning("attempt %d failed, retrying in %.0f s: %s", claim.attempt, delay, message)
    with db.session():
        released = db.release_for_retry(claim, error_type=kind, message=message)
    if released:
        tq.enqueue([claim.image_id], {claim.image_id: row.pixel_bytes}, delay=delay)


class Heartbeat:
    """One thread per worker process renews the lease of the image being cut, every HEARTBEAT_S, on its
    own connection (a thread per image cost a thread start and a connection per image)."""

    def __init__(self) -> None:
        self._claim: db.Claim | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def watch(self, claim: db.Claim) -> None:
        with self._lock:
            self._claim = claim

    def release(self, claim: db.Claim) -> None:
        with self._lock:
            if self._claim == claim:
                self._claim = None

    def _run(self) -> None:
        while True:
            time.sleep(defaults.HEARTBEAT_S)
            with self._lock:
                claim = self._claim
            if claim is None:
                continue
            try:
                with db.session():
                    if not db.renew_lease(claim, defaults.LEASE_S):
                        log.warning("image %s: lease lost", claim.image_id)
                        self.release(claim)
                    _share_cores(db.waiting(), db.running_here())  # a long image gets the cores others left
            except Exception:  # a missed beat is not fatal; the lease has slack for two more
                log.exception("heartbeat failed for image %s", claim.image_id)


_HEARTBEAT = PerProcess(Heartbeat)


_WORKERS_HERE = [0]  # worker processes of this host's daemon (set before it forks them; 0: unknown)


def set_workers_here(n: int) -> None:
    _WORKERS_HERE[0] = n


def _share_cores(waiting: int, running_here: int) -> None:
    """Cut inline while the other images keep every core busy; with the codec pool once cores would idle."""
    from tessq.cut import encode

    workers = _WORKERS_HERE[0] or encode.thread_count()
    encode.cores_taken(encode.cores_busy(waiting, running_here, workers))


tq.register_body(process_image, wait_for_commit)

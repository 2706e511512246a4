"""One image end to end (claim, lease, cut, commit on a second thread, finish), and the worker daemon.

`process_image` is the queue's task body; `run_workers` is `tessq workers`: a huey Consumer with
process workers plus our supervisor duties (startup repair, lease reaper, dead-worker check, drain).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from huey.consumer import Consumer, ConsumerStopped, ProcessEnvironment, Scheduler
from huey.exceptions import TaskTimeout

from tessq import __version__, db, defaults, folder
from tessq import queue as tq
from tessq.errors import LeaseLostError, OptionsChangedError, SourceChangedError, TessqError
from tessq.options import SliceOptions
from tessq.perprocess import PerProcess
from tessq.storage import archive
from tessq.storage import s3 as remote

log = logging.getLogger("tessq.worker")


# ---------------------------------------------------------------- one image


def process_image(image_id: int) -> None:
    """The task: claim the image, cut it, hand it to this process's committer. Safe to receive twice."""
    worker = db.worker_identity()
    with db.session():
        claim = db.claim(image_id, worker, defaults.LEASE_S)
        row = db.image(image_id) if claim else None
    if claim is None or row is None:
        log.debug("image %s not claimable (done, taken or cancelled): message dropped", image_id)
        return
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
    if committer is not None:
        committer.wait()


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


def _finish(claim: db.Claim, row: db.Image, result: dict[str, Any], duration: float) -> None:
    with db.session():
        fenced = db.finish_done(claim, n_slices=int(result["slices"]), bytes_out=int(result["bytes_out"]),
                                duration_s=duration, options_hash=row.job.options_hash,
                                pixel_bytes=result.get("pixel_bytes"), source_state=result.get("source_state"),
                                dimensions=_dimensions(result))
    if fenced:
        log.info("done %s (%d slices, %.2f s)", row.rel_path, result["slices"], duration)
    elif options_changed(row):
        _requeue_stale(claim, row, f"{row.rel_path}: the job's settings changed while it was committed")
    else:
        log.warning("%s: lease was lost before finishing; the other holder's result stands", row.rel_path)


def _dimensions(result: dict[str, Any]) -> tuple[int, int] | None:
    source = result.get("source") or {}
    if isinstance(source.get("width"), int) and isinstance(source.get("height"), int):
        return source["width"], source["height"]
    return None


def cut(row: db.Image, claim: db.Claim) -> Prepared:
    """Slice one claimed image into a temporary folder beside its output folder; raise on any problem.

    An s3:// input is read by ranged GETs (small objects spooled to a temp file); for an s3:// output the
    folder is built in a temp dir and uploaded, metadata.json last, while the lease is still ours. Either
    way an image with an s3:// side is committed before this returns."""
    if remote.is_remote(row.job.input_dir) or remote.is_remote(row.job.output_dir) or is_archive(row.job.input_dir):
        return Committed(_cut_remote(row, claim))
    source = Path(row.job.input_dir) / row.rel_path
    image_dir = contained(Path(row.job.output_dir), row.out_rel)
    return _cut(row, claim, source, image_dir)


def _cut_remote(row: db.Image, claim: db.Claim) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if is_archive(row.job.input_dir):  # a member of an archive: read in place, or spooled and deleted after
            source: Any = stack.enter_context(archive.opened_member(row.job.input_dir, row.rel_path))
        elif remote.is_remote(row.job.input_dir):
            url = remote.join(row.job.input_dir, row.rel_path)
            source = stack.enter_context(remote.opened_source(url))
        else:
            source = Path(row.job.input_dir) / row.rel_path
        if not remote.is_remote(row.job.output_dir):
            image_dir = contained(Path(row.job.output_dir), row.out_rel)
            return _cut(row, claim, source, image_dir).commit(lease_guard(claim, row))
        committer = stack.enter_context(remote.OutputCommitter(row.job.output_dir, row.out_rel))
        result = _cut(row, claim, source, committer.local_dir).commit()
        result["image_dir"] = committer.commit(lambda: holds_lease(claim))["url"]
    return result


def _cut(row: db.Image, claim: db.Claim, source: Path | remote.RemoteSource, image_dir: Path) -> Prepared:
    before = source_state(source)
    folder.cleanup_stale(image_dir.parent, image_dir.name)
    options = SliceOptions.from_dict(json.loads(row.job.options))
    batch_metadata = {
        "job": {"input_dir": row.job.input_dir, "output_dir": row.job.output_dir, "options": options.to_dict()},
        "image_id": row.id,
        "worker": claim.worker,
        "attempt": claim.attempt,
        "started_at": time.time(),
        "tessq_version": __version__,
        "source_size": before[0],
        "source_mtime": before[1],
    }
    from tessq import core  # heavy imports (tifffile, imagecodecs): not needed by the other commands

    prepared = core.prepare_image(source, image_dir, options, relative_path=row.rel_path,
                                  batch_metadata=batch_metadata)
    prepared.summary["source_state"] = before
    return prepared


class Prepared(Protocol):
    """What cut() hands to the committer: core.PreparedImage, or Committed for images with an S3 side."""

    def commit(self, before_commit: Callable[[], None] | None = None) -> dict[str, Any]: ...

    def abandon(self) -> None: ...


@dataclass
class Committed:
    """An image already committed by cut() (an S3 side is committed within its open source/upload)."""

    result: dict[str, Any]

    def commit(self, before_commit: Callable[[], None] | None = None) -> dict[str, Any]:
        return self.result

    def abandon(self) -> None:  # committed: nothing to take back
        pass


def options_changed(row: db.Image) -> bool:
    """Whether the job's settings are no longer those `row` was claimed (and cut) with."""
    with db.session():
        return db.job_options_hash(row.job.id) != row.job.options_hash


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


def is_archive(input_dir: str) -> bool:
    """Whether a job's input is an archive file (remembered per input: a worker asks for every image)."""
    if input_dir not in _ARCHIVE_INPUTS:
        _ARCHIVE_INPUTS[input_dir] = archive.is_archive(input_dir)
    return _ARCHIVE_INPUTS[input_dir]


_ARCHIVE_INPUTS: dict[str, bool] = {}


def source_state(source: Path | remote.RemoteSource) -> tuple[int, float]:
    try:
        st = source.stat()
    except FileNotFoundError:
        raise SourceChangedError(source, "source file no longer exists (deleted or moved since the scan)") from None
    return st.st_size, st.st_mtime


def contained(root: Path, relative: str) -> Path:
    """root/relative, refusing anything that would land outside root ('..', absolute, NUL)."""
    if "\x00" in relative or relative.startswith(("/", "\\")):
        raise TessqError(f"refusing output path {relative!r}: not a relative path inside {root}")
    base, target = root.resolve(), (root / relative).resolve()
    if target == base or base not in target.parents:
        raise TessqError(f"refusing output path {relative!r}: it escapes the output folder {root}")
    return target


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
            except Exception:  # a missed beat is not fatal; the lease has slack for two more
                log.exception("heartbeat failed for image %s", claim.image_id)


_HEARTBEAT = PerProcess(Heartbeat)


# ---------------------------------------------------------------- the daemon


class _Scheduler(Scheduler):
    def initialize(self) -> None:  # the Scheduler runs no startup hooks of its own
        tq.die_with_parent()
        super().initialize()


class _Environment(ProcessEnvironment):
    """Children ignore SIGINT and SIGTERM (a terminal's Ctrl-C reaches the whole process group, and
    systemd sends TERM to every process); only the parent decides, and it interrupts them with USR1."""

    def __init__(self, *_: Any) -> None:
        super().__init__(signal.SIGINT, signal.SIGUSR1)

    def init_child(self, process: Any) -> None:
        super().init_child(process)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def create_process(self, runnable: Any, name: str) -> Any:
        """Every fork (first start, a recycled or dead worker's replacement) goes through here: the daemon's
        own connections are closed first, so none crosses a fork and the daemon may keep them open otherwise."""
        db.database.close()
        tq.close_connection()
        return super().create_process(runnable, name)


class TessqConsumer(Consumer):
    """huey's consumer with both SIGINT and SIGTERM graceful; a second one stops at once."""

    scheduler_class = _Scheduler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signal_actions = {signal.SIGINT: (False, True), signal.SIGTERM: (False, True)}
        if hasattr(signal, "SIGHUP"):
            self._signal_actions[signal.SIGHUP] = (False, True)

    def get_environment(self, worker_type: str) -> ProcessEnvironment:
        return _Environment()


@dataclass
class WorkerRun:
    stopped_by: str  # 'drained' | 'signal'
    reaped: int
    repaired: int


def dead_local_workers(workers: list[str]) -> list[str]:
    """Lease holders on this host whose process is gone (or a zombie): reclaim their images now."""
    host = db.hostname()
    dead = []
    for w in workers:
        h, _, pid = w.rpartition(":")
        if h == host and pid.isdigit() and not process_alive(int(pid)):
            dead.append(w)
    return dead


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def recover(*, starting: bool = False) -> tuple[int, int]:
    """Requeue images of dead or expired workers and re-enqueue queued rows that lost their message.

    A worker that dies while its daemon runs spends an attempt of its image (MAX_LOST_ATTEMPTS such deaths
    fail an image that kills every worker, e.g. by exhausting memory). Workers found dead as a daemon is
    `starting` died with a run stopped from outside (kill -9 of the tree, a kernel restart): their images
    get the attempt back."""
    with db.session():
        dead = dead_local_workers(db.running_workers())
        stopped, dead = (dead, []) if starting else ([], dead)
        requeued, failed = db.reap_expired(defaults.MAX_LOST_ATTEMPTS, dead, interrupted=stopped)
        sizes = db.queued_ids_with_size() if requeued else {}
        given_up = [db.image(i) for i in failed]
    if requeued:
        log.warning("reclaimed %d image(s) from dead or expired workers", len(requeued))
        tq.enqueue(requeued, sizes)
    for row in filter(None, given_up):  # nobody claims these again: remove what dead workers left half-written
        log.error("%s failed: its worker died on each of %d attempts", row.rel_path, row.attempts)
        if not remote.is_remote(row.job.output_dir):
            image_dir = contained(Path(row.job.output_dir), row.out_rel)
            folder.cleanup_stale(image_dir.parent, image_dir.name)
    repaired = tq.repair_unqueued()
    return len(requeued) + len(failed), repaired


def run_workers(n: int, *, drain: bool = False, health_interval: float = 2.0, poll_interval: float = 0.05) -> WorkerRun:
    """`tessq workers`: run n worker processes until a signal (graceful) or, with drain, until empty.

    poll_interval bounds how long a drained queue keeps the run alive and how soon a recycled worker
    (max_tasks) is replaced; the dead-worker check and the reaper run every health_interval.
    """
    from tessq import core  # noqa: F401 - the workers' heavy imports, done once here and inherited by every fork

    reaped, repaired = recover(starting=True)
    db.hold_database()  # from here on a deleted or replaced status table stops the run (never a new empty one)
    remote.sweep_temp(process_alive)  # S3 spools and upload dirs left by SIGKILLed workers of this machine
    consumer = TessqConsumer(
        tq.huey(), workers=n, worker_type="process", periodic=False, initial_delay=0.05, backoff=1.5,
        max_delay=1.0, check_worker_health=True, health_check_interval=poll_interval,
        max_tasks=defaults.WORKER_MAX_TASKS,
    )
    consumer.start()
    log.info("%d worker(s) started (pid %d)%s", n, os.getpid(), ", draining" if drain else "")
    stopped_by = "signal"
    health = time.monotonic()
    last_reap = last_check = last_drain = last_state = time.monotonic()
    trouble = _Trouble()
    try:
        while True:
            try:
                health = consumer.loop(health)
            except ConsumerStopped:
                break
            now = time.monotonic()
            if not trouble.ready(now):
                continue
            checked = False  # the failure counter is cleared only by a round that really ran a check
            try:
                if now - last_state >= STATE_CHECK_S:
                    last_state = checked = now
                    db.check_database()  # the status table file: still the one we opened, still SQLite
                    rebuilt = tq.rebuild_if_changed()  # queue.db deleted or damaged: re-sent from the table
                    if rebuilt is not None:
                        repaired += rebuilt
                if now - last_check >= health_interval:
                    last_check = checked = now
                    if now - last_reap >= defaults.REAP_EVERY_S or _has_dead_workers():
                        last_reap = now
                        r, p = recover()
                        reaped, repaired = reaped + r, repaired + p
                if drain and now - last_drain >= poll_interval:
                    last_drain = checked = now
                    if _drained():
                        stopped_by = "drained"
                        consumer.stop(graceful=True)
                        break
                if checked:
                    trouble.clear()
            except Exception as exc:  # supervision must never take the loop down (queue-engine.md §5) ...
                lost = exc if isinstance(exc, db.StateLostError) else db.database_problem(exc)
                if lost is not None:  # ... but a lost or damaged status table ends it: nothing can be recorded
                    log.error("%s", lost)
                    raise lost from None
                trouble.failed(exc, now)  # ... and a failure that repeats backs off, then gives up
    except BaseException:
        consumer.stop(graceful=False)
        raise
    finally:
        db.release_database()
    tq.huey().notify_interrupted_tasks()
    log.info("workers stopped (%s)", stopped_by)
    return WorkerRun(stopped_by, reaped, repaired)


STATE_CHECK_S = 0.2  # how often the daemon checks that tessq.db and queue.db are still the files it opened


class _Trouble:
    """Consecutive failures of the supervisor's checks: the first is logged with its traceback, the same one again
    only as a count; each waits twice as long before the next try (0.1 s up to 10 s), and after GIVE_UP in a
    row the daemon stops with the error instead of retrying forever."""

    GIVE_UP = 12  # ~1 minute of backoff in all

    def __init__(self) -> None:
        self.count, self.last, self.next_try = 0, "", 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def clear(self) -> None:
        if self.count:
            log.info("supervisor checks work again after %d failure(s)", self.count)
        self.count, self.last, self.next_try = 0, "", 0.0

    def failed(self, exc: Exception, now: float) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.count += 1
        if text != self.last:
            log.error("supervisor check failed; will try again", exc_info=exc)
        elif self.count in (2, 5) or self.count % 10 == 0:
            log.error("supervisor check failed again (%d times in a row): %s", self.count, text)
        self.last = text
        if self.count >= self.GIVE_UP:
            raise TessqError(f"the worker daemon's checks failed {self.count} times in a row, stopping: {text}")
        self.next_try = now + min(10.0, 0.1 * 2 ** (self.count - 1))


def _has_dead_workers() -> bool:
    with db.session():
        return bool(dead_local_workers(db.running_workers()))


def _drained() -> bool:
    with db.session():
        return db.outstanding() == 0

"""The worker daemon, `tessq workers`: a huey Consumer with process workers plus the supervisor's duties
(startup repair, lease reaper, dead-worker check, drain); each image itself is tessq.jobs.task's job.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from huey.consumer import Consumer, ConsumerStopped, ProcessEnvironment, Scheduler

from tessq import defaults, storage
from tessq.errors import TessqError
from tessq.jobs import db, task  # task: also the body the forked workers run (registered on import)
from tessq.jobs import queue as tq

log = logging.getLogger("tessq.worker")  # the name logs, filters and the report's log readers have always seen


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
    return [w for w, pid in db.local_workers(workers).items() if not process_alive(pid)]


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
        storage.at(row.job.output_dir).cleanup_stale(row.out_rel)
    repaired = tq.repair_unqueued()
    return len(requeued) + len(failed), repaired


def run_workers(n: int, *, drain: bool = False, health_interval: float = 2.0, poll_interval: float = 0.05) -> WorkerRun:
    """`tessq workers`: run n worker processes until a signal (graceful) or, with drain, until empty.

    poll_interval bounds how long a drained queue keeps the run alive and how soon a recycled worker
    (max_tasks) is replaced; the dead-worker check and the reaper run every health_interval.
    """
    from tessq.cut import core  # noqa: F401 - the workers' heavy imports, done once here and inherited by every fork

    task.set_workers_here(n)  # inherited by the forks: whether an image may take idle cores (task._share_cores)
    reaped, repaired = recover(starting=True)
    db.hold_database()  # from here on a deleted or replaced status table stops the run (never a new empty one)
    storage.sweep_temp(process_alive)  # S3 spools and upload dirs left by SIGKILLed workers of this machine
    consumer = TessqConsumer(
        tq.huey(),
        workers=n,
        worker_type="process",
        periodic=False,
        initial_delay=0.05,
        backoff=1.5,
        max_delay=1.0,
        check_worker_health=True,
        health_check_interval=poll_interval,
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
                    last_state, checked = now, True
                    db.check_database()  # the status table file: still the one we opened, still SQLite
                    rebuilt = tq.rebuild_if_changed()  # queue.db deleted or damaged: re-sent from the table
                    if rebuilt is not None:
                        repaired += rebuilt
                if now - last_check >= health_interval:
                    last_check, checked = now, True
                    if now - last_reap >= defaults.REAP_EVERY_S or _has_dead_workers():
                        last_reap = now
                        r, p = recover()
                        reaped, repaired = reaped + r, repaired + p
                if drain and now - last_drain >= poll_interval:
                    last_drain, checked = now, True
                    if _drained():
                        db.check_intact()  # "nothing left" from a damaged table would end the job silently
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

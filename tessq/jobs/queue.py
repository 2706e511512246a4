"""This process's binding to one workspace (its status DB and its huey queue) and the one task the queue
delivers: an image id.

huey delivers at most once; duplicates are harmless (the claim refuses them) and lost messages are
repaired from the status table (`repair_unqueued`), so the queue can always be rebuilt. peewee's
DatabaseProxy is process-wide, so the binding is too: `bound(ws)` binds a workspace for one call and
gives the previous binding back after it (two Python API batches in one notebook never cross).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from huey import Huey

from tessq import defaults
from tessq.jobs import backends, db
from tessq.jobs.settings import Workspace
from tessq.malloc import keep_freed_memory
from tessq.storage.archive import use_state_dir

log = logging.getLogger("tessq.queue")

ENQUEUE_BATCH = 5000  # messages per queue transaction: short enough that workers are never locked out long

# What a worker runs for a message, handed in by jobs.task when it is imported (the daemon imports it before
# forking): the queue carries image ids and knows nothing of cutting, so it never imports the task module.
_BODY: dict[str, Callable[..., None]] = {}


def register_body(process_image: Callable[[int], None], on_shutdown: Callable[[], None]) -> None:
    """Set the task body (one image, by id) and what a stopping worker runs first (commit the image it cut)."""
    _BODY.update(process_image=process_image, on_shutdown=on_shutdown)


def _process_image(image_id: int) -> None:
    _BODY["process_image"](image_id)


def _on_shutdown() -> None:
    if "on_shutdown" in _BODY:
        _BODY["on_shutdown"]()


@dataclass
class Binding:
    """One workspace bound in this process: its queue, the task on it, and the queue file last seen."""

    workspace: Workspace
    huey: Huey
    task: Any  # huey's TaskWrapper (huey ships no type hints)
    queue_identity: tuple[int, int] | None = None


_bound: Binding | None = None


def configure(workspace: Workspace) -> None:
    """Point the status DB and the queue at `workspace` (no connection is opened here)."""
    global _bound
    if _bound is not None and _bound.workspace == workspace:
        return
    db.open_database(workspace.db_url)
    if _bound is not None:  # no connection of a previous queue may stay open beside the new one
        with contextlib.suppress(Exception):
            _bound.huey.storage.close()
    if workspace.queue_url.startswith("sqlite:"):
        workspace.state_dir.mkdir(parents=True, exist_ok=True)
    queue = backends.make_queue(workspace.queue_url)
    _bound = Binding(workspace, queue, queue.task(name="tessq.process_image")(_process_image))
    use_state_dir(workspace.state_dir)  # a .tar.gz's listing and gzip index are saved there for the workers
    queue.on_startup(name="tessq-worker-init")(_init_worker_process)
    # a stopping worker (signal, drain, max_tasks) first commits the image it has cut
    queue.on_shutdown(name="tessq-worker-commit")(_on_shutdown)


@contextlib.contextmanager
def bound(workspace: Workspace) -> Iterator[Workspace]:
    """Bind the status DB and the queue to `workspace` for the `with` block, then give the previous
    binding back (a caller holding its own workspace never redirects another's)."""
    previous = _bound.workspace if _bound is not None else None
    configure(workspace)
    try:
        yield workspace
    finally:
        if previous is not None:
            configure(previous)


def workspace() -> Workspace | None:
    """The workspace `configure` was last called with (None before that)."""
    return _bound.workspace if _bound is not None else None


def _binding() -> Binding:
    if _bound is None:
        raise RuntimeError("tessq.jobs.queue.configure(workspace) must be called first")
    return _bound


def huey() -> Huey:
    return _binding().huey


def time_limit(pixel_bytes: int | None) -> float:
    """Seconds one image may take before it is failed as 'timed out', scaled with its size (to 0.1 s: huey's
    timer takes fractions)."""
    return max(0.1, round(defaults.TIME_LIMIT_BASE_S + (pixel_bytes or 0) / defaults.TIME_LIMIT_MIN_RATE, 1))


def enqueue(
    image_ids: Iterable[int], pixel_bytes: dict[int, int | None] | None = None, delay: float | None = None
) -> int:
    """One message per image id, each with its time limit; `delay` schedules them (retries with backoff)."""
    sizes = pixel_bytes or {}
    task = _binding().task
    ids = list(image_ids)
    if delay:
        for image_id in ids:
            task.schedule(args=(image_id,), delay=delay, timeout=time_limit(sizes.get(image_id)))
    else:
        for start in range(0, len(ids), ENQUEUE_BATCH):
            batch = ids[start : start + ENQUEUE_BATCH]
            huey().enqueue_many([task.s(i, timeout=time_limit(sizes.get(i))) for i in batch])
    return len(ids)


def delivered_ids() -> set[int]:
    """Image ids that have a message waiting (pending or scheduled)."""
    h = huey()
    return {t.args[0] for t in list(h.pending()) + list(h.scheduled()) if t.args}


def repair_unqueued() -> int:
    """Re-enqueue queued rows that have no message (lost by a crash, a flushed queue, a restore, a queue file
    deleted or damaged: the storage has created it anew by then, backends._SqliteStorage)."""
    with db.session():
        queued = db.queued_ids_with_size()
    delivered = delivered_ids()
    missing = [i for i in queued if i not in delivered]
    storage = huey().storage
    if missing and getattr(storage, "recreated", False):
        log.warning(
            "rebuilt the queue from the status table: %d image(s) (the queue file %s was missing or damaged)",
            len(missing),
            queue_file(),
        )
    elif missing:
        log.info("re-enqueueing %d queued image(s) that had no queue message", len(missing))
    if missing:
        enqueue(missing, queued)
    if hasattr(storage, "recreated"):
        storage.recreated = False
    watch_queue()
    return len(missing)


def queue_file() -> str | None:
    """The SQLite queue file, None for a Redis or PostgreSQL queue."""
    return getattr(huey().storage, "filename", None) if hasattr(huey().storage, "_identity") else None


def watch_queue() -> None:
    """Remember which queue file this process's messages went to (rebuild_if_changed compares)."""
    path = queue_file()
    _binding().queue_identity = backends.file_identity(path) if path else None


def rebuild_if_changed() -> int | None:
    """The worker daemon's check, every supervisor round: if queue.db was deleted or replaced since the last look
    (a file overwritten in place is found damaged at the next start), recreate it (huey's tables) and re-send
    every queued image from the status table. Returns how many were re-sent, None when the file is as it was
    (or the queue is not a file)."""
    path = queue_file()
    if path is None:
        return None
    if backends.file_identity(path) == _binding().queue_identity:  # stat only: never open() a file SQLite holds
        return None
    close_connection()  # the next use reconnects: moves a damaged file aside, creates a missing one
    storage = huey().storage
    storage.recreated = True
    return repair_unqueued()


def close_connection() -> None:
    """Drop this process's queue connection (the worker daemon does so before it may fork again)."""
    huey().storage.close()


def _init_worker_process() -> None:
    """Runs in each forked worker: die with the parent, keep freed pixel buffers for reuse (tessq.malloc), and
    never reuse the parent's connection."""
    die_with_parent()
    keep_freed_memory()
    db.database.obj.dispose() if hasattr(db.database.obj, "dispose") else None


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed `tessq workers` leaves no orphan consuming the queue."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 == PR_SET_PDEATHSIG
    except OSError:  # not Linux: orphans are then stopped by the lease, not by the kernel
        pass

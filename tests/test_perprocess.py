"""Per-process values: made once per process, never inherited across a fork (threads and clients die there)."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

from tessq.perprocess import PerProcess


def _in_child(value: PerProcess[tuple[int, int]], out: mp.Queue) -> None:
    out.put((value.made(), value.get(), value.get()))


def test_a_forked_child_makes_its_own_value_once_and_the_parent_keeps_its_own() -> None:
    calls = []
    value: PerProcess[tuple[int, int]] = PerProcess(lambda: (os.getpid(), calls.append(1) or len(calls)))
    parent = value.get()
    assert value.get() is parent and len(calls) == 1
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(value, out))
    child.start()
    made_before, first, second = out.get(timeout=30)
    child.join(timeout=30)
    assert made_before is None  # the parent's value is not the child's
    assert first == second and first[0] == child.pid != parent[0]
    assert value.get() is parent


def test_threads_racing_for_the_first_value_share_one() -> None:
    barrier = threading.Barrier(8)
    made = []

    def slow_factory() -> object:
        made.append(1)
        time.sleep(0.05)  # long enough for every racing thread to arrive while the first is still making it
        return object()

    value: PerProcess[object] = PerProcess(slow_factory)
    seen: list[object] = []

    def grab() -> None:
        barrier.wait()
        seen.append(value.get())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len({id(v) for v in seen}) == 1

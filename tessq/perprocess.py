"""One lazily made value per process, for what must not cross a fork: threads, thread pools, S3 clients.

A worker forked from a process that already made the value makes its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`get()` returns this process's value, calling `factory` once per process (thread-safe)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._pid: int | None = None
        self._value: T | None = None
        self._lock = threading.Lock()
        # a lock held by another thread at fork time would stay held in the child forever
        os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def get(self) -> T:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._value = self._factory()
                    self._pid = pid
        return self._value  # type: ignore[return-value]

    def made(self) -> T | None:
        """This process's value if it was made in this process, else None (nothing is made)."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget the value; the next `get()` makes a new one (e.g. after the settings it was made from changed)."""
        with self._lock:
            self._pid, self._value = None, None

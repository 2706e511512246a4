"""A progress display for `BatchTesselator.run_batch()`, fed with `status.snapshot()`s.

Where it shows: in a Jupyter notebook, one output line redrawn in place (an IPython display handle: no widget
extension needed); in a terminal, a rich progress bar on stderr (log lines print above it); anywhere else (a
pipe, a log file, a scheduler) a progress line logged at INFO every LOG_EVERY_S seconds and at the end.
"""

from __future__ import annotations

import html
import logging
import sys
import time
from typing import Any

log = logging.getLogger("tessq.progress")

LOG_EVERY_S = 30.0


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def describe(snap: dict[str, Any] | None, elapsed: float) -> tuple[int, int, str]:
    """(finished, total, one line of text) for a status snapshot."""
    if snap is None:
        return 0, 0, "starting workers..."
    p, c, eta = snap["progress"], snap["counts"], snap.get("eta_s")
    eta_text = "-" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
    text = (
        f"{p['finished']}/{p['total']} finished ({c['done']} done, {c['failed']} failed, {c['running']} running)"
        f" | {snap['throughput']['images_per_hour']} img/h | ETA {eta_text} | {elapsed:.0f} s"
    )
    return p["finished"], p["total"], text


class _View:
    """One rendering of the progress line: HTML in Jupyter, a text bar elsewhere."""

    def __init__(self, snap: dict[str, Any] | None, elapsed: float) -> None:
        self.done, self.total, self.text = describe(snap, elapsed)

    def _repr_html_(self) -> str:
        return (
            f"<progress value='{self.done}' max='{max(self.total, 1)}' style='width:30em'></progress> "
            f"<code>{html.escape(self.text)}</code>"
        )

    def __repr__(self) -> str:
        filled = int(30 * self.done / self.total) if self.total else 0
        return f"[{'#' * filled}{'.' * (30 - filled)}] {self.text}"


class BatchProgress:
    """Call with each snapshot; `close()` at the end. Use as a context manager."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last_log = 0.0
        self._handle: Any = None
        self._bar: Any = None
        self._task: Any = None
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []
        if in_notebook():
            from IPython.display import display

            self._handle = display(_View(None, 0.0), display_id=True)
        elif sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("tessq"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("starting workers...", total=None)
            # console log lines go through the bar's redirected stderr, so they print above it
            for handler in logging.getLogger().handlers:
                if getattr(handler, "_tessq", False) and type(handler) is logging.StreamHandler:
                    self._streams.append((handler, handler.setStream(sys.stderr)))

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, snap: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self.started
        if self._handle is not None:
            self._handle.update(_View(snap, elapsed))
        elif self._bar is not None:
            done, total, text = describe(snap, elapsed)
            self._bar.update(self._task, completed=done, total=max(total, 1), description=text.split(" | ", 1)[1])
        elif time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            log.info("progress: %s", describe(snap, elapsed)[2])
        self.last = snap

    def close(self, snap: dict[str, Any] | None = None) -> None:
        """The final state (logged when there is no live display), then release the terminal."""
        if snap is not None:
            self._last_log = 0.0
            self(snap)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams = []

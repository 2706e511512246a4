"""Logging set-up shared by every command: the console at the chosen level and OUT/batch_processing.log.

Configured once per process before workers fork, so children inherit the handlers (O_APPEND writes).
"""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s"


def setup(level: str = "INFO", log_file: Path | None = None, console: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tessq", False):
            root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    if console:
        stream = logging.StreamHandler()
        stream.setLevel(level.upper())
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        stream._tessq = True  # type: ignore[attr-defined]
        root.addHandler(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        fh.setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.INFO)
        fh.setFormatter(logging.Formatter(FORMAT))
        fh._tessq = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    logging.getLogger("huey").setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)
    logging.getLogger("peewee").setLevel(logging.WARNING)

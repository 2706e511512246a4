"""Logging set-up shared by every command: the console at the chosen level and OUT/batch_processing.log.

Configured once per process before workers fork, so children inherit the handlers (O_APPEND writes).
Every line goes through `redact` (tokens, signatures, passwords in URLs are masked), the AWS SDK's wire
logging stays at WARNING even at DEBUG (TESSQ_LOG_WIRE=1 lets it through, still masked), and the log file
is never opened through a symbolic link.
"""

from __future__ import annotations

import errno
import io
import logging
import os
from pathlib import Path

from tessq.errors import ConfigError
from tessq.redact import RedactingFormatter

FORMAT = "%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s"
# The SDK's DEBUG output holds every request's headers (X-Amz-Security-Token, Authorization).
WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
WIRE_ENV = "TESSQ_LOG_WIRE"


class NoFollowFileHandler(logging.FileHandler):
    """A FileHandler whose file is opened with O_NOFOLLOW (and O_APPEND): a link planted at the log's
    path is refused, never written through."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.baseFilename, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(self.baseFilename):
                raise ConfigError(
                    f"{self.baseFilename} is a symbolic link: tessq never writes through a link in the output "
                    "folder; remove it (or replace it with a regular file) and run again"
                ) from exc
            raise
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def setup(level: str = "INFO", log_file: Path | None = None, console: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tessq", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    if console:
        stream = logging.StreamHandler()
        stream.setLevel(level.upper())
        stream.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
        stream._tessq = True  # type: ignore[attr-defined]
        root.addHandler(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = NoFollowFileHandler(log_file, mode="a", encoding="utf-8")
        fh.setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.INFO)
        fh.setFormatter(RedactingFormatter(FORMAT))
        fh._tessq = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    logging.getLogger("huey").setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)
    logging.getLogger("peewee").setLevel(logging.WARNING)
    wire = os.environ.get(WIRE_ENV, "").lower() in ("1", "true", "yes")
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if wire and level.upper() == "DEBUG" else logging.WARNING)

"""The `tessq` executable's entry point: SIGTERM means Ctrl-C from the first instant, before heavy imports.

A signal that arrives while the CLI's modules load, or between phases of a command, ends the process
with status 130 (interrupted) instead of killing it mid-step.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130  # tessq.defaults.EXIT_INTERRUPTED, not imported here to keep start-up minimal


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from tessq.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)

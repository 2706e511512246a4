"""The `tessq` executable's entry point: SIGTERM means Ctrl-C from the first instant, before heavy imports.

A signal that arrives while the CLI's modules load, or between phases of a command, ends the process
with status 130 (interrupted) instead of killing it mid-step. When the command is over, the process ends
without the interpreter's teardown (about 0.1 s of freeing modules), after flushing everything it wrote.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130  # tessq.defaults.EXIT_INTERRUPTED, not imported here to keep start-up minimal


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main() -> NoReturn:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from tessq.cli import main as cli_main

        cli_main()
        code: object = 0
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except SystemExit as exc:
        code = exc.code
    _exit_now(code)


def _exit_now(code: object) -> NoReturn:
    """sys.exit's meaning of `code`, minus the teardown: every command has finished its work (workers
    joined, databases committed) by now, so only buffered output and log handlers need flushing."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        logs = sys.modules.get("logging")  # only if a command loaded it: `tessq --version` never does
        if logs is not None:
            logs.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be said
        pass
    os._exit(code)

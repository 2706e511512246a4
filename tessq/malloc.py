"""glibc malloc settings for a process that allocates and frees pixel buffers of tens of MB, band after band.

By default glibc gives a freed big buffer back to the kernel (the heap's top is trimmed, big chunks are
unmapped), so the next band's buffer is page-faulted in again, zero-filled: one 16384x12288 RGB image cost
~280,000 minor faults and ~1.5 s of system time. Keeping freed memory for reuse cuts the faults to ~75,000.
"""

from __future__ import annotations

import ctypes
import logging
import os

from tessq import defaults

log = logging.getLogger("tessq.malloc")

PARAMETERS = {"trim": -1, "top_pad": -2, "mmap": -3}  # mallopt(3)'s M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
DEFAULT = defaults.MALLOPT
ENV = "TESSQ_MALLOPT"  # "name=value,...", or empty for glibc's own behaviour


def settings(spec: str) -> list[tuple[int, int]]:
    """(mallopt parameter, value) pairs of a "name=value,..." spec; ValueError names what is wrong."""
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in PARAMETERS or not value.isdigit():
            raise ValueError(f"{ENV}: {item!r} is not one of {', '.join(f'{n}=<bytes>' for n in PARAMETERS)}")
        pairs.append((PARAMETERS[name], int(value)))
    return pairs


def keep_freed_memory() -> bool:
    """Apply the settings to this process's malloc (a worker calls this as it starts); False where it could not
    (no glibc: musl, macOS; or a value glibc refused)."""
    try:
        pairs = settings(os.environ.get(ENV, DEFAULT))
    except ValueError as exc:
        log.warning("%s; glibc's defaults are kept", exc)
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all([bool(mallopt(param, value)) for param, value in pairs])

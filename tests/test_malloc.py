"""tessq.malloc: a worker keeps freed pixel buffers for reuse instead of page-faulting fresh ones for every band."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tessq import malloc

BAND = """
import json, sys
import numpy as np
from tessq.malloc import keep_freed_memory

def rss_kib():
    return int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS")][0])

applied = keep_freed_memory()
base = rss_kib()
band = np.ones((256, 16384, 3), np.uint8)  # a 12 MiB band, touched
held = rss_kib() - base
del band
print(json.dumps({"applied": applied, "held": held, "kept": rss_kib() - base}))
"""


def freed_band(spec: str | None) -> dict:
    env = dict(os.environ)
    env.pop(malloc.ENV, None)
    if spec is not None:
        env[malloc.ENV] = spec
    proc = subprocess.run([sys.executable, "-c", BAND], capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout)


def test_a_spec_names_mallopt_parameters_and_a_bad_one_is_refused_by_name() -> None:
    assert malloc.settings(malloc.DEFAULT) == [(-2, 64 << 20), (-1, 1 << 30), (-3, 32 << 20)]
    assert malloc.settings("") == [] and malloc.settings(" top_pad=1 ,") == [(-2, 1)]
    with pytest.raises(ValueError, match=r"TESSQ_MALLOPT: 'arena=2' is not one of trim=<bytes>"):
        malloc.settings("arena=2")
    with pytest.raises(ValueError, match="'trim=-1'"):
        malloc.settings("trim=-1")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from Linux /proc")
def test_a_freed_band_buffer_stays_in_the_process_for_the_next_band() -> None:
    tuned, stock = freed_band(None), freed_band("")
    if not tuned["applied"]:
        pytest.skip("this libc has no mallopt (not glibc)")
    assert tuned["held"] > 11 * 1024 and stock["held"] > 11 * 1024  # the band was really in memory
    assert tuned["kept"] > 11 * 1024  # kept for reuse: the next band needs no fresh, zero-filled pages
    assert stock["kept"] < 2 * 1024  # glibc's default hands it back to the kernel (munmap)

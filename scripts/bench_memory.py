"""Peak memory of slicing a 16384x12288 RGB uint8 TIFF (600 MB raw), tiled and striped, against the target
2 x one slice's raw size + 200 MB, with a whole-image reader (tifffile.imread) as the baseline.

Usage: python scripts/bench_memory.py [--width W --height H --pieces N --workdir DIR --keep]

The sources are generated in a child process: Linux carries a process's RSS high-water mark across fork+exec
into ru_maxrss, so a big parent would inflate every measured child's figure. Each measured child reports its
own ru_maxrss and VmHWM; the parent's RUSAGE_CHILDREN (max over all children, generator included) is printed
for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from tessq.samples import photo_like_rows  # noqa: E402

MB = 1024 * 1024

CHILD_SLICE = """
import json, resource, sys, time
from tessq.cut.core import tessellate_image
from tessq.malloc import keep_freed_memory
keep_freed_memory()  # as a worker process does when it starts
from tessq.options import SliceOptions
t = time.perf_counter()
r = tessellate_image(sys.argv[1], sys.argv[2], SliceOptions(num_pieces=int(sys.argv[3]), min_size=1))
hwm = int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "vmhwm_kb": hwm,
                  "wall_s": time.perf_counter() - t, "bytes_out": r["bytes_out"], "timings": r["timings"]}))
"""

CHILD_IMREAD = """
import json, resource, sys, time, tifffile
t = time.perf_counter()
a = tifffile.imread(sys.argv[1])
hwm = int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "vmhwm_kb": hwm,
                  "wall_s": time.perf_counter() - t, "shape": list(a.shape)}))
"""


def make_sources(workdir: Path, width: int, height: int) -> dict[str, Path]:
    """Photo-like pixels into a memory-mapped .npy band by band, then tiled and striped TIFFs from it."""
    raw = workdir / "pixels.npy"
    arr = np.lib.format.open_memmap(raw, mode="w+", dtype=np.uint8, shape=(height, width, 3))
    band = 512
    for y in range(0, height, band):
        arr[y : y + band] = photo_like_rows(y, min(y + band, height), width, 3, "uint8", seed=3)
    arr.flush()
    paths = {"tiled": workdir / "big_tiled.tif", "striped": workdir / "big_striped.tif"}
    # tifffile compresses strip by strip / tile by tile from the memmap: never two copies in RAM
    tifffile.imwrite(
        paths["tiled"],
        arr,
        tile=(256, 256),
        compression="zlib",
        compressionargs={"level": 1},
        photometric="rgb",
        metadata=None,
    )
    tifffile.imwrite(
        paths["striped"],
        arr,
        rowsperstrip=32,
        compression="zlib",
        compressionargs={"level": 1},
        photometric="rgb",
        metadata=None,
    )
    del arr
    raw.unlink()
    return paths


def run_child(code: str, *args: str, threads: int | None = None) -> dict:
    """One measured child; `threads` sets TESSQ_THREADS (None: tessq's default, the codec pool on every core,
    the path one big image takes when no other image has the cores)."""
    env = {"PYTHONPATH": str(HERE.parent), "PATH": "/usr/bin:/bin"}
    if threads is not None:
        env["TESSQ_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--height", type=int, default=12288)
    ap.add_argument("--pieces", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tessq-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.generate_only:
        make_sources(workdir, args.width, args.height)
        return
    paths = {"tiled": workdir / "big_tiled.tif", "striped": workdir / "big_striped.tif"}
    if not all(p.exists() for p in paths.values()):
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--generate-only",
                "--workdir",
                str(workdir),
                "--width",
                str(args.width),
                "--height",
                str(args.height),
            ],
            check=True,
        )
    print(
        f"sources {args.width}x{args.height} RGB uint8 ({args.width * args.height * 3 / MB:.0f} MiB raw) "
        f"tiled + striped ready after {time.perf_counter() - t:.0f} s in {workdir}"
    )

    sys.path.insert(0, str(HERE.parent))
    from tessq.cut.grid import choose_grid

    rows, cols = choose_grid(args.pieces, args.width, args.height)
    slice_raw = (args.height // rows + 1) * (args.width // cols + 1) * 3
    bound = 2 * slice_raw + 200 * MB
    print(
        f"grid {rows}x{cols}; one slice raw {slice_raw / MB:.0f} MiB; bound 2 x slice + 200 MiB = {bound / MB:.0f} MiB"
    )
    results = {}
    cores = len(os.sched_getaffinity(0))
    for layout, threads in (("tiled", None), ("striped", None), ("tiled", 1), ("striped", 1)):
        out = workdir / f"out_{layout}"
        name = f"{layout}, {cores if threads is None else threads} thread(s)"
        results[name] = run_child(CHILD_SLICE, str(paths[layout]), str(out), str(args.pieces), threads=threads)
        shutil.rmtree(out, ignore_errors=True)
    results["imread"] = run_child(CHILD_IMREAD, str(paths["tiled"]))
    base = results["imread"]["vmhwm_kb"] * 1024
    print(f"{'run':36s} {'peak RSS':>10s} {'vs bound':>9s} {'vs imread':>10s} {'wall':>7s}  (VmHWM; ru_maxrss)")
    for name, res in results.items():
        rss = res["vmhwm_kb"] * 1024
        label = f"tessq slicing, {name}" if name != "imread" else "tifffile.imread (baseline)"
        ok = "" if name == "imread" else ("  OK" if rss <= bound else "  OVER")
        print(
            f"{label:36s} {rss / MB:8.0f} MiB {rss / bound:8.2f}x {rss / base:9.2f}x {res['wall_s']:6.1f}s{ok}"
            f"  ru_maxrss {res['maxrss_kb'] / 1024:.0f} MiB"
        )
    print(
        "RUSAGE_CHILDREN ru_maxrss (max over all children):",
        f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB",
    )
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

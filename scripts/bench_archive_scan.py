"""Scan speed of an archive as IN against the same tree as a folder (issue #18): `tessq scan` only.

Builds (and caches) N small TIFFs in folders of 100, packs them as a tar, a stored zip, a deflated zip and a
tar.gz, then times `tessq scan` on each (fresh OUT each time, repeats interleaved) and prints the median
wall and CPU (user+sys of the scan and its probe processes, from os.wait4).

    python scripts/bench_archive_scan.py [--count 3000] [--repeat 3] [--dir /tmp/tessq-bench-archive-scan]

(The cutting side is `python scripts/bench.py --archive`.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build(base: Path, count: int) -> list[Path]:
    from tests.conftest import write_tiff

    root = base / f"tree-{count}"
    if not root.exists():
        tmp = base / f".tree-{count}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(count):
            write_tiff(tmp / f"b{i // 100:03d}/img_{i:06d}.tif", 64, 64, seed=i)
        tmp.rename(root)
    files = sorted(root.rglob("*.tif"))
    packed = {
        "tar": base / f"tree-{count}.tar",
        "zip": base / f"tree-{count}.zip",
        "zip-deflated": base / f"tree-{count}.deflated.zip",
        "tgz": base / f"tree-{count}.tar.gz",
    }
    for kind, path in packed.items():
        if path.exists():
            continue
        tmp = path.with_name(path.name + ".tmp")
        if kind.startswith("zip"):
            method = zipfile.ZIP_DEFLATED if kind == "zip-deflated" else zipfile.ZIP_STORED
            with zipfile.ZipFile(tmp, "w", method) as zf:
                for p in files:
                    zf.write(p, p.relative_to(root).as_posix())
        else:
            with tarfile.open(tmp, "w:gz" if kind == "tgz" else "w") as tf:
                for p in files:
                    tf.add(p, p.relative_to(root).as_posix())
        tmp.rename(path)
    return [root, *packed.values()]


def scan_once(src: Path, out: Path) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessq", "scan", str(src), "--out", str(out), "--min-size", "0", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"tessq scan {src} failed (status {status})")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", type=Path, default=Path("/tmp/tessq-bench-archive-scan"))
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    sources = build(args.dir, args.count)
    for src in sources:  # warm the page cache
        if src.is_file():
            src.read_bytes()
    samples: dict[Path, list[tuple[float, float]]] = {s: [] for s in sources}
    for _ in range(args.repeat):
        for src in sources:
            samples[src].append(scan_once(src, args.dir / "out"))
    shutil.rmtree(args.dir / "out", ignore_errors=True)
    ref_wall = statistics.median(w for w, _ in samples[sources[0]])
    ref_cpu = statistics.median(c for _, c in samples[sources[0]])
    print(f"tessq scan of {args.count} TIFFs, median of {args.repeat}; loadavg {os.getloadavg()[0]:.2f}")
    for src in sources:
        wall = statistics.median(w for w, _ in samples[src])
        cpu = statistics.median(c for _, c in samples[src])
        print(
            f"  {src.name:28s} wall {wall:6.2f} s ({wall / ref_wall:4.2f}x)  cpu {cpu:6.2f} s ({cpu / ref_cpu:4.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

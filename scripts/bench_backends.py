"""Throughput of the same corpus on the three backends in one run: SQLite, PostgreSQL, Redis + PostgreSQL.

    python scripts/bench_backends.py                          # 200 images 1024x768, 2 workers, each backend once
    python scripts/bench_backends.py --n-images 500 --workers 4 --repeat 3

Each run is `tessq run CORPUS OUT --workers W` in a fresh workspace (and a fresh PostgreSQL database / Redis
db), so it includes scan, enqueue, the workers and the report. Printed per backend: wall seconds (median of
the repeats), images/s, wall per image, the job system's share per image (wall x W - the images' own
total_s from batch_metadata.json, over N), and the overhead per image against SQLite. Needs PostgreSQL and
Redis as in tests (TESSQ_TEST_PG, TESSQ_TEST_REDIS); a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

PG_ADMIN_URL = os.environ.get("TESSQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TESSQ_TEST_REDIS", "redis://127.0.0.1:6379")
BACKENDS = ("sqlite", "postgres", "redis+postgres")


def corpus(n: int, width: int, height: int) -> Path:
    """n photo-like RGB TIFFs, written once and cached in the temp dir."""
    root = Path(tempfile.gettempdir()) / f"tessq-bench-backends-{n}-{width}x{height}"
    if root.is_dir() and len(list(root.rglob("*.tif"))) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((np.sin(xx / 9.0) + np.cos(yy / 7.0)) * 0.25 + 0.5)[..., None] * np.array([180, 160, 140])
    for i in range(n):
        noise = rng.normal(0, 6, (height, width, 3))
        data = np.clip(base + noise + i % 17, 0, 255).astype("uint8")
        path = root / f"batch_{i // 50:02d}" / f"img_{i:04d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, data, photometric="rgb")
    return root


def fresh_pg() -> tuple[str, Any]:
    import psycopg

    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    name = f"tessq_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", lambda: admin.execute(
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    )


def fresh_redis() -> str:
    import redis

    url = f"{REDIS_URL}/15"
    redis.Redis.from_url(url, socket_connect_timeout=3).flushdb()
    return url


def run_once(backend: str, src: Path, workers: int, min_size: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    cleanups = []
    with tempfile.TemporaryDirectory(prefix="tessq-bench-be-") as tmp:
        env["TESSQ_WORKSPACE"] = str(Path(tmp) / "ws")
        if backend != "sqlite":
            url, drop = fresh_pg()
            env["TESSQ_DB_URL"] = url
            cleanups.append(drop)
        if backend == "redis+postgres":
            env["TESSQ_QUEUE_URL"] = fresh_redis()
        out = Path(tmp) / "out"
        try:
            started = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tessq",
                    "--log-level",
                    "WARNING",
                    "run",
                    str(src),
                    str(out),
                    "--workers",
                    str(workers),
                    f"--min-size={min_size}",
                    "--json",
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"{backend}: tessq run exited {proc.returncode}\n{proc.stderr[-2000:]}")
            totals = [json.loads(p.read_text())["timings"]["total_s"] for p in out.rglob("batch_metadata.json")]
        finally:
            for cleanup in cleanups:
                cleanup()
    return {"wall_s": wall, "images": len(totals), "core_s": sum(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--size", default="1024x768", help="WxH of each image")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    src = corpus(args.n_images, width, height)
    print(
        f"corpus: {args.n_images} images {width}x{height} RGB uncompressed ({src}); {args.workers} workers, "
        f"{os.cpu_count()} CPUs, repeat {args.repeat}"
    )
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
    skipped: dict[str, str] = {}
    for _ in range(args.repeat):
        for backend in BACKENDS:  # interleaved, so drift in the machine's load hits every backend alike
            if backend in skipped:
                continue
            try:
                runs[backend].append(run_once(backend, src, args.workers, min(width, height)))
            except Exception as exc:  # a missing server: say so and go on with the others
                skipped[backend] = str(exc).splitlines()[0]
    results: dict[str, dict[str, float]] = {}
    for backend, rs in runs.items():
        if not rs:
            continue
        wall = statistics.median(r["wall_s"] for r in rs)
        core = statistics.median(r["core_s"] for r in rs)
        n = rs[0]["images"]
        results[backend] = {
            "wall_s": round(wall, 2),
            "images_per_s": round(n / wall, 1),
            "wall_ms_per_image": round(1000 * wall / n, 1),
            "job_system_ms_per_image": round(1000 * (wall * args.workers - core) / n, 1),
            "images": n,
        }
    base = results.get("sqlite")
    print(f"{'backend':<16}{'wall s':>8}{'img/s':>8}{'ms/img':>9}{'job-sys ms/img':>16}{'vs SQLite ms/img':>18}")
    for backend, r in results.items():
        extra = r["wall_ms_per_image"] - base["wall_ms_per_image"] if base else float("nan")
        r["overhead_vs_sqlite_ms_per_image"] = round(extra, 1)
        print(
            f"{backend:<16}{r['wall_s']:>8.2f}{r['images_per_s']:>8.1f}{r['wall_ms_per_image']:>9.1f}"
            f"{r['job_system_ms_per_image']:>16.1f}{extra:>+18.1f}"
        )
    for backend, reason in skipped.items():
        print(f"{backend}: skipped ({reason})")
    if args.json:
        print(json.dumps({"results": results, "skipped": skipped}, indent=2))


if __name__ == "__main__":
    main()

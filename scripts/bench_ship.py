"""Benchmark of shipping an output tree: export_zip against `zip -r` and `python -m zipfile -c`, and
upload_outputs against the seed's naive boto3 `upload_file` loop, both on a local moto S3 server, in one run.

    python scripts/bench_ship.py --size-mb 1024          # builds a ~1 GB output-like tree in a temp dir
    python scripts/bench_ship.py --tree OUT --image-dirs-from-tree
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tessq.jobs import db  # noqa: E402
from tessq.ship.export import export_zip, verify_archive  # noqa: E402
from tessq.ship.upload import files_to_ship, make_client, upload_outputs  # noqa: E402

MB = 1 << 20


def build_tree(out: Path, size_mb: int, seed: int = 0) -> list[str]:
    """Image folders of 8 incompressible 'PNG' slices (0.5-4 MB; every 16th image 24 MB slices, which
    take the multipart path) plus metadata JSON, and the two reports; returns the image folders."""
    rng = random.Random(seed)
    budget, written, dirs = size_mb * MB, 0, []
    n = 0
    while written < budget:
        rel = f"project_{n // 40:02d}/survey_{n // 8 % 5:03d}/aerial_{n:05d}"
        folder = out / rel
        folder.mkdir(parents=True)
        big = n % 16 == 15
        for i in range(8):
            size = 24 * MB if big else rng.randint(MB // 2, 4 * MB)
            (folder / f"slice_{i}_0_0_1024_768.png").write_bytes(os.urandom(size))
            written += size
        digest = "ab" * 32
        meta = ",".join(f'{{"index": {i}, "box": [0, 0, 1024, 768], "sha256": "{digest}"}}' for i in range(8))
        (folder / "metadata.json").write_text(f'{{"source": "{rel}.tif", "slices": [{meta}]}}')
        (folder / "batch_metadata.json").write_text('{"worker": "host:1", "seconds": 1.5}')
        dirs.append(rel)
        n += 1
    (out / "batch_report.json").write_text('{"batch_summary": {}}')
    (out / "batch_processing.log").write_text("INFO processed\n" * 20000)
    return dirs


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def row(name: str, seconds: float, nbytes: int, tessq_seconds: float) -> str:
    """One line: time, throughput, and how many times longer than tessq's run it took."""
    rate = nbytes / MB / seconds
    return f"  {name:<44} {seconds:8.2f} s {rate:9.1f} MB/s  {seconds / tessq_seconds:5.2f}x tessq's time"


def bench_export(out: Path, dirs: list[str], work: Path, nbytes: int) -> None:
    print("ZIP export (tree in page cache; archive on the same disk)")
    dest = work / "tessq.zip"
    t_ours, result = timed(lambda: export_zip(out, dirs, dest))
    assert isinstance(result, dict)
    t_verify, _ = timed(lambda: verify_archive(dest, [(i, s) for i, s in _entries(dest)]))
    results = [("tessq export_zip (write + verify)", t_ours)]
    if shutil.which("zip"):
        t_zip, _ = timed(lambda: subprocess.run(["zip", "-r", "-q", str(work / "zip.zip"), "."], cwd=out, check=True))
        results.append(("zip -r (deflates everything)", t_zip))
        stored_png = ["zip", "-r", "-q", "-n", ".png", str(work / "zipn.zip"), "."]
        t_zip_n, _ = timed(lambda: subprocess.run(stored_png, cwd=out, check=True))
        results.append(("zip -r -n .png (stores PNG)", t_zip_n))
    t_py, _ = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "zipfile", "-c", str(work / "py.zip"), *sorted(p.name for p in out.iterdir())],
            cwd=out,
            check=True,
        )
    )
    results.append(("python -m zipfile -c (deflates everything)", t_py))
    for name, seconds in results:
        print(row(name, seconds, nbytes, t_ours))
    print(f"  (tessq's time includes its verify pass, alone {t_verify:.2f} s; the others verify nothing)")
    sizes = {p.name: p.stat().st_size / MB for p in work.glob("*.zip")}
    print("  archive sizes MB: " + ", ".join(f"{k}={v:.0f}" for k, v in sorted(sizes.items())))
    for p in work.glob("*.zip"):
        p.unlink()


def _entries(path: Path) -> list[tuple[str, int]]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return [(i.filename, i.file_size) for i in zf.infolist()]


def add_latency(client: object, rtt_ms: float) -> None:
    """Wait `rtt_ms` before every request: a stand-in for the round trip to a real S3 region, which a
    server on 127.0.0.1 does not have and which is what concurrent transfers hide."""
    if rtt_ms > 0:
        client.meta.events.register("before-send.s3", lambda **_: time.sleep(rtt_ms / 1000))  # type: ignore[attr-defined]


def bench_upload(out: Path, dirs: list[str], work: Path, nbytes: int, concurrencies: list[int], rtt_ms: float) -> None:
    """Each contender gets a fresh moto server: moto keeps objects in memory and slows as it fills."""
    import boto3

    from tests.s3server import DUMMY_ENV, start_moto, stop_moto

    os.environ.update(DUMMY_ENV)
    files = files_to_ship(out, dirs)
    print(
        f"S3 upload to a fresh moto_server on 127.0.0.1 per contender ({len(files)} files, "
        f"{rtt_ms:g} ms added per request)"
    )
    db.open_database(f"sqlite:///{work}/ledger.db")
    db.create_schema()
    ledger = db.UploadLedger()

    def on_fresh_server(run: Callable[[object, str, str], object]) -> object:
        proc, endpoint = start_moto()
        try:
            s3 = boto3.client("s3", endpoint_url=endpoint)
            bucket = f"b-{uuid.uuid4().hex[:12]}"
            s3.create_bucket(Bucket=bucket)
            return run(s3, bucket, endpoint)
        finally:
            stop_moto(proc)

    def naive(s3: object, bucket: str, endpoint: str) -> float:  # the seed's loop, as in original_system.md
        add_latency(s3, rtt_ms)

        def loop() -> None:
            for path, rel in files:
                s3.upload_file(str(path), bucket, f"processed-images/{rel}")  # type: ignore[attr-defined]

        return timed(loop)[0]

    def ours(concurrency: int) -> Callable[[object, str, str], tuple[float, float, dict]]:
        """First upload, then a re-run against the same bucket that must find nothing to send."""

        def run(s3: object, bucket: str, endpoint: str) -> tuple[float, float, dict]:
            url = f"s3://{bucket}/processed-images"
            client = make_client(endpoint, None, concurrency)
            add_latency(client, rtt_ms)

            def again() -> dict:
                return upload_outputs(files, url, ledger=ledger, client=client, concurrency=concurrency)

            t_first, first = timed(again)
            t_rerun, rerun = timed(again)
            assert isinstance(first, dict) and isinstance(rerun, dict)
            assert not first["failed"] and rerun["uploaded"] == 0, (first, rerun)
            return t_first, t_rerun, rerun

        return run

    t_naive = on_fresh_server(naive)
    timings = [(c, on_fresh_server(ours(c))) for c in concurrencies]
    reference = timings[0][1][0]  # type: ignore[index]
    for concurrency, (seconds, t_rerun, rerun) in timings:  # type: ignore[misc]
        print(row(f"tessq upload_outputs, concurrency {concurrency}", seconds, nbytes, reference))
        print(f"    re-run, nothing to send: {t_rerun:.2f} s ({rerun['skipped']} skipped after CRC check)")
    print(row("naive boto3 upload_file loop", t_naive, nbytes, reference))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated tree (default 1024)")
    parser.add_argument("--tree", type=Path, help="an existing output tree instead of a generated one")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[8, 2],
        help="upload_outputs concurrencies to measure (the first is the ratio reference)",
    )
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="latency added before every S3 request, to mimic a remote region (default 0)",
    )
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-upload", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessq-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        if args.tree:
            out = args.tree
            dirs = sorted({p.parent.relative_to(out).as_posix() for p in out.rglob("metadata.json")})
        else:
            out = work / "processed_output"
            t_build, dirs = timed(lambda: build_tree(out, args.size_mb))
            print(f"built {out} in {t_build:.1f} s")
        assert isinstance(dirs, list)
        nbytes = sum(p.stat().st_size for p, _ in files_to_ship(out, dirs))
        nfiles = len(files_to_ship(out, dirs))
        print(f"tree: {len(dirs)} images, {nfiles} files, {nbytes / MB:.0f} MB; {os.cpu_count()} CPUs")
        if not args.skip_export:
            bench_export(out, dirs, work, nbytes)
        if not args.skip_upload:
            bench_upload(out, dirs, work, nbytes, args.concurrency, args.rtt_ms)


if __name__ == "__main__":
    main()

"""End-to-end throughput benchmark: naive Pillow, tifffile+imagecodecs, pyvips and `tessq run` on one corpus.

Generates (and caches) a deterministic photo-like TIFF corpus, runs every contender in fresh subprocesses,
checks every output reassembles bit-exact, and prints wall, throughput, CPU, peak RSS, bytes and ratios.

Usage (from the repo root):
    python scripts/bench.py                      # 12 x 4096x3072 RGB uint8, striped, uncompressed; 3 repeats
    python scripts/bench.py --png-presets        # tessq --png fast|balanced|small beside the library pipeline
    python scripts/bench.py --large              # 16384x12288, one tiled + one striped image; memory targets
    python scripts/bench.py --huge               # ONE 16384x12288 tiled-deflate image: tessq vs pyvips threads
    python scripts/bench.py --tessq-verify       # also time `tessq verify` after each tessq run
    python scripts/bench.py --contenders naive,tessq,tessq-fast,tessq-l6 --repeat 5 --json out.json

Every contender runs as its own subprocess (`bench.py _contender ...` or `python -m tessq run ...`); wall is
measured around it and CPU / peak RSS come from os.wait4 (the rusage of the process and all its waited-for
descendants, so pool workers and tessq's forked workers are included; peak RSS is that of the largest one).
Repeats are interleaved (round-robin over contenders) so machine noise hits every contender alike.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_CONTENDERS = ("naive", "library", "hand", "pyvips", "tessq")
HUGE_CONTENDERS = ("pyvips-mt", "tessq")
PRESET_CONTENDERS = ("library", "tessq-fast", "tessq-balanced", "tessq-small")
LARGE_CONTENDERS = ("library", "pyvips", "tessq")
TESSQ_RE = re.compile(
    r"^tessq(?:-(fast|balanced|small))?(?:-l(\d+))?(?:-check(sample|full|off))?(?:-t(\d+))?"
    r"(?:\+(zip|zip-deflated|tar|tgz))?$"
)
ARCHIVE_CONTENDERS = ("tessq", "tessq+tar", "tessq+zip", "tessq+zip-deflated")
ARCHIVE_SUFFIX = {"zip": ".zip", "zip-deflated": ".deflated.zip", "tar": ".tar", "tgz": ".tar.gz"}
PNG_RLE_STRATEGY = 3  # imagecodecs.PNG.STRATEGY.RLE (zlib Z_RLE)
PNG_FILTER = {"none": 8, "sub": 16, "up": 32, "avg": 64, "paeth": 128}  # libpng / libvips filter flags
MB = 1e6


# ----------------------------------------------------------------------------------------------- corpus


@dataclass
class CorpusSpec:
    count: int
    width: int
    height: int
    samples: int
    dtype: str
    compression: str
    layout: str  # striped | tiled | mixed (alternating)
    tile: int
    rowsperstrip: int
    pieces: int

    def key(self) -> str:
        return (
            f"{self.count}x{self.width}x{self.height}x{self.samples}-{self.dtype}-{self.compression}-"
            f"{self.layout}-t{self.tile}-r{self.rowsperstrip}"
        )

    def layout_of(self, i: int) -> str:
        if self.layout == "mixed":
            return "tiled" if i % 2 == 0 else "striped"
        return self.layout


@dataclass
class Corpus:
    root: Path
    spec: CorpusSpec
    files: list[str]  # relative paths
    raw_bytes: int  # pixel bytes of the whole corpus
    plan: dict[str, list[list[int]]]  # rel path -> boxes [x0, y0, x1, y1] in tessq's row-major order
    pillow6_bytes: int  # Pillow default-level PNG bytes of all slices (the size reference)
    reference: str  # what made pillow6_bytes
    max_slice_bytes: int


def _write_one(job: tuple[str, int, dict[str, Any]]) -> str:
    from tessq.samples import write_sample_tiff

    path, seed, kw = job
    p = Path(path)
    tmp = p.with_name(p.name + ".part")
    write_sample_tiff(tmp, kw.pop("height"), kw.pop("width"), seed=seed, **kw)
    tmp.rename(p)
    return path


def _pillow6_size(job: tuple[str, list[list[int]]]) -> tuple[int, str]:
    """Pillow default-level (6) PNG bytes of one image's slices; imagecodecs level 6 where Pillow can't."""
    import tifffile

    path, boxes = job
    arr = tifffile.imread(path)
    total, ref = 0, "Pillow save() defaults (compress_level 6)"
    for x0, y0, x1, y1 in boxes:
        piece = np.ascontiguousarray(arr[y0:y1, x0:x1])
        if piece.dtype == np.uint8 or (piece.ndim == 2 and piece.dtype == np.uint16):
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(piece).save(buf, format="PNG")
            total += buf.tell()
        else:  # 16-bit RGB(A): Pillow cannot write it; libpng level 6 is the same deflate level
            import imagecodecs

            total += len(imagecodecs.png_encode(piece, level=6))
            ref = "imagecodecs.png_encode level 6 (Pillow cannot write this dtype)"
    return total, ref


def plan_boxes(width: int, height: int, pieces: int) -> list[list[int]]:
    from tessq.cut.grid import plan_grid
    from tessq.options import SliceOptions

    return [[b.x0, b.y0, b.x1, b.y1] for b in plan_grid(width, height, SliceOptions(num_pieces=pieces))]


def ensure_corpus(base: Path, spec: CorpusSpec, procs: int = 2, log: Any = print) -> Corpus:
    """Generate the corpus once under base/<key>/ (atomic per file) and cache its manifest."""
    root = base / spec.key()
    manifest = root / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("spec") == asdict(spec):
            return Corpus(root=root, spec=spec, **{k: v for k, v in data.items() if k != "spec"})
    root.mkdir(parents=True, exist_ok=True)
    files = [f"img_{i:04d}.tif" for i in range(spec.count)]
    jobs = []
    for i, name in enumerate(files):
        if (root / name).exists():
            continue
        kw: dict[str, Any] = {"height": spec.height, "width": spec.width, "samples": spec.samples, "dtype": spec.dtype}
        if spec.compression != "none":
            kw["compression"] = spec.compression
        if spec.layout_of(i) == "tiled":
            kw["tile"] = (spec.tile, spec.tile)
        else:
            kw["rowsperstrip"] = spec.rowsperstrip
            kw["band_rows"] = spec.rowsperstrip
        jobs.append((str(root / name), 1000 + i, kw))
    t = time.perf_counter()
    if jobs:
        log(
            f"generating {len(jobs)} photo-like TIFF(s) {spec.width}x{spec.height}x{spec.samples} "
            f"{spec.dtype} ({spec.layout}, {spec.compression}) into {root} ..."
        )
        with Pool(procs) as pool:
            list(pool.imap_unordered(_write_one, jobs))
            pool.close()
            pool.join()
        log(f"  generated in {time.perf_counter() - t:.1f} s")
    boxes = plan_boxes(spec.width, spec.height, spec.pieces)
    plan = {name: boxes for name in files}
    itemsize = np.dtype(spec.dtype).itemsize
    raw = spec.count * spec.width * spec.height * spec.samples * itemsize
    max_slice = max((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) * spec.samples * itemsize
    log("measuring the Pillow default-level PNG size of the corpus (once; cached) ...")
    with Pool(procs) as pool:
        sizes = pool.map(_pillow6_size, [(str(root / n), plan[n]) for n in files])
        pool.close()
        pool.join()
    refs = sorted({r for _, r in sizes})
    data = {
        "files": files,
        "raw_bytes": raw,
        "plan": plan,
        "pillow6_bytes": sum(s for s, _ in sizes),
        "reference": "; ".join(refs),
        "max_slice_bytes": max_slice,
    }
    manifest.write_text(json.dumps({"spec": asdict(spec), **data}))
    return Corpus(root=root, spec=spec, **data)


def warm_cache(corpus: Corpus) -> None:
    """Read every source once so no contender pays the first cold read alone."""
    for name in corpus.files:
        with open(corpus.root / name, "rb") as fh:
            while fh.read(1 << 24):
                pass


def ensure_archive(corpus: Corpus, kind: str) -> Path:
    """The corpus packed as one archive beside it (cached): zip (stored), zip-deflated, tar or tgz; warmed."""
    import tarfile
    import zipfile

    path = corpus.root.parent / f"{corpus.root.name}{ARCHIVE_SUFFIX[kind]}"
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        if kind.startswith("zip"):
            method = zipfile.ZIP_DEFLATED if kind == "zip-deflated" else zipfile.ZIP_STORED
            with zipfile.ZipFile(tmp, "w", method, compresslevel=6 if kind == "zip-deflated" else None) as zf:
                for name in corpus.files:
                    zf.write(corpus.root / name, name)
        else:
            with tarfile.open(tmp, "w:gz" if kind == "tgz" else "w") as tf:
                for name in corpus.files:
                    tf.add(corpus.root / name, name)
        tmp.rename(path)
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    return path


def warm_cache_dir(root: Path, headers_only: bool = False) -> None:
    """Read every TIFF under root (or its first 64 KiB) so the page cache holds what a run will read."""
    for path in root.rglob("*.tif"):
        with open(path, "rb") as fh:
            if headers_only:
                fh.read(1 << 16)
                continue
            while fh.read(1 << 24):
                pass


# ----------------------------------------------------------------------------------------------- contenders
# Each runs inside `bench.py _contender NAME IN OUT PLAN PROCS OPTS`, a fresh process, like a user's script.


def _slice_path(out: Path, rel: str, i: int, box: list[int]) -> Path:
    x0, y0, x1, y1 = box
    return out / Path(rel).with_suffix("") / f"slice_{i}_{x0}_{y0}_{x1}_{y1}.png"


def contender_naive(src: Path, out: Path, plan: dict[str, list[list[int]]], procs: int, opts: dict[str, Any]) -> None:
    """The naive script: Pillow open, crop, save with defaults, one image after another."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the large mode's 201 Mpx images trip Pillow's bomb check otherwise
    for rel, boxes in plan.items():
        with Image.open(src / rel) as im:
            for i, box in enumerate(boxes):
                path = _slice_path(out, rel, i, box)
                path.parent.mkdir(parents=True, exist_ok=True)
                im.crop(tuple(box)).save(path)


def _library_one(job: tuple[str, str, str, list[list[int]], int, int]) -> None:
    import imagecodecs
    import tifffile

    src, out, rel, boxes, level, filt = job
    arr = tifffile.imread(Path(src) / rel)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        data = imagecodecs.png_encode(
            np.ascontiguousarray(arr[y0:y1, x0:x1]), level=level, strategy=PNG_RLE_STRATEGY, filter=filt
        )
        path = _slice_path(Path(out), rel, i, [x0, y0, x1, y1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def contender_library(src: Path, out: Path, plan: dict[str, list[list[int]]], procs: int, opts: dict[str, Any]) -> None:
    """Best library pipeline: tifffile whole-image read + imagecodecs.png_encode (libpng) level 1, Z_RLE."""
    filt = PNG_FILTER[opts.get("library_filter", "paeth")]
    level = opts.get("library_level", 1)
    jobs = [(str(src), str(out), rel, boxes, level, filt) for rel, boxes in plan.items()]
    with Pool(procs) as pool:
        for _ in pool.imap_unordered(_library_one, jobs):
            pass
        pool.close()
        pool.join()


def _vips_one(job: tuple[str, str, str, list[list[int]], int, int]) -> None:
    import pyvips

    src, out, rel, boxes, compression, filt = job
    image = pyvips.Image.new_from_file(str(Path(src) / rel))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        path = _slice_path(Path(out), rel, i, [x0, y0, x1, y1])
        path.parent.mkdir(parents=True, exist_ok=True)
        image.crop(x0, y0, x1 - x0, y1 - y0).pngsave(str(path), compression=compression, filter=filt, keep=0)


def contender_pyvips(src: Path, out: Path, plan: dict[str, list[list[int]]], procs: int, opts: dict[str, Any]) -> None:
    """libvips via pyvips: one image per process, VIPS_CONCURRENCY=1 (set by the caller), crop + pngsave."""
    filt = PNG_FILTER[opts.get("vips_filter", "sub")]
    level = opts.get("vips_compression", 6)
    jobs = [(str(src), str(out), rel, boxes, level, filt) for rel, boxes in plan.items()]
    with Pool(procs) as pool:
        for _ in pool.imap_unordered(_vips_one, jobs):
            pass
        pool.close()
        pool.join()


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    import zlib

    return len(payload).to_bytes(4, "big") + tag + payload + zlib.crc32(payload, zlib.crc32(tag)).to_bytes(4, "big")


def _hand_one(job: tuple[str, str, str, list[list[int]], int, int]) -> None:
    """numpy Up filter + libdeflate level 1 (imagecodecs.deflate_encode), one IDAT, hand-written container."""
    import imagecodecs
    import tifffile

    src, out, rel, boxes, level, _ = job
    arr = tifffile.imread(Path(src) / rel)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        piece = arr[y0:y1, x0:x1]
        h, w = piece.shape[:2]
        samples = piece.shape[2] if piece.ndim == 3 else 1
        if piece.dtype.itemsize == 2:
            piece = piece.astype(">u2")
        rows = np.ascontiguousarray(piece).view(np.uint8).reshape(h, -1)
        filt = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
        filt[:, 0] = 2  # Up
        filt[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filt[1:, 1:])
        color = {1: 0, 2: 4, 3: 2, 4: 6}[samples]
        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([piece.dtype.itemsize * 8, color, 0, 0, 0])
        data = (
            b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", imagecodecs.deflate_encode(filt, level=level))
            + _png_chunk(b"IEND", b"")
        )
        path = _slice_path(Path(out), rel, i, [x0, y0, x1, y1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def contender_hand(src: Path, out: Path, plan: dict[str, list[list[int]]], procs: int, opts: dict[str, Any]) -> None:
    """Hand-made pipeline: tifffile read, numpy Up filter, libdeflate level 1, one IDAT; `procs` processes."""
    jobs = [(str(src), str(out), rel, boxes, 1, 0) for rel, boxes in plan.items()]
    with Pool(procs) as pool:
        for _ in pool.imap_unordered(_hand_one, jobs):
            pass
        pool.close()
        pool.join()


def contender_pyvips_mt(
    src: Path, out: Path, plan: dict[str, list[list[int]]], procs: int, opts: dict[str, Any]
) -> None:
    """libvips via pyvips in ONE process with VIPS_CONCURRENCY=procs threads (set by the caller)."""
    filt = PNG_FILTER[opts.get("vips_filter", "sub")]
    level = opts.get("vips_compression", 6)
    for rel, boxes in plan.items():
        _vips_one((str(src), str(out), rel, boxes, level, filt))


CONTENDER_FUNCS = {
    "naive": contender_naive,
    "library": contender_library,
    "pyvips": contender_pyvips,
    "hand": contender_hand,
    "pyvips-mt": contender_pyvips_mt,
}


def contender_main(argv: list[str]) -> None:
    name, src, out, plan_file, procs, opts = argv
    plan = json.loads(Path(plan_file).read_text())
    CONTENDER_FUNCS[name](Path(src), Path(out), plan, int(procs), json.loads(opts))


# ----------------------------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float
    cpu: float
    maxrss: int  # bytes
    rc: int


GNU_TIME = "/usr/bin/time"


def measure(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Sample:
    """Run cmd; wall around it; CPU and peak RSS of its process tree.

    Linux carries a process's RSS high-water mark across fork+exec, so os.wait4 on a child of this (numpy-
    loaded) process would report at least our own RSS. GNU time is a tiny parent, so its figures are the
    command's own: %M = largest RSS of the command and its waited-for descendants, %U+%S = their CPU.
    Without /usr/bin/time, fall back to os.wait4 (peak RSS then has this process's RSS as a floor).
    """
    stats = log_path.with_suffix(".time")
    use_time = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-o", str(stats), "-f", "%U %S %M %x", *cmd] if use_time else cmd
    with open(log_path, "wb") as logf:
        t = time.perf_counter()
        proc = subprocess.Popen(full, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if use_time:
        last = stats.read_text().strip().splitlines()[-1].split()
        utime, stime, rss_kb = float(last[0]), float(last[1]), int(last[2])
        return Sample(wall, utime + stime, rss_kb * 1024, proc.returncode)
    return Sample(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, proc.returncode)


@dataclass
class Result:
    name: str
    label: str
    samples: list[Sample] = field(default_factory=list)
    out_bytes: int = 0
    files: int = 0
    verified: str = "-"
    note: str = ""
    verify_samples: list[Sample] = field(default_factory=list)  # `tessq verify` after the run (--tessq-verify)

    @property
    def verify_wall(self) -> float | None:
        return statistics.median(s.wall for s in self.verify_samples) if self.verify_samples else None

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)

    @property
    def maxrss(self) -> int:
        return max(s.maxrss for s in self.samples)


def contender_label(name: str, args: argparse.Namespace) -> str:
    if name == "naive":
        return "naive: Pillow open/crop/save defaults, 1 process"
    if name == "library":
        return (
            f"tifffile + imagecodecs.png_encode L{args.library_level} RLE {args.library_filter}, {args.workers} procs"
        )
    if name == "pyvips":
        return f"pyvips pngsave compression {args.vips_compression} filter {args.vips_filter}, {args.workers} procs"
    if name == "pyvips-mt":
        return (
            f"pyvips pngsave compression {args.vips_compression} filter {args.vips_filter}, "
            f"1 proc x {args.workers} threads"
        )
    if name == "hand":
        return f"tifffile + numpy Up + libdeflate L1, one IDAT, {args.workers} procs"
    alt = name.startswith("alt:")
    m = TESSQ_RE.match(name.removeprefix("alt:"))
    assert m
    preset, level, check, threads, packed = m.groups()
    extra = "".join(
        [
            f" --png {preset}" if preset else "",
            f" --compress-level {level}" if level else "",
            f" --self-check {check}" if check else "",
            f" (TESSQ_THREADS={threads})" if threads else "",
        ]
    )
    source = f" (IN: the corpus as one {packed} archive)" if packed else ""
    return f"{'[alt] ' if alt else ''}tessq run --workers {args.workers}{extra}{source}"


def contender_cmd(
    name: str, corpus: Corpus, out: Path, ws: Path, plan_file: Path, args: argparse.Namespace
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if name in CONTENDER_FUNCS:
        opts = {
            "library_level": args.library_level,
            "library_filter": args.library_filter,
            "vips_compression": args.vips_compression,
            "vips_filter": args.vips_filter,
        }
        if name == "pyvips":
            env["VIPS_CONCURRENCY"] = "1"  # app-level parallelism, one libvips thread per process
        if name == "pyvips-mt":
            env["VIPS_CONCURRENCY"] = str(args.workers)  # one process, libvips' own threads
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_contender",
            name,
            str(corpus.root),
            str(out),
            str(plan_file),
            str(args.workers),
            json.dumps(opts),
        ]
        return cmd, env
    if name.startswith("alt:"):  # a patched tessq tree, to compare a fix against HEAD in the same run
        env["PYTHONPATH"] = os.pathsep.join([str(args.alt_tessq), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    m = TESSQ_RE.match(name.removeprefix("alt:"))
    if not m:
        raise SystemExit(f"unknown contender {name!r}")
    preset, level, check, threads, packed = m.groups()
    if threads:
        env["TESSQ_THREADS"] = threads
    source = ensure_archive(corpus, packed) if packed else corpus.root
    cmd = [
        sys.executable,
        "-m",
        "tessq",
        "--workspace",
        str(ws),
        "run",
        str(source),
        str(out),
        "--workers",
        str(args.workers),
        "--num-pieces",
        str(corpus.spec.pieces),
        "--min-size",
        "0",
        "--json",
    ]
    if preset:
        cmd += ["--png", preset]
    if level:
        cmd += ["--compress-level", level]
    if check:
        cmd += ["--self-check", check]
    cmd += args.tessq_arg
    return cmd, env


# ----------------------------------------------------------------------------------------------- verifying


def _verify_one(job: tuple[str, str, str, list[list[int]]]) -> tuple[str, int, int, str | None]:
    """(rel, slice bytes, slice files, problem or None): every slice decodes to exactly the source region."""
    import imagecodecs
    import tifffile

    src, out, rel, boxes = job
    ref = tifffile.imread(Path(src) / rel)
    folder = Path(out) / Path(rel).with_suffix("")
    expected = {_slice_path(Path(out), rel, i, box).name for i, box in enumerate(boxes)}
    present = {p.name for p in folder.glob("slice_*")} if folder.is_dir() else set()
    if present != expected:
        return (
            rel,
            0,
            len(present),
            f"slice files differ: missing {sorted(expected - present)[:3]}, extra {sorted(present - expected)[:3]}",
        )
    total = 0
    covered = 0
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = box
        path = _slice_path(Path(out), rel, i, box)
        data = path.read_bytes()
        total += len(data)
        got = imagecodecs.png_decode(data)
        want = ref[y0:y1, x0:x1]
        if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
            return (
                rel,
                total,
                len(present),
                f"{path.name}: pixels differ ({got.shape} {got.dtype} vs {want.shape} {want.dtype})",
            )
        covered += (x1 - x0) * (y1 - y0)
    if covered != ref.shape[0] * ref.shape[1]:
        return rel, total, len(present), f"slices cover {covered} px of {ref.shape[0] * ref.shape[1]}"
    return rel, total, len(present), None


def verify_output(corpus: Corpus, out: Path, procs: int) -> tuple[int, int, list[str]]:
    jobs = [(str(corpus.root), str(out), rel, boxes) for rel, boxes in corpus.plan.items()]
    with Pool(procs) as pool:
        results = pool.map(_verify_one, jobs)
        pool.close()
        pool.join()
    problems = [f"{rel}: {p}" for rel, _, _, p in results if p]
    return sum(r[1] for r in results), sum(r[2] for r in results), problems


def slice_bytes(out: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in out.rglob("slice_*")]
    return sum(sizes), len(sizes)


# ----------------------------------------------------------------------------------------------- running


def run_contenders(
    corpus: Corpus, names: list[str], args: argparse.Namespace, work: Path, log: Any = print
) -> dict[str, Result]:
    plan_file = work / "plan.json"
    plan_file.write_text(json.dumps(corpus.plan))
    results = {n: Result(n, contender_label(n, args)) for n in names}
    for r in range(args.repeat):
        for name in names:
            res = results[name]
            if res.note.startswith("FAILED"):
                continue
            run_dir = work / f"{name}-r{r}"
            out, ws = run_dir / "out", run_dir / "ws"
            ws.mkdir(parents=True)
            cmd, env = contender_cmd(name, corpus, out, ws, plan_file, args)
            sample = measure(cmd, run_dir / "log.txt", env=env, cwd=run_dir)
            if sample.rc != 0:
                tail = (run_dir / "log.txt").read_text(errors="replace")[-1500:]
                res.note = f"FAILED rc={sample.rc}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
                log(f"  {name} repeat {r + 1}: exit {sample.rc}\n{tail}")
                continue
            res.samples.append(sample)
            log(
                f"  {name:16s} repeat {r + 1}/{args.repeat}: wall {sample.wall:7.2f} s  "
                f"cpu {sample.cpu:7.2f} s  peak RSS {sample.maxrss / MB:7.1f} MB"
            )
            if args.tessq_verify and name not in CONTENDER_FUNCS:
                vcmd = [sys.executable, "-m", "tessq", "--workspace", str(ws), "verify", "--json"]
                if not name.startswith("alt:"):  # an older tessq (--alt-tessq) may have no --workers
                    vcmd[-1:-1] = ["--workers", str(args.workers)]
                venv = dict(env)
                vs = measure(vcmd, run_dir / "verify-log.txt", env=venv, cwd=run_dir)
                if vs.rc == 0:
                    res.verify_samples.append(vs)
                log(
                    f"  {name:16s} verify {r + 1}/{args.repeat}: wall {vs.wall:7.2f} s  cpu {vs.cpu:7.2f} s  "
                    f"rc {vs.rc}  (verify / run = {vs.wall / sample.wall:.2f})"
                )
            if r == 0:
                res.out_bytes, res.files = slice_bytes(out)
                if not args.no_verify:
                    t = time.perf_counter()
                    _, nfiles, problems = verify_output(corpus, out, args.workers)
                    res.verified = "bit-exact" if not problems else f"MISMATCH ({len(problems)})"
                    log(
                        f"    verify: {res.verified} ({nfiles} slices, {time.perf_counter() - t:.1f} s)"
                        + "".join(f"\n      {p}" for p in problems[:5])
                    )
            if not args.keep_output:
                shutil.rmtree(run_dir, ignore_errors=True)
    return results


def tessq_reference(names: Iterable[str]) -> str | None:
    """The tessq row the ratios are taken against: plain `tessq`, else the default preset's row."""
    from tessq import defaults

    names = list(names)
    for cand in ("tessq", f"tessq-{defaults.PNG_PRESET}"):
        if cand in names:
            return cand
    return next((n for n in names if n.startswith("tessq")), None)


def render(corpus: Corpus, results: dict[str, Result], args: argparse.Namespace) -> str:
    n = corpus.spec.count
    raw = corpus.raw_bytes
    ref_name = tessq_reference(results)
    ref = results.get(ref_name) if ref_name else None
    lines = []
    head = (
        f"{'contender':58s} {'wall s':>7s} {'img/h':>7s} {'MB/s':>6s} {'CPU s/img':>9s} "
        f"{'peakRSS MB':>10s} {'out MB':>7s} {'vs Pil6':>7s} {'tessq x':>7s}  verified"
    )
    lines += [head, "-" * len(head)]
    for res in results.values():
        if not res.samples:
            lines.append(f"{res.label:58s} {res.note}")
            continue
        speed = f"{res.wall / ref.wall:7.2f}" if ref and ref.samples else f"{'-':>7s}"
        lines.append(
            f"{res.label[:58]:58s} {res.wall:7.2f} {n / res.wall * 3600:7.0f} {raw / MB / res.wall:6.1f} "
            f"{res.cpu / n:9.2f} {res.maxrss / MB:10.0f} {res.out_bytes / MB:7.1f} "
            f"{res.out_bytes / corpus.pillow6_bytes:7.3f} {speed}  {res.verified}"
        )
    lines.append("")
    lines.append(
        f"wall = median of {args.repeat}; CPU = user+sys of the whole process tree (median); "
        "peak RSS = largest single process (max over repeats);"
    )
    lines.append(
        "vs Pil6 = slice bytes / Pillow default-level bytes; tessq x = contender wall / tessq wall "
        f"(>1: tessq faster); tessq row = {ref_name}"
    )
    for res in results.values():
        if res.verify_samples:
            vw = res.verify_wall or 0.0
            lines.append(
                f"`tessq verify --workers {args.workers}` after {res.name}: wall {vw:.2f} s, "
                f"cpu {statistics.median(s.cpu for s in res.verify_samples):.2f} s, "
                f"verify / run = {vw / res.wall:.2f}"
            )
    if ref and ref.samples:
        lines.append("")
        lines.append("targets (issue 16):")
        lines += targets(corpus, results, ref, args)
    return "\n".join(lines)


def targets(corpus: Corpus, results: dict[str, Result], ref: Result, args: argparse.Namespace) -> list[str]:
    out = []

    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    lib, naive, vips = results.get("library"), results.get("naive"), results.get("pyvips")
    hand, vips_mt = results.get("hand"), results.get("pyvips-mt")
    if lib and lib.samples:
        r = ref.wall / lib.wall
        out.append(f"  [{mark(r <= 0.65)}] tessq wall / library wall = {r:.3f} (<= 0.65); CPU {ref.cpu / lib.cpu:.3f}")
    if hand and hand.samples:
        r = ref.wall / hand.wall
        out.append(
            f"  [{mark(r <= 0.85)}] tessq wall / hand-made libdeflate-L1 wall = {r:.3f} (<= 0.85); "
            f"CPU {ref.cpu / hand.cpu:.3f}"
        )
    if naive and naive.samples:
        r = naive.wall / ref.wall
        out.append(f"  [{mark(r >= 5.0)}] naive wall / tessq wall = {r:.2f} (>= 5)")
    if vips and vips.samples:
        r, b = vips.wall / ref.wall, ref.out_bytes / vips.out_bytes
        out.append(
            f"  [{mark(r > 1.0 and b <= 1.0)}] pyvips wall / tessq wall = {r:.2f} (> 1) at "
            f"tessq bytes / pyvips bytes = {b:.3f} (<= 1)"
        )
    if vips_mt and vips_mt.samples:
        r = ref.wall / vips_mt.wall
        out.append(
            f"  [{mark(r <= 0.67)}] tessq wall / pyvips (1 proc, {args.workers} threads) wall = {r:.3f} "
            f"(<= 0.67); tessq CPU {ref.cpu:.1f} s = {ref.cpu / ref.wall * 100:.0f}% of one core"
        )
    if ref.verify_samples:
        r = (ref.verify_wall or 0.0) / ref.wall
        out.append(f"  [{mark(r <= 0.5)}] tessq verify wall / tessq run wall = {r:.3f} (<= 0.5)")
    b = ref.out_bytes / corpus.pillow6_bytes
    out.append(f"  [{mark(b <= 1.00)}] tessq bytes / Pillow default bytes = {b:.3f} (<= 1.00)")
    limit = 2 * corpus.max_slice_bytes + 200 * 1024 * 1024
    out.append(
        f"  [{mark(ref.maxrss <= limit)}] tessq peak RSS (largest process) = {ref.maxrss / MB:.0f} MB "
        f"(<= 2 x slice {corpus.max_slice_bytes / MB:.0f} MB + 200 MiB = {limit / MB:.0f} MB)"
    )
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tessq-bench-corpus",
        help="cache of generated corpora (one sub-folder per corpus spec)",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="where outputs go (default: a temp folder)")
    p.add_argument("--count", type=int, default=None, help="images (default 12; --large: 2)")
    p.add_argument("--width", type=int, default=None, help="default 4096 (--large: 16384)")
    p.add_argument("--height", type=int, default=None, help="default 3072 (--large: 12288)")
    p.add_argument("--samples", type=int, default=3, choices=(1, 2, 3, 4))
    p.add_argument("--dtype", default="uint8", choices=("uint8", "uint16"))
    p.add_argument("--compression", default="none", help="TIFF compression of the corpus: none, lzw, zlib...")
    p.add_argument(
        "--layout",
        default=None,
        choices=("striped", "tiled", "mixed"),
        help="default striped (--large: mixed = alternately tiled and striped)",
    )
    p.add_argument("--tile", type=int, default=512, help="tile side for tiled layouts")
    p.add_argument("--rowsperstrip", type=int, default=64)
    p.add_argument("--pieces", type=int, default=8)
    p.add_argument("--large", action="store_true", help="16384x12288 images, tiled + striped; memory targets")
    p.add_argument(
        "--huge",
        action="store_true",
        help="ONE 16384x12288 tiled-deflate RGB image; tessq vs pyvips (1 process, --workers threads, "
        "compression 1, filter sub)",
    )
    p.add_argument("--tessq-verify", action="store_true", help="time `tessq verify` after every tessq run")
    p.add_argument(
        "--png-presets",
        action="store_true",
        help="contenders: library + tessq --png fast|balanced|small (unless --contenders)",
    )
    p.add_argument(
        "--archive",
        action="store_true",
        help="contenders: tessq on the corpus folder and on it packed as a tar, a stored zip and a "
        "deflated zip (issue #18; also tessq+tgz)",
    )
    p.add_argument(
        "--contenders",
        default=None,
        help="comma list: naive, library, pyvips, tessq, tessq-<preset>, tessq[-<preset>]-l<N>",
    )
    p.add_argument("--repeat", type=int, default=None, help="runs per contender (median; default 3, large 1)")
    p.add_argument("--workers", type=int, default=2, help="processes for library, pyvips and tessq")
    p.add_argument("--library-level", type=int, default=1)
    p.add_argument("--library-filter", default="paeth", choices=sorted(PNG_FILTER))
    p.add_argument("--vips-compression", type=int, default=6)
    p.add_argument("--vips-filter", default="sub", choices=sorted(PNG_FILTER))
    p.add_argument("--tessq-arg", action="append", default=[], help="extra `tessq run` argument (repeatable)")
    p.add_argument(
        "--alt-tessq",
        type=Path,
        default=None,
        help="folder holding a patched tessq/ package; contenders alt:tessq[...] run it",
    )
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--keep-output", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.huge:
        args.large = True
        args.count = args.count or 1
        args.layout = args.layout or "tiled"
        if args.compression == "none":
            args.compression = "zlib"
        if "--vips-compression" not in " ".join(argv):
            args.vips_compression = 1
        args.repeat = args.repeat or 3
    large = args.large
    args.count = args.count or (2 if large else 12)
    args.width = args.width or (16384 if large else 4096)
    args.height = args.height or (12288 if large else 3072)
    args.layout = args.layout or ("mixed" if large else "striped")
    args.repeat = args.repeat or (1 if large else 3)
    return args


def corpus_spec(args: argparse.Namespace) -> CorpusSpec:
    return CorpusSpec(
        count=args.count,
        width=args.width,
        height=args.height,
        samples=args.samples,
        dtype=args.dtype,
        compression=args.compression,
        layout=args.layout,
        tile=args.tile,
        rowsperstrip=args.rowsperstrip,
        pieces=args.pieces,
    )


def choose_contenders(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(contenders to run, notes on the ones skipped)."""
    if args.contenders:
        names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    elif args.png_presets:
        names = list(PRESET_CONTENDERS)
    elif args.archive:
        names = list(ARCHIVE_CONTENDERS)
    else:
        names = list(HUGE_CONTENDERS if args.huge else LARGE_CONTENDERS if args.large else DEFAULT_CONTENDERS)
    notes = []
    for vips_name in [n for n in names if n.startswith("pyvips")]:
        try:
            import pyvips  # noqa: F401
        except (ImportError, OSError) as exc:
            names.remove(vips_name)
            notes.append(f"pyvips skipped: not importable ({type(exc).__name__}: {exc})")
    if "naive" in names and args.dtype == "uint16" and args.samples > 1:
        names.remove("naive")
        notes.append("naive skipped: Pillow cannot write 16-bit RGB(A) PNG")
    for n in names:
        if n.startswith("alt:") and args.alt_tessq is None:
            raise SystemExit(f"{n} needs --alt-tessq DIR")
        if n not in CONTENDER_FUNCS and not TESSQ_RE.match(n.removeprefix("alt:")):
            raise SystemExit(f"unknown contender {n!r}")
    return names, notes


def machine_line() -> str:
    import platform

    import imagecodecs
    import PIL
    import tifffile

    parts = [
        f"{os.cpu_count()} CPUs",
        platform.processor() or platform.machine(),
        f"Python {platform.python_version()}",
        f"numpy {np.__version__}",
        f"tifffile {tifffile.__version__}",
        f"imagecodecs {imagecodecs.__version__}",
        f"Pillow {PIL.__version__}",
    ]
    try:
        import pyvips

        parts.append(f"libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}")
    except (ImportError, OSError):
        parts.append("pyvips absent")
    try:
        load = os.getloadavg()
        parts.append(f"loadavg {load[0]:.2f}")
    except OSError:
        pass
    return ", ".join(parts)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_contender":
        contender_main(argv[1:])
        return 0
    args = parse_args(argv)
    names, notes = choose_contenders(args)
    spec = corpus_spec(args)
    corpus = ensure_corpus(args.corpus_dir, spec, procs=max(args.workers, 1))
    n = spec.count
    print(f"machine: {machine_line()}")
    print(
        f"corpus: {corpus.root}  {n} x {spec.width}x{spec.height}x{spec.samples} {spec.dtype}, "
        f"{spec.layout}, compression {spec.compression}, {spec.pieces} slices each; "
        f"{corpus.raw_bytes / MB:.1f} MB of pixels"
    )
    print(
        f"corpus PNG ratio: raw / {corpus.reference} = {corpus.raw_bytes / corpus.pillow6_bytes:.2f} "
        f"({corpus.pillow6_bytes / MB:.1f} MB)"
    )
    for note in notes:
        print(note)
    warm_cache(corpus)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tessq-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"running {', '.join(names)}; {args.repeat} repeat(s), interleaved; outputs under {work}")
    t = time.perf_counter()
    try:
        results = run_contenders(corpus, names, args, work)
    finally:
        if not args.keep_output and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"(bench took {time.perf_counter() - t:.0f} s)\n")
    table = render(corpus, results, args)
    print(table)
    if args.json:
        payload = {
            "machine": machine_line(),
            "corpus": asdict(spec),
            "raw_bytes": corpus.raw_bytes,
            "pillow6_bytes": corpus.pillow6_bytes,
            "argv": argv,
            "results": {
                k: {
                    **{kk: vv for kk, vv in asdict(v).items() if kk != "samples"},
                    "samples": [asdict(s) for s in v.samples],
                    "wall": v.wall if v.samples else None,
                    "cpu": v.cpu if v.samples else None,
                }
                for k, v in results.items()
            },
        }
        args.json.write_text(json.dumps(payload, indent=1))
    bad = [r for r in results.values() if r.note.startswith("FAILED") or r.verified.startswith("MISMATCH")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fault-injection harness for tessq (issue 5): real `python -m tessq` processes, real faults, real TIFFs.

Builds trees of good, small and hostile TIFFs, injects each fault repeatedly at random moments, then checks
every invariant with an independent checker (slice files + sqlite3 + the report); prints a table, exits 1 on
any violation. `--minutes N` bounds the run, `--quick` runs the fast subset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parent.parent
MIN_SIZE = 32
MIN_ARG = f"--min-size={MIN_SIZE}"
SLICE_RE = re.compile(r"^slice_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)\.(png|tif|tiff)$")
DONE_LOG_RE = re.compile(r"\] done (.+) \(\d+ slices, ")
LEFTOVER_MARKS = (".tessq-tmp.", ".tessq-old.")
RSS_LIMIT_BYTES = 3 * 1024**3  # the harness kills a tessq tree that grows past this (and reports it)


# ============================================================== input trees


def photo(h: int, w: int, samples: int, dtype: str, seed: int) -> np.ndarray:
    """Photo-like pixels (gradients + texture + noise), deterministic per seed; independent of tessq."""
    rng = np.random.default_rng(seed)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    chans = []
    for c in range(samples):
        base = 0.5 + 0.2 * np.sin(xx / (37.0 + 5 * c) + seed) * np.cos(yy / 23.0) + 0.1 * np.sin((xx + yy) / 7.0)
        chans.append(base + rng.normal(0, 0.02, (h, w)).astype(np.float32))
    img = np.stack(chans, axis=-1)
    maxval = np.iinfo(dtype).max
    out = np.clip(img * maxval, 0, maxval).astype(dtype)
    return out[..., 0] if samples == 1 else out


GOOD_KINDS: tuple[tuple[int, str, dict[str, Any]], ...] = (
    (3, "uint8", {}),
    (3, "uint8", {"compression": "zlib"}),
    (1, "uint16", {"compression": "lzw"}),
    (1, "uint8", {"tile": (64, 64), "compression": "zlib"}),
    (4, "uint8", {"extrasamples": ["unassalpha"]}),
    (3, "uint16", {"rowsperstrip": 16}),
)


def write_good(path: Path, h: int, w: int, seed: int, kind: int | None = None) -> Path:
    """A valid TIFF of one of a few common layouts (RGB/gray/RGBA, 8/16-bit, strips/tiles, codecs)."""
    samples, dtype, extra = GOOD_KINDS[(seed if kind is None else kind) % len(GOOD_KINDS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    photometric = "rgb" if samples in (3, 4) else "minisblack"
    tmp = path.with_name(f".writing-{os.getpid()}-{seed}.tmp")  # short: the final name may be NAME_MAX long
    tifffile.imwrite(tmp, photo(h, w, samples, dtype, seed), photometric=photometric, **extra)
    os.replace(tmp, path)
    return path


def make_tiff(tags: dict[int, tuple[int, list[int]]], data: bytes = b"", next_ifd: int | str = 0) -> bytes:
    """A hand-built little-endian classic TIFF: header, `data` at offset 8, one IFD after it.

    tags: {tag: (type, values)} with type 3 (SHORT) or 4 (LONG). next_ifd='self' makes an IFD loop.
    """
    pad = b"\0" if len(data) % 2 else b""
    ifd_off = 8 + len(data) + len(pad)
    ext_off = ifd_off + 2 + 12 * len(tags) + 4
    entries, ext = b"", b""
    for tag in sorted(tags):
        typ, vals = tags[tag]
        raw = struct.pack(f"<{len(vals)}{'H' if typ == 3 else 'I'}", *vals)
        if len(raw) <= 4:
            entries += struct.pack("<HHI", tag, typ, len(vals)) + raw.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, typ, len(vals), ext_off + len(ext))
            ext += raw + (b"\0" if len(raw) % 2 else b"")
    nxt = ifd_off if next_ifd == "self" else int(next_ifd)
    return (
        b"II*\0"
        + struct.pack("<I", ifd_off)
        + data
        + pad
        + struct.pack("<H", len(tags))
        + entries
        + struct.pack("<I", nxt)
        + ext
    )


def gray_tags(w: int, h: int, offsets: list[int], counts: list[int], rows: int, compression: int = 1) -> dict:
    return {
        256: (4, [w]),
        257: (4, [h]),
        258: (3, [8]),
        259: (3, [compression]),
        262: (3, [1]),
        273: (4, offsets),
        277: (3, [1]),
        278: (4, [rows]),
        279: (4, counts),
    }


def bad_files() -> dict[str, tuple[bytes, str]]:
    """Hostile inputs: name -> (bytes, expectation). 'fail' = must fail with a clear error naming the file;
    'fail_or_exact' = a clear error, or (the readable part is a whole valid image) a bit-exact result."""
    good = Path(tempfile.mkdtemp()) / "g.tif"
    tifffile.imwrite(good, photo(200, 200, 3, "uint8", 99), photometric="rgb")
    valid = good.read_bytes()
    shutil.rmtree(good.parent)
    blob = zlib.compress(b"\0" * 256)
    pixels = bytes(range(256)) * 16  # 64x64 gray
    tile_tags = {
        256: (4, [256]),
        257: (4, [256]),
        258: (3, [8]),
        259: (3, [8]),
        262: (3, [1]),
        277: (3, [1]),
        322: (4, [1 << 30]),
        323: (4, [1 << 30]),
        324: (4, [8]),
        325: (4, [len(blob)]),
    }
    zero_tile = {**tile_tags, 322: (4, [0]), 323: (4, [0])}
    return {
        "zero_bytes.tif": (b"", "fail"),
        "truncated_pixels.tif": (valid[: len(valid) * 3 // 5], "fail"),
        "truncated_header.tif": (valid[:6], "fail"),
        "png_named.tif": (b"\x89PNG\r\n\x1a\n" + os.urandom(300), "fail"),
        "text_named.TIFF": (b"these are field notes, not an image\n" * 20, "fail"),
        "jpeg_named.tif": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(200), "fail"),
        "bomb_100000x100000_nodata.tif": (make_tiff(gray_tags(100000, 100000, [8], [16], 100000), b"\0" * 16), "fail"),
        "bomb_100000x100000_past_eof.tif": (
            make_tiff(gray_tags(100000, 100000, [8], [4_294_967_295], 100000), b"\0" * 16),
            "fail",
        ),
        "ifd_self_loop.tif": (make_tiff(gray_tags(64, 64, [8], [4096], 64), pixels, next_ifd="self"), "fail_or_exact"),
        "ifd_loop_no_data.tif": (
            make_tiff({256: (4, [64]), 257: (4, [64]), 258: (3, [8]), 262: (3, [1])}, b"", next_ifd="self"),
            "fail",
        ),
        "absurd_tile_2e30.tif": (make_tiff(tile_tags, blob), "fail"),
        "zero_tile_size.tif": (make_tiff(zero_tile, blob), "fail"),
        "strip_count_mismatch.tif": (make_tiff(gray_tags(64, 64, [8, 8, 8], [16, 16], 1), b"\0" * 64), "fail"),
    }


def deflate_bomb(side: int) -> bytes:
    """A *valid* side x side gray TIFF whose every strip points at one tiny deflate blob (decompression bomb)."""
    blob = zlib.compress(b"\0" * side, 9)
    return make_tiff(gray_tags(side, side, [8] * side, [len(blob)] * side, 1, compression=8), blob)


@dataclass
class Tree:
    """An input tree and what a correct run must make of it."""

    root: Path
    good: set[str] = field(default_factory=set)  # must end done, bit-exact
    small: set[str] = field(default_factory=set)  # must end skipped (too_small)
    bad: dict[str, str] = field(default_factory=dict)  # rel -> 'fail' | 'fail_or_exact'
    folders_skipped: int = 0

    def subset(self, dest: Path, n_good: int, rng: random.Random, with_bad: bool = True) -> Tree:
        """A hard-linked copy with n_good good images (largest first half, random rest), smalls and bad files."""
        ordered = sorted(self.good, key=lambda r: -(self.root / r).stat().st_size)
        big = ordered[: max(1, n_good // 4)]
        rest = rng.sample(ordered[len(big) :], min(len(ordered) - len(big), n_good - len(big)))
        out = Tree(
            dest, good=set(big) | set(rest), small=set(sorted(self.small)[:3]), bad=dict(self.bad) if with_bad else {}
        )
        for rel in out.good | out.small | set(out.bad):
            link(self.root / rel, dest / rel)
        for jpg in self.root.rglob("*.jpg"):
            link(jpg, dest / jpg.relative_to(self.root))
        out.folders_skipped = self.folders_skipped
        return out


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_tree(root: Path, n_good: int, rng: random.Random, n_big: int = 6) -> Tree:
    """n_good valid TIFFs (64-1400 px, n_big of 2000-2600 px) over nested folders, 8 too-small ones,
    every hostile file, and a JPG-only folder."""
    tree = Tree(root)
    for i in range(n_good):
        if i < n_big:
            h, w = rng.randint(2000, 2600), rng.randint(2000, 2600)
        elif rng.random() < 0.25:
            h, w = rng.randint(700, 1400), rng.randint(700, 1400)
        else:
            h, w = rng.randint(64, 500), rng.randint(64, 500)
        rel = f"survey_{i % 7:02d}/{'roll_' + str(i % 3) + '/' if i % 2 else ''}img {i:04d}.tif"
        write_good(root / rel, h, w, seed=i)
        tree.good.add(rel)
    for i in range(8):
        rel = f"small/thumb_{i}.tif"
        write_good(root / rel, rng.randint(8, MIN_SIZE - 1), rng.randint(8, 200), seed=1000 + i)
        tree.small.add(rel)
    for name, (data, expect) in bad_files().items():
        rel = f"bad/{name}"
        (root / "bad").mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        tree.bad[rel] = expect
    (root / "jpg_only").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        (root / f"jpg_only/photo_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg bytes")
    (root / "notes.txt").write_text("not an image\n")
    tree.folders_skipped = 1
    return tree


# ============================================================== running tessq


class Tessq:
    """One workspace: runs `python -m tessq` against it, reads its status table with sqlite3 directly."""

    def __init__(self, base: Path, *, prefix: list[str] | None = None) -> None:
        self.base = base
        self.ws = base / "ws"
        self.ws.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
        self.env["TESSQ_WORKSPACE"] = str(self.ws)
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.prefix = prefix or []
        self.logs = base / "proc-logs"
        self.logs.mkdir(exist_ok=True)
        self._n = 0

    @property
    def db_path(self) -> Path:
        return self.ws / ".tessq" / "tessq.db"

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "tessq", *args]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env, cwd=self.base, capture_output=True, text=True, timeout=timeout
        )

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        self._n += 1
        log = open(self.logs / f"{self._n:03d}-{args[0]}.log", "wb")  # noqa: SIM115 - kept open by the child
        proc = subprocess.Popen(
            self.argv(*args), env=self.env, cwd=self.base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return proc

    def all_process_output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def report(self) -> dict[str, Any]:
        proc = self.run("report", "--json")
        if proc.returncode != 0:
            raise RuntimeError(f"tessq report failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(proc.stdout)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if not self.db_path.exists():
            return []
        for _ in range(50):
            try:
                con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
                try:
                    con.row_factory = sqlite3.Row
                    return [dict(r) for r in con.execute(sql, params)]
                finally:
                    con.close()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                time.sleep(0.1)
        raise RuntimeError(f"cannot read {self.db_path}")

    def rows(self) -> list[dict[str, Any]]:
        return self.query("SELECT i.*, j.input_dir, j.output_dir FROM image i JOIN job j ON j.id = i.job_id")

    def running(self) -> list[dict[str, Any]]:
        return self.query(
            "SELECT id, rel_path, worker, attempts, pixel_bytes, started_at FROM image "
            "WHERE status='running' ORDER BY pixel_bytes DESC"
        )

    def outstanding(self) -> int:
        rows = self.query("SELECT count(*) AS n FROM image WHERE status IN ('queued', 'running')")
        return rows[0]["n"] if rows else 0

    def counts(self) -> Counter[str]:
        return Counter(
            {r["status"]: r["n"] for r in self.query("SELECT status, count(*) AS n FROM image GROUP BY status")}
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 120) -> int | None:
    """Signal a tessq process and wait; on a hang, kill its whole group and return None."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        killpg(proc)
        return None


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for a process to exit by itself; on a hang, kill its whole group and return None."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        killpg(proc)
        return None


def killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def wait_until(pred: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    return None


def pid_of(worker: str | None) -> int | None:
    if not worker or ":" not in worker:
        return None
    tail = worker.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssWatch:
    """Samples the peak resident memory of any single process in a tree; kills the tree past a limit."""

    def __init__(self, proc: subprocess.Popen[bytes], limit: int = RSS_LIMIT_BYTES) -> None:
        self.proc, self.limit, self.peak, self.tripped = proc, limit, 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05) and self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                value = rss(pid)
                self.peak = max(self.peak, value)
                if value > self.limit:
                    self.tripped = True
                    killpg(self.proc)
                    return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


# ============================================================== the independent checker


@dataclass
class Findings:
    lost: int = 0
    twice: int = 0
    half: int = 0
    report: int = 0
    other: int = 0
    details: list[str] = field(default_factory=list)

    def add(self, column: str, message: str, n: int = 1) -> None:
        setattr(self, column, getattr(self, column) + n)
        self.details.append(f"[{column}] {message}")

    def merge(self, other: Findings) -> None:
        for col in ("lost", "twice", "half", "report", "other"):
            setattr(self, col, getattr(self, col) + getattr(other, col))
        self.details.extend(other.details)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.twice or self.half or self.report or self.other)


def reassemble(folder: Path) -> np.ndarray:
    """The image rebuilt from its slice files alone (names give the boxes); raises on gaps or overlaps."""
    import imagecodecs

    pieces = []
    for p in folder.iterdir():
        m = SLICE_RE.match(p.name)
        if not m:
            continue
        _, x0, y0, x1, y1 = (int(v) for v in m.groups()[:5])
        arr = imagecodecs.png_decode(p.read_bytes()) if m.group(6) == "png" else tifffile.imread(p)
        if arr.shape[:2] != (y1 - y0, x1 - x0):
            raise ValueError(f"{p.name}: pixels are {arr.shape[:2]}, its name says {(y1 - y0, x1 - x0)}")
        pieces.append((x0, y0, x1, y1, arr))
    if not pieces:
        raise ValueError("no slice files")
    width, height = max(p[2] for p in pieces), max(p[3] for p in pieces)
    first = pieces[0][4]
    canvas = np.zeros((height, width, *first.shape[2:]), dtype=first.dtype)
    cover = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1, arr in pieces:
        canvas[y0:y1, x0:x1] = arr
        cover[y0:y1, x0:x1] += 1
    if cover.min() != 1 or cover.max() != 1:
        raise ValueError(f"slices leave gaps or overlap (coverage {cover.min()}..{cover.max()})")
    return canvas


def same_pixels(folder: Path, source: Path) -> str | None:
    """None when the slices reassemble to exactly the source's pixels, else why not."""
    try:
        got = reassemble(folder)
    except Exception as exc:
        return f"cannot reassemble {folder}: {exc}"
    try:
        want = tifffile.imread(source)
    except Exception as exc:
        return f"cannot decode source {source}: {exc}"
    if want.ndim == 3 and want.shape[2] == 1:
        want = want[..., 0]
    if got.shape != want.shape:
        return f"{folder}: shape {got.shape} != source {want.shape}"
    if got.dtype.itemsize != want.dtype.itemsize or got.dtype.kind != want.dtype.kind:
        return f"{folder}: dtype {got.dtype} != source {want.dtype}"
    if not np.array_equal(got, want.astype(got.dtype, copy=False)):
        return f"{folder}: {int(np.count_nonzero(got != want))} values differ from the source"
    return None


def image_folders(out: Path) -> Iterator[Path]:
    """Visible folders that look like image outputs (hold a slice or a metadata file)."""
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(SLICE_RE.match(f) for f in filenames) or "metadata.json" in filenames:
            yield Path(dirpath)


def leftovers(out: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, _ in os.walk(out):
        for d in dirnames:
            if any(mark in d for mark in LEFTOVER_MARKS):
                found.append(Path(dirpath) / d)
        dirnames[:] = [d for d in dirnames if not any(mark in d for mark in LEFTOVER_MARKS)]
    return found


def partial_folders(out: Path) -> list[str]:
    """Visible image folders that are not complete right now: checked from the files alone, no decoding."""
    bad = []
    for folder in image_folders(out):
        try:
            names = os.listdir(folder)
            if "metadata.json" not in names or "batch_metadata.json" not in names:
                bad.append(f"{folder}: metadata.json/batch_metadata.json missing")
                continue
            json.loads((folder / "metadata.json").read_text())
            json.loads((folder / "batch_metadata.json").read_text())
            boxes = [tuple(int(v) for v in m.groups()[1:5]) for m in map(SLICE_RE.match, names) if m]
            if not boxes:
                bad.append(f"{folder}: no slices")
                continue
            w, h = max(b[2] for b in boxes), max(b[3] for b in boxes)
            if sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes) != w * h:
                bad.append(f"{folder}: slices do not tile {w}x{h}")
            for name in names:
                if SLICE_RE.match(name) and os.path.getsize(folder / name) == 0:
                    bad.append(f"{folder}/{name}: empty slice file")
        except FileNotFoundError:
            continue  # replaced while we looked: the rename is atomic, a reader may just miss it
        except (OSError, ValueError) as exc:
            bad.append(f"{folder}: {exc}")
    return bad


@dataclass
class Expect:
    """What the end state must be, beyond the tree: legitimate redos, tolerated gone sources, extra errors."""

    redo_ok: set[str] = field(default_factory=set)  # images allowed to be done more than once
    gone: set[str] = field(default_factory=set)  # sources deleted on purpose
    extra_fail: dict[str, str] = field(default_factory=dict)  # rel -> substring the error must contain
    report: bool = True


def check(
    tq: Tessq, tree: Tree, out: Path, expect: Expect | None = None, seen_partial: set[str] | None = None
) -> Findings:
    """Every invariant of issue 5, from the slice files, the source files and the table alone."""
    expect = expect or Expect()
    f = Findings()
    rows = tq.rows()
    by_rel: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_rel.setdefault(r["rel_path"], []).append(r)
    for rel, rs in by_rel.items():
        if len(rs) > 1:
            f.add("twice", f"{rel}: {len(rs)} rows in the status table")
    row = {rel: rs[0] for rel, rs in by_rel.items()}

    # 1. nothing lost: every good, present source is done, and its folder reassembles to the source exactly
    for rel in sorted(tree.good - expect.gone - set(expect.extra_fail)):
        src = tree.root / rel
        r = row.get(rel)
        if r is None:
            f.add("lost", f"{rel}: no row in the status table")
            continue
        if r["status"] != "done":
            f.add("lost", f"{rel}: status {r['status']} ({r['error_type']}: {r['error_message']})")
            continue
        why = same_pixels(out / r["out_rel"], src)
        if why:
            f.add("lost", f"{rel}: done but {why}")
    for rel, mode in sorted(tree.bad.items()):
        r = row.get(rel)
        if r is None:
            f.add("lost", f"{rel}: hostile file missing from the status table (should be a named error)")
        elif r["status"] == "done" and mode == "fail_or_exact":
            why = same_pixels(out / r["out_rel"], tree.root / rel)
            if why:
                f.add("lost", f"{rel}: reported done but {why}")
        elif r["status"] != "failed":
            f.add("lost", f"{rel}: hostile file ended {r['status']}, expected failed")
        elif Path(rel).name not in (r["error_message"] or ""):
            f.add("report", f"{rel}: error message does not name the file: {r['error_message']!r}")
    for rel in sorted(tree.small):
        r = row.get(rel)
        if r is None or r["status"] != "skipped":
            f.add("report", f"{rel}: too small, expected skipped, got {r and r['status']}")
    for rel, needle in expect.extra_fail.items():
        r = row.get(rel)
        if r is None or r["status"] != "failed" or needle not in (r["error_message"] or ""):
            f.add("report", f"{rel}: expected failed with {needle!r}, got {r and (r['status'], r['error_message'])}")
    for r in rows:
        if r["status"] in ("queued", "running"):
            f.add("lost", f"{r['rel_path']}: still {r['status']} after the final drain")

    # 2. nothing done twice: one 'done' per image in the log (unless legitimately redone), and the folder
    #    on disk was written by the claim the table says finished it
    log = out / "batch_processing.log"
    done_lines = Counter(DONE_LOG_RE.findall(log.read_text(errors="replace"))) if log.exists() else Counter()
    for rel, n in sorted(done_lines.items()):
        if n > 1 and rel not in expect.redo_ok:
            f.add("twice", f"{rel}: finished {n} times (log)")
    for rel, r in sorted(row.items()):
        if r["status"] != "done":
            continue
        meta = out / r["out_rel"] / "batch_metadata.json"
        try:
            bm = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            f.add("half", f"{rel}: done but batch_metadata.json unreadable: {exc}")
            continue
        if (bm.get("worker"), bm.get("attempt")) != (r["worker"], r["attempts"]):
            f.add(
                "twice",
                f"{rel}: folder written by {bm.get('worker')}#{bm.get('attempt')}, table says "
                f"{r['worker']}#{r['attempts']} finished it",
            )

    # 3. nothing half-written visible, now or at any moment we looked during the run
    for problem in partial_folders(out):
        f.add("half", problem)
    for problem in sorted(seen_partial or ()):
        f.add("half", f"seen during the run: {problem}")
    for p in leftovers(out):
        f.add("half", f"temporary folder left behind after the final drain: {p.relative_to(out)}")
    folders = {str(p.relative_to(out)) for p in image_folders(out)}
    done_dirs = {r["out_rel"] for r in rows if r["status"] == "done"}
    for extra in sorted(folders - done_dirs):
        owner = next((r for r in rows if r["out_rel"] == extra), None)
        if owner is None or owner["rel_path"] not in expect.redo_ok | expect.gone:
            f.add("other", f"output folder {extra} belongs to no done image ({owner and owner['status']})")
    for rel in done_dirs - folders:
        f.add("lost", f"{rel}: table says done, output folder missing")

    # 4. the report: every count from the tree, and equal to what the table says
    if expect.report:
        f.merge(check_report(tq, tree, rows, expect))
    return f


def check_report(tq: Tessq, tree: Tree, rows: list[dict[str, Any]], expect: Expect) -> Findings:
    f = Findings()
    try:
        rep = tq.report()
    except Exception as exc:
        f.add("report", f"tessq report --json failed: {exc}")
        return f
    s = rep["batch_summary"]
    counts = Counter(r["status"] for r in rows)
    tolerant_done = sum(
        1
        for rel, m in tree.bad.items()
        if m == "fail_or_exact" and any(r["rel_path"] == rel and r["status"] == "done" for r in rows)
    )
    gone_done = sum(1 for r in rows if r["rel_path"] in expect.gone and r["status"] == "done")
    good = len(tree.good - expect.gone - set(expect.extra_fail))
    want = {
        "total_images_found": len(tree.good - expect.gone) + len(tree.small) + len(tree.bad) + gone_done,
        "successfully_processed": good + tolerant_done + gone_done,
        "skipped": len(tree.small),
        "errors": len(tree.bad) - tolerant_done + len(expect.extra_fail),
        "folders_skipped": tree.folders_skipped,
    }
    table = {
        "total_images_found": sum(n for st, n in counts.items() if st != "cancelled"),
        "successfully_processed": counts["done"],
        "skipped": counts["skipped"],
        "errors": counts["failed"],
    }
    for key, value in want.items():
        if s.get(key) != value:
            f.add("report", f"batch_summary.{key} = {s.get(key)}, the tree says {value}")
        if key in table and table[key] != s.get(key):
            f.add("report", f"batch_summary.{key} = {s.get(key)}, the status table says {table[key]}")
    errors = {e["file"]: e for e in rep.get("errors", [])}
    for rel in [*(r for r, m in tree.bad.items() if rel_failed(rows, r)), *expect.extra_fail]:
        e = errors.get(rel)
        needle = expect.extra_fail.get(rel, Path(rel).name)
        if e is None:
            f.add("report", f"{rel}: failed but missing from report.errors")
        elif not e.get("type") or needle not in (e.get("message") or ""):
            f.add("report", f"{rel}: report error lacks a type or {needle!r}: {e}")
    return f


def rel_failed(rows: list[dict[str, Any]], rel: str) -> bool:
    return any(r["rel_path"] == rel and r["status"] == "failed" for r in rows)


class PartialWatch:
    """Background sampler of the output tree: any visible incomplete image folder, at any moment, is a violation."""

    def __init__(self, out: Path, every: float = 0.25) -> None:
        self.out, self.every, self.seen = out, every, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.out.is_dir():
                for problem in partial_folders(self.out):
                    # a folder can vanish between listing and reading: only count it if it is still bad
                    folder = problem.split(":")[0]
                    if Path(folder).exists() and any(p.startswith(folder + ":") for p in partial_folders(self.out)):
                        self.seen.add(problem)

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.seen


# ============================================================== the faults


@dataclass
class Result:
    fault: str
    injected: int = 0
    findings: Findings = field(default_factory=Findings)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class Ctx:
    work: Path
    tree: Tree
    rng: random.Random
    quick: bool
    deadline: float

    def dir(self, name: str) -> Path:
        d = self.work / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def left(self) -> float:
        return self.deadline - time.monotonic()


def drain(tq: Tessq, n: int = 2, timeout: float = 900) -> int | None:
    proc = tq.popen("workers", "--workers", str(n), "--drain")
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        killpg(proc)
        return None


def scan(tq: Tessq, src: Path, out: Path) -> None:
    proc = tq.run("scan", str(src), "--out", str(out), MIN_ARG, "--json")
    if proc.returncode != 0:
        raise RuntimeError(f"tessq scan failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def kill_running_worker(tq: Tessq, rng: random.Random, min_age: float = 0.05) -> tuple[int, int, int] | None:
    """SIGKILL the worker process holding a running image (preferring big ones): (pid, image id, attempt).

    An image whose worker dies on MAX_LOST_ATTEMPTS claims is failed as 'lost' by design (a file that kills
    every worker, e.g. by exhausting memory; tests/test_jobs.py covers that). This fault tests recovery, so it
    leaves each image two deaths short of that limit: the two kills of the whole tree per round fit in them."""
    from tessq.defaults import MAX_LOST_ATTEMPTS

    rows = [r for r in tq.running() if pid_of(r["worker"]) and r["attempts"] < MAX_LOST_ATTEMPTS - 2]
    if not rows:
        return None
    r = rows[0] if rng.random() < 0.7 else rng.choice(rows)
    pid = pid_of(r["worker"])
    assert pid is not None
    if not alive(pid):
        return None
    time.sleep(rng.uniform(0, min_age))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        return pid, r["id"], r["attempts"]
    return None


def fault_kill(ctx: Ctx, budget: float) -> Result:
    """1. SIGKILL one worker mid-image, 20+ times; SIGKILL the whole `tessq workers` tree; restart."""
    res = Result("1 SIGKILL worker mid-image / whole tree")
    target = 4 if ctx.quick else 20
    end = time.monotonic() + budget
    kills: list[tuple[Tessq, int, int]] = []
    tree_kills = rounds = 0
    while (len(kills) < target or rounds == 0) and time.monotonic() < end:
        rounds += 1
        base = ctx.dir(f"kill_{rounds}")
        tree = ctx.tree if rounds == 1 else ctx.tree.subset(base / "in", 40, ctx.rng)
        out = base / "out"
        tq = Tessq(base)
        scan(tq, tree.root, out)
        watch = PartialWatch(out)
        for phase in ("daemon", "drain"):
            daemon = tq.popen("workers", "--workers", "3", *(["--drain"] if phase == "drain" else []))
            goal = target // 2 if phase == "daemon" else target
            while daemon.poll() is None and len(kills) < goal and time.monotonic() < end:
                if tq.outstanding() == 0:
                    break
                # short gaps: on a fast host a 40-image round is over in seconds, and 20 kills must still fit
                time.sleep(ctx.rng.uniform(0.1, 0.5))
                hit = kill_running_worker(tq, ctx.rng)
                if hit:
                    kills.append((tq, hit[1], hit[2]))
            if daemon.poll() is None:
                holders = [pid_of(r["worker"]) for r in tq.running()]
                time.sleep(ctx.rng.uniform(0.1, 1.0))
                kids = descendants(daemon.pid)
                whole = tree_kills % 2 == 1
                kill_tree(daemon, whole_tree=whole)
                tree_kills += 1
                if not wait_until(lambda ks=kids: not [p for p in ks if alive(p)], 10):
                    res.findings.add(
                        "other",
                        f"worker processes {[p for p in kids if alive(p)]} outlived a "
                        f"SIGKILLed parent (holders {holders})",
                    )
        rc = drain(tq, 3)
        if rc != 0:
            res.findings.add("other", f"final `tessq workers --drain` exited {rc}")
        res.findings.merge(check(tq, tree, out, seen_partial=watch.stop()))
    hits = 0
    for tq, image_id, attempt in kills:
        rows = tq.query("SELECT attempts FROM image WHERE id=?", (image_id,))
        hits += bool(rows and rows[0]["attempts"] > attempt)
    res.injected = len(kills) + tree_kills
    res.notes.append(
        f"{len(kills)} single-worker kills ({hits} confirmed mid-image: the image was re-claimed),"
        f" {tree_kills} kills of `tessq workers` (parent alone / whole tree, alternating),"
        f" {rounds} round(s)"
    )
    if len(kills) < target:
        res.findings.add("other", f"only {len(kills)} worker kills fit in the time budget (want {target})")
    return res


def kill_tree(daemon: subprocess.Popen[bytes], *, whole_tree: bool) -> None:
    """SIGKILL the `tessq workers` parent; with whole_tree also every descendant at the same moment (else the
    children must die by themselves: PR_SET_PDEATHSIG)."""
    kids = descendants(daemon.pid) if whole_tree else []
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon.pid, signal.SIGKILL)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    daemon.wait(timeout=30)


def fault_signals(ctx: Ctx, budget: float) -> Result:
    """2. SIGTERM / SIGINT (single and double) of `tessq workers` and `tessq run`, restart with the same command."""
    res = Result("2 SIGTERM/SIGINT of workers and run")
    base = ctx.dir("signals")
    tree = ctx.tree.subset(base / "in", 16 if ctx.quick else 40, ctx.rng)
    out = base / "out"
    tq = Tessq(base)
    run_cmd = ("run", str(tree.root), str(out), MIN_ARG, "--workers", "2")
    scan(tq, tree.root, out)
    watch = PartialWatch(out)
    end = time.monotonic() + budget * 0.7
    rounds = 3 if ctx.quick else 12
    redone: set[str] = set()
    for i in range(rounds):
        if time.monotonic() > end:
            break
        if tq.outstanding() == 0:  # all finished: edit a few sources so the rescan gives the next signal work
            touched = ctx.rng.sample(sorted(tree.good), min(8, len(tree.good)))
            for rel in touched:
                os.utime(tree.root / rel, (time.time(), time.time() + 2 + i))
            redone.update(touched)
            scan(tq, tree.root, out)
        cmd = run_cmd if i % 2 else ("workers", "--workers", "2")
        proc = tq.popen(*cmd)
        wait_until(lambda: tq.running(), 30, 0.05)
        time.sleep(ctx.rng.uniform(0.0, 1.5))
        sig = ctx.rng.choice([signal.SIGTERM, signal.SIGINT])
        double = ctx.rng.random() < 0.3
        as_group = sig == signal.SIGINT and ctx.rng.random() < 0.5  # Ctrl-C reaches the whole process group
        if proc.poll() is None:
            (os.killpg if as_group else os.kill)(proc.pid, sig)
            res.injected += 1
            if double:
                time.sleep(ctx.rng.uniform(0.05, 0.5))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                res.injected += 1
        rc = wait_or_kill(proc, 120)
        what = f"{cmd[0]} {'2x' if double else ''}{signal.Signals(sig).name}{' (group)' if as_group else ''}"
        if rc is not None and rc < 0:
            res.notes.append(f"{what}: died of the signal (exit {rc}; a shell shows {128 - rc})")
        if rc is None:
            res.findings.add("other", f"{what}: did not exit within 120 s")
        elif cmd[0] == "workers" and rc != 0 and not (double and rc in (-sig, 128 + sig)):
            res.findings.add("other", f"{what}: exit status {rc}, want 0")
        elif cmd[0] == "run" and rc not in (130, 3) and not (double and rc in (-sig, 128 + sig)):
            res.findings.add("other", f"{what}: exit status {rc}, want 130 (interrupted) or 3 (finished)")
        left_running = [r["rel_path"] for r in tq.running()]
        if left_running and not double:
            res.notes.append(f"after a graceful {what}: {len(left_running)} row(s) left 'running'")
    proc = tq.popen(*run_cmd)
    rc = proc.wait(timeout=max(60.0, ctx.left()))
    if rc != 3:
        res.findings.add("other", f"final `tessq run` exited {rc}, want 3 (the tree holds hostile files)")
    res.findings.merge(check(tq, tree, out, Expect(redo_ok=redone), seen_partial=watch.stop()))
    return res


def fault_disk_full(ctx: Ctx, budget: float) -> Result:
    """3. ENOSPC while writing slices on a small tmpfs output; space is freed, the image is retried."""
    res = Result("3 disk full (tmpfs output)")
    rounds = 1 if ctx.quick else 2
    for n in range(rounds):
        base = ctx.dir(f"diskfull_{n}")
        mnt = base / "out"
        mnt.mkdir()
        why = mount_tmpfs(mnt, "2m")
        if why:
            res.skipped = why
            return res
        try:
            src = base / "in"
            tree = Tree(src, folders_skipped=0)
            for i in range(14):
                rel = f"d{i % 2}/full_{i:02d}.tif"
                write_good(src / rel, 420 + 13 * i, 400, seed=500 + i + 50 * n, kind=0)
                tree.good.add(rel)
            tq = Tessq(base)
            scan(tq, src, mnt)
            watch = PartialWatch(mnt)
            daemon = tq.popen("workers", "--workers", "2", "--drain")
            full = wait_until(
                lambda t=tq: t.query(
                    "SELECT id FROM image WHERE error_message LIKE '%disk full%' OR error_message LIKE '%No space%'"
                ),
                60,
            )
            if full:
                res.injected += 1
                time.sleep(ctx.rng.uniform(0.0, 1.0))
            else:
                res.findings.add("other", "the output never filled up (no ENOSPC error recorded)")
            subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)
            rc = daemon.wait(timeout=300)
            if rc != 0:
                res.findings.add("other", f"`tessq workers --drain` exited {rc}")
            seen = tq.query("SELECT count(*) AS n FROM image WHERE attempts > 1")[0]["n"]
            res.notes.append(f"round {n + 1}: {seen} image(s) needed more than one attempt")
            res.findings.merge(check(tq, tree, mnt, seen_partial=watch.stop()))
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    return res


def mount_tmpfs(path: Path, size: str) -> str | None:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root/CAP_SYS_ADMIN"
    return None


def mutate(path: Path, how: str, rng: random.Random, seed: int) -> None:
    """Change a source file: 'delete', 'replace' (new content via rename), 'modify' (pixels rewritten in
    place, same size, new mtime), 'truncate' (now corrupt)."""
    if how == "delete":
        path.unlink(missing_ok=True)
    elif how == "replace":
        h, w = rng.randint(300, 900), rng.randint(300, 900)
        write_good(path, h, w, seed=seed)
    elif how == "modify":
        # an editor saving in place: same inode, new valid content (same size class), new mtime. The tree is
        # hard-linked to the base tree, so first give this path its own inode.
        tmp = path.with_name(f".mod-{os.getpid()}.tmp")
        shutil.copy2(path, tmp)
        os.replace(tmp, path)
        with tifffile.TiffFile(path) as tif:
            h, w = tif.pages.first.shape[:2]
        write_good(tmp, h, w, seed=seed)
        with open(path, "r+b") as fh:
            fh.write(tmp.read_bytes())
            fh.truncate()
        tmp.unlink()
        os.utime(path, (time.time(), time.time() + 1))
    elif how == "truncate":
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data[: max(16, len(data) // 4)])


def fault_source_changes(ctx: Ctx, budget: float) -> Result:
    """4. Sources deleted / replaced / modified between scan and processing, and while being processed."""
    res = Result("4 source deleted/replaced/modified")
    base = ctx.dir("sources")
    tree = ctx.tree.subset(base / "in", 14 if ctx.quick else 36, ctx.rng, with_bad=False)
    out = base / "out"
    tq = Tessq(base)
    scan(tq, tree.root, out)
    expect = Expect()
    goods = sorted(tree.good)
    ctx.rng.shuffle(goods)
    before = {"delete": goods[0:2], "replace": goods[2:4], "modify": goods[4:6], "truncate": goods[6:7]}
    for how, rels in before.items():
        for rel in rels:
            mutate(tree.root / rel, how, ctx.rng, seed=9000 + res.injected)
            res.injected += 1
            apply_expectation(tree, expect, rel, how)
    untouched = set(goods[7:])
    watch = PartialWatch(out)
    daemon = tq.popen("workers", "--workers", "2", "--drain")
    during = 0
    while daemon.poll() is None and during < (3 if ctx.quick else 8):
        r = wait_until(lambda: [x for x in tq.running() if x["rel_path"] in untouched], 20, 0.02)
        if not r:
            break
        rel = r[0]["rel_path"]
        untouched.discard(rel)
        time.sleep(ctx.rng.uniform(0.0, 0.15))
        how = ctx.rng.choice(["modify", "replace", "delete", "modify"])
        mutate(tree.root / rel, how, ctx.rng, seed=9100 + during)
        apply_expectation(tree, expect, rel, how)
        during += 1
        res.injected += 1
    rc = daemon.wait(timeout=600)
    if rc != 0:
        res.findings.add("other", f"`tessq workers --drain` exited {rc}")
    first = check(
        tq,
        tree,
        out,
        Expect(redo_ok=set(expect.redo_ok), gone=set(expect.gone), extra_fail=dict(expect.extra_fail), report=False),
    )
    stale = [d for d in first.details if d.startswith("[lost]") and "values differ" in d]
    if stale:
        res.notes.append(
            f"before the rescan: {len(stale)} done image(s) hold the pre-change pixels (the rescan must redo them)"
        )
    proc = tq.run("run", str(tree.root), str(out), MIN_ARG, "--workers", "2", timeout=600)
    if proc.returncode not in (0, 3):
        res.findings.add("other", f"rescan `tessq run` exited {proc.returncode}")
    res.notes.append(f"{sum(len(v) for v in before.values())} changes before processing, {during} during")
    res.findings.merge(check(tq, tree, out, expect, seen_partial=watch.stop()))
    return res


def apply_expectation(tree: Tree, expect: Expect, rel: str, how: str) -> None:
    expect.redo_ok.add(rel)
    if how == "delete":
        expect.gone.add(rel)
    elif how == "truncate":
        tree.good.discard(rel)
        tree.bad[rel] = "fail"


def fault_permissions(ctx: Ctx, budget: float) -> Result:
    """5. Permission denied on a source file (at scan and after it) and on an output folder.

    root ignores permission bits, so tessq runs in a user namespace (`unshare -U`): its files are then
    checked against their owner bits like any user's. The output folder is also made immutable (chattr +i),
    which stops root itself."""
    res = Result("5 permission denied (source, output)")
    probe = subprocess.run(["unshare", "-U", "true"], capture_output=True)
    if probe.returncode != 0:
        res.skipped = "user namespaces (unshare -U) are not permitted here: root would bypass permission bits"
        return res
    base = ctx.dir("perms")
    src, out = base / "in", base / "out"
    tree = Tree(src)
    for i in range(6):
        rel = f"{'locked_out' if i < 2 else 'open'}/p_{i}.tif"
        write_good(src / rel, 200 + 10 * i, 180, seed=700 + i)
        tree.good.add(rel)
    tree.good.update({"open/unreadable_at_scan.tif", "open/unreadable_later.tif"})
    write_good(src / "open/unreadable_at_scan.tif", 150, 150, seed=720)
    write_good(src / "open/unreadable_later.tif", 160, 150, seed=721)
    tq = Tessq(base, prefix=["unshare", "-U"])
    (src / "open/unreadable_at_scan.tif").chmod(0)
    res.injected += 1
    scan(tq, src, out)
    (src / "open/unreadable_later.tif").chmod(0)
    (out / "locked_out").mkdir(parents=True, exist_ok=True)
    (out / "locked_out").chmod(0o555)
    immutable = subprocess.run(["chattr", "+i", str(out / "locked_out")], capture_output=True).returncode == 0
    res.injected += 2
    rc = drain(tq, 2, 300)
    if rc != 0:
        res.findings.add("other", f"`tessq workers --drain` exited {rc}")
    rows = {r["rel_path"]: r for r in tq.rows()}
    for rel in ("open/unreadable_at_scan.tif", "open/unreadable_later.tif", "locked_out/p_0.tif", "locked_out/p_1.tif"):
        r = rows.get(rel)
        if r is None:
            res.findings.add("report", f"{rel}: unreadable, but silently left out of the batch (no row, no error)")
        elif r["status"] != "failed" or "ermission" not in (r["error_message"] or ""):
            res.findings.add(
                "report", f"{rel}: expected failed 'permission denied', got {r['status']} {r['error_message']!r}"
            )
    (src / "open/unreadable_at_scan.tif").chmod(0o644)
    (src / "open/unreadable_later.tif").chmod(0o644)
    if immutable:
        subprocess.run(["chattr", "-i", str(out / "locked_out")], check=False)
    (out / "locked_out").chmod(0o755)
    tq.run("retry")
    proc = tq.run("run", str(src), str(out), MIN_ARG, "--workers", "2", timeout=300)
    if proc.returncode != 0:
        res.findings.add("other", f"after fixing permissions, `tessq run` exited {proc.returncode}, want 0")
    res.notes.append(f"tessq ran under `unshare -U`; output folder also chattr +i: {immutable}")
    res.findings.merge(check(tq, tree, out))
    return res


def fault_readers(ctx: Ctx, budget: float) -> Result:
    """6. `tessq status` polling and an external sqlite3 read transaction held open while 6 workers write."""
    res = Result("6 long-held readers, 6 workers")
    base = ctx.dir("readers")
    tree = ctx.tree.subset(base / "in", 40 if ctx.quick else 150, ctx.rng)
    out = base / "out"
    tq = Tessq(base)
    scan(tq, tree.root, out)
    total = len(tq.rows())
    daemon = tq.popen("workers", "--workers", "6", "--drain")
    stop_flag = threading.Event()
    polls: list[str] = []

    def poll_status() -> None:
        while not stop_flag.is_set():
            p = tq.run("status", "--json", timeout=120)
            if p.returncode != 0:
                polls.append(f"status exited {p.returncode}: {p.stderr[-300:]}")
                continue
            snap = json.loads(p.stdout)
            if sum(snap["counts"].values()) != total:
                polls.append(f"status counts sum to {sum(snap['counts'].values())}, table has {total} rows")
            polls.append("ok")

    poller = threading.Thread(target=poll_status, daemon=True)
    poller.start()
    holds = 0
    while daemon.poll() is None:
        cli = subprocess.Popen(
            ["sqlite3", str(tq.db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert cli.stdin is not None
        cli.stdin.write("BEGIN;\nSELECT count(*) FROM image;\n")
        cli.stdin.flush()
        con = sqlite3.connect(str(tq.db_path), timeout=30)
        con.execute("BEGIN")
        con.execute("SELECT count(*), sum(attempts) FROM image").fetchall()
        holds += 2
        time.sleep(ctx.rng.uniform(1.0, 6.0))
        con.rollback()
        con.close()
        cli.communicate("COMMIT;\n.quit\n", timeout=30)
        time.sleep(ctx.rng.uniform(0.0, 0.3))
    stop_flag.set()
    poller.join(timeout=120)
    res.injected = holds + len(polls)
    if daemon.returncode != 0:
        res.findings.add("other", f"`tessq workers --workers 6 --drain` exited {daemon.returncode}")
    text = tq.all_process_output() + (
        (out / "batch_processing.log").read_text(errors="replace") if (out / "batch_processing.log").exists() else ""
    )
    locked = text.count("database is locked")
    if locked:
        res.findings.add("other", f"'database is locked' appeared {locked} time(s)")
    for p in polls:
        if p != "ok":
            res.findings.add("other", p)
    res.notes.append(f"{holds} read transactions held 1-6 s (sqlite3 CLI + python), {len(polls)} status polls")
    res.findings.merge(check(tq, tree, out))
    return res


def fault_backup_restore(ctx: Ctx, budget: float) -> Result:
    """7. The workspace DB copied mid-run and restored later (older state): work is redone, never lost."""
    res = Result("7 DB copied mid-run, restored later")
    base = ctx.dir("restore")
    tree = ctx.tree.subset(base / "in", 20 if ctx.quick else 60, ctx.rng)
    out = base / "out"
    tq = Tessq(base)
    scan(tq, tree.root, out)
    watch = PartialWatch(out)
    cycles = 1 if ctx.quick else 3
    for n in range(cycles):
        daemon = tq.popen("workers", "--workers", "2")
        wait_until(lambda: tq.counts()["done"] >= 2, 60)
        time.sleep(ctx.rng.uniform(0.0, 1.5))
        backup = base / f"backup_{n}.db"
        raw = ctx.rng.random() < 0.5
        if raw:  # what a user's `cp` does: the main file and the WAL, one after the other, under load
            shutil.copy(tq.db_path, backup)
            wal = tq.db_path.with_name("tessq.db-wal")
            if wal.exists():
                shutil.copy(wal, backup.with_name(backup.name + "-wal"))
        else:
            src_con = sqlite3.connect(str(tq.db_path), timeout=30)
            dst_con = sqlite3.connect(str(backup))
            src_con.backup(dst_con)
            src_con.close()
            dst_con.close()
        res.injected += 1
        time.sleep(ctx.rng.uniform(1.0, 4.0))
        rc = stop(daemon, signal.SIGTERM, 120)
        if rc != 0:
            res.findings.add("other", f"SIGTERM of `tessq workers` before the restore: exit {rc}")
        done_before = tq.counts()["done"]
        for suffix in ("-wal", "-shm"):
            tq.db_path.with_name("tessq.db" + suffix).unlink(missing_ok=True)
        shutil.copy(backup, tq.db_path)
        if backup.with_name(backup.name + "-wal").exists():
            shutil.copy(backup.with_name(backup.name + "-wal"), tq.db_path.with_name("tessq.db-wal"))
        ok = tq.query("PRAGMA integrity_check")
        if not ok or ok[0].get("integrity_check") != "ok":
            res.findings.add("other", f"restored {'raw copy' if raw else 'backup'} is not a sound database: {ok}")
        res.notes.append(
            f"cycle {n + 1} ({'cp db+wal' if raw else 'sqlite backup API'}): {done_before} done before "
            f"the restore, {tq.counts()['done']} after"
        )
    rc = drain(tq, 2)
    if rc != 0:
        res.findings.add("other", f"`tessq workers --drain` after the restore exited {rc}")
    res.findings.merge(check(tq, tree, out, Expect(redo_ok=set(tree.good) | set(tree.bad)), seen_partial=watch.stop()))
    return res


def fault_bad_inputs(ctx: Ctx, budget: float) -> Result:
    """8. Hostile inputs (also in every other tree): each fails with a named error, the batch goes on,
    memory stays bounded; plus a valid deflate bomb whose strips all share one tiny blob."""
    res = Result("8 bad inputs (corrupt, bombs, loops)")
    base = ctx.dir("bad")
    tree = ctx.tree.subset(base / "in", 4, ctx.rng)
    side = 20000 if ctx.quick else 40000
    bomb = tree.root / "bad/deflate_bomb.tif"
    bomb.write_bytes(deflate_bomb(side))
    tree.bad["bad/deflate_bomb.tif"] = "fail_or_exact"
    out = base / "out"
    tq = Tessq(base)
    proc = tq.popen("run", str(tree.root), str(out), MIN_ARG, "--workers", "2")
    watch = RssWatch(proc)
    try:
        rc = proc.wait(timeout=max(120.0, min(budget, 600.0)))
    except subprocess.TimeoutExpired:
        rc = None
        killpg(proc)
    peak = watch.stop()
    res.injected = len(tree.bad)
    res.notes.append(
        f"peak RSS of any tessq process: {peak / 2**20:.0f} MiB (bomb: {side}x{side} px, "
        f"{bomb.stat().st_size} bytes on disk)"
    )
    if watch.tripped:
        res.findings.add("other", f"a tessq process passed {RSS_LIMIT_BYTES / 2**30:.0f} GiB RSS and was killed")
        return res
    if rc is None:
        res.notes.append("the deflate bomb was still being processed at the time limit: it is not refused")
        res.findings.add("other", f"`tessq run` did not finish within {min(budget, 600.0):.0f} s (deflate bomb)")
        drain(tq, 2, 60)
        return res
    if rc != 3:
        res.findings.add("other", f"`tessq run` exited {rc}, want 3")
    res.findings.merge(check(tq, tree, out))
    rows = {r["rel_path"]: r for r in tq.rows()}
    for rel in sorted(tree.bad):
        r = rows.get(rel, {})
        res.notes.append(
            f"  {Path(rel).name}: {r.get('status')} {r.get('error_type')}: {(r.get('error_message') or '')[:110]}"
        )
    return res


ESCAPING_NAMES = [
    "...tif",  # stem '..'
    "..tiff",  # stem '.'
    ".tif",  # stem '.tif', hidden
    "..\\..\\evil.tif",  # backslashes are ordinary characters on POSIX
    "-rf .tif",
    "new\nline.tif",
    "a" * 251 + ".tif",  # 255 bytes: NAME_MAX
    "é" * 120 + ".tif",  # 244 bytes of UTF-8
]


def fault_escaping_names(ctx: Ctx, budget: float) -> Result:
    """9. Source names (and table rows) that would escape OUT: '..', absolute, NUL, very long, odd bytes."""
    res = Result("9 names escaping OUT")
    findings, injected, tq, src, out = escaping_names_run(ctx.dir("names"))
    res.findings.merge(findings)
    res.injected = injected + 1
    problem = non_utf8_name_scan(tq, src, out)
    if problem:
        res.findings.add("other", problem)
    return res


def escaping_names_run(base: Path) -> tuple[Findings, int, Tessq, Path, Path]:
    """Sources with hostile names plus status rows whose out_rel escapes OUT; nothing may land outside OUT."""
    f = Findings()
    sandbox = base / "sandbox"
    src, out = sandbox / "in", sandbox / "deep/out"
    tree = Tree(src)
    for i, name in enumerate(ESCAPING_NAMES):
        write_good(src / name, 64, 80, seed=800 + i)
        tree.good.add(name)
    for rel in ("x..", "dots...", "a..b"):  # dot-led folders are hidden: never scanned, by design
        write_good(src / rel / "inner.tif", 64, 64, seed=860 + len(rel))
        tree.good.add(f"{rel}/inner.tif")
    for i in range(3):
        write_good(src / f"tamper/t_{i}.tif", 64, 64, seed=870 + i)
    injected = len(tree.good)
    tq = Tessq(base)
    canary = Path(tempfile.gettempdir()) / f"tessq-chaos-abs-{os.getpid()}"
    scan(tq, src, out)
    # a tampered (or hostile, shared) status table: output paths that point outside OUT
    expect = Expect()
    hostile = {
        "tamper/t_0.tif": "../../../escaped_rel",
        "tamper/t_1.tif": str(canary),
        "tamper/t_2.tif": "inside\x00/../../../escaped_nul",
    }
    con = sqlite3.connect(str(tq.db_path), timeout=30)
    for rel, value in hostile.items():
        con.execute("UPDATE image SET out_rel=? WHERE rel_path=?", (value, rel))
        expect.extra_fail[rel] = "refusing output path"
        tree.good.add(rel)
        injected += 1
    con.commit()
    con.close()
    before = snapshot(base, exclude=(src, out, tq.ws, tq.logs))
    rc = drain(tq, 2, 300)
    if rc != 0:
        f.add("other", f"`tessq workers --drain` exited {rc}")
    after = snapshot(base, exclude=(src, out, tq.ws, tq.logs))
    for p in sorted(after - before):
        f.add("other", f"written outside OUT: {p}")
    if canary.exists():
        f.add("other", f"written to the absolute path {canary}")
        shutil.rmtree(canary, ignore_errors=True)
    f.merge(check(tq, tree, out, expect))
    return f, injected, tq, src, out


def non_utf8_name_scan(tq: Tessq, src: Path, out: Path) -> str | None:
    """A file name that is not valid UTF-8 (legal on POSIX) must not take the whole scan down."""
    odd = src / os.fsdecode(b"bad_\xff\xfe_bytes.tif")
    write_good(odd, 64, 64, seed=850)
    try:
        proc = tq.run("scan", str(src), "--out", str(out), MIN_ARG, "--json")
    finally:
        odd.unlink()
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"`tessq scan` exits {proc.returncode} on a non-UTF-8 file name ({os.fsencode(odd.name)!r}): {last}"
    return None


def snapshot(root: Path, exclude: tuple[Path, ...]) -> set[str]:
    keep = set()
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if (d / n) not in exclude]
        keep.update(str(d / n) for n in filenames + dirnames)
    return keep


# ============================================================== issue 19: shipping (upload, links, secrets, leftovers)

MARKER_TOKEN = "CHAOSMARKERSESSIONTOKEN7f3a9c1e5b"
MARKER_SECRET = "CHAOSMARKERSECRETKEY2d8e4b6a0c"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


class Moto:
    """A real S3 endpoint: moto's server in its own process on a free local port."""

    def __init__(self, base: Path) -> None:
        import socket
        import urllib.error
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(base / f"moto-{port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **S3_ENV},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False

        if not wait_until(lambda: self.proc.poll() is not None or up(), 30) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("moto server did not start")

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def listing(self, bucket: str, prefix: str) -> dict[str, int]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        return {o["Key"][len(prefix) + 1 :]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


def moto_or_skip(res: Result, base: Path) -> Moto | None:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401

        return Moto(base)
    except (ImportError, RuntimeError) as exc:
        res.skipped = f"no moto S3 server ({exc})"
        return None


def shipped_locally(tq: Tessq, out: Path) -> dict[str, bytes]:
    """What a correct shipment holds, from the status table (sqlite3) and the disk: the regular files of
    the done folders (no link, nothing reached through one) and the reports."""
    files: dict[str, bytes] = {}
    for r in tq.query("SELECT out_rel FROM image WHERE status='done'"):
        top, parts = out / r["out_rel"], Path(r["out_rel"]).parts
        if any((out / Path(*parts[:i])).is_symlink() for i in range(1, len(parts) + 1)):
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
            for name in filenames:
                p = Path(dirpath) / name
                if not p.is_symlink() and p.is_file() and ".tessq-" not in str(p.relative_to(out)):
                    files[p.relative_to(out).as_posix()] = p.read_bytes()
    for name in ("batch_report.json", "batch_processing.log"):
        p = out / name
        if p.is_file() and not p.is_symlink():
            files[name] = p.read_bytes()
    return files


def compare_bucket(f: Findings, moto: Moto, bucket: str, prefix: str, local: dict[str, bytes], what: str) -> None:
    """A fresh listing plus a GET of every object: the bucket must hold exactly the local files, byte for byte.
    (The log may have grown since it was sent: a prefix of the local log is accepted.)"""
    remote = moto.listing(bucket, prefix)
    client = moto.client()
    for rel, data in sorted(local.items()):
        if rel not in remote:
            f.add("other", f"{what}: {rel} is not in s3://{bucket}/{prefix}")
            continue
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read()
        if body != data and not (rel == "batch_processing.log" and data.startswith(body)):
            f.add("other", f"{what}: s3://{bucket}/{prefix}/{rel} differs from the local file")
    for rel in sorted(set(remote) - set(local)):
        f.add("other", f"{what}: s3://{bucket}/{prefix}/{rel} should not be there (not a shipped file)")


def small_run(ctx: Ctx, name: str, n: int = 8, env: dict[str, str] | None = None) -> tuple[Tessq, Path, Path, Tree]:
    base = ctx.dir(name)
    tree = ctx.tree.subset(base / "in", n, ctx.rng, with_bad=False)
    tq = Tessq(base)
    tq.env.update(S3_ENV)
    tq.env.update(env or {})
    out = base / "out"
    proc = tq.run("run", str(tree.root), str(out), MIN_ARG, "--workers", "2")
    if proc.returncode != 0:
        raise RuntimeError(f"`tessq run` exited {proc.returncode}: {proc.stderr[-1500:]}")
    return tq, base, out, tree


def fault_upload_target(ctx: Ctx, budget: float) -> Result:
    """10. Objects deleted from (or overwritten in) the bucket between uploads, and a second, empty endpoint
    with the same bucket name: every upload must end with the bucket holding every shipped file."""
    res = Result("10 upload: objects deleted, 2nd empty endpoint")
    tq, base, out, _ = small_run(ctx, "upload_target")
    moto = moto_or_skip(res, base)
    if moto is None:
        return res
    other: Moto | None = None
    try:
        bucket, url = "chaos-ship", "s3://chaos-ship/run"
        moto.client().create_bucket(Bucket=bucket)
        local = shipped_locally(tq, out)
        end = time.monotonic() + budget
        rounds = 4 if ctx.quick else 10
        for i in range(rounds):
            if i and time.monotonic() > end:
                break
            if i:  # a fault between uploads: delete some objects, overwrite one with other bytes
                present = sorted(moto.listing(bucket, "run"))
                client = moto.client()
                for rel in ctx.rng.sample(present, min(len(present), ctx.rng.randint(1, 10))):
                    client.delete_object(Bucket=bucket, Key=f"run/{rel}")
                    res.injected += 1
                if present:
                    client.put_object(Bucket=bucket, Key=f"run/{ctx.rng.choice(present)}", Body=b"tampered")
                    res.injected += 1
            proc = tq.run("upload", url, "--endpoint-url", moto.url)
            if proc.returncode != 0:
                res.findings.add("other", f"upload round {i}: exited {proc.returncode}: {proc.stderr[-300:]}")
            compare_bucket(res.findings, moto, bucket, "run", shipped_locally(tq, out) or local, f"round {i}")
        other = Moto(base)
        other.client().create_bucket(Bucket=bucket)
        res.injected += 1
        proc = tq.run("upload", url, "--endpoint-url", other.url)
        if proc.returncode != 0:
            res.findings.add("other", f"upload to the second endpoint exited {proc.returncode}: {proc.stderr[-300:]}")
        compare_bucket(res.findings, other, bucket, "run", shipped_locally(tq, out), "second endpoint")
        res.notes.append(f"{len(local)} shipped files; last upload said: {proc.stdout.strip()[:160]}")
    finally:
        moto.stop()
        if other is not None:
            other.stop()
    return res


def digest_tree(paths: list[Path]) -> dict[str, str]:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def fault_symlinks(ctx: Ctx, budget: float) -> Result:
    """11. Symbolic links planted in OUT (the log, the report, files and folders in done image folders, the
    temporary archive name): nothing is written through one, nothing outside OUT is read through one."""
    res = Result("11 symlinks planted in OUT")
    tq, base, out, tree = small_run(ctx, "symlinks")
    outside = base / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("CHAOS-SECRET-CONTENT\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner.txt").write_text("CHAOS-SECRET-CONTENT in a folder\n")
    log_target = outside / "victim.log"
    log_target.write_text("precious log\n")
    report_target = outside / "victim.json"
    report_target.write_text("{}\n")
    watched = [secret, outside / "dir" / "inner.txt", log_target, report_target]
    before = digest_tree(watched)
    folders = [out / r["out_rel"] for r in tq.query("SELECT out_rel FROM image WHERE status='done'")]
    for i, folder in enumerate(ctx.rng.sample(folders, min(4, len(folders)))):
        (folder / f"stolen_{i}.png").symlink_to(secret)
        (folder / f"linked_dir_{i}").symlink_to(outside / "dir")
        res.injected += 2
    (out / "batch_processing.log").rename(out / "kept.log")
    (out / "batch_processing.log").symlink_to(log_target)
    (out / "batch_report.json").unlink()
    (out / "batch_report.json").symlink_to(report_target)
    zip_name = f"{out.resolve().name}_results.zip"
    for pid in range(os.getpid() + 1, os.getpid() + 400):  # the export's temporary name, for the next pids
        (out / f".{zip_name}.tessq-tmp-{pid}").symlink_to(outside / f"victim_zip_{pid}")
    res.injected += 3
    # A command that would log to OUT must refuse the linked log, not append to it.
    proc = tq.run("scan", str(tree.root), "--out", str(out), MIN_ARG)
    if proc.returncode == 0:
        res.notes.append("`tessq scan` ran with OUT/batch_processing.log a link (must not have written it)")
    tq.run("report")
    exp = tq.run("export", "--zip")
    if exp.returncode != 0:
        res.findings.add("other", f"export exited {exp.returncode}: {exp.stderr[-300:]}")
    moto = moto_or_skip(res, base)
    if moto is None:  # the ZIP and the links are still checked
        res.notes.append(f"upload not checked: {res.skipped}")
        res.skipped = None
    else:
        try:
            moto.client().create_bucket(Bucket="chaos-links")
            up = tq.run("upload", "s3://chaos-links/run", "--endpoint-url", moto.url)
            if up.returncode != 0:
                res.findings.add("other", f"upload exited {up.returncode}: {up.stderr[-300:]}")
            compare_bucket(res.findings, moto, "chaos-links", "run", shipped_locally(tq, out), "upload")
            client = moto.client()
            for rel in moto.listing("chaos-links", "run"):
                if b"CHAOS-SECRET" in client.get_object(Bucket="chaos-links", Key=f"run/{rel}")["Body"].read():
                    res.findings.add("other", f"upload sent a file read through a link: {rel}")
        finally:
            moto.stop()
    archive = out / zip_name
    if archive.exists():
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if b"CHAOS-SECRET" in zf.read(name) or "stolen_" in name or "linked_dir_" in name:
                    res.findings.add("other", f"the ZIP holds {name}, read through a link")
    elif exp.returncode == 0:
        res.findings.add("other", "export said it succeeded but wrote no archive")
    after = digest_tree(watched)
    for path, digest in before.items():
        if after[path] != digest:
            res.findings.add("other", f"{path} (outside OUT) was written through a link")
    for p in outside.iterdir():
        if p.name.startswith("victim_zip_"):
            res.findings.add("other", f"the temporary archive was written through a link to {p}")
    return res


def fault_secrets(ctx: Ctx, budget: float) -> Result:
    """12. --log-level DEBUG with S3 output (with and without the SDK's wire log), an upload at DEBUG, and a
    mistyped DB URL with a password: no token, secret key, signature or password in any file or output."""
    res = Result("12 secrets in logs (DEBUG + S3, DB URL)")
    base = ctx.dir("secrets")
    moto = moto_or_skip(res, base)
    if moto is None:
        return res
    texts: list[tuple[str, str]] = []
    try:
        tree = ctx.tree.subset(base / "in", 6, ctx.rng, with_bad=False)
        tq = Tessq(base)
        tq.env.update(
            {
                **S3_ENV,
                "AWS_SESSION_TOKEN": MARKER_TOKEN,
                "AWS_SECRET_ACCESS_KEY": MARKER_SECRET,
                "TESSQ_S3_ENDPOINT_URL": moto.url,
            }
        )
        moto.client().create_bucket(Bucket="chaos-secrets")
        for i, wire in enumerate(("0", "1")):
            tq.env["TESSQ_LOG_WIRE"] = wire
            s3_ws = base / f"ws-s3-{i}"  # one job per workspace: each S3 output keeps its own state
            s3_ws.mkdir(exist_ok=True)
            tq.env["TESSQ_WORKSPACE"] = str(s3_ws)
            proc = tq.run(
                "--log-level", "DEBUG", "run", str(tree.root), f"s3://chaos-secrets/cut{i}", MIN_ARG, "--workers", "2"
            )
            res.injected += 1
            texts.append((f"run (wire log {wire})", proc.stdout + proc.stderr))
            if proc.returncode != 0:
                res.findings.add("other", f"DEBUG run to S3 exited {proc.returncode}: {proc.stderr[-300:]}")
        tq.env["TESSQ_WORKSPACE"] = str(tq.ws)
        out = base / "out"
        proc = tq.run("run", str(tree.root), str(out), MIN_ARG, "--workers", "2")
        proc = tq.run("--log-level", "DEBUG", "upload", "s3://chaos-secrets/ship", "--endpoint-url", moto.url)
        texts.append(("upload", proc.stdout + proc.stderr))
        proc = tq.run("export", "--zip")
        res.injected += 2
        for typo in (
            "postgress://chaos:CHAOSDBPASSWORD99@db.example/tessq",
            "mysql://chaos:CHAOSDBPASSWORD99@db.example/tessq",
        ):
            for cmd in (("status", "--once"), ("scan", str(tree.root))):
                p = subprocess.run(
                    tq.argv("--log-level", "DEBUG", *cmd),
                    env={**tq.env, "TESSQ_DB_URL": typo},
                    cwd=tq.base,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                texts.append((f"{cmd[0]} with {typo.split(':')[0]}", p.stdout + p.stderr))
                res.injected += 1
    finally:
        moto.stop()
    for path in base.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("moto-"):
            data = path.read_bytes()
            if path.suffix == ".zip":
                with contextlib.suppress(zipfile.BadZipFile), zipfile.ZipFile(path) as zf:
                    data += b"".join(zf.read(n) for n in zf.namelist())
            texts.append((str(path.relative_to(base)), data.decode(errors="replace")))
    secrets = (MARKER_TOKEN, MARKER_SECRET, "CHAOSDBPASSWORD99")
    # a token, credential or signature with any value but the mask: quoted ('...': b'...') or not (a=...&)
    token_re = re.compile(
        r"(?i)\b(X-Amz-Security-Token|X-Amz-Credential|X-Amz-Signature|Signature|Authorization)"
        r"['\"]?\s*[:=]\s*(?:b?(['\"])(.*?)\2|([^'\"&\s,;}]+))"
    )
    for where, text in texts:
        for s in secrets:
            if s in text:
                res.findings.add("other", f"{where}: holds the secret {s[:12]}... ({text.count(s)} times)")
        for m in token_re.finditer(text):
            if (m.group(3) if m.group(2) else m.group(4)) != "***":
                res.findings.add("other", f"{where}: an unmasked value: {text[m.start() : m.start() + 60]!r}")
                break
    res.notes.append(f"{len(texts)} files and outputs searched")
    return res


def pool_kill(tq: Tessq, args: list[str], res: Result, label: str) -> None:
    """Start a tessq command, SIGKILL it once its header-probe pool is up, and check the pool dies too."""
    proc = tq.popen(*args)
    pool: set[int] = set()
    deadline = time.monotonic() + 120
    while len(pool) < 2 and proc.poll() is None and time.monotonic() < deadline:
        pool |= set(descendants(proc.pid))
        time.sleep(0.005)
    if not pool:
        stop(proc, signal.SIGKILL)
        res.notes.append(f"{label}: finished before its probe pool was seen (not counted)")
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as `kill -9 PID` does
    proc.wait(timeout=30)
    res.injected += 1
    if not wait_until(lambda: not [p for p in pool if alive(p)], 3):
        orphans = [p for p in pool if alive(p)]
        res.findings.add("other", f"{label}: probe processes {orphans} outlived the SIGKILLed parent")
        for p in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def fault_leftovers(ctx: Ctx, budget: float) -> Result:
    """13. kill -9 of `tessq export` mid-archive (the next export must leave no temporary archive) and of
    `tessq scan` / `tessq run` while headers are probed (no probe process may outlive them)."""
    res = Result("13 leftovers: kill -9 export / probing")
    tq, base, out, _ = small_run(ctx, "leftovers")
    # A big incompressible file in a done folder makes the archive take long enough to be killed inside.
    folder = out / tq.query("SELECT out_rel FROM image WHERE status='done' LIMIT 1")[0]["out_rel"]
    with open(folder / "filler.bin", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    kills = 3 if ctx.quick else 9
    for _ in range(kills):
        proc = tq.popen("export", "--zip")
        mine = out / f".{out.resolve().name}_results.zip.tessq-tmp-{proc.pid}"  # this export's own archive
        seen = wait_until(mine.exists, 60, every=0.01)
        time.sleep(ctx.rng.uniform(0.0, 0.4))
        if proc.poll() is not None or not seen:
            res.notes.append("an export finished before it could be killed")
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        res.injected += 1
    left = [p.name for p in out.iterdir() if ".tessq-tmp-" in p.name]
    res.notes.append(
        f"{len(left)} temporary archive(s) after {res.injected} kills mid-archive, before the next "
        "export (each export removes those its killed predecessors left)"
    )
    proc = tq.run("export", "--zip")
    if proc.returncode != 0:
        res.findings.add("other", f"the export after the kills exited {proc.returncode}: {proc.stderr[-300:]}")
    for p in out.iterdir():
        if ".tessq-tmp-" in p.name:
            res.findings.add("other", f"{p.name} ({p.stat().st_size / 1e6:.0f} MB) left after the next export")
    archive = out / f"{out.resolve().name}_results.zip"
    with zipfile.ZipFile(archive) as zf:
        if zf.testzip() is not None:
            res.findings.add("other", "the archive after the kills fails its CRC check")
    # Probing: enough files that the scan forks its probe pool (hard links of one TIFF: made in a moment).
    from tessq.jobs.scan import PROBE_PARALLEL_MIN

    src = base / "many"
    one = write_good(src / "seed.tif", 40, 48, seed=7)
    for i in range(3 * PROBE_PARALLEL_MIN):
        os.link(one, src / f"img_{i:05d}.tif")
    rounds = 2 if ctx.quick else 5
    for i in range(rounds):
        pool_kill(tq, ["scan", str(src), "--out", str(base / f"many_out_{i}"), MIN_ARG], res, f"scan {i}")
        pool_kill(tq, ["run", str(src), str(base / f"many_run_{i}"), MIN_ARG, "--workers", "1"], res, f"run {i}")
    return res


# ------------------------------------------------------------ 14-16: issue #19 items 2, 6, 8


def folder_is_image(f: Findings, out: Path, row: dict[str, Any], src: Path, what: str) -> None:
    """The row's output folder exists, names its own source and reassembles to it bit for bit."""
    folder = out / row["out_rel"]
    try:
        meta = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        f.add("lost", f"{what}: {row['rel_path']} is done but its folder {row['out_rel']!r} is gone ({exc})")
        return
    if meta["source"]["relative_path"] != row["rel_path"]:
        f.add(
            "lost",
            f"{what}: folder {row['out_rel']!r} of {row['rel_path']} holds {meta['source']['relative_path']} instead",
        )
        return
    problem = same_pixels(folder, src / row["rel_path"])
    if problem:
        f.add("lost", f"{what}: {problem}")


def all_done_and_intact(f: Findings, tq: Tessq, out: Path, src: Path, what: str, n: int) -> None:
    rows = [r for r in tq.rows() if r["input_dir"] == str(src.resolve())]
    if len(rows) != n:
        f.add("report", f"{what}: {len(rows)} rows, {n} TIFFs")
    for row in rows:
        if row["status"] != "done":
            f.add("lost", f"{what}: {row['rel_path']} is {row['status']} ({row['error_message']})")
        else:
            folder_is_image(f, out, row, src, what)
    if len({r["out_rel"].lower() for r in rows}) != len(rows):
        f.add("twice", f"{what}: two images share an output folder")
    for p in leftovers(out):
        f.add("half", f"{what}: leftover {p}")


def run_ok(tq: Tessq, f: Findings, what: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = tq.run(*args)
    if proc.returncode != 0:
        f.add("other", f"{what}: `tessq {args[0]}` exited {proc.returncode}: {proc.stderr[-400:]}")
    return proc


def fault_output_collisions(ctx: Ctx, budget: float) -> Result:
    """14. Output folders that collide: an image beside an input folder of its name (either order), names
    sanitised alike, two jobs into one OUT (one status table, and two): no done work destroyed."""
    res = Result("14 colliding output folders")
    rounds = 1 if ctx.quick else 3
    for r in range(rounds):
        seed = 1400 + 10 * r
        # (a) site/ holds images, then site.tif appears and is touched: OUT/site must keep their folders
        base = ctx.dir(f"collide_a{r}")
        src, out, tq = base / "in", base / "out", Tessq(base)
        stem = ctx.rng.choice(["site", "Scan", "a b", "x.y"])
        for i in range(3):
            write_good(src / stem / f"detail_{i}.tif", 48, 64, seed=seed + i)
        run_ok(tq, res.findings, "a", "run", str(src), str(out), MIN_ARG, "--workers", "1")
        write_good(src / f"{stem}.tif", 64, 80, seed=seed + 5)
        run_ok(tq, res.findings, "a", "run", str(src), str(out), MIN_ARG, "--workers", "1")
        os.utime(src / f"{stem}.tif")
        run_ok(tq, res.findings, "a", "run", str(src), str(out), MIN_ARG, "--workers", "1")
        all_done_and_intact(res.findings, tq, out, src, f"(a) {stem}.tif beside {stem}/", 4)
        res.injected += 1
        # the other order: the image was done as OUT/<stem> before the folder appeared
        base = ctx.dir(f"collide_a2{r}")
        src, out, tq = base / "in", base / "out", Tessq(base)
        write_good(src / f"{stem}.tif", 64, 80, seed=seed + 6)
        run_ok(tq, res.findings, "a2", "run", str(src), str(out), MIN_ARG, "--workers", "1")
        write_good(src / stem / "detail.tif", 48, 64, seed=seed + 7)
        run_ok(tq, res.findings, "a2", "run", str(src), str(out), MIN_ARG, "--workers", "1")
        os.utime(src / f"{stem}.tif")
        run_ok(tq, res.findings, "a2", "run", str(src), str(out), MIN_ARG, "--workers", "1")
        all_done_and_intact(res.findings, tq, out, src, f"(a) {stem}/ appearing beside a done {stem}.tif", 2)
        res.injected += 1
        # (b) names that sanitising maps to one folder
        base = ctx.dir(f"collide_b{r}")
        src, out, tq = base / "in", base / "out", Tessq(base)
        names = [".hid.tif", "_.hid.tif", "a\\b.tif", "a_b.tif", "x\n.tif", "x_.tif"]
        for i, name in enumerate(names):
            write_good(src / name, 40, 48, seed=seed + 20 + i)
        run_ok(tq, res.findings, "b", "run", str(src), str(out), MIN_ARG, "--workers", "2")
        all_done_and_intact(res.findings, tq, out, src, "(b) names sanitised alike", len(names))
        res.injected += len(names) // 2
        # (c) a second job into the same OUT, in the same status table: refused at scan
        base = ctx.dir(f"collide_c{r}")
        a, b, out, tq = base / "a", base / "b", base / "out", Tessq(base)
        for i in range(4):
            write_good(a / f"img_{i}.tif", 40, 48, seed=seed + 40 + i)
            write_good(b / f"img_{i}.tif", 40, 48, seed=seed + 50 + i)
        run_ok(tq, res.findings, "c", "run", str(a), str(out), MIN_ARG, "--workers", "2")
        proc = tq.run("run", str(b), str(out), MIN_ARG, "--workers", "2")
        if (
            proc.returncode != 2
            or "Traceback" in proc.stderr
            or not re.search(r"already (written by the job of|holds the output of another input)", proc.stderr)
        ):
            res.findings.add("other", f"(c) a 2nd job into one OUT: exit {proc.returncode}, {proc.stderr[-300:]}")
        all_done_and_intact(res.findings, tq, out, a, "(c) 2nd job refused", 4)
        res.injected += 1
        # ... and from a second workspace (its own status table): each commit refuses another image's folder
        other = Tessq(base / "other")
        proc = other.run("run", str(b), str(out), MIN_ARG, "--workers", "2")
        failed = [r for r in other.rows() if r["status"] == "failed" and r["error_type"] == "output_collision"]
        if proc.returncode != 3 or len(failed) != 4:
            res.findings.add(
                "other",
                f"(c) 2nd workspace into one OUT: exit {proc.returncode}, {len(failed)}/4 failed as output_collision",
            )
        all_done_and_intact(res.findings, tq, out, a, "(c) 2nd workspace refused", 4)
        res.injected += 1
    return res


def tiled_bomb_bytes(side: int, tile: int, distinct: int = 1) -> tuple[bytes, bytes, bytes]:
    """(head, offsets, counts) of a valid side x side deflate TIFF in tile x tile tiles all pointing at
    `distinct` blobs: the issue's bomb is 46000 px in 16 px tiles, 8.27M tiles, 66 MB."""
    across = -(-side // tile)
    n = across * across
    blobs = [zlib.compress(bytes([i]) * tile * tile, 9) for i in range(distinct)]
    data = b"".join(blobs)
    starts = np.cumsum([0] + [len(b) for b in blobs[:-1]]) + 8
    offsets = np.resize(np.asarray(starts, dtype="<u4"), n)
    counts = np.resize(np.asarray([len(b) for b in blobs], dtype="<u4"), n)
    small = {256: [side], 257: [side], 258: [8], 259: [8], 262: [1], 277: [1], 322: [tile], 323: [tile]}
    pad = b"\0" if len(data) % 2 else b""
    ifd = 8 + len(data) + len(pad)
    ext = ifd + 2 + 12 * (len(small) + 2) + 4
    entries = b"".join(
        struct.pack("<HHI", tag, 4 if tag in (256, 257) else 3, 1)
        + struct.pack("<I" if tag in (256, 257) else "<H", v[0]).ljust(4, b"\0")
        for tag, v in sorted(small.items())
    )
    entries += struct.pack("<HHII", 324, 4, n, ext) + struct.pack("<HHII", 325, 4, n, ext + 4 * n)
    head = (
        b"II*\0"
        + struct.pack("<I", ifd)
        + data
        + pad
        + struct.pack("<H", len(small) + 2)
        + entries
        + struct.pack("<I", 0)
    )
    return head, offsets.tobytes(), counts.tobytes()


def fault_tiled_bomb(ctx: Ctx, budget: float) -> Result:
    """15. Tiled bombs: 46000x46000 in 8.27M 16x16 tiles on one blob (and smaller ones sharing a few blobs)
    beside good files: refused with a reason, the batch goes on, no process past the memory bound."""
    res = Result("15 tiled bomb (8.27M tiles)")
    base = ctx.dir("tilebomb")
    src, out, tq = base / "in", base / "out", Tessq(base)
    src.mkdir()
    bombs = {"bomb_46000.tif": (46000, 16, 1), "shared_4096.tif": (4096, 16, 3)}
    if not ctx.quick:
        bombs["bomb_20000_32.tif"] = (20000, 32, 2)
    for name, (side, tile, distinct) in bombs.items():
        with open(src / name, "wb") as fh:
            for part in tiled_bomb_bytes(side, tile, distinct):
                fh.write(part)
    for i in range(3):
        write_good(src / f"good_{i}.tif", 64, 80, seed=1500 + i)
    started = time.monotonic()
    proc = tq.popen("run", str(src), str(out), MIN_ARG, "--workers", "2")
    watch = RssWatch(proc, limit=1024**3)  # the issue's bound is ~730 MB a worker; the bomb took 2,181 MiB
    try:
        rc = proc.wait(timeout=min(budget, 300))
    except subprocess.TimeoutExpired:
        killpg(proc)
        rc = None
    peak = watch.stop()
    took = time.monotonic() - started
    res.injected = len(bombs)
    res.notes.append(f"peak RSS of one process {peak / 2**20:.0f} MiB, {took:.1f} s for {len(bombs)} bombs + 3 good")
    if watch.tripped:
        res.findings.add("other", f"a process grew past 1 GiB ({peak / 2**20:.0f} MiB)")
    if rc != 3:
        res.findings.add("other", f"`tessq run` exited {rc} (3 expected: images failed, the batch went on)")
    rows = {r["rel_path"]: r for r in tq.rows()}
    for name in bombs:
        row = rows.get(name)
        if (
            row is None
            or row["status"] != "failed"
            or row["error_type"] != "too_large"
            or name not in (row["error_message"] or "")
        ):
            res.findings.add("other", f"{name}: {row and (row['status'], row['error_type'], row['error_message'])}")
        elif row["attempts"]:
            res.findings.add("other", f"{name}: handed to a worker ({row['attempts']} attempts) before refused")
    for i in range(3):
        row = rows.get(f"good_{i}.tif")
        if row is None or row["status"] != "done":
            res.findings.add("lost", f"good_{i}.tif: {row and row['status']}")
        else:
            folder_is_image(res.findings, out, row, src, "beside the bombs")
    return res


def one_line_exit_2(proc: subprocess.CompletedProcess[str], needle: str) -> str | None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if proc.returncode != 2 or "Traceback" in proc.stdout + proc.stderr or len(errors) != 1 or needle not in errors[0]:
        return f"exit {proc.returncode}, {(proc.stdout + proc.stderr)[-300:]!r}"
    return None


def fault_races_messages(ctx: Ctx, budget: float) -> Result:
    """16. Races and messages: concurrent scans of one tree, options changed while an image is cut, zip
    entries that escape where `\\` separates, a newline forging a log line, a read-only workspace and an
    unreachable PostgreSQL."""
    res = Result("16 races and messages")
    f = res.findings
    base = ctx.dir("races")
    tree = base / "tree"
    one = write_good(base / "one.tif", 40, 48, seed=1600)
    for i in range(200):
        (tree / f"f{i % 4}").mkdir(parents=True, exist_ok=True)
        os.link(one, tree / f"f{i % 4}" / f"img_{i:03d}.tif")
    rounds = 8 if ctx.quick else 25
    for r in range(rounds):
        tq = Tessq(base / f"scan{r}")
        procs = [
            subprocess.Popen(
                tq.argv("scan", str(tree), "--out", str(base / f"out{r}"), MIN_ARG),
                env=tq.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            if p.returncode != 0 or "Traceback" in stdout + stderr:
                f.add("other", f"concurrent scans, round {r}: exit {p.returncode}: {(stdout + stderr)[-300:]}")
        n = tq.query("SELECT count(*) AS n, count(DISTINCT rel_path) AS d FROM image")[0]
        con = sqlite3.connect(str(tq.db_path.with_name("queue.db")))
        tasks = con.execute("SELECT count(*) FROM task").fetchone()[0]
        con.close()
        if (n["n"], n["d"], tasks) != (200, 200, 200):
            f.add("twice" if tasks > 200 else "report", f"round {r}: {n['n']} rows, {tasks} queue messages, 200 TIFFs")
        res.injected += 1
    # options changed while the image is being cut
    for r in range(1 if ctx.quick else 3):
        b = ctx.dir(f"options{r}")
        src, out, tq = b / "in", b / "out", Tessq(b)
        src.mkdir()
        tifffile.imwrite(
            src / "big.tif",
            np.random.default_rng(r).integers(0, 255, (5000, 5000, 3), dtype=np.uint8),
            photometric="rgb",
        )
        run_ok(tq, f, "options", "scan", str(src), "--out", str(out), MIN_ARG, "--num-pieces", "8")
        workers = tq.popen("workers", "--workers", "1", "--drain")
        if wait_until(lambda tq=tq: tq.query("SELECT status FROM image")[0]["status"] == "running", 60, every=0.02):
            time.sleep(ctx.rng.uniform(0, 1.0))
            # the user accepts redoing what is already done with the old options (refused without it)
            run_ok(
                tq, f, "options", "scan", str(src), "--out", str(out), MIN_ARG, "--num-pieces", "4", "--force-options"
            )
            res.injected += 1
        if wait_or_kill(workers, 300) != 0 or (tq.outstanding() and drain(tq, 1, 300) != 0):
            f.add("other", "options: the workers did not drain")  # (a rescan after the commit queues it again)
        row = tq.query(
            "SELECT i.status, i.n_slices, i.options_hash AS h, j.options_hash AS jh "
            "FROM image i JOIN job j ON j.id = i.job_id"
        )[0]
        if (row["status"], row["n_slices"]) != ("done", 4) or row["h"] != row["jh"]:
            f.add(
                "report",
                f"options changed mid-run: {row['status']}, {row['n_slices']} slices, hash "
                f"{row['h']} vs the job's {row['jh']}",
            )
        problem = same_pixels(out / "big", src / "big.tif")
        if problem or len(list((out / "big").glob("slice_*"))) != 4:
            f.add("lost", f"options changed mid-run: {problem or 'not 4 slices on disk'}")
    # zip entries from folder names holding backslashes, a newline in a file name
    b = ctx.dir("names16")
    src, out, tq = b / "in", b / "out", Tessq(b)
    write_good(src / "a\\..\\..\\..\\pwn" / "img.tif", 40, 48, seed=1610)
    forged = "x\n2026-01-01 00:00:00,000 INFO [1 tessq.worker] done forged.tif (9 slices, 0.01 s)\r"
    write_good(src / f"{forged}.tif", 40, 48, seed=1611)
    run_ok(tq, f, "names", "run", str(src), str(out), MIN_ARG, "--workers", "1", "--zip")
    res.injected += 2
    for archive in out.glob("*_results.zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                win = name.replace("\\", "/").split("/")
                if "\\" in name or ".." in win or name.startswith("/"):
                    f.add("other", f"zip entry {name!r} escapes where a backslash is a separator")
    log = out / "batch_processing.log"
    lines = log.read_text().splitlines() if log.exists() else []
    if not lines or [line for line in lines if line.startswith("2026-01-01")]:
        f.add("other", "a file name forged a line of batch_processing.log")
    # a read-only workspace, an unreachable PostgreSQL: one line each, exit 2
    ro = b / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(ro)], capture_output=True).returncode:
        res.notes.append("read-only workspace not tried (cannot mount a tmpfs here)")
    else:
        try:
            tq_ro = Tessq(ro)
            tq_ro.run("scan", str(src), "--out", str(b / "out_ro"), MIN_ARG)
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            for args in (
                ("scan", str(src), "--out", str(b / "out_ro"), MIN_ARG),
                ("workers", "--workers", "1", "--drain"),
            ):
                problem = one_line_exit_2(tq_ro.run(*args), "cannot be written")
                if problem:
                    f.add("other", f"read-only workspace, `tessq {args[0]}`: {problem}")
                res.injected += 1
        finally:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    tq.env["TESSQ_DB_URL"] = "postgresql://tessq:pw@127.0.0.1:1/tessq"
    for args in (("scan", str(src), "--out", str(out), MIN_ARG), ("report",)):
        problem = one_line_exit_2(tq.run(*args), "cannot reach the status database")
        if problem:
            f.add("other", f"unreachable PostgreSQL, `tessq {args[0]}`: {problem}")
        res.injected += 1
    return res


LOST_STOP_S = 30.0  # a daemon whose status table vanished must have stopped by then (else: a hang)
LOST_LOG_BYTES = 1_000_000  # and written at most this much (the issue saw 6 MB in 4 min of retries)


def fault_lost_state(ctx: Ctx, budget: float) -> Result:
    """17. Lost state files: tessq.db deleted or truncated while `tessq workers` runs (it must stop by itself in
    bounded time with a message, log little, leave batch_report.json alone; the way out it names must then finish
    the job), and queue.db deleted at random moments (the drain must still finish every image)."""
    res = Result("17 lost state: tessq.db deleted/truncated, queue.db deleted")
    rounds = ["delete", "truncate", "queue"] * (1 if ctx.quick else 2)
    ctx.rng.shuffle(rounds)
    for n, how in enumerate(rounds):
        if ctx.left() < 30 and n >= 3:
            res.notes.append(f"out of time after {n} rounds")
            break
        base = ctx.dir(f"lost_{n}")
        tree = ctx.tree.subset(base / "in", 16 if ctx.quick else 30, ctx.rng)
        out = base / "out"
        tq = Tessq(base)
        scan(tq, tree.root, out)
        tq.run("report")  # the report a lost table must not overwrite
        report_file = out / "batch_report.json"
        before = report_file.read_bytes() if report_file.exists() else None
        total = len(tq.rows())
        daemon = tq.popen("workers", "--workers", "2", "--drain")
        log = sorted(tq.logs.glob("*-workers.log"))[-1]
        target = ctx.rng.randint(1, max(1, total // 2))
        if not wait_until(
            lambda tq=tq, target=target, daemon=daemon: tq.counts()["done"] >= target or daemon.poll() is not None,
            120,
            every=0.02,
        ):
            res.findings.add("other", f"round {n}: {target} images never got done")
        if daemon.poll() is not None:
            res.notes.append(f"round {n} ({how}): the drain ended before the fault (not counted)")
            continue
        time.sleep(ctx.rng.uniform(0, 0.3))
        res.injected += 1
        if how == "queue":
            for _ in range(ctx.rng.randint(1, 3)):  # one to three deletions during the drain
                (tq.ws / ".tessq" / "queue.db").unlink(missing_ok=True)
                time.sleep(ctx.rng.uniform(0.2, 1.5))
            rc = wait_or_kill(daemon, 600)
            if rc != 0:
                res.findings.add("other", f"round {n}: the drain after queue.db was deleted exited {rc}")
            res.findings.merge(check(tq, tree, out, Expect(redo_ok=set(tree.good) | set(tree.bad))))
            res.notes.append(f"round {n} (queue.db deleted): drain exit {rc}, {tq.counts()['done']} done")
            continue
        left = tq.outstanding()  # images not yet finished when the table goes (0: the drain may end first)
        if how == "delete":
            tq.db_path.unlink()
        else:
            with open(tq.db_path, "r+b") as fh:
                fh.truncate(ctx.rng.choice([0, 100, 4096, max(100, tq.db_path.stat().st_size // 2)]))
        t0 = time.monotonic()
        rc = wait_or_kill(daemon, LOST_STOP_S)
        took = time.monotonic() - t0
        text = log.read_text(errors="replace")
        if rc is None:
            res.findings.add(
                "other",
                f"round {n} ({how}): `tessq workers` still running {LOST_STOP_S:.0f} s after "
                "tessq.db was lost (a hang)",
            )
        elif rc == 0 and left == 0:
            res.notes.append(f"round {n} ({how}): every image was finished as the table went; the drain ended (0)")
            continue
        elif rc == 0:
            res.findings.add("other", f"round {n} ({how}): `tessq workers` exited 0 with its status table lost")
        elif "status table" not in text or "tessq run IN" not in text:
            res.findings.add("other", f"round {n} ({how}): no message saying what happened: {text[-300:]!r}")
        size = log.stat().st_size + (
            (out / "batch_processing.log").stat().st_size if (out / "batch_processing.log").exists() else 0
        )
        if size > LOST_LOG_BYTES:
            res.findings.add("other", f"round {n} ({how}): {size} bytes of log (retrying in a loop?)")
        after = report_file.read_bytes() if report_file.exists() else None
        if after != before:
            res.findings.add("report", f"round {n} ({how}): batch_report.json was rewritten from a lost table")
        # the way out the message names: (move a damaged file aside,) run the job again
        if how == "truncate":
            for suffix in ("", "-wal", "-shm"):
                f = tq.db_path.with_name("tessq.db" + suffix)
                if f.exists():
                    f.rename(f.with_name(f.name + ".damaged"))
        t1 = time.monotonic()
        proc = tq.run("run", str(tree.root), str(out), MIN_ARG, "--workers", "2", timeout=900)
        if proc.returncode not in (0, 3):
            res.findings.add(
                "other", f"round {n} ({how}): `tessq run` after the loss exited {proc.returncode}: {proc.stderr[-500:]}"
            )
        kept = re.search(r"kept (\d+) image folder", proc.stderr)
        res.findings.merge(check(tq, tree, out, Expect(redo_ok=set(tree.good) | set(tree.bad))))
        res.notes.append(
            f"round {n} ({how}): workers exit {rc} {took:.1f} s after the loss, {size} B of log; "
            f"`tessq run` then kept {kept.group(1) if kept else 0} folders as done, "
            f"{time.monotonic() - t1:.0f} s"
        )
    return res


FAULTS: list[tuple[Callable[[Ctx, float], Result], float, bool]] = [  # (fault, share of the time, in --quick)
    (fault_kill, 0.30, True),
    (fault_signals, 0.15, True),
    (fault_disk_full, 0.08, True),
    (fault_source_changes, 0.10, True),
    (fault_permissions, 0.08, False),
    (fault_readers, 0.12, False),
    (fault_backup_restore, 0.10, False),
    (fault_bad_inputs, 0.10, True),
    (fault_escaping_names, 0.04, True),
    (fault_upload_target, 0.03, True),
    (fault_symlinks, 0.02, True),
    (fault_secrets, 0.03, True),
    (fault_leftovers, 0.03, True),
    (fault_output_collisions, 0.03, True),
    (fault_tiled_bomb, 0.02, True),
    (fault_races_messages, 0.04, True),
    (fault_lost_state, 0.05, True),
]


def print_table(results: list[Result], verbose: bool) -> None:
    head = (
        "fault",
        "times injected",
        "images lost",
        "done twice",
        "half-written folders visible",
        "wrong report counts",
        "other",
    )
    rows = []
    for r in results:
        f = r.findings
        if r.skipped:
            rows.append((r.fault, "skipped", "-", "-", "-", "-", r.skipped))
        else:
            rows.append((r.fault, str(r.injected), str(f.lost), str(f.twice), str(f.half), str(f.report), str(f.other)))
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print()
    for r in results:
        for note in r.notes:
            print(f"{r.fault.split()[0]}: {note}")
        shown = r.findings.details if verbose else r.findings.details[:15]
        for d in shown:
            print(f"{r.fault.split()[0]}: VIOLATION {d}")
        if len(r.findings.details) > len(shown):
            print(f"{r.fault.split()[0]}: ... {len(r.findings.details) - len(shown)} more (--verbose)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="time budget for the whole run")
    ap.add_argument("--quick", action="store_true", help="the fast subset, small trees")
    ap.add_argument("--images", type=int, default=None, help="good TIFFs in the main tree (default 300, quick 60)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated fault numbers, e.g. 1,3")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # the checker reads hostile files on purpose
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tessq-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.minutes * 60
    n_images = args.images or (60 if args.quick else 300)
    print(f"chaos: seed {seed}, work dir {work}, budget {args.minutes} min, building {n_images} TIFFs ...", flush=True)
    tree = build_tree(work / "tree", n_images, rng, n_big=3 if args.quick else 6)
    ctx = Ctx(work, tree, rng, args.quick, deadline)
    chosen = [f for f in FAULTS if (not args.quick or f[2])]
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        chosen = [f for i, f in enumerate(FAULTS, 1) if str(i) in wanted]
    results: list[Result] = []
    share_total = sum(s for _, s, _ in chosen)
    for fault, share, _ in chosen:
        budget = max(20.0, (deadline - time.monotonic()) * share / share_total)
        share_total -= share
        t0 = time.monotonic()
        print(
            f"-> {fault.__doc__.splitlines()[0] if fault.__doc__ else fault.__name__} (budget {budget:.0f} s)",
            flush=True,
        )
        try:
            res = fault(ctx, budget)
        except Exception as exc:  # a harness failure is a failed run, never a silent pass
            import traceback

            res = Result(fault.__name__)
            res.findings.add("other", f"harness error: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        res.notes.append(f"took {time.monotonic() - t0:.0f} s")
        results.append(res)
    print(
        f"\nchaos: seed {seed}, {time.monotonic() - started:.0f} s, {len(tree.good)} good + {len(tree.small)} "
        f"small + {len(tree.bad)} hostile TIFFs in the main tree\n"
    )
    print_table(results, args.verbose)
    bad = [r for r in results if not r.skipped and not r.findings.clean]
    if not args.workdir and not bad:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""A tiled bomb must not beat the memory bound (issue #19 item 6): 46000x46000 in 8.27M 16x16 deflate tiles,
all pointing at one blob, was accepted and took one worker to 2,181 MiB for 381 s. Now refused at the header
(tiff._check_layout), by the real CLI, in about a second and within the probe's usual memory."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tessq.cut import tiff
from tessq.errors import ImageTooLargeError
from tests.bombs import tiled_bomb
from tests.conftest import tessq_cmd, write_tiff


def test_the_issues_bomb_is_refused_by_the_cli_within_the_bound(tmp_path: Path, sqlite_env: dict) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    tiled_bomb(src / "bomb.tif")
    write_tiff(src / "good.tif", seed=1)
    proc = tessq_cmd(
        "run",
        str(src),
        str(out),
        "--min-size=32",
        "--workers",
        "1",
        "--json",
        env=sqlite_env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # one image failed: the batch went on
    (db_file,) = (tmp_path / "ws").rglob("tessq.db")
    con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    got = {r[0]: r[1:] for r in con.execute("SELECT rel_path, status, error_type, error_message, attempts FROM image")}
    con.close()
    assert got["good.tif"][0] == "done"
    status, kind, message, attempts = got["bomb.tif"]
    assert (status, kind, attempts) == ("failed", "too_large", 0)  # refused at scan, never handed to a worker
    assert "8,265,625 tiles of 16x16 px" in message and "bomb.tif" in message
    assert json.loads((out / "good" / "metadata.json").read_text())["totals"]["slices"] > 0


def test_probe_of_the_bomb_stays_small_and_fast(tmp_path: Path) -> None:
    path = tiled_bomb(tmp_path / "bomb.tif")
    # VmHWM is this process image's own peak (ru_maxrss would carry over the forking pytest's size across exec)
    code = (
        "import re, time, sys\nfrom tessq.cut import tiff\nt = time.monotonic()\n"
        "try:\n    tiff.RegionReader(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__)\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print(time.monotonic() - t, hwm)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    kind, figures = proc.stdout.splitlines()
    seconds, max_rss_kib = figures.split()
    assert kind == "ImageTooLargeError"
    assert float(seconds) < 20
    assert int(max_rss_kib) < 600 * 1024  # the issue's worker reached 2,181 MiB; the bound is ~730 MB


def test_tiles_sharing_one_blob_are_refused_below_the_count_limit(tmp_path: Path) -> None:
    path = tiled_bomb(tmp_path / "shared.tif", side=4096, tile=16, distinct=3)  # 65,536 tiles on 3 blobs
    with pytest.raises(ImageTooLargeError, match="65,533 of 65,536 tiles point at data another one already uses"):
        tiff.probe(path)


def test_sparse_files_and_real_small_tiles_are_accepted(tmp_path: Path) -> None:
    sparse = tiled_bomb(tmp_path / "sparse.tif", side=4096, tile=16, distinct=5, sparse=True)
    info = tiff.probe(sparse)  # empty tiles (offset 0, byte count 0), as GDAL writes them: legitimate
    assert (info.width, info.height) == (4096, 4096)
    with tiff.RegionReader(sparse) as reader:
        band = reader.read(0, 16)
    assert band.shape[:2] == (16, 4096) and int(band[0, 0]) == 0
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (2048, 2048), dtype=np.uint8)
    real = tmp_path / "real.tif"
    tifffile.imwrite(real, data, tile=(16, 16), compression="zlib")  # 16,384 distinct tiles
    assert tiff.probe(real).n_segments == 16384
    with tiff.RegionReader(real) as reader:
        assert np.array_equal(reader.read(0, 2048), data)

"""Shared fixtures for the job-system tests: real TIFF trees, the real CLI in subprocesses, real backends.

Backends: every scenario marked with the `backend` fixture runs on SQLite, PostgreSQL, and Redis +
PostgreSQL. Without a server the PostgreSQL/Redis cases skip with the reason, except under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("TESSQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TESSQ_TEST_REDIS", "redis://127.0.0.1:6379")


def photo(h: int, w: int, samples: int = 3, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Photo-like pixels: smooth gradients plus noise, deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 7.0 + seed) + np.cos(yy / 5.0)) * 0.25 + 0.5
    maxval = np.iinfo(dtype).max
    img = np.stack([base * (0.6 + 0.1 * c) for c in range(samples)], axis=-1) * maxval
    img += rng.normal(0, maxval * 0.02, img.shape)
    img = np.clip(img, 0, maxval).astype(dtype)
    return img[..., 0] if samples == 1 else img


def write_tiff(
    path: Path, h: int = 64, w: int = 96, samples: int = 3, dtype: str = "uint8", seed: int = 0, **kwargs: object
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = photo(h, w, samples, dtype, seed)
    photometric = "rgb" if samples == 3 else "minisblack"
    tifffile.imwrite(path, data, photometric=photometric, **kwargs)
    return path


def seed_tree(root: Path) -> dict[str, int]:
    """The seed's example tree (scaled down: min size 32), with the edge cases users have."""
    write_tiff(root / "project_alpha/survey_001/aerial_photo_001.tif", seed=1)
    write_tiff(
        root / "project_alpha/survey_001/aerial_photo_002.tif",
        80,
        72,
        1,
        "uint16",
        seed=2,
        tile=(32, 32),
        compression="zlib",
    )
    (root / "project_alpha/survey_001/thumbnail_001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "project_alpha/survey_002").mkdir(parents=True)
    (root / "project_beta/crops").mkdir(parents=True)
    for i in (1, 2):
        (root / f"project_beta/crops/crop_00{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    write_tiff(root / "project_beta/small.tif", 16, 16, seed=3)
    (root / "project_beta/corrupt.tif").write_bytes(b"II*\x00" + os.urandom(200))
    write_tiff(root / "unicode ü dir/photo with space é.tiff", 48, 40, seed=4, compression="lzw")
    write_tiff(root / "dup/a.tif", seed=5)
    write_tiff(root / "dup/a.TIFF", seed=6)
    write_tiff(root / ".git/hidden.tif", seed=7)
    (root / "notes.txt").write_text("not an image")
    return {"found": 7, "done": 5, "skipped": 1, "failed": 1, "folders_skipped": 1}


def many_tiffs(root: Path, n: int, h: int = 40, w: int = 48) -> list[Path]:
    return [write_tiff(root / f"batch_{i // 50:02d}/img_{i:04d}.tif", h, w, seed=i) for i in range(n)]


def tessq_cmd(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 180, check: bool = False
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tessq", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tessq {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def tessq_popen(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tessq", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _server_unavailable(kind: str, exc: Exception) -> None:
    message = f"{kind} server not reachable ({exc}); start it (see README) to run these tests"
    if IN_CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        _server_unavailable("PostgreSQL", exc)
    name = f"tessq_t_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL + "/0", socket_connect_timeout=3)
        client.ping()
    except Exception as exc:
        _server_unavailable("Redis", exc)
    # one database per pytest-xdist worker (gw0 -> 1, gw1 -> 2...): two tests running at once never share one
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = 1 + (int(worker) if worker.isdigit() else 0) % 15
    url = f"{REDIS_URL}/{index}"
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()


@pytest.fixture(params=["sqlite", "postgres", "redis+postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for a tessq subprocess on one of the three supported backend combinations."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    env["TESSQ_WORKSPACE"] = str(tmp_path / "ws")
    (tmp_path / "ws").mkdir()
    if request.param in ("postgres", "redis+postgres"):
        env["TESSQ_DB_URL"] = request.getfixturevalue("postgres_url")
    if request.param == "redis+postgres":
        env["TESSQ_QUEUE_URL"] = request.getfixturevalue("redis_url")
    env["TESSQ_BACKEND"] = request.param
    return env


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSQ_")}
    env["TESSQ_WORKSPACE"] = str(tmp_path / "ws")
    (tmp_path / "ws").mkdir()
    return env


from tests.s3server import s3_endpoint  # noqa: E402, F401  (fixture shared by every test module)

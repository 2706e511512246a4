"""A real S3 HTTP endpoint for tests: moto[server]'s standalone server in its own process on 127.0.0.1.

`s3_endpoint` (session fixture) yields the endpoint URL; tests that use it skip when moto cannot start,
except under CI=true where a missing server is a failure, not a skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Keep a developer's real ~/.aws profiles out of the tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str) -> None:
    """Skip locally; in CI a test that needs S3 must not silently pass."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"moto S3 server unavailable (CI=true, so this fails instead of skipping): {reason}")
    pytest.skip(f"moto S3 server unavailable: {reason}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def start_moto(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m moto.server` on a free port and wait until it answers HTTP; (process, url)."""
    try:
        import moto.server  # noqa: F401  (only to learn whether moto[server] is installed)
    except ImportError as exc:
        _unavailable(f"moto[server] is not installed ({exc})")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **DUMMY_ENV, **(extra_env or {})}
    # The request log goes to a file, not a pipe: an unread pipe fills up and stalls the server.
    log = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the server; closed in stop_moto)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")[-2000:]
            _unavailable(f"moto_server exited with {proc.returncode}: {err}")
        if _answers(url):
            return proc, url
        time.sleep(0.1)
    stop_moto(proc)
    _unavailable(f"moto_server did not answer on {url} within {START_TIMEOUT_S:.0f}s")
    raise AssertionError("unreachable")


def stop_moto(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    proc.log.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server shared by the session, with dummy AWS credentials in the environment."""
    saved = {k: os.environ.get(k) for k in DUMMY_ENV}
    os.environ.update(DUMMY_ENV)
    proc, url = start_moto()
    try:
        yield url
    finally:
        stop_moto(proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

"""Uploading the shipped output tree to S3 or any S3-compatible store: concurrent, checksummed, resumable.

The target is listed once (ListObjectsV2 over the prefix) and compared with the local files: a missing
object, or one of another size, is sent. Each object is recorded in the status table's upload ledger,
keyed by endpoint + bucket + key, right after S3 confirms it; an object of the right size is skipped
only when the ledger recorded that very object (same ETag) for these local bytes, or when S3's CRC32 of
it (one HEAD) equals the local file's. The run ends with a second listing: every object must be there
with the local file's size, or the run reports it as failed.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from zlib_ng import zlib_ng

from tessq.errors import ChecksumMismatchError, UploadError
from tessq.ship.export import shipped_files
from tessq.storage.s3 import (  # the client, its errors and the put path are storage's; shipping uses them
    S3Target,
    fatal_error,
    make_client,
    open_nofollow,
    parse,
    send_file,
)
from tessq.storage.s3 import head_bucket as check_bucket

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)

CHUNK = 4 << 20
# Files below this go in one PutObject (one request, S3 checks the CRC32 on the body it received);
# above it, concurrent multipart parts via s3transfer.
MULTIPART_THRESHOLD = 16 << 20
MULTIPART_CHUNKSIZE = 16 << 20
CHECKSUM_PREFIX = "crc32:"


class Ledger(Protocol):
    """What upload needs of db.UploadLedger: look up one key, record one confirmed object."""

    def get(self, key: str) -> Any: ...

    def record(self, key: str, local_path: str, size: int, mtime: float, checksum: str, etag: str | None) -> None: ...


def endpoint_id(endpoint_url: str | None) -> str:
    """The endpoint as the ledger names it: 'aws' for AWS S3 (any region), else scheme://host[:port][/path],
    lower-cased, without credentials, default port or trailing slash."""
    if not endpoint_url:
        return "aws"
    parts = urlsplit(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
    host = (parts.hostname or "").lower()
    if host == "amazonaws.com" or host.endswith(".amazonaws.com"):
        return "aws"
    scheme = (parts.scheme or "https").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def ledger_key(endpoint: str, target: S3Target, key: str) -> str:
    """The ledger's key: endpoint + s3://BUCKET/KEY, so the same bucket name on another endpoint (another
    MinIO, another cloud) is another target, and one ledger serves several buckets and prefixes."""
    return f"{endpoint} {target.url_for(key)}"


def parse_s3_url(url: str) -> S3Target:
    """The upload target: s3://BUCKET/PREFIX exactly as given (storage.s3.parse)."""
    return parse(url, what="upload target", folded=False)


def files_to_ship(
    out_dir: Path,
    image_dirs: Sequence[str],
    *,
    folder: str | None = None,
    not_shipped: list[dict[str, str]] | None = None,
) -> list[tuple[Path, str]]:
    """Every file of the done image folders plus the reports: the same listing the ZIP export ships
    (symbolic links and special files are left out, and listed in `not_shipped`)."""
    return shipped_files(out_dir, image_dirs, folder=folder, not_shipped=not_shipped)


def file_crc32(path: Path) -> str:
    """The file's CRC32 as S3 writes it (base64 of the big-endian 4 bytes), read in chunks."""
    crc = 0
    with open_nofollow(path) as f:
        while chunk := f.read(CHUNK):
            crc = zlib_ng.crc32(chunk, crc)  # SIMD: ~5x zlib's, same value
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


# ---------------------------------------------------------------- one run


@dataclass
class _Run:
    client: Any
    manager: Any
    target: S3Target
    ledger: Ledger
    total: int
    progress: Progress | None
    endpoint: str = "aws"
    remote: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # key -> (size, ETag)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def advance(self, nbytes: int) -> None:
        # Called from worker and s3transfer threads; the lock also serialises the callback, so a
        # progress bar never sees two updates at once.
        with self.lock:
            self.done += nbytes
            if self.progress is not None:
                self.progress(self.done, self.total)


def _subscriber(run: _Run, sent: list[int]) -> Any:
    from s3transfer.subscribers import BaseSubscriber

    class _Progress(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            sent[0] += bytes_transferred
            run.advance(bytes_transferred)

    return _Progress()


def _send(run: _Run, path: Path, key: str, size: int, crc: str) -> str | None:
    """Upload one file with its CRC32 (storage.s3.send_file) and check what S3 reports back; returns the ETag."""
    if size < MULTIPART_THRESHOLD:
        sent = send_file(run.client, path, run.target.bucket, key, size, crc32=crc, threshold=MULTIPART_THRESHOLD)
        run.advance(size)
    else:
        progress = [0]
        try:
            sent = send_file(
                run.client,
                path,
                run.target.bucket,
                key,
                size,
                crc32=crc,
                threshold=MULTIPART_THRESHOLD,
                manager=run.manager,
                subscribers=[_subscriber(run, progress)],
            )
        except BaseException:
            run.advance(-progress[0])  # the bar should not keep bytes of a transfer that failed
            raise
    if sent.size != size or (sent.crc32 is not None and sent.crc32 != crc):
        raise ChecksumMismatchError(
            f"{path}: {run.target.url_for(key)} holds {sent.size} bytes with CRC32 {sent.crc32}, "
            f"the local file has {size} bytes with CRC32 {crc}; it was not recorded and will be sent again"
        )
    return sent.etag


def _remote_crc32(run: _Run, key: str) -> str | None:
    """S3's full-object CRC32 of `key` (one HEAD), or None when it holds none (or the HEAD fails)."""
    try:
        resp = run.client.head_object(Bucket=run.target.bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as exc:
        if fatal_error(exc, run.target, run.endpoint) is not None:
            raise
        return None
    return resp.get("ChecksumCRC32")


def _ship_one(run: _Run, path: Path, rel: str) -> tuple[str, int]:
    """Skip or upload one file: ('skipped' | 'uploaded', size). The ledger row is written only after S3
    confirmed the object. Nothing is skipped that the target's listing does not hold at the local size."""
    key = run.target.key_for(rel)
    lkey = ledger_key(run.endpoint, run.target, key)
    st = os.lstat(path)
    size, mtime = st.st_size, st.st_mtime
    remote = run.remote.get(key)
    checksum: str | None = None
    if remote is not None and remote[0] == size:
        prior = run.ledger.get(lkey)
        checksum = CHECKSUM_PREFIX + file_crc32(path)
        # The ledger vouches for the object only if it recorded this very object (its ETag) for these bytes.
        recorded = (
            prior is not None
            and prior.size == size
            and prior.checksum == checksum
            and (prior.etag is None or remote[1] is None or prior.etag == remote[1])
        )
        if recorded or _remote_crc32(run, key) == checksum.removeprefix(CHECKSUM_PREFIX):
            if not recorded:  # there already (an older ledger, another machine's upload): record it
                run.ledger.record(lkey, str(path), size, mtime, checksum, remote[1])
            run.advance(size)
            return "skipped", size
    checksum = checksum or CHECKSUM_PREFIX + file_crc32(path)
    etag = _send(run, path, key, size, checksum.removeprefix(CHECKSUM_PREFIX))
    run.ledger.record(lkey, str(path), size, mtime, checksum, etag)
    return "uploaded", size


def list_target(client: Any, target: S3Target) -> dict[str, tuple[int, str | None]]:
    """Every object under the target prefix: key -> (size, ETag), from paginated ListObjectsV2."""
    objects: dict[str, tuple[int, str | None]] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=target.list_prefix())
    for page in pages:
        for obj in page.get("Contents", []):
            objects[obj["Key"]] = (int(obj["Size"]), obj.get("ETag"))
    return objects


def _verify_target(
    client: Any, target: S3Target, shipped: dict[str, tuple[Path, int]]
) -> tuple[int, list[dict[str, str]]]:
    """A fresh listing: every file sent or skipped (key -> (path, size it had then)) must be in the target at
    that size. The size taken when shipping, not now: a log still being appended to is not a failure."""
    listing = list_target(client, target)
    verified, missing = 0, []
    for key, (path, size) in sorted(shipped.items()):
        found = listing.get(key)
        if found is not None and found[0] == size:
            verified += 1
            continue
        what = "is missing" if found is None else f"holds {found[0]} bytes, the local file {size}"
        missing.append(
            {
                "path": str(path),
                "key": key,
                "error": f"{target.url_for(key)} {what} after the upload; run the upload again",
            }
        )
    return verified, missing


def _size_or_zero(path: Path) -> int:
    """For the progress total only: a file gone missing is reported as a failure when its turn comes."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def upload_outputs(
    files: Sequence[tuple[Path, str]],
    url: str,
    *,
    ledger: Ledger,
    endpoint_url: str | None = None,
    profile: str | None = None,
    concurrency: int = 8,
    progress: Progress | None = None,
    client: Any = None,
) -> dict:
    """Upload (local path, relative key) pairs under s3://BUCKET/PREFIX, skipping what the target already holds.

    `progress(done_bytes, total_bytes)` counts skipped files at once and uploaded bytes as they go; it
    is called from worker threads, one call at a time.
    Per-file failures are collected in `failed`; a failure no file can get past (missing bucket, refused
    credentials, unreachable endpoint) stops the run with a typed UploadError. Files already confirmed
    stay in the ledger either way, so running again resumes.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    started = time.monotonic()
    target = parse_s3_url(url)
    concurrency = max(1, int(concurrency))
    client = client if client is not None else make_client(endpoint_url, profile, concurrency)
    endpoint = endpoint_url or getattr(getattr(client, "meta", None), "endpoint_url", None)
    check_bucket(client, target, endpoint)
    try:
        remote = list_target(client, target)
    except Exception as exc:
        fatal = fatal_error(exc, target, endpoint)
        raise (fatal or UploadError(f"cannot list {target.url_for(target.prefix)}: {exc}")) from exc
    config = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=concurrency,
        use_threads=True,
    )
    manager = create_transfer_manager(client, config)
    total = sum(_size_or_zero(path) for path, _ in files)
    run = _Run(
        client, manager, target, ledger, total=total, progress=progress, endpoint=endpoint_id(endpoint), remote=remote
    )
    counts = {"uploaded": 0, "skipped": 0}
    shipped: dict[str, tuple[Path, int]] = {}
    bytes_uploaded = 0
    failed: list[dict[str, str]] = []
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tessq-upload") as pool:
            futures: dict[Future[tuple[str, int]], tuple[Path, str]] = {
                pool.submit(_ship_one, run, path, rel): (path, rel) for path, rel in files
            }
            for fut in as_completed(futures):
                path, rel = futures[fut]
                problem = fut.exception()
                if problem is None:
                    outcome, size = fut.result()
                    shipped[target.key_for(rel)] = (path, size)
                    counts[outcome] += 1
                    bytes_uploaded += size if outcome == "uploaded" else 0
                    continue
                fatal = fatal_error(problem, target, endpoint)
                if fatal is not None:
                    # Files in flight finish (and are recorded); queued ones are dropped.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise fatal from problem
                log.warning("upload of %s failed: %s", path, problem)
                failed.append({"path": str(path), "key": target.key_for(rel), "error": str(problem)})
    finally:
        manager.shutdown()
    try:
        verified, missing = _verify_target(client, target, shipped)
    except Exception as exc:
        fatal = fatal_error(exc, target, endpoint)
        raise (fatal or UploadError(f"cannot list {target.url_for(target.prefix)} to verify it: {exc}")) from exc
    for item in missing:
        log.warning("%s", item["error"])
    failed.extend(missing)
    return {
        "uploaded": counts["uploaded"],
        "skipped": counts["skipped"],
        "verified": verified,
        "bytes_uploaded": bytes_uploaded,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 3),
    }

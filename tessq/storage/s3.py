"""S3 as a Storage: the one S3 URL parser, the boto3 client and its errors, objects read by ranged GETs,
a prefix listed like a folder tree, files put (image folders and upload.py's shipping alike).

Locations are s3://BUCKET/PREFIX URLs; one client per process (make_client; TESSQ_S3_ENDPOINT_URL).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mimetypes
import os
import shutil
import stat as stat_mod
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from tessq import defaults, hashing
from tessq.errors import (
    BucketNotFoundError,
    ConfigError,
    LeaseLostError,
    RemoteIOError,
    S3AuthError,
    S3UnreachableError,
    SourceChangedError,
    TessqError,
    UploadError,
)
from tessq.perprocess import PerProcess
from tessq.storage.base import Storage
from tessq.storage.tree import (
    BATCH_METADATA_NAME,
    METADATA_NAME,
    FolderEntries,
    is_image_name,
    is_skipped_dir,
    is_tiff_name,
)

log = logging.getLogger("tessq.remote")

SCHEME = "s3://"
STREAM_CHUNK = 4 * 1024 * 1024
# Bytes and requests of every GET this process made (tests and benchmarks read it; never reset implicitly).
TRAFFIC: dict[str, int] = {"get_requests": 0, "get_bytes": 0}
_traffic_lock = threading.Lock()


# ---------------------------------------------------------------- URLs


def is_remote(location: object) -> bool:
    """True for an s3:// URL (also once pathlib has folded it to 's3:/...') or a RemoteSource."""
    if isinstance(location, RemoteSource):
        return True
    if isinstance(location, str | os.PathLike):
        return os.fspath(location).startswith("s3:/")
    return False


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str  # without leading or trailing '/'

    def key_for(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def url_for(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{key}"

    def list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    @property
    def path(self) -> str:
        """bucket/prefix: the URL without its scheme."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def parse(location: str | os.PathLike[str], *, what: str = "", folded: bool = True) -> S3Target:
    """The one S3 URL parser: 's3://bucket/prefix/' -> S3Target('bucket', 'prefix'). `folded` also takes
    pathlib's 's3:/bucket/prefix'; `what` names the location in the error ('upload target')."""
    text = os.fspath(location)
    named = f"{what} {text!r}" if what else repr(text)
    if text.startswith(SCHEME):
        rest = text[len(SCHEME) :]
    elif folded and text.startswith("s3:/"):
        rest = text[len("s3:/") :]
    else:
        raise ConfigError(f"{named} is not an S3 URL: use s3://BUCKET/PREFIX")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{named} has no bucket: use s3://BUCKET/PREFIX")
    return S3Target(bucket, prefix.strip("/"))


def normalize(location: str | os.PathLike[str]) -> str:
    """'s3://bucket/prefix/' (or pathlib's 's3:/bucket/prefix') -> 's3://bucket/prefix'."""
    return parse(location).url


def split(url: str | os.PathLike[str]) -> tuple[str, str]:
    """(bucket, key or prefix without slashes at either end)."""
    target = parse(url)
    return target.bucket, target.prefix


def join(url: str | os.PathLike[str], relative: str) -> str:
    """url/relative, refusing anything that is not a plain relative key ('..', '.', empty parts, NUL)."""
    parts = relative.split("/")
    if "\x00" in relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise TessqError(f"refusing S3 key {relative!r} under {normalize(url)}: not a plain relative path")
    return f"{normalize(url)}/{relative}"


def default_output(input_url: str | os.PathLike[str]) -> str:
    """s3://b/raw -> s3://b/raw_tessq (the local rule: a sibling named <IN>_tessq)."""
    bucket, prefix = split(input_url)
    return f"{SCHEME}{bucket}/{prefix}_tessq" if prefix else f"{SCHEME}{bucket}/tessq_output"


# ---------------------------------------------------------------- client and errors


MAX_ATTEMPTS = 8  # botocore "standard" retry mode: exponential backoff with jitter, capped at 20 s
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "InvalidClientTokenId",
        "AllAccessDisabled",
        "403",
    }
)


def endpoint_url() -> str | None:
    return os.environ.get("TESSQ_S3_ENDPOINT_URL") or None


def make_client(endpoint_url: str | None, profile: str | None, concurrency: int) -> Any:
    """An S3 client from the standard credential chain (env, profile, SSO, instance role): never logged."""
    try:
        import boto3
    except ImportError:
        raise ConfigError("S3 needs boto3: pip install 'tessq[s3]' (or pip install boto3)") from None
    from botocore.config import Config
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.Session(profile_name=profile)
    except ProfileNotFound as exc:
        raise S3AuthError(f"AWS profile {profile!r} is not in ~/.aws/config or ~/.aws/credentials") from exc
    config = Config(
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=10,
        read_timeout=120,
        # Whole-file workers plus multipart part threads share the pool.
        max_pool_connections=2 * concurrency + 4,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def fatal_error(exc: BaseException, target: S3Target, endpoint: str | None) -> UploadError | None:
    """The typed, actionable error when `exc` means no request to this bucket can succeed; None otherwise."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        CredentialRetrievalError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = endpoint or "the AWS default endpoint"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return S3AuthError(
            f"no usable AWS credentials ({type(exc).__name__}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "pass --profile NAME, or run `aws configure`"
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return S3UnreachableError(
            f"cannot reach the S3 endpoint {where} after {MAX_ATTEMPTS} attempts: check the network "
            "connection and --endpoint-url, then run the upload again (it resumes)"
        )
    if not isinstance(exc, ClientError):
        return None
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket" or (exc.operation_name == "HeadBucket" and status == 404):
        return BucketNotFoundError(
            f"bucket {target.bucket!r} does not exist at {where}: create it (aws s3 mb s3://{target.bucket}) "
            "or fix the name in s3://BUCKET/PREFIX"
        )
    if code in AUTH_CODES or status == 403:
        return S3AuthError(
            f"access to bucket {target.bucket!r} at {where} was refused ({code}): check the credentials "
            "(--profile, AWS_* variables) and that they allow s3:ListBucket and s3:PutObject on it"
        )
    if code in ("PermanentRedirect", "301") or status == 301:
        return UploadError(
            f"bucket {target.bucket!r} is in another region than the client's: set AWS_REGION "
            "(or the profile's region) to the bucket's region"
        )
    return None


def head_bucket(client: Any, target: S3Target, endpoint: str | None) -> None:
    """One HeadBucket before any object: a wrong bucket, key or endpoint fails at once, with one message."""
    try:
        client.head_bucket(Bucket=target.bucket)
    except Exception as exc:
        fatal = fatal_error(exc, target, endpoint)
        if fatal is not None:
            raise fatal from exc
        raise UploadError(f"cannot use bucket {target.bucket!r} at {endpoint or 'AWS'}: {exc}") from exc


def content_type(rel: str) -> str:
    return mimetypes.guess_type(rel)[0] or "application/octet-stream"


def _make_client() -> Any:
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # "found credentials in ..."
    return make_client(endpoint_url(), os.environ.get("AWS_PROFILE") or None, 2 * defaults.S3_UPLOAD_CONCURRENCY)


_CLIENT = PerProcess(_make_client)


def client() -> Any:
    """This process's S3 client (boto3 clients are thread-safe but must not cross a fork)."""
    return _CLIENT.get()


def translate(exc: BaseException, url: str, doing: str) -> BaseException:
    """An S3 failure as tessq sees it: FileNotFoundError, SourceChangedError, a typed UploadError or RemoteIOError."""
    from botocore.exceptions import ClientError

    if isinstance(exc, TessqError | FileNotFoundError):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "NotFound") or (code == "404" and exc.operation_name != "HeadBucket"):
            return FileNotFoundError(errno.ENOENT, f"{url}: no such object", url)
        if code in ("PreconditionFailed", "412") or status == 412:
            return SourceChangedError(url, "object was replaced while it was being read (its ETag changed)")
    fatal = fatal_error(exc, parse(url), endpoint_url())
    if fatal is not None:
        return fatal
    return RemoteIOError(f"{url}: {doing} failed ({type(exc).__name__}: {exc}); it is retried")


def _count(nbytes: int, requests: int = 1) -> None:
    with _traffic_lock:
        TRAFFIC["get_requests"] += requests
        TRAFFIC["get_bytes"] += nbytes


# ---------------------------------------------------------------- objects as files


@dataclass(frozen=True)
class ObjectStat:
    """What os.stat gives for a file, from HeadObject/ListObjects: size, mtime (LastModified), ETag."""

    st_size: int
    st_mtime: float
    etag: str | None
    st_mode: int = stat_mod.S_IFREG | 0o444

    @property
    def st_mtime_ns(self) -> int:
        return round(self.st_mtime * 1e9)


def _mtime(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def stat_object(url: str) -> ObjectStat:
    bucket, key = split(url)
    try:
        head = client().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        raise translate(exc, url, "HeadObject") from exc
    return ObjectStat(int(head["ContentLength"]), _mtime(head["LastModified"]), head.get("ETag"))


_View = TypeVar("_View", bound="SeekableFile")


class SeekableFile:
    """The file-object surface tifffile and shutil need, for read-only views that define `read`, `close`,
    `size` and keep their position in `_pos` (an S3 object, an archive member's byte range or stream)."""

    mode = "rb"
    size: int
    _pos: int

    def read(self, n: int | None = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _View) -> _View:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RangedReader(SeekableFile):
    """A seekable read-only file over one S3 object: small reads come from a block cache filled by ranged
    GETs (read-ahead doubles while access is sequential), large reads are one GET of exactly that range.
    Every GET carries If-Match with the ETag seen at open, so a replaced object fails instead of mixing."""

    def __init__(
        self,
        url: str,
        size: int,
        etag: str | None,
        *,
        block: int = defaults.S3_BLOCK_BYTES,
        blocks: int = defaults.S3_CACHE_BLOCKS,
    ) -> None:
        self.name = url
        self.bucket, self.key = split(url)
        self.size, self.etag = size, etag
        self.block, self.max_blocks = block, max(4, blocks)
        self._pos = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._ahead = 1
        self._next_block = -1
        self.closed = False
        self.requests = 0
        self.bytes_fetched = 0

    def _get(self, start: int, end: int) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, "Range": f"bytes={start}-{end - 1}"}
        if self.etag:
            kwargs["IfMatch"] = self.etag
        try:
            data = client().get_object(**kwargs)["Body"].read()
        except Exception as exc:
            raise translate(exc, self.name, f"ranged GET of bytes {start}-{end - 1}") from exc
        self.requests += 1
        self.bytes_fetched += len(data)
        _count(len(data))
        if len(data) != end - start:
            raise SourceChangedError(self.name, f"asked bytes {start}-{end - 1}, got {len(data)} (object shrank?)")
        return data

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        start, end = self._pos, self._pos + n
        data = self._get(start, end) if n >= self.block else self._from_blocks(start, end)
        self._pos = end
        return data

    def _from_blocks(self, start: int, end: int) -> bytes:
        first, last = start // self.block, (end - 1) // self.block
        missing = [b for b in range(first, last + 1) if b not in self._cache]
        if missing:
            self._ahead = min(self._ahead * 2, self.max_blocks // 2) if missing[0] == self._next_block else 1
            n_blocks = max(len(missing), self._ahead)
            a = missing[0] * self.block
            z = min((missing[0] + n_blocks) * self.block, self.size)
            data = self._get(a, z)
            for i in range(0, len(data), self.block):
                self._cache[missing[0] + i // self.block] = data[i : i + self.block]
            self._next_block = missing[0] + n_blocks
        parts = []
        for b in range(first, last + 1):
            parts.append(self._cache[b])
            self._cache.move_to_end(b)
        while len(self._cache) > self.max_blocks:
            self._cache.popitem(last=False)
        joined = b"".join(parts)
        offset = start - first * self.block
        return joined[offset : offset + end - start]

    def close(self) -> None:
        self._cache.clear()
        self.closed = True


class _Stream:
    """A whole-object GET body whose read errors come out as tessq errors (for hashing and spooling)."""

    def __init__(self, url: str, etag: str | None) -> None:
        self.url = url
        bucket, key = split(url)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if etag:
            kwargs["IfMatch"] = etag
        try:
            self._body = client().get_object(**kwargs)["Body"]
        except Exception as exc:
            raise translate(exc, url, "GET") from exc
        _count(0)

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._body.read(n if n >= 0 else None)
        except Exception as exc:
            raise translate(exc, self.url, "streaming GET") from exc
        _count(len(data), requests=0)
        return data

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteSource:
    """An S3 object seen the way core/tiff see a source file: name, stat(), resolve(), open('rb'), and
    `tiff_target()` for tifffile (the spooled temp file when there is one, else a RangedReader)."""

    def __init__(self, url: str, known: ObjectStat | None = None) -> None:
        self.url = url
        self.bucket, self.key = split(url)
        self._known = known
        self.spool: Path | None = None
        self.spool_sha256: str | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def head(self) -> ObjectStat:
        """The object as first seen (the ETag every read is pinned to)."""
        if self._known is None:
            self._known = stat_object(self.url)
        return self._known

    @property
    def size(self) -> int:
        return self.head.st_size

    def stat(self) -> ObjectStat:
        """A fresh HeadObject (change detection); FileNotFoundError when the object is gone."""
        return stat_object(self.url)

    def exists(self) -> bool:
        try:
            self.stat()
        except FileNotFoundError:
            return False
        return True

    def resolve(self) -> RemoteSource:
        return self

    def open(self, mode: str = "rb") -> Any:
        """The whole object, sequentially: the spooled copy, else one streaming GET pinned to the ETag."""
        if mode != "rb":
            raise ValueError(f"{self.url}: S3 sources are read-only")
        return open(self.spool, "rb") if self.spool else _Stream(self.url, self.head.etag)

    def tiff_target(self) -> str | RangedReader:
        return str(self.spool) if self.spool else RangedReader(self.url, self.size, self.head.etag)

    def fetch(self, directory: str | Path | None = None) -> Path:
        """Stream the object into a temp file (sha256 computed on the way); removed by close()."""
        suffix = PurePosixPath(self.key).suffix
        fd, name = tempfile.mkstemp(prefix=f"tessq-src-{os.getpid()}-", suffix=suffix, dir=directory)
        sha = hashing.new_hash()
        try:
            with os.fdopen(fd, "wb") as out, _Stream(self.url, self.head.etag) as body:
                while chunk := body.read(STREAM_CHUNK):
                    sha.update(chunk)
                    out.write(chunk)
            if os.path.getsize(name) != self.size:
                raise SourceChangedError(self.url, f"fetched {os.path.getsize(name)} bytes, expected {self.size}")
        except BaseException:
            os.unlink(name)
            raise
        self.spool, self.spool_sha256 = Path(name), sha.hexdigest()
        return self.spool

    def close(self) -> None:
        if self.spool is not None:
            with contextlib.suppress(FileNotFoundError):
                self.spool.unlink()
            self.spool = None

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemoteSource({self.url!r})"


def as_source(source: str | os.PathLike[str] | RemoteSource) -> Path | RemoteSource:
    """A local Path, or a RemoteSource for an s3:// URL (what core.tessellate_image and tiff accept)."""
    if isinstance(source, RemoteSource):
        return source
    if hasattr(source, "tiff_range"):  # an archive.ArchiveMember: the surface of a RemoteSource
        member: Any = source
        return member
    if is_remote(source):
        return RemoteSource(_object_url(source))
    return Path(source)


def _object_url(location: str | os.PathLike[str]) -> str:
    bucket, key = split(location)
    if not key:
        raise ConfigError(f"{normalize(location)} names a bucket, not an object")
    return f"{SCHEME}{bucket}/{key}"


def tiff_target(source: str | os.PathLike[str] | RemoteSource) -> tuple[str | RangedReader, int]:
    """What tiff._open_tifffile hands tifffile for a remote source, and the object's size."""
    remote = as_source(source)
    assert isinstance(remote, RemoteSource)
    return remote.tiff_target(), remote.size


def spool_limits() -> tuple[int, int]:
    """(objects up to this size are spooled, never spool more than this): env overrides, then defaults."""
    spool_max = int(os.environ.get("TESSQ_S3_SPOOL_MAX_BYTES") or defaults.S3_SPOOL_MAX_BYTES)
    budget = int(os.environ.get("TESSQ_S3_DISK_BUDGET_BYTES") or defaults.S3_DISK_BUDGET_BYTES)
    return spool_max, budget


def should_spool(size: int, directory: str | Path) -> bool:
    """Small objects come down whole (one GET; the sha256 needs every byte anyway), within the disk budget
    and the free space of the temp disk; larger ones are read by ranges, chunk by chunk, with no disk."""
    spool_max, budget = spool_limits()
    if size > min(spool_max, budget):
        return False
    free = shutil.disk_usage(directory).free
    return free - size >= defaults.S3_DISK_RESERVE_BYTES


@contextlib.contextmanager
def opened_source(url: str, tmp_dir: str | Path | None = None) -> Iterator[RemoteSource]:
    """A worker's view of one S3 source for one image: spooled when small, else ranged; cleaned up after."""
    source = RemoteSource(url)
    try:
        try:
            source.head  # noqa: B018 - pins the ETag every later read must match
        except FileNotFoundError:
            raise SourceChangedError(url, "object no longer exists (deleted or moved since the scan)") from None
        directory = tmp_dir or tempfile.gettempdir()
        if should_spool(source.size, directory):
            source.fetch(directory)
        yield source
    finally:
        source.close()


# ---------------------------------------------------------------- listing (the scan's walk)


@dataclass(frozen=True)
class S3Entry:
    """One listed object, shaped like the os.DirEntry that scan.candidate_row reads (name, path, stat())."""

    name: str
    url: str
    info: ObjectStat

    @property
    def path(self) -> RemoteSource:
        return RemoteSource(self.url, self.info)  # probing it costs no HeadObject

    def stat(self, follow_symlinks: bool = True) -> ObjectStat:
        return self.info

    def is_symlink(self) -> bool:
        return False


def list_objects(url: str) -> Iterator[dict[str, Any]]:
    """Every object under the prefix url/ (ListObjectsV2 pages)."""
    bucket, prefix = split(url)
    try:
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
        for page in pages:
            yield from page.get("Contents", [])
    except Exception as exc:
        raise translate(exc, normalize(url), "listing") from exc


def walk(root: str, *, exclude: Sequence[str | os.PathLike[str]] = ()) -> Iterator[FolderEntries]:
    """The local walk for a prefix: one FolderEntries per 'folder' of keys, with the same skip rules
    (hidden/system folders, folder markers, the output prefix); keys with empty, '.' or '..' parts are
    logged and left out, since they cannot be mirrored."""
    root = normalize(root)
    bucket, prefix = split(root)
    base = f"{prefix}/" if prefix else ""
    skip = [split(e)[1] for e in exclude if is_remote(e) and split(e)[0] == bucket and normalize(e) != root]
    folders: dict[str, FolderEntries] = {}
    for obj in list_objects(root):
        key: str = obj["Key"]
        rel = key[len(base) :]
        if not rel or rel.endswith("/"):
            continue
        if any(key.startswith(f"{s}/") for s in skip if s):
            continue
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            log.warning("skipping s3://%s/%s: its key cannot be mirrored as a folder path", bucket, key)
            continue
        if any(is_skipped_dir(p) for p in parts[:-1]):
            continue
        folder_rel, name = "/".join(parts[:-1]), parts[-1]
        folder = folders.setdefault(folder_rel, FolderEntries(rel=folder_rel))
        if is_tiff_name(name):
            info = ObjectStat(int(obj["Size"]), _mtime(obj["LastModified"]), obj.get("ETag"))
            folder.tiffs.append(S3Entry(name, f"{SCHEME}{bucket}/{key}", info))
        elif is_image_name(name):
            folder.other_images += 1
    for rel in sorted(folders):
        folder = folders[rel]
        folder.tiffs.sort(key=lambda e: e.name)
        yield folder


def check_bucket(url: str) -> None:
    """Fail early, with the typed error, when the bucket of `url` is missing or refused."""
    head_bucket(client(), parse(url), endpoint_url())


def check_input(url: str) -> None:
    check_bucket(url)
    if next(iter(list_objects(url)), None) is None:
        raise ConfigError(f"input {normalize(url)} holds no objects (check the bucket and the prefix)")


# ---------------------------------------------------------------- output: commit an image folder


NOFOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_nofollow(path: Path) -> Any:
    """The file for reading, refusing a symbolic link (ELOOP): nothing is read through a link."""
    return os.fdopen(os.open(path, NOFOLLOW), "rb")


@dataclass(frozen=True)
class Sent:
    """What S3 says it holds after a put: its size, its full-object CRC32 (None when not asked), its ETag."""

    size: int | None
    crc32: str | None
    etag: str | None


def send_file(
    s3: Any,
    path: Path,
    bucket: str,
    key: str,
    size: int,
    *,
    crc32: str | None = None,
    threshold: int = defaults.S3_SINGLE_PUT_BYTES,
    manager: Any = None,
    subscribers: Sequence[Any] = (),
) -> Sent:
    """The one put path: one PutObject below `threshold`, else concurrent multipart parts (s3transfer: the
    given manager, or one for this file). S3 checks a CRC32 on what it received: `crc32` when given (then
    S3's own full-object CRC32 comes back to compare), else one the SDK computes. The file is opened
    without following a link; s3transfer gets the open file, not its name, for the same reason."""
    extra: dict[str, Any] = {"ChecksumAlgorithm": "CRC32", "ContentType": content_type(key)}
    if crc32 is not None:
        extra["ChecksumCRC32"] = crc32
    if size < threshold:
        with open_nofollow(path) as body:
            resp = s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        return Sent(size, resp.get("ChecksumCRC32"), resp.get("ETag"))
    with contextlib.ExitStack() as stack:
        if manager is None:
            from boto3.s3.transfer import TransferConfig, create_transfer_manager

            manager = create_transfer_manager(s3, TransferConfig(max_concurrency=defaults.S3_UPLOAD_CONCURRENCY))
            stack.callback(manager.shutdown)
        with open_nofollow(path) as body:
            manager.upload(body, bucket, key, extra_args=extra, subscribers=list(subscribers)).result()
    if crc32 is None:
        return Sent(size, None, None)
    # s3transfer returns no response: ask S3 for the full-object CRC32 it computed over the parts.
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return Sent(head.get("ContentLength"), head.get("ChecksumCRC32"), head.get("ETag"))


def put_file(path: Path, url: str) -> None:
    """Upload one file of an image folder with a CRC32 the SDK computes and S3 checks."""
    bucket, key = split(url)
    try:
        send_file(client(), path, bucket, key, path.stat().st_size)
    except Exception as exc:
        raise translate(exc, url, f"upload of {path.name}") from exc


def put_bytes(data: bytes, url: str) -> None:
    bucket, key = split(url)
    try:
        client().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type(key))
    except Exception as exc:
        raise translate(exc, url, "upload") from exc


def delete_keys(bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        try:
            client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        except Exception as exc:
            raise translate(exc, f"{SCHEME}{bucket}/{batch[0]['Key']}", "delete") from exc


class OutputCommitter:
    """An image folder bound for s3://.../<out_rel>/: the core writes it into a local temp dir, `commit`
    uploads it (slices, then batch_metadata.json, metadata.json LAST, then removes objects of an older
    version), and leaving the context deletes the temp dir. A folder is complete once metadata.json is
    there; the status row marked done is what counts."""

    def __init__(self, output_url: str, out_rel: str, tmp_dir: str | Path | None = None) -> None:
        self.url = join(output_url, out_rel)
        self.bucket, self.prefix = split(self.url)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tessq-out-{os.getpid()}-", dir=tmp_dir))
        self.local_dir = self.tmp / PurePosixPath(out_rel).name

    def commit(self, still_holds: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Upload the finished local folder; `still_holds()` (the lease) is asked before anything is sent."""
        if still_holds is not None and not still_holds():
            raise LeaseLostError(f"{self.url}: lease lost before upload; the image belongs to another worker now")
        files = sorted(p for p in self.local_dir.iterdir() if p.is_file())
        last = [n for n in (BATCH_METADATA_NAME, METADATA_NAME) if (self.local_dir / n).is_file()]
        slices = [p for p in files if p.name not in last]
        meta_key = f"{self.prefix}/{METADATA_NAME}"
        # An older version stops looking complete before any of its files is replaced.
        delete_keys(self.bucket, [meta_key])
        with ThreadPoolExecutor(max_workers=defaults.S3_UPLOAD_CONCURRENCY, thread_name_prefix="tessq-put") as pool:
            list(pool.map(lambda p: put_file(p, f"{self.url}/{p.name}"), slices))
        for name in last:
            put_file(self.local_dir / name, f"{self.url}/{name}")
        keep = {f"{self.prefix}/{p.name}" for p in files}
        stale = [o["Key"] for o in list_objects(self.url) if o["Key"] not in keep]
        if stale:
            delete_keys(self.bucket, stale)
        return {"url": self.url, "objects": len(files), "bytes": sum(p.stat().st_size for p in files)}

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> OutputCommitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep_temp(alive: Callable[[int], bool], directory: str | Path | None = None) -> int:
    """Remove spools and output temp dirs of dead processes of this machine (a SIGKILLed worker leaves them)."""
    directory = Path(directory or tempfile.gettempdir())
    removed = 0
    for entry in directory.glob("tessq-[os][ur][tc]-*-*"):
        pid = entry.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def download_prefix(url: str, dest: str | Path) -> list[Path]:
    """Copy every object under url/ into dest, keeping the relative keys (verify, tests)."""
    bucket, prefix = split(url)
    dest = Path(dest)
    out = []
    for obj in list_objects(url):
        rel = obj["Key"][len(prefix) + 1 :] if prefix else obj["Key"]
        target = dest.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client().download_file(bucket, obj["Key"], str(target))
        except Exception as exc:
            raise translate(exc, f"{SCHEME}{bucket}/{obj['Key']}", "download") from exc
        out.append(target)
    return out


# ---------------------------------------------------------------- the Storage


class S3Storage(Storage):
    """An s3://BUCKET/PREFIX: listed by ListObjectsV2, read by ranged GETs, written by OutputCommitter."""

    kind = "s3"

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.target = parse(location)

    @property
    def text(self) -> str:
        return self.target.url

    def resolved(self) -> str:
        return self.target.url

    def join(self, relative: str) -> str:
        return join(self.text, relative)

    def default_output(self) -> S3Storage:
        return S3Storage(default_output(self.text))

    def check_input(self) -> None:
        check_input(self.text)

    def prepare_output(self) -> None:
        check_bucket(self.text)

    def walk(self, *, follow_symlinks: bool = False, exclude: Sequence[Path | str] = ()) -> Iterator[FolderEntries]:
        return walk(self.text, exclude=tuple(e for e in exclude if is_remote(e)))

    def source(self, relative: str) -> RemoteSource:
        return RemoteSource(self.join(relative))

    def existing_source(self, relative: str) -> RemoteSource | None:
        found = self.source(relative)
        return found if found.exists() else None

    @contextlib.contextmanager
    def opened_source(self, relative: str, tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[RemoteSource]:
        with opened_source(self.join(relative), os.fspath(tmp_dir) if tmp_dir else None) as source:
            yield source

    def output_folder(self, out_rel: str, tmp_dir: str | os.PathLike[str] | None = None) -> OutputCommitter:
        return OutputCommitter(self.text, out_rel, os.fspath(tmp_dir) if tmp_dir else None)

    def put_bytes(self, relative: str, data: bytes) -> None:
        put_bytes(data, self.join(relative))

    @contextlib.contextmanager
    def local_copy(self, out_rel: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="tessq-verify-") as tmp:
            folder = Path(tmp) / PurePosixPath(out_rel).name
            if not download_prefix(self.join(out_rel), folder):
                raise UploadError(f"{self.join(out_rel)}: no objects (the image folder is missing)")
            yield folder

"""Archives as input: a .zip, .tar, .tar.gz/.tgz, .tar.bz2 or .tar.xz file (local or s3://) whose member paths
are the tree.

Nothing is extracted. The scan lists the members (a ZIP's central directory; a TAR's headers) and reads
each TIFF member's header in place. A stored ZIP member or a TAR member is a byte range of the archive:
tifffile reads it directly (``TiffFile(archive, offset=, size=)``), locally or by ranged GETs. A deflated
ZIP member is inflated only as far as a read needs (zlib, bounded by its declared size); a worker spools it
to a temp file first (within a disk budget, deleted after; sha256 computed on the way). A .tar.gz is read
through indexed_gzip when installed (``pip install 'tessq[archive]'``: random access into the gzip stream
from an index built once per process), else by plain gzip (each member costs a decompression from the
start of the archive); its members are spooled like deflated ones. A .tar.bz2 or .tar.xz is read the same
way through the standard library's bz2/lzma readers (no index exists for either: a member read out of
order decompresses again from the start).

A member is a source object the way s3.RemoteSource is one: name, stat(), resolve(), open('rb'), and
``tiff_range()`` for tiff._open_tifffile. Its identity is its path in the tree (rel_path); size and
"mtime" (TAR: the member's mtime; ZIP: its date_time plus CRC-32/2**32, so a same-size rewrite with a new
CRC is a change) are what change detection compares, exactly where a file's size and mtime go.
"""

from __future__ import annotations

import bz2
import calendar
import contextlib
import dataclasses
import hashlib
import json
import logging
import lzma
import os
import shutil
import stat as stat_mod
import struct
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from zlib_ng import zlib_ng

from tessq import defaults, hashing
from tessq.errors import (
    ConfigError,
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    SourceChangedError,
    SourceModifiedError,
    TessqError,
    UnsupportedImageError,
)
from tessq.storage import s3 as remote
from tessq.storage.base import OutputFolder, Storage
from tessq.storage.local import LocalStorage
from tessq.storage.tree import (
    METADATA_NAME,
    READABLE_ARCHIVES,
    FolderEntries,
    is_image_name,
    is_skipped_dir,
    is_tessq_metadata,
    is_tiff_name,
)

log = logging.getLogger("tessq.archive")

SUFFIXES = (
    (".tar.gz", "tgz"),
    (".tgz", "tgz"),
    (".tar.bz2", "tbz2"),
    (".tbz2", "tbz2"),
    (".tbz", "tbz2"),
    (".tar.xz", "txz"),
    (".txz", "txz"),
    (".zip", "zip"),
    (".tar", "tar"),
)
COMPRESSED_TARS = {"tgz": "gzip", "tbz2": "bzip2", "txz": "xz"}  # kind -> the codec of the whole stream
CHUNK = 1024 * 1024
HEAD_CACHE = 1024 * 1024  # the first bytes of a streamed member are kept: headers are re-read without re-inflating
ONE_SHOT_MAX = 256 * 1024 * 1024  # a deflated member whose packed + inflated bytes fit is inflated in one call
HEAD_STEP = 256 * 1024  # ... and read ahead in steps of this size (tifffile's header reads are many and small)
DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than this: a larger declared size is a lie (a zip bomb)
ZIP_READABLE = ("stored", "deflated", "bzip2", "lzma")
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflated",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
    9: "deflate64",
    93: "zstd",
    99: "aes",
}


def archive_kind(location: object) -> str | None:
    """'zip', 'tar', 'tgz', 'tbz2' or 'txz' from a name's suffix (any letter case), else None."""
    if not isinstance(location, str | os.PathLike):
        return None
    name = os.fspath(location).lower().rstrip("/")
    for suffix, kind in SUFFIXES:
        if name.endswith(suffix):
            return kind
    return None


def is_archive(location: object) -> bool:
    """Whether an input location names an archive file: a local file, or an s3:// object, with an archive suffix."""
    if archive_kind(location) is None or not isinstance(location, str | os.PathLike):
        return False
    text = os.fspath(location)
    if remote.is_remote(text):
        return _remote_object_exists(remote.normalize(text))
    return os.path.isfile(text)


_exists_cache: dict[str, bool] = {}


def _remote_object_exists(url: str) -> bool:
    if url not in _exists_cache:
        try:
            remote.stat_object(url)
            _exists_cache[url] = True
        except FileNotFoundError:
            return False  # not cached: a later upload makes it an archive
        except Exception:
            return True  # not reachable now: it is named like an archive; the real error comes on opening it
    return _exists_cache[url]


def is_member(source: object) -> bool:
    return isinstance(source, ArchiveMember)


def default_output(location: str | os.PathLike[str]) -> str:
    """data.zip -> data_tessq beside it (s3://b/x/data.tgz -> s3://b/x/data_tessq)."""
    text = remote.normalize(location) if remote.is_remote(location) else os.path.abspath(location)
    lower = text.lower()
    for suffix, _ in SUFFIXES:
        if lower.endswith(suffix):
            return text[: -len(suffix)] + "_tessq"
    return text + "_tessq"


# ---------------------------------------------------------------- the listing


@dataclass(frozen=True)
class ArchiveStat:
    st_size: int
    st_mtime: float
    etag: str | None = None
    st_mode: int = stat_mod.S_IFREG | 0o444

    @property
    def st_mtime_ns(self) -> int:
        return round(self.st_mtime * 1e9)


@dataclass(frozen=True)
class MemberInfo:
    name: str  # as stored in the archive
    rel: str  # its path in the tree, made safe
    size: int  # declared uncompressed size
    mtime: float  # change detection: TAR mtime; ZIP date_time (UTC) + CRC/2**32
    mode: int  # st_mode: S_IFREG, S_IFLNK, S_IFCHR...
    method: str  # stored, deflated, tar (a byte range), tgz, or an unsupported ZIP method name
    offset: int  # ZIP: local header offset; TAR: data offset
    csize: int  # ZIP compressed size (TAR: size)
    crc: int | None = None
    problem: str | None = None  # why this member cannot be read, found from the listing


@dataclass(frozen=True)
class MemberStat:
    st_size: int
    st_mtime: float
    st_mode: int

    @property
    def st_mtime_ns(self) -> int:
        return round(self.st_mtime * 1e9)


def safe_rel(name: str) -> str | None:
    """A member name as a relative tree path: separators '/' (and '\\'), no empty/'.' parts, no leading '/',
    '..' made a plain name ('_..'), so nothing can point outside the tree. None for an empty name."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    parts = ["_.." if p == ".." else p for p in parts]
    return "/".join(parts) or None


def _location(location: str | os.PathLike[str]) -> str:
    return remote.normalize(location) if remote.is_remote(location) else os.path.abspath(location)


def _stat_location(location: str) -> ArchiveStat:
    if remote.is_remote(location):
        head = remote.stat_object(location)
        return ArchiveStat(head.st_size, head.st_mtime, head.etag)
    st = os.stat(location)
    if not stat_mod.S_ISREG(st.st_mode):
        raise ConfigError(f"{location} is not a regular file")
    return ArchiveStat(st.st_size, st.st_mtime)


class Archive:
    """One archive's listing as of `st` (its size, mtime, ETag): every member by its tree path."""

    def __init__(self, location: str, kind: str, st: ArchiveStat) -> None:
        self.location, self.kind, self.st = location, kind, st
        self.members: dict[str, MemberInfo] = {}
        self.warnings: list[str] = []
        self.gz_index: Any = None  # indexed_gzip index (bytes) built by the listing, for later opens
        self._gz: tuple[int, Any, Any, threading.Lock] | None = None  # (pid, reader, raw file, its lock)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return PurePosixPath(self.location).name

    def raw(self) -> Any:
        """A new seekable handle on the whole archive file (a local file, or ranged GETs pinned to the ETag)."""
        if remote.is_remote(self.location):
            return remote.RangedReader(self.location, self.st.st_size, self.st.etag)
        return open(self.location, "rb")

    def load(self) -> Archive:
        if self.kind == "zip":
            self._load_zip()
        else:
            self._load_tar()
        return self

    def _add(self, info: MemberInfo) -> None:
        if info.rel in self.members:
            self.warnings.append(f"{self.location}: {info.name!r} appears more than once; the last one is used")
        self.members[info.rel] = info

    def _load_zip(self) -> None:
        with self.raw() as fh:
            try:
                zf = zipfile.ZipFile(fh)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
                raise ConfigError(
                    f"input {self.location} is not a readable ZIP archive ({exc}): truncated, damaged "
                    f"or not a ZIP at all"
                ) from exc
            with zf:
                infos = zf.infolist()
        size = self.st.st_size
        for zi in infos:
            if zi.is_dir():
                continue
            rel = safe_rel(_zip_name(zi))
            if rel is None:
                continue
            unix = zi.external_attr >> 16
            mode = stat_mod.S_IFMT(unix) if zi.create_system == 3 and stat_mod.S_IFMT(unix) else stat_mod.S_IFREG
            method = ZIP_METHODS.get(zi.compress_type, f"method {zi.compress_type}")
            problem = None
            if zi.flag_bits & 0x1:
                problem = "encrypted (tessq reads no encrypted archive members)"
            elif method not in ZIP_READABLE:
                problem = f"compressed with {method} (tessq reads stored, deflated, bzip2 and LZMA ZIP members)"
            elif zi.header_offset + zi.compress_size > size:
                problem = "truncated: the archive ends inside this member"
            elif method == "stored" and zi.compress_size != zi.file_size:
                problem = f"stored member with {zi.compress_size} bytes of data but a declared size of {zi.file_size}"
            elif method == "deflated" and zi.file_size > max(zi.compress_size, 1) * DEFLATE_MAX_RATIO + 1024:
                problem = (
                    f"declares {zi.file_size} bytes from {zi.compress_size} deflated bytes, more than deflate "
                    f"can expand (a zip bomb?)"
                )
            try:
                when = calendar.timegm((*zi.date_time, 0, 0, 0))
            except (ValueError, OverflowError, TypeError):
                when = 0
            self._add(
                MemberInfo(
                    zi.filename,
                    rel,
                    zi.file_size,
                    float(when) + zi.CRC / 2**32,
                    mode,
                    method,
                    zi.header_offset,
                    zi.compress_size,
                    zi.CRC,
                    problem,
                )
            )

    def _load_tar(self) -> None:
        raw = self.raw()
        try:
            fh = _decompressed_reader(raw, self) if self.kind in COMPRESSED_TARS else raw
            try:
                tf = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115
            except Exception as exc:  # tarfile, gzip, zlib and indexed_gzip errors alike: not a readable archive
                raise ConfigError(
                    f"input {self.location} is not a readable "
                    f"{_tar_description(self.kind)} archive ({exc}): "
                    f"truncated, damaged or not an archive at all"
                ) from exc
            data_end = self.st.st_size if self.kind == "tar" else None
            links: list[tarfile.TarInfo] = []
            while True:
                try:
                    ti = tf.next()
                except Exception as exc:
                    self.warnings.append(
                        f"{self.location}: archive is truncated or damaged after "
                        f"{len(self.members)} members ({exc}); the members before are used"
                    )
                    break
                if ti is None:
                    break
                vars(tf)["members"].clear()  # 100k+ members: keep our own small records (not in the stubs)
                if ti.isdir():
                    continue
                if ti.islnk():
                    links.append(ti)
                    continue
                self._add_tar(ti, data_end)
            if self.kind in COMPRESSED_TARS:
                if hasattr(fh, "export_index"):  # indexed_gzip: the end is known without another pass
                    self._mark_past_end(_stream_end(fh))
                    self.gz_index = _export_gz_index(fh)
                self._gz = (os.getpid(), fh, raw, threading.Lock())  # kept: the scan's probes read through it
                raw = None
            by_name = {m.name: m for m in self.members.values()}
            for ti in links:  # a hard link is the data of the member it names
                target = by_name.get(ti.linkname)
                rel = safe_rel(ti.name)
                if rel is None:
                    continue
                if target is None or target.problem or not stat_mod.S_ISREG(target.mode):
                    self._add(
                        MemberInfo(
                            ti.name,
                            rel,
                            0,
                            float(ti.mtime),
                            stat_mod.S_IFLNK,
                            "tar",
                            0,
                            0,
                            None,
                            f"hard link to {ti.linkname!r}, which is no regular member",
                        )
                    )
                else:
                    self._add(
                        MemberInfo(
                            ti.name,
                            rel,
                            target.size,
                            target.mtime,
                            target.mode,
                            target.method,
                            target.offset,
                            target.csize,
                            None,
                            None,
                        )
                    )
        finally:
            if raw is not None:
                raw.close()

    def _mark_past_end(self, end: int | None) -> None:
        """Members whose declared size runs past the end of the decompressed stream are truncated (or lie)."""
        if end is None:
            return
        for rel, info in list(self.members.items()):
            if info.problem is None and info.offset + info.size > end:
                self.members[rel] = dataclasses.replace(
                    info, problem=f"truncated: the archive ends inside this member (it declares {info.size} bytes)"
                )

    def gz_handle(self) -> tuple[Any, threading.Lock]:
        """This process's one reader of the decompressed .tar.gz stream, shared by its members (with a lock):
        forward seeks continue from where the last read ended, so members read in archive order cost one pass;
        others seek from the nearest index point."""
        with self._lock:
            if self._gz is None or self._gz[0] != os.getpid():
                raw = self.raw()
                self._gz = (os.getpid(), _decompressed_reader(raw, self), raw, threading.Lock())
            return self._gz[1], self._gz[3]

    def _add_tar(self, ti: tarfile.TarInfo, data_end: int | None) -> None:
        rel = safe_rel(ti.name)
        if rel is None:
            return
        if ti.issym():
            mode = stat_mod.S_IFLNK
        elif ti.ischr():
            mode = stat_mod.S_IFCHR
        elif ti.isblk():
            mode = stat_mod.S_IFBLK
        elif ti.isfifo():
            mode = stat_mod.S_IFIFO
        else:
            mode = stat_mod.S_IFREG
        problem = None
        if ti.issparse():
            problem = "a GNU sparse member (not supported)"
        elif data_end is not None and ti.offset_data + ti.size > data_end:
            problem = "truncated: the archive ends inside this member"
        self._add(
            MemberInfo(ti.name, rel, ti.size, float(ti.mtime), mode, self.kind, ti.offset_data, ti.size, None, problem)
        )


def _zip_name(zi: zipfile.ZipInfo) -> str:
    """A ZIP member's name as text: UTF-8 when flagged; else Info-ZIP's Unicode Path field (0x7075), else the
    bytes when they are UTF-8 (what most tools write unflagged), else CP437 as the ZIP spec says."""
    if zi.flag_bits & 0x800:
        return zi.filename
    extra, i = zi.extra, 0
    while i + 4 <= len(extra):
        field, length = struct.unpack_from("<HH", extra, i)
        if field == 0x7075 and length >= 5:
            with contextlib.suppress(UnicodeDecodeError):
                return extra[i + 9 : i + 4 + length].decode("utf-8")
        i += 4 + length
    try:
        return zi.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return zi.filename


_ARCHIVES: dict[str, Archive] = {}
_archives_lock = threading.Lock()


def get_archive(location: str | os.PathLike[str], *, fresh: bool = True) -> Archive:
    """This process's listing of an archive: read once, read again when the archive's size/mtime/ETag changed
    (`fresh=False`: the cached one as it is, as the scan's probes use it). Refuses (ConfigError) a file that
    is not a readable archive."""
    location = _location(location)
    kind = archive_kind(location)
    if kind is None:
        raise ConfigError(f"{location} is not named like an archive ({READABLE_ARCHIVES})")
    with _archives_lock:
        cached = _ARCHIVES.get(location)
    if cached is not None and not fresh:
        return cached
    st = _stat_location(location)
    if cached is not None and (cached.st.st_size, cached.st.st_mtime, cached.st.etag) == (
        st.st_size,
        st.st_mtime,
        st.etag,
    ):
        return cached
    archive = _load_saved(location, kind, st)
    if archive is None:
        archive = Archive(location, kind, st).load()
        _save(archive)
    with _archives_lock:
        _ARCHIVES[location] = archive
    return archive


# A TAR has no central directory: listing one reads every member's header (a ranged GET per member over 64 KiB
# on S3), and a .tar.gz is listed by decompressing all of it. The scan saves such a listing (and the gzip
# index) in the job's state dir (OUT/.tessq/archives/), so each worker process loads it instead of listing the
# archive again. A ZIP's central directory is one read: it is not saved.
SAVED_FORMAT = 1
SAVED_KINDS = ("tar", *COMPRESSED_TARS)


_STATE: dict[str, Path | None] = {"dir": None}


def use_state_dir(state_dir: Path | None) -> None:
    """Where saved listings go and are looked for (the workspace's .tessq/, set when the queue is configured)."""
    _STATE["dir"] = state_dir


def _saved_paths(location: str, st: ArchiveStat) -> tuple[Any, Any] | None:
    state_dir = _STATE["dir"]
    if state_dir is None:
        return None
    key = hashlib.sha256(json.dumps([location, st.st_size, st.st_mtime, st.etag]).encode()).hexdigest()[:24]
    base = state_dir / "archives" / key
    return base.with_suffix(".json"), base.with_suffix(".gzidx")


def _load_saved(location: str, kind: str, st: ArchiveStat) -> Archive | None:
    if kind not in SAVED_KINDS:
        return None
    paths = _saved_paths(location, st)
    if paths is None:
        return None
    try:
        saved = json.loads(paths[0].read_text())
        if saved.get("format") != SAVED_FORMAT or saved.get("location") != location:
            return None
        archive = Archive(location, kind, st)
        for fields in saved["members"]:
            archive.members[fields[1]] = MemberInfo(*fields)
        archive.warnings = list(saved.get("warnings", []))
        if saved.get("gz_index"):
            archive.gz_index = paths[1].read_bytes()
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return archive


def _save(archive: Archive) -> None:
    if archive.kind not in SAVED_KINDS:
        return
    paths = _saved_paths(archive.location, archive.st)
    if paths is None or paths[0].exists():
        return
    members = [
        [m.name, m.rel, m.size, m.mtime, m.mode, m.method, m.offset, m.csize, m.crc, m.problem]
        for m in archive.members.values()
    ]
    body = {
        "format": SAVED_FORMAT,
        "location": archive.location,
        "members": members,
        "warnings": archive.warnings,
        "gz_index": archive.gz_index is not None,
    }
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        if archive.gz_index is not None:  # the index first: a listing file names an index that is complete
            _write_atomic(paths[1], archive.gz_index)
        _write_atomic(paths[0], json.dumps(body).encode())  # ASCII: names that are not UTF-8 survive as \udcXX
    except OSError as exc:  # an optimisation only
        log.debug("could not save the listing of %s: %s", archive.location, exc)


def _write_atomic(path: Any, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_input(location: str | os.PathLike[str]) -> None:
    """Refuse, before anything is written, an archive that cannot be listed (not an archive, truncated...)."""
    try:
        archive = get_archive(location)
    except FileNotFoundError:
        raise ConfigError(f"input archive {location} does not exist") from None
    for warning in archive.warnings:
        log.warning("%s", warning)


# ---------------------------------------------------------------- .tar.gz


def indexed_gzip_available() -> bool:
    try:
        import indexed_gzip  # noqa: F401
    except ImportError:
        return False
    return True


_warned_plain_gzip = False


def _tar_description(kind: str) -> str:
    return f"{COMPRESSED_TARS[kind]}-compressed TAR" if kind in COMPRESSED_TARS else "TAR"


def _decompressed_reader(raw: Any, archive: Archive) -> Any:
    """A seekable reader of a compressed TAR's decompressed stream: gzip as below; bzip2 and xz by the standard
    library (no index exists for them: a backward seek decompresses again from the start, so members are best
    read in archive order, as the queue hands them out)."""
    if archive.kind == "tbz2":
        return bz2.BZ2File(raw, mode="rb")
    if archive.kind == "txz":
        return lzma.LZMAFile(raw, mode="rb")
    return _gzip_reader(raw, archive)


def _gzip_reader(raw: Any, archive: Archive) -> Any:
    """A seekable reader of the decompressed stream: indexed_gzip (an index imported when one was built) or,
    without it, gzip.GzipFile (a backward seek restarts from the beginning)."""
    global _warned_plain_gzip
    if indexed_gzip_available():
        import indexed_gzip

        fh = indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=4 * 1024 * 1024, readbuf_size=CHUNK)
        if archive.gz_index is not None:
            import io

            fh.import_index(fileobj=io.BytesIO(archive.gz_index))
        return fh
    if not _warned_plain_gzip:
        _warned_plain_gzip = True
        log.warning(
            "reading %s without indexed_gzip: each member is decompressed from the start of the "
            "archive (pip install 'tessq[archive]' gives random access)",
            archive.location,
        )
    import gzip

    return gzip.GzipFile(fileobj=raw, mode="rb")


def _stream_end(fh: Any) -> int | None:
    """The decompressed size of a .tar.gz (indexed_gzip knows it once listed; plain gzip cannot say)."""
    try:
        return int(fh.seek(0, os.SEEK_END))
    except Exception:
        return None


def _export_gz_index(fh: Any) -> bytes | None:
    import io

    buf = io.BytesIO()
    try:
        fh.export_index(fileobj=buf)
    except Exception as exc:  # an index is an optimisation only
        log.debug("could not export the gzip index: %s", exc)
        return None
    return buf.getvalue()


# ---------------------------------------------------------------- byte views


class RangeView(remote.SeekableFile):
    """A read-only seekable file over bytes [offset, offset+size) of another seekable file (closed with it)."""

    def __init__(self, fh: Any, offset: int, size: int, name: str) -> None:
        self._fh, self._offset, self.size, self.name = fh, offset, size, name
        self._pos = 0
        self.closed = False

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        self._fh.seek(self._offset + self._pos)
        data = self._fh.read(n)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._fh.close()


class _Inflater:
    """A forward-only stream of one compressed ZIP member (deflated, bzip2 or LZMA): decompressed from its data
    offset in bounded steps (never more than CHUNK out per call, so a bomb stays small), never more than the
    declared size (more is refused as corrupt), CRC-32 checked at the end."""

    def __init__(self, member: ArchiveMember) -> None:
        self.member = member
        info = member.info
        self._raw = member.archive.raw()
        self._raw.seek(member.data_offset())
        self._left_in = info.csize
        self._left_out = info.size
        self._crc = 0
        self._method = info.method
        self._d: Any = None
        if info.method == "deflated":
            self._d = zlib_ng.decompressobj(-15)  # zlib-ng's inflate: ~1.35x zlib's streamed, same bytes
        elif info.method == "bzip2":
            self._d = bz2.BZ2Decompressor()
        self._buf = bytearray()  # decompressed, not yet read: at most one CHUNK beyond what a read asked

    def _read_in(self) -> bytes:
        """The member's next compressed bytes from the archive (b"" at its end or the file's)."""
        data = self._raw.read(min(CHUNK, self._left_in))
        self._left_in = self._left_in - len(data) if data else 0
        if self._d is None:  # LZMA: ZIP's own 4-byte header and the LZMA1 properties come first
            data = self._start_lzma(data)
        return data

    def _start_lzma(self, data: bytes) -> bytes:
        size = struct.unpack("<H", data[2:4])[0] if len(data) >= 4 else 0
        props = data[4 : 4 + size]
        if size != 5 or len(props) != 5 or props[0] >= 9 * 5 * 5:
            raise CorruptImageError(str(self.member), "the LZMA header of this member is missing or damaged")
        pb, rest = divmod(props[0], 45)
        lp, lc = divmod(rest, 9)
        dict_size = struct.unpack("<I", props[1:5])[0]
        spec = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}
        self._d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[spec])
        return data[4 + size :]

    def _more(self) -> bool:
        """Decompress one bounded step into the buffer; False when the data is used up or its stream ended."""
        if self._d is not None and self._d.eof:
            return False
        if self._method == "deflated":
            data = self._d.unconsumed_tail  # zlib keeps what it did not use after CHUNK out
            if not data:
                if self._left_in <= 0:
                    return False
                data = self._read_in()
        elif self._d is None or self._d.needs_input:  # bz2/lzma keep it themselves: ask with b"" for more
            if self._left_in <= 0:
                return False
            data = self._read_in()
        else:
            data = b""
        try:
            self._buf += self._d.decompress(data, CHUNK)  # never more than CHUNK out per call: bombs stay small
        except zlib_ng.error as exc:  # type: ignore[misc]  # (zlib_ng.pyi types `error` as an instance)
            raise CorruptImageError(str(self.member), f"deflate data is damaged ({exc})") from exc
        except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:  # bz2 raises OSError
            raise CorruptImageError(str(self.member), f"{self._method} data is damaged ({exc})") from exc
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left_out
        n = min(n, self._left_out)
        while len(self._buf) < n and self._more():
            pass
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self._crc = zlib_ng.crc32(data, self._crc)  # SIMD: ~5x zlib's, same value
        self._left_out -= len(data)
        if len(data) < n:
            raise CorruptImageError(
                str(self.member),
                f"{self._method} data ends {self._left_out} bytes before the member's declared size "
                f"(truncated or damaged)",
            )
        if self._left_out == 0 and self.member.info.crc is not None and self._crc != self.member.info.crc:
            raise CorruptImageError(str(self.member), "CRC-32 of the inflated member differs from the archive's")
        return data

    def close(self) -> None:
        self._raw.close()


class _TarGzStream:
    """A forward-only stream of one .tar.gz member: positioned reads of the archive's shared decompressed stream."""

    def __init__(self, member: ArchiveMember) -> None:
        self.member = member
        self._fh, self._lock = member.archive.gz_handle()
        self._pos = member.info.offset
        self._left = member.info.size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left
        n = min(n, self._left)
        if n == 0:
            return b""
        try:
            with self._lock:
                self._fh.seek(self._pos)
                data = self._fh.read(n)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
            codec = COMPRESSED_TARS.get(self.member.archive.kind, "compressed")
            raise CorruptImageError(str(self.member), f"{codec} data is damaged or ends early ({exc})") from exc
        if len(data) < n:
            raise CorruptImageError(str(self.member), "the archive ends inside this member (truncated)")
        self._pos += len(data)
        self._left -= len(data)
        return data

    def close(self) -> None:  # the shared reader stays open for the next member
        pass


class StreamView(remote.SeekableFile):
    """A seekable file over a forward-only member stream: forward seeks read on, a backward seek reopens the
    stream; the member's first HEAD_CACHE bytes stay in memory, so header re-reads cost nothing."""

    def __init__(self, opener: Callable[[], Any], size: int, name: str) -> None:
        self._opener, self.size, self.name = opener, size, name
        self._stream: Any = None
        self._spos = 0  # where the stream is
        self._pos = 0
        self._head = bytearray()
        self.closed = False

    def _read_stream(self, n: int) -> bytes:
        data = self._stream.read(n)
        if self._spos < HEAD_CACHE and len(self._head) == self._spos:
            self._head += data[: HEAD_CACHE - self._spos]
        self._spos += len(data)
        return data

    def _reopen(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream, self._spos = self._opener(), 0

    def _fill_head(self, upto: int) -> None:
        while len(self._head) < upto:
            want = len(self._head)
            if self._stream is None or self._spos > want:
                self._reopen()
            while self._spos < want:
                if not self._read_stream(min(CHUNK, want - self._spos)):
                    return
            if not self._read_stream(upto - want):
                return

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        end = self._pos + n
        if end <= HEAD_CACHE:  # headers: read ahead into the head cache, in HEAD_STEP steps
            self._fill_head(min(self.size, HEAD_CACHE, max(end, len(self._head) + HEAD_STEP)))
        if end <= len(self._head):
            data = bytes(self._head[self._pos : end])
            self._pos = end
            return data
        if self._stream is None or self._pos < self._spos:
            self._reopen()
        while self._spos < self._pos:  # skip forward
            if not self._read_stream(min(CHUNK, self._pos - self._spos)):
                break
        data = self._read_stream(n)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.closed = True


# ---------------------------------------------------------------- a member as a source


class ArchiveMember:
    """One member seen the way core/tiff see a source file (like remote.RemoteSource)."""

    def __init__(self, location: str, info: MemberInfo, archive: Archive | None = None) -> None:
        self.location, self.info = location, info
        self._archive = archive
        self._data_offset: int | None = None
        self.spool: str | None = None
        self.spool_sha256: str | None = None

    @property
    def archive(self) -> Archive:
        if self._archive is None:
            self._archive = get_archive(self.location, fresh=False)
        return self._archive

    @property
    def name(self) -> str:
        return PurePosixPath(self.info.rel).name

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def in_place(self) -> bool:
        """Whether the member's bytes are a byte range of the archive file."""
        return self.info.method in ("stored", "tar")

    def stat(self) -> MemberStat:
        """The member as listed, once the archive is checked unchanged since (SourceModifiedError if not)."""
        now = _stat_location(self.location)
        st = self.archive.st
        if (now.st_size, now.st_mtime, now.etag) != (st.st_size, st.st_mtime, st.etag):
            raise SourceModifiedError(str(self), "the archive was modified or replaced while it was being read")
        return MemberStat(self.info.size, self.info.mtime, self.info.mode)

    def exists(self) -> bool:
        try:
            self.stat()
        except (FileNotFoundError, SourceChangedError):
            return False
        return True

    def resolve(self) -> ArchiveMember:
        return self

    def check(self) -> None:
        """Raise the ImageError that makes this member unreadable, found from the listing alone."""
        info = self.info
        if info.problem:
            raise (
                UnsupportedImageError
                if info.problem.startswith(("encrypted", "compressed", "a GNU", "hard"))
                else CorruptImageError
            )(str(self), info.problem)
        if not stat_mod.S_ISREG(info.mode):
            raise UnsupportedImageError(str(self), "archive member is not a regular file (a link or a device)")

    def data_offset(self) -> int:
        """Where the member's data starts in the archive (a ZIP's local header is read for it)."""
        if self._data_offset is None:
            if self.archive.kind != "zip":
                self._data_offset = self.info.offset
            else:
                with self.archive.raw() as fh:
                    fh.seek(self.info.offset)
                    header = fh.read(30)
                if len(header) < 30 or header[:4] != b"PK\x03\x04":
                    raise CorruptImageError(str(self), "its local header in the archive is missing or damaged")
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                self._data_offset = self.info.offset + 30 + name_len + extra_len
                if self._data_offset + self.info.csize > self.archive.st.st_size:
                    raise CorruptImageError(str(self), "truncated: the archive ends inside this member")
        return self._data_offset

    def _stream(self) -> Any:
        if self.archive.kind == "zip":
            return _Inflater(self)
        return _TarGzStream(self)

    def tiff_range(self) -> tuple[Any, int, int]:
        """(what tifffile opens, the member's size, its offset in it): the spool, the archive itself, or a
        seekable view of the inflated stream."""
        self.check()
        if self.spool:
            return self.spool, self.size, 0
        if self.in_place:
            offset = self.data_offset()
            base = self.location if not remote.is_remote(self.location) else self.archive.raw()
            return base, self.size, offset
        return StreamView(self._stream, self.size, str(self)), self.size, 0

    def fallback_target(self) -> Any:
        """What Pillow/GDAL open: the spool path, else a seekable file of the member's bytes."""
        self.check()
        if self.spool:
            return self.spool
        return self.open()

    def open(self, mode: str = "rb") -> Any:
        """The member's bytes, from the start (hashing): the spool, a byte range, or the inflated stream."""
        if mode != "rb":
            raise ValueError(f"{self}: archive members are read-only")
        self.check()
        if self.spool:
            return open(self.spool, "rb")
        if self.in_place:
            return RangeView(self.archive.raw(), self.data_offset(), self.size, str(self))
        return StreamView(self._stream, self.size, str(self))

    def fetch(self, directory: str | os.PathLike[str] | None = None) -> str:
        """Copy the member's bytes into a temp file (sha256 on the way); removed by close()."""
        self.check()
        suffix = PurePosixPath(self.info.rel).suffix
        fd, name = tempfile.mkstemp(prefix=f"tessq-src-{os.getpid()}-", suffix=suffix, dir=directory)
        sha = hashing.new_hash()
        try:
            with os.fdopen(fd, "wb") as out:
                if self._inflate_at_once(out, sha):
                    self.spool, self.spool_sha256 = name, sha.hexdigest()
                    return name
                stream = self._stream() if not self.in_place else self.open()
                try:
                    left = self.size
                    while left > 0:
                        chunk = stream.read(min(CHUNK, left))
                        if not chunk:
                            raise CorruptImageError(str(self), "the archive ends inside this member (truncated)")
                        sha.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                finally:
                    stream.close()
        except BaseException:
            os.unlink(name)
            raise
        self.spool, self.spool_sha256 = name, sha.hexdigest()
        return name

    def _inflate_at_once(self, out: Any, sha: Any) -> bool:
        """A deflated ZIP member small enough to hold twice in memory is inflated in one call by libdeflate
        (imagecodecs: about 1.5x zlib's speed), into a buffer of exactly its declared size (a longer stream is
        refused, never written); False for the others (streamed by zlib, chunk by chunk)."""
        info = self.info
        if self.archive.kind != "zip" or info.method != "deflated" or info.size + info.csize > ONE_SHOT_MAX:
            return False
        import imagecodecs

        with self.archive.raw() as fh:
            fh.seek(self.data_offset())
            packed = fh.read(info.csize)
        if len(packed) != info.csize:
            raise CorruptImageError(str(self), "the archive ends inside this member (truncated)")
        try:
            data = imagecodecs.deflate_decode(packed, raw=True, out=info.size) if info.size else b""
        except Exception as exc:  # imagecodecs.DeflateError: damaged, or longer than declared
            raise CorruptImageError(
                str(self), f"deflate data is damaged or longer than its declared size ({exc})"
            ) from exc
        del packed
        if len(data) != info.size:
            raise CorruptImageError(
                str(self),
                f"deflate data ends {info.size - len(data)} bytes before the member's "
                f"declared size (truncated or damaged)",
            )
        if info.crc is not None and zlib_ng.crc32(data) != info.crc:
            raise CorruptImageError(str(self), "CRC-32 of the inflated member differs from the archive's")
        sha.update(data)
        out.write(data)
        return True

    def close(self) -> None:
        if self.spool is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool)
            self.spool = None

    def __str__(self) -> str:
        return f"{self.location}/{self.info.rel}"

    def __repr__(self) -> str:
        return f"ArchiveMember({self.location!r}, {self.info.rel!r})"


def spool_limit() -> int:
    """Members up to this size are spooled by a worker (TESSQ_ARCHIVE_SPOOL_MAX_BYTES; default the S3 disk
    budget, 8 GiB); larger ones are read in place from the inflated stream, with no disk at all."""
    return int(os.environ.get("TESSQ_ARCHIVE_SPOOL_MAX_BYTES") or defaults.S3_DISK_BUDGET_BYTES)


def should_spool(member: ArchiveMember, directory: str) -> bool:
    if member.in_place or member.size > spool_limit():
        return False
    return shutil.disk_usage(directory).free - member.size >= defaults.S3_DISK_RESERVE_BYTES


def member(location: str | os.PathLike[str], rel_path: str) -> ArchiveMember:
    """The member at `rel_path` of the archive as it is now (SourceChangedError when it is gone)."""
    archive = get_archive(location)
    info = archive.members.get(rel_path)
    if info is None:
        raise SourceChangedError(
            f"{archive.location}/{rel_path}", "no longer in the archive (removed or renamed since the scan)"
        )
    return ArchiveMember(archive.location, info, archive)


@contextlib.contextmanager
def opened_member(
    location: str | os.PathLike[str], rel_path: str, tmp_dir: str | None = None
) -> Iterator[ArchiveMember]:
    """A worker's view of one member for one image: in place when it is a byte range of the archive, else
    spooled (within the budget) to a temp file that is deleted after."""
    try:
        source = member(location, rel_path)
    except FileNotFoundError:
        raise SourceChangedError(f"{location}/{rel_path}", "the archive no longer exists") from None
    except ConfigError as exc:
        raise CorruptImageError(f"{location}/{rel_path}", str(exc)) from exc
    try:
        directory = tmp_dir or tempfile.gettempdir()
        source.check()
        if should_spool(source, directory):
            source.fetch(directory)
        yield source
    finally:
        source.close()


# ---------------------------------------------------------------- the scan's walk


@dataclass(frozen=True)
class ArchiveEntry:
    """One member shaped like the os.DirEntry that scan.candidate_row reads (name, path, stat()); picklable."""

    location: str
    info: MemberInfo

    @property
    def name(self) -> str:
        return PurePosixPath(self.info.rel).name

    @property
    def path(self) -> ArchiveMember:
        return ArchiveMember(self.location, self.info)

    def stat(self, follow_symlinks: bool = True) -> MemberStat:
        return MemberStat(self.info.size, self.info.mtime, self.info.mode)

    def is_symlink(self) -> bool:
        return stat_mod.S_ISLNK(self.info.mode)


def walk(location: str | os.PathLike[str]) -> Iterator[FolderEntries]:
    """The local walk for an archive: one FolderEntries per folder of member paths, the same rules (hidden and
    system folders not entered, JPG-only folders, symlinks not followed); nested archives are listed as
    skipped files ('nested_archive')."""
    archive = get_archive(location)
    _save(archive)  # for the workers (a .tar.gz): the scan's workspace is open by now
    for warning in archive.warnings:
        log.warning("%s", warning)
    folders: dict[str, FolderEntries] = {}
    hidden: set[str] = set()
    outputs = _tessq_outputs(archive)
    for rel in sorted(archive.members):
        info = archive.members[rel]
        parts = rel.split("/")
        skipped = next((i for i, p in enumerate(parts[:-1]) if is_skipped_dir(p)), None)
        if skipped is not None:
            hidden.add("/".join(parts[: skipped + 1]))
            continue
        folder_rel, name = "/".join(parts[:-1]), parts[-1]
        if any(folder_rel == o or folder_rel.startswith(f"{o}/") or o == "" for o in outputs):
            continue
        folder = folders.setdefault(folder_rel, FolderEntries(rel=folder_rel))
        if stat_mod.S_ISLNK(info.mode) and info.problem is None:
            if is_tiff_name(name):
                folder.skipped_files.append((name, "symlink"))
            continue
        if is_tiff_name(name):
            folder.tiffs.append(ArchiveEntry(archive.location, info))
        elif is_image_name(name):
            folder.other_images += 1
        elif archive_kind(name):
            folder.skipped_files.append((name, "nested_archive"))
    for rel in sorted(folders):
        yield folders[rel]
    for rel in sorted(hidden):
        if not any(rel.startswith(f"{h}/") for h in hidden):
            yield FolderEntries(rel=rel, skip_reason="hidden")
    for rel in sorted(outputs):
        if not any(rel.startswith(f"{o}/") or (o == "" and rel) for o in outputs):
            yield FolderEntries(rel=rel, skip_reason="tessq_output")


def _tessq_outputs(archive: Archive) -> set[str]:
    """Folders of the archive that are image folders tessq wrote (an earlier OUT packed with the input): their
    metadata.json says schema "tessq.metadata". They are not input, as in a folder tree (tree.is_tessq_output)."""
    found = set()
    for rel, info in archive.members.items():
        parts = rel.split("/")
        if parts[-1] != METADATA_NAME or info.problem or not stat_mod.S_ISREG(info.mode) or info.size > 64 << 20:
            continue
        try:
            with ArchiveMember(archive.location, info, archive).open() as fh:
                meta = json.loads(fh.read(info.size))
        except (OSError, ValueError, UnicodeDecodeError, ImageError):
            continue
        if is_tessq_metadata(meta):
            found.add("/".join(parts[:-1]))
    return found


def as_error(source: Any, exc: BaseException) -> ImageError:
    """A member read failure as an ImageError naming the member."""
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, MemoryError):
        return ImageTooLargeError(source, "out of memory reading this member")
    return CorruptImageError(source, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- the Storage


class ArchiveStorage(Storage):
    """An archive file given as IN: a read-only tree whose folders are its member paths; its bytes are read
    through the storage holding the file (a local file, or ranged GETs on S3)."""

    kind = "archive"

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = _location(location)
        self.holder: Storage = (
            remote.S3Storage(self.location) if remote.is_remote(self.location) else LocalStorage(location)
        )
        self.probe_in_processes = self.holder.probe_in_processes

    @property
    def text(self) -> str:
        return self.holder.text

    def resolved(self) -> Path | str:
        return self.holder.resolved()

    def check_output(self) -> None:
        if self.holder.local_path is not None:
            raise ConfigError(f"the output {self.text} exists and is not a folder")

    def prepare_output(self) -> None:
        self.holder.prepare_output()

    def join(self, relative: str) -> str:
        return f"{self.location}/{relative}"

    def default_output(self) -> Storage:
        out = default_output(self.location)
        return remote.S3Storage(out) if remote.is_remote(out) else LocalStorage(out)

    def check_input(self) -> None:
        check_input(self.location)

    def walk(self, *, follow_symlinks: bool = False, exclude: Sequence[Path | str] = ()) -> Iterator[FolderEntries]:
        return walk(self.location)

    def source(self, relative: str) -> ArchiveMember:
        return member(self.location, relative)

    def existing_source(self, relative: str) -> ArchiveMember | None:
        try:
            return member(self.location, relative)
        except (OSError, TessqError):
            return None

    @contextlib.contextmanager
    def opened_source(self, relative: str, tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[ArchiveMember]:
        with opened_member(self.location, relative, os.fspath(tmp_dir) if tmp_dir else None) as source:
            yield source

    def output_folder(
        self, out_rel: str, tmp_dir: str | os.PathLike[str] | None = None
    ) -> contextlib.AbstractContextManager[OutputFolder]:
        raise ConfigError(f"{self.location} is an archive: it can be read as IN, not written as OUT")

    def put_bytes(self, relative: str, data: bytes) -> None:
        raise ConfigError(f"{self.location} is an archive: it can be read as IN, not written as OUT")

    def local_copy(self, out_rel: str) -> contextlib.AbstractContextManager[Path]:
        raise ConfigError(f"{self.location} is an archive: it can be read as IN, not written as OUT")

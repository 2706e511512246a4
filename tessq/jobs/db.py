"""The status table: peewee models for jobs, folders, images and uploads, and every query on them.

This is the source of truth. The queue only delivers image ids; claiming, leases, retries, resume,
the report and the live status are all statements in this module. `open_database` is the one
place a connection target is chosen.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypedDict, TypeVar, cast

import peewee
from peewee import (
    AutoField,
    BigIntegerField,
    CharField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from tessq import storage
from tessq.errors import ConfigError
from tessq.jobs import backends
from tessq.options import SliceOptions
from tessq.redact import redact, redact_url

log = logging.getLogger("tessq")

database = peewee.DatabaseProxy()
APPLICATION_ID = 0x74657371  # PRAGMA application_id of a tessq status table: 'tesq'
DAMAGE_MARKS = ("file is not a database", "database disk image is malformed", "file is encrypted")

# Image states (see DESIGN.md, "The image state machine").
QUEUED, RUNNING, DONE, FAILED, SKIPPED, CANCELLED = "queued", "running", "done", "failed", "skipped", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, SKIPPED, CANCELLED)
SCHEMA_FILE = Path(__file__).resolve().parent / "schema.sql"


class BaseModel(Model):
    id = peewee.AutoField()  # peewee adds it anyway; declared so type checkers see Job.id, Image.id...

    class Meta:
        database = database
        legacy_table_names = False


class Job(BaseModel):
    """One input root and the settings it is cut with."""

    id = AutoField()  # peewee's implicit key, declared so type checkers see it
    input_dir = TextField(unique=True)
    output_dir = TextField()
    options = TextField()  # SliceOptions as JSON
    options_hash = CharField(max_length=64)
    created_at = DoubleField()
    updated_at = DoubleField()


class Folder(BaseModel):
    """A folder of the input tree holding images; JPG-only folders are recorded as skipped."""

    id = AutoField()  # peewee's implicit key, declared so type checkers see it
    job = ForeignKeyField(Job, backref="folders", on_delete="CASCADE")
    path = TextField()  # relative to the job's input_dir, '' for the root
    n_tiffs = IntegerField(default=0)
    n_other_images = IntegerField(default=0)
    skip_reason = CharField(max_length=64, null=True)

    class Meta:
        indexes = ((("job", "path"), True),)


class Image(BaseModel):
    """One TIFF: where it is, what state it is in, who holds it, what came out."""

    id = AutoField()  # peewee's implicit key, declared so type checkers see it
    job = ForeignKeyField(Job, backref="images", on_delete="CASCADE")
    rel_path = TextField()
    folder = TextField()
    out_rel = TextField()  # the image's output folder, relative to output_dir
    src_size = BigIntegerField()
    src_mtime = DoubleField()
    width = IntegerField(null=True)
    height = IntegerField(null=True)
    pixel_bytes = BigIntegerField(null=True)
    status = CharField(max_length=16, index=True)
    skip_reason = CharField(max_length=64, null=True)
    attempts = IntegerField(default=0)
    worker = CharField(max_length=255, null=True)  # host:pid of the lease holder
    lease_until = DoubleField(null=True, index=True)  # server clock, epoch seconds
    options_hash = CharField(max_length=64, null=True)  # settings the done output was made with
    error_type = CharField(max_length=64, null=True)
    error_message = TextField(null=True)
    queued_at = DoubleField(null=True)
    started_at = DoubleField(null=True)
    finished_at = DoubleField(null=True, index=True)
    duration_s = DoubleField(null=True)
    n_slices = IntegerField(null=True)
    bytes_out = BigIntegerField(null=True)
    verified = IntegerField(null=True)  # 1 identical, 0 not, NULL not checked
    verified_at = DoubleField(null=True)

    class Meta:
        indexes = ((("job", "rel_path"), True),)


class Upload(BaseModel):
    """One object sent to S3: what was sent, so a re-run sends only what is missing or changed."""

    id = AutoField()  # peewee's implicit key, declared so type checkers see it
    key = TextField(unique=True)  # s3://bucket/key
    local_path = TextField()
    size = BigIntegerField()
    mtime = DoubleField()
    checksum = CharField(max_length=128)
    etag = CharField(max_length=128, null=True)
    uploaded_at = DoubleField()


MODELS = (Job, Folder, Image, Upload)


# ---------------------------------------------------------------- rows out of queries

_R = TypeVar("_R")  # a row type


def _tuples(query: peewee.BaseQuery) -> Iterator[tuple[Any, ...]]:
    """The rows of `query` as tuples (peewee's stubs type .tuples() as the model query itself)."""
    return iter(cast("Iterable[tuple[Any, ...]]", query.tuples()))


def _rows(query: peewee.BaseQuery, make: Callable[..., _R]) -> list[_R]:
    return [make(*values) for values in _tuples(query)]


def _counts(query: peewee.BaseQuery) -> dict[Any, int]:
    """{key: n} of a `SELECT key, COUNT(...) ... GROUP BY key`, in the order the database returns them."""
    return {key: int(n) for key, n in _tuples(query)}


# ---------------------------------------------------------------- connection and schema


class StateLostError(ConfigError):
    """The status table was deleted, replaced or damaged under a running process: it stops, it never
    carries on with (or silently creates) another database."""

    kind = "state_lost"


def open_database(url: str) -> peewee.Database:
    """Point the models at `url` (not connected yet: connect after fork, per process)."""
    if url.startswith("sqlite:"):
        path = Path(backends.sqlite_path(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() and backends.remove_stale_journal(str(path)):  # never replay a dead file's WAL
            log.warning("%s was missing: removed its stale -wal/-shm files before creating it anew", path)
    global _held
    db = backends.make_database(url)
    database.initialize(db)
    _held = None
    return db


def sqlite_file() -> Path | None:
    """The status table's file (None for PostgreSQL)."""
    obj = database.obj
    return Path(obj.database) if isinstance(obj, peewee.SqliteDatabase) else None


def _job_folder(path: Path) -> Path:
    return path.parent.parent if path.parent.name == ".tessq" else path.parent


def damaged_message(path: Path, detail: str) -> str:
    out = _job_folder(path)
    return (
        f"{path} is damaged (not a SQLite database: {detail}): move it aside (`mv {path} {path}.damaged`) and "
        f"run `tessq run IN {out}` again to rebuild it (images whose folders in {out} are complete and match "
        f"their source and the options are kept as done; the others are cut again)"
    )


def lost_message(path: Path, what: str) -> str:
    out = _job_folder(path)
    return (
        f"the status table {path} {what} while workers ran: stopping (nothing more can be recorded). "
        f"Restore it, or start again with `tessq run IN {out}`: finished image folders in {out} that match "
        f"their source and the options are kept as done, the others are cut again"
    )


def _is_damage(exc: BaseException) -> bool:
    return any(mark in str(exc) for mark in DAMAGE_MARKS)


@dataclass
class _HeldFile:
    """The status table file this process holds (hold_database): its path, (dev, inode) and largest size seen."""

    path: Path
    identity: tuple[int, int]
    size: int


_held: _HeldFile | None = None  # the file this process holds, if any


def hold_database() -> None:
    """From now on this process (and the workers it forks) must keep using the status table file it has now:
    a file deleted, replaced or damaged under it raises StateLostError (check_database, and before every new
    connection) instead of a new empty database being created in its place. For long-running processes."""
    global _held
    path = sqlite_file()
    if path is None:
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StateLostError(lost_message(path, "was deleted")) from None
    _held = _HeldFile(path, (st.st_dev, st.st_ino), st.st_size)
    database.obj.connect_check = check_database


def release_database() -> None:
    """The end of hold_database (the daemon stopped): this process may open or create the file again."""
    global _held
    _held = None
    if isinstance(database.obj, backends._SqliteDatabase):
        database.obj.connect_check = None


def check_database() -> None:
    """Raise StateLostError if the held status table file is gone, another file, truncated or not SQLite."""
    held = _held
    if held is None:
        return
    try:
        st = os.stat(held.path)
    except FileNotFoundError:
        raise StateLostError(lost_message(held.path, "was deleted")) from None
    if (st.st_dev, st.st_ino) != held.identity:
        raise StateLostError(lost_message(held.path, "was replaced by another file"))
    # stat only, never open(): closing any descriptor of the file would drop this process's SQLite locks (POSIX
    # locks are per process), and another connection closing could then take itself for the last one and
    # delete the WAL under us. Garbage written in place shows up as "file is not a database" (database_problem).
    if st.st_size < held.size or st.st_size == 0:
        raise StateLostError(lost_message(held.path, f"was truncated ({st.st_size} bytes, {held.size} before)"))
    held.size = st.st_size  # SQLite never shrinks the file here (no VACUUM, no auto_vacuum)


def check_intact() -> None:
    """Raise StateLostError unless the held SQLite status table passes PRAGMA quick_check: pages cut away by a
    truncation that SQLite's checkpoints then grew back past the size check_database knew read as zeros, and
    only a read of every page tells. Once, as a drain ends (it reads the whole file)."""
    held = _held
    if held is None:
        return
    check_database()
    rows = database.obj.execute_sql("PRAGMA quick_check").fetchall()
    if [row[0] for row in rows] != ["ok"]:
        raise StateLostError(lost_message(held.path, f"became unreadable (quick_check: {rows[0][0]})"))


def database_problem(exc: BaseException) -> StateLostError | None:
    """What a database error raised in a long-running process means: the held file is lost or damaged (an error
    to stop on), or None (something else, e.g. a lock: retry)."""
    try:
        check_database()
    except StateLostError as lost:
        return lost
    if _held is not None and (_is_damage(exc) or "no such table" in str(exc)):
        return StateLostError(lost_message(_held.path, f"became unreadable ({exc})"))
    return None


def schema_statements(dialect: str) -> list[str]:
    """The DDL in schema.sql, adapted for `dialect` ('sqlite' or 'postgresql')."""
    text = SCHEMA_FILE.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
    statements = [s.strip() for s in body.split(";") if s.strip()]
    if dialect == "postgresql":
        statements = [s.replace("INTEGER NOT NULL PRIMARY KEY", "SERIAL NOT NULL PRIMARY KEY") for s in statements]
    return statements


def create_schema() -> None:
    """Create every table and index from alembic_free_schema.sql (idempotent). A SQLite file that is not a
    database (truncated, overwritten) or is another program's database is refused with a ConfigError saying
    what to do, never a traceback."""
    path = sqlite_file()
    if path is None:
        with database.connection_context(), database.atomic():
            # concurrent CREATE TABLE IF NOT EXISTS races on pg_type without it
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (backends.SCHEMA_LOCK_KEY,))
            for statement in schema_statements("postgresql"):
                database.execute_sql(statement)
        return
    try:
        with database.connection_context():
            app_id = database.execute_sql("PRAGMA application_id").fetchone()[0]
            if app_id not in (0, APPLICATION_ID):
                raise ConfigError(
                    f"{path} is not a tessq status table (application_id {app_id:#x}): move it aside "
                    f"and run `tessq run IN {_job_folder(path)}` again"
                )
            with database.atomic():
                for statement in schema_statements("sqlite"):
                    database.execute_sql(statement)
            if app_id == 0:  # marks the file as a tessq status table; a read-only one stays unmarked
                with contextlib.suppress(peewee.OperationalError):
                    database.execute_sql(f"PRAGMA application_id = {APPLICATION_ID}")
    except peewee.DatabaseError as exc:
        if _is_damage(exc):
            database.close()
            raise ConfigError(damaged_message(path, str(exc))) from None
        raise


_UNWRITABLE = (
    "readonly database",
    "read-only file system",
    "unable to open database file",
    "permission denied",
    "disk i/o error",
)


def storage_problem(
    exc: BaseException,
    db_url: str | None = None,
    where: str | os.PathLike[str] | None = None,
) -> Exception | None:
    """A one-line ConfigError saying what to fix, for a failure to open or write the status database or the
    queue (a read-only or unwritable workspace, an unreachable PostgreSQL or Redis); None for anything else.
    `db_url` and `where` (the workspace) name what was being opened."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    kinds = {f"{type(e).__module__}.{type(e).__name__}" for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    remote_db = db_url is not None and backends.is_postgres(db_url)
    connection = any(k.endswith(("OperationalError", "InterfaceError")) for k in kinds) or any(
        k.startswith(("redis.", "psycopg")) and "Connection" in k for k in kinds
    )
    if remote_db and connection and ("connect" in text or "server" in text or "timeout" in text):
        return ConfigError(
            f"cannot reach the status database {redact_url(db_url or '')}: {first}; check that"
            " PostgreSQL runs and accepts connections there, or fix TESSQ_DB_URL"
        )
    if any(k.startswith("redis.") for k in kinds):
        return ConfigError(f"cannot reach the queue (TESSQ_QUEUE_URL): {first}; check that Redis runs there")
    errno_rofs = any(isinstance(e, OSError) and e.errno in (13, 30, 1) for e in chain)  # EACCES, EROFS, EPERM
    if errno_rofs or (connection and any(m in text for m in _UNWRITABLE)):
        place = f"the workspace {where}" if where else "the tessq workspace"
        return ConfigError(
            f"{place} cannot be written ({first}): tessq keeps its status table and queue there;"
            " make it writable (a read-only mount, a full disk, permissions), or point --workspace"
            " / TESSQ_WORKSPACE at a writable folder"
        )
    return None


@contextmanager
def session() -> Iterator[peewee.DatabaseProxy]:
    """This thread's connection (peewee connections are thread-local), opened on first use and kept:
    connecting costs more than the statements (SQLite pragmas, a WAL checkpoint on close, a PostgreSQL
    handshake). Statements autocommit, so an idle connection holds no lock and never stalls a checkpoint.
    A connection that fails is dropped and replaced on the next use. Processes must not carry one across
    fork: the worker daemon closes its own before every fork (worker._Environment.create_process), and forked
    workers discard the inherited one."""
    database.connect(reuse_if_open=True)
    try:
        yield database
    except (peewee.OperationalError, peewee.InterfaceError):
        database.close()
        raise


def now_expr() -> peewee.Node:
    return backends.server_now(database.obj)


def server_time() -> float:
    """The database server's clock (epoch seconds): the clock leases are measured on."""
    sql, params = database.get_sql_context().sql(peewee.Select(columns=[now_expr()])).query()
    return float(database.execute_sql(sql, params).fetchone()[0])


def hostname() -> str:
    """This machine's name in worker ids: TESSQ_HOSTNAME when set (distinct names for containers sharing a
    hostname, fake machines in tests), else the host name."""
    return os.environ.get("TESSQ_HOSTNAME") or socket.gethostname()


def worker_identity() -> str:
    return f"{hostname()}:{os.getpid()}"


def local_workers(workers: list[str]) -> dict[str, int]:
    """The worker ids of `workers` that are processes of this host, with their pids."""
    host = hostname()
    local = {}
    for w in workers:
        h, _, pid = w.rpartition(":")
        if h == host and pid.isdigit():
            local[w] = int(pid)
    return local


# ---------------------------------------------------------------- jobs, folders, scan records


SCAN_LOCK_KEY = 0x7465_7373  # PostgreSQL advisory lock taken by every scan's write transaction ("tess")


@contextmanager
def scan_transaction() -> Iterator[None]:
    """One write transaction around a scan's reads and writes of the job's rows, serialising concurrent scans:
    on SQLite the IMMEDIATE BEGIN takes the write lock before the first read; on PostgreSQL (read committed,
    where a read sees no uncommitted insert) a transaction-scoped advisory lock does."""
    with database.atomic():
        if not isinstance(database.obj, peewee.SqliteDatabase):
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCAN_LOCK_KEY,))
        yield


def same_output(a: str, b: str) -> bool:
    """Whether two output locations are one folder, or one inside the other (trailing slashes ignored)."""
    a, b = a.rstrip("/") or "/", b.rstrip("/") or "/"
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def upsert_job(input_dir: str, output_dir: str, options: dict[str, Any], options_hash: str) -> Job:
    """The job of `input_dir`, created or given the new output and settings. An output folder another job
    of this status table writes to (the same, or one inside the other) is refused: the two jobs' images
    would overwrite each other's folders."""
    now = time.time()
    with database.atomic():
        for other_input, other_output in _tuples(
            Job.select(Job.input_dir, Job.output_dir).where(Job.input_dir != input_dir)
        ):
            if same_output(output_dir, other_output):
                raise ConfigError(
                    f"output folder {output_dir} is already written by the job of {other_input}"
                    f" (its output is {other_output}): two jobs in one output folder would overwrite each"
                    f" other's images; choose another --out"
                )
        job = Job.get_or_none(Job.input_dir == input_dir)
        if job is None:
            return Job.create(
                input_dir=input_dir,
                output_dir=output_dir,
                options=json.dumps(options, sort_keys=True),
                options_hash=options_hash,
                created_at=now,
                updated_at=now,
            )
        job.output_dir, job.options, job.options_hash, job.updated_at = (
            output_dir,
            json.dumps(options, sort_keys=True),
            options_hash,
            now,
        )
        job.save()
        return job


def replace_folders(job_id: int, folders: Iterable[dict[str, Any]]) -> None:
    rows = [dict(f, job=job_id) for f in folders]
    with database.atomic():
        Folder.delete().where(Folder.job == job_id).execute()
        for batch in peewee.chunked(rows, 200):
            Folder.insert_many(batch).execute()


@dataclass
class ScanOutcome:
    new_queued: list[int]
    requeued: list[int]
    unchanged_done: int
    unchanged_other: int


def same_source(size: int, mtime: float, other_size: int, other_mtime: float) -> bool:
    """Whether two (size, mtime) records describe the same file state (mtime through a float column)."""
    return size == other_size and abs(mtime - other_mtime) <= 1e-6


def record_candidates(
    job_id: int, candidates: list[dict[str, Any]], options_hash: str, adopt: OutputCheck | None = None
) -> ScanOutcome:
    """Insert or update one row per candidate TIFF; return the ids that now need a queue message.

    A done image is redone only if its source size/mtime or the job settings changed; a queued or
    running one is left alone (its message is already in flight); failed ones wait for `retry`
    unless their source changed. With `adopt`, a new row whose output folder is already complete in OUT is
    recorded as done (_adopt_done); without it, every new row is inserted as the scan found it.
    """
    outcome = ScanOutcome([], [], 0, 0)
    to_insert: list[dict[str, Any]] = []
    # The rows are read inside the write transaction (IMMEDIATE on SQLite; scan_transaction on PostgreSQL):
    # read outside it, a concurrent scan could insert the same rows between this read and our insert.
    with database.atomic():
        existing = {
            row.rel_path: row
            for row in Image.select(
                Image.id,
                Image.rel_path,
                Image.out_rel,
                Image.status,
                Image.src_size,
                Image.src_mtime,
                Image.options_hash,
            ).where(Image.job == job_id)
        }
        claimed = _claimed_outputs(candidates)
        for cand in candidates:
            row = existing.get(cand["rel_path"])
            if row is None:
                to_insert.append(dict(cand, job=job_id))
                continue
            changed = not same_source(row.src_size, row.src_mtime, cand["src_size"], cand["src_mtime"])
            displaced = _displaced(row.out_rel, cand.get("out_rel"), claimed)
            if displaced and row.status == QUEUED:  # not cut yet: it will be, under its new name
                Image.update(out_rel=cand["out_rel"]).where(Image.id == row.id).execute()
            stale = row.status == DONE and (row.options_hash != options_hash or displaced)
            changed = changed or (displaced and row.status == FAILED)
            # unchanged_other counts only images whose header is fine and that wait in the queue, run, or
            # failed earlier: a skipped or unreadable file is counted once, by the scan summary's own rows.
            if cand["status"] == SKIPPED:
                if row.status in (QUEUED, RUNNING) and not changed:
                    continue
                Image.update(**_fresh(cand)).where(Image.id == row.id).execute()
                continue
            if row.status in (QUEUED, RUNNING) or (row.status == DONE and not changed and not stale):
                if row.status == DONE:
                    outcome.unchanged_done += 1
                elif cand["status"] == QUEUED:
                    outcome.unchanged_other += 1
                continue
            if row.status == FAILED and not changed:
                if cand["status"] == QUEUED:
                    outcome.unchanged_other += 1
                continue
            Image.update(**_fresh(cand)).where(Image.id == row.id).execute()
            if cand["status"] == QUEUED:
                outcome.requeued.append(row.id)
        if to_insert:
            outcome.unchanged_done += _adopt_done(job_id, to_insert, options_hash, adopt) if adopt else 0
            # ids only grow: the rows inserted now are this job's rows above the largest id before the insert
            before = Image.select(peewee.fn.MAX(Image.id)).scalar() or 0
            _insert_images(to_insert)
            outcome.new_queued.extend(
                image_id
                for (image_id,) in _tuples(
                    Image.select(Image.id)
                    .where((Image.job == job_id) & (Image.id > before) & (Image.status == QUEUED))
                    .order_by(Image.id)
                )
            )
    return outcome


def _claimed_outputs(candidates: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The output paths this scan's images use, and every folder above them (lower case)."""
    images: set[str] = set()
    folders: set[str] = set()
    for cand in candidates:
        rel = cand.get("out_rel")
        if rel and cand["status"] != FAILED:
            path = PurePosixPath(rel.lower())
            images.add(str(path))
            folders.update(str(p) for p in path.parents if str(p) != ".")
    return images, folders


def _displaced(stored: str, wanted: str | None, claimed: tuple[set[str], set[str]]) -> bool:
    """Whether an image's stored output path (named by an earlier scan) is now another image's, or a folder
    holding other images' folders, or lies inside another image's folder: it is cut again under its new,
    unique name (the old folder is left alone, never deleted)."""
    if not wanted or stored == wanted:
        return False
    images, folders = claimed
    path = PurePosixPath(stored.lower())
    return str(path) in images or str(path) in folders or any(str(p) in images for p in path.parents)


@dataclass(frozen=True)
class OutputCheck:
    """How a scan recognises an image folder already made in OUT from a row's source with the job's options:
    the options fingerprint (settings.options_fingerprint) and the folder check in its "stat" mode
    (scan.output_problem). Given by the scan: both live above this module."""

    fingerprint: Callable[[SliceOptions], str]
    folder_problem: Callable[[Path, int, int], str | None]


def _adopt_done(job_id: int, rows: list[dict[str, Any]], options_hash: str, check: OutputCheck) -> int:
    """New rows whose output folder is already complete in OUT (a status table deleted, damaged or restored from an
    older copy, then rebuilt by a scan) become done in place instead of being cut again: the folder's
    batch_metadata.json names this input, the same source size and mtime and the same cut options, its
    metadata.json names this source, and its slice files are as many and as large as metadata.json says (the
    scan's own "stat" check, which --check-output then repeats). Returns how many were adopted."""
    job = Job.get_by_id(job_id)
    out = storage.at(job.output_dir).local_path
    if out is None or not out.is_dir() or job.input_dir in _REDO_ALL:
        return 0
    adopted = 0
    for row in rows:
        if row.get("status") != QUEUED:
            continue
        done = _complete_folder(job, out / row["out_rel"], row, options_hash, check)
        if done is not None:
            row.update(done)
            adopted += 1
    if adopted:
        log.warning(
            "kept %d image folder(s) already complete in %s as done (their metadata matches the source "
            "and the options)",
            adopted,
            out,
        )
    return adopted


def _complete_folder(
    job: Job, folder: Path, row: dict[str, Any], options_hash: str, check: OutputCheck
) -> dict[str, Any] | None:
    """The done-row fields of an output folder made from this very source with these options, else None."""
    try:
        batch = json.loads((folder / "batch_metadata.json").read_bytes())
        meta = json.loads((folder / "metadata.json").read_bytes())
        made_by = batch["job"]
        totals = meta["totals"]
        same = (
            made_by["input_dir"] == job.input_dir
            and meta["source"]["relative_path"] == row["rel_path"]
            and same_source(int(batch["source_size"]), float(batch["source_mtime"]), row["src_size"], row["src_mtime"])
        )
        if not same:
            return None
        if check.fingerprint(SliceOptions.from_dict(made_by["options"])) != options_hash:
            return None
        n_slices, bytes_out = int(totals["slices"]), int(totals["bytes_out"])
        finished = (folder / "metadata.json").stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    except Exception:  # options this version cannot read: cut it again
        return None
    if check.folder_problem(folder, n_slices, bytes_out) is not None:
        return None
    timings = batch.get("timings") or {}
    fields = {  # (width, height and pixel_bytes: the row has them from the header the scan just read)
        "status": DONE,
        "n_slices": n_slices,
        "bytes_out": bytes_out,
        "options_hash": options_hash,
        "worker": batch.get("worker"),
        "attempts": int(batch.get("attempt") or 1),
        "started_at": batch.get("started_at"),
        "finished_at": finished,
        "duration_s": timings.get("total_s"),
    }
    return {k: v for k, v in fields.items() if v is not None}


def _insert_images(rows: list[dict[str, Any]]) -> None:
    """Insert new image rows with one compiled statement per set of columns (peewee's insert_many compiles
    every row again: 50 us each, 5 s of a 100,000-file scan)."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_columns.setdefault(tuple(sorted(row)), []).append(row)
    for columns, group in by_columns.items():
        fields = [Image._meta.fields[name] for name in columns]
        insert = Statement(functools.partial(_insert_of, fields))
        insert.execute_many({f.name: f.db_value(row[f.name]) for f in fields} for row in group)


def _insert_of(fields: list[peewee.Field]) -> peewee.Query:
    return Image.insert({f: slot(f.name) for f in fields})


@dataclass(frozen=True)
class KnownHeader:
    """What an earlier scan (or cut) read from a file's header, valid while its size and mtime match."""

    src_size: int
    src_mtime: float
    width: int
    height: int
    pixel_bytes: int

    def matches(self, st: os.stat_result) -> bool:
        return same_source(self.src_size, self.src_mtime, st.st_size, st.st_mtime)


def known_headers(input_dir: str) -> dict[str, KnownHeader]:
    """rel_path -> KnownHeader for the job's images whose header was read successfully."""
    query = (
        Image.select(Image.rel_path, Image.src_size, Image.src_mtime, Image.width, Image.height, Image.pixel_bytes)
        .join(Job)
        .where(
            (Job.input_dir == input_dir)
            & Image.width.is_null(False)
            & Image.height.is_null(False)
            & Image.pixel_bytes.is_null(False)
        )
    )
    return {rel_path: KnownHeader(*fields) for rel_path, *fields in _tuples(query)}


_REDO_ALL: set[str] = set()  # inputs this process forgot on purpose (--no-resume): their folders are not adopted


def forget_job(input_dir: str) -> None:
    Job.delete().where(Job.input_dir == input_dir).execute()
    _REDO_ALL.add(input_dir)


def forget_missing(job_id: int, seen: set[str]) -> int:
    """Rows whose source is gone from the tree stop counting (done ones keep their output)."""
    gone = [
        r.id
        for r in Image.select(Image.id, Image.rel_path).where((Image.job == job_id) & (Image.status != DONE))
        if r.rel_path not in seen
    ]
    for batch in peewee.chunked(gone, 500):
        Image.update(status=CANCELLED, skip_reason="source_removed", lease_until=None).where(
            Image.id.in_(batch)
        ).execute()
    return len(gone)


def _fresh(cand: dict[str, Any]) -> dict[str, Any]:
    """Column values resetting a row to what a new scan found."""
    reset = {
        "attempts": 0,
        "worker": None,
        "lease_until": None,
        "error_type": None,
        "error_message": None,
        "started_at": None,
        "finished_at": None,
        "duration_s": None,
        "verified": None,
        "verified_at": None,
    }
    reset.update({k: v for k, v in cand.items() if k not in ("job", "rel_path")})
    return reset


# ---------------------------------------------------------------- the claim, the lease, the finish


@dataclass
class Claim:
    image_id: int
    attempt: int
    worker: str

    def slots(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "attempt": self.attempt, "worker": self.worker}


class _Slot:
    """Where a value goes in a statement compiled once (`Statement`)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def slot(name: str) -> peewee.Value:
    """A named parameter of a `Statement`, filled in on every run (no field conversion: pass db values)."""
    return peewee.Value(_Slot(name), converter=False)


_DRIVER_ERRORS: peewee.ExceptionWrapper = peewee.__exception_wrapper__  # type: ignore[attr-defined]  # not in the stubs
# (what turns the driver's errors into peewee's: execute_sql uses it; executemany below goes to the cursor directly)


class Statement:
    """A peewee query compiled to SQL once per kind of database, then run with fresh values.

    Compiling a query costs ~0.45 ms of Python, running the SQL ~0.02 ms; a worker runs five statements per
    image and the drain check one every 50 ms, so the hot path compiles once and binds values by name."""

    def __init__(self, build: Callable[[], peewee.Query]) -> None:
        self._build = build
        self._compiled: dict[type, tuple[str, list[Any]]] = {}

    def sql(self) -> tuple[str, list[Any]]:
        kind = type(database.obj)
        if kind not in self._compiled:
            self._compiled[kind] = self._build().sql()
        return self._compiled[kind]

    def execute(self, **values: Any) -> Any:
        """The DB-API cursor (rows to fetch, rowcount for writes)."""
        sql, params = self.sql()
        return database.execute_sql(sql, self._bind(params, values))

    def execute_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """The statement once per row of values, in one round of the driver's executemany."""
        sql, params = self.sql()
        with _DRIVER_ERRORS:
            database.cursor().executemany(sql, [self._bind(params, values) for values in rows])

    @staticmethod
    def _bind(params: list[Any], values: dict[str, Any]) -> list[Any]:
        return [values[p.name] if isinstance(p, _Slot) else p for p in params]


def _lease_from_now() -> peewee.Node:
    return peewee.NodeList((now_expr(), peewee.SQL("+"), slot("lease_s")))


def _fenced() -> peewee.Expression:
    """This claim's row, only while it still holds it (same worker, same attempt, still running)."""
    return (
        (Image.id == slot("image_id"))
        & (Image.worker == slot("worker"))
        & (Image.attempts == slot("attempt"))
        & (Image.status == RUNNING)
    )


_CLAIM = Statement(
    lambda: (
        Image.update(
            status=RUNNING,
            attempts=Image.attempts + 1,
            worker=slot("worker"),
            lease_until=_lease_from_now(),
            started_at=now_expr(),
        )
        .where(
            (Image.id == slot("image_id"))
            & ((Image.status == QUEUED) | ((Image.status == RUNNING) & (Image.lease_until < now_expr())))
        )
        .returning(Image.id, Image.attempts)
    )
)
_RENEW = Statement(lambda: Image.update(lease_until=_lease_from_now()).where(_fenced()))
_LEASE_LEFT = Statement(
    lambda: Image.select(peewee.NodeList((Image.lease_until, peewee.SQL("-"), now_expr()))).where(_fenced())
)
_FINISH_DONE = Statement(
    lambda: Image.update(
        status=DONE,
        lease_until=None,
        finished_at=now_expr(),
        n_slices=slot("n_slices"),
        bytes_out=slot("bytes_out"),
        duration_s=slot("duration_s"),
        options_hash=slot("options_hash"),
        pixel_bytes=slot("pixel_bytes"),
        error_type=None,
        error_message=None,
        # the (size, mtime) the output was made from, when known; else what the scan saw stays
        src_size=peewee.fn.COALESCE(slot("src_size"), Image.src_size),
        src_mtime=peewee.fn.COALESCE(slot("src_mtime"), Image.src_mtime),
        width=peewee.fn.COALESCE(slot("width"), Image.width),
        height=peewee.fn.COALESCE(slot("height"), Image.height),
        # ... and only while the job's settings are still those the image was cut with (a scan may change them)
    ).where(_fenced() & Image.job.in_(Job.select(Job.id).where(Job.options_hash == slot("options_hash"))))
)
_FINISH_FAILED = Statement(
    lambda: Image.update(
        status=FAILED,
        lease_until=None,
        finished_at=now_expr(),
        error_type=slot("error_type"),
        error_message=slot("message"),
        duration_s=slot("duration_s"),
    ).where(_fenced())
)
_RELEASE = Statement(
    lambda: Image.update(
        status=QUEUED,
        lease_until=None,
        worker=None,
        error_type=slot("error_type"),
        error_message=slot("message"),
        queued_at=now_expr(),
        attempts=Image.attempts - slot("refund"),
    ).where(_fenced())
)
_IMAGE_WITH_JOB = Statement(lambda: Image.select(Image, Job).join(Job).where(Image.id == slot("image_id")))
_OUTSTANDING = Statement(lambda: Image.select(peewee.fn.COUNT(Image.id)).where(Image.status.in_([QUEUED, RUNNING])))
_WAITING = Statement(lambda: Image.select(peewee.fn.COUNT(Image.id)).where(Image.status == QUEUED))


def claim(image_id: int, worker: str, lease_s: float) -> Claim | None:
    """Atomically take a queued (or lease-expired) image; None if someone else has it or it is finished."""
    rows = _CLAIM.execute(image_id=image_id, worker=worker, lease_s=lease_s).fetchall()
    if not rows:
        return None
    return Claim(rows[0][0], rows[0][1], worker)


def renew_lease(c: Claim, lease_s: float) -> bool:
    """Heartbeat: push the lease forward; False means the lease was lost (reaped and given away)."""
    return _RENEW.execute(**c.slots(), lease_s=lease_s).rowcount == 1


def lease_left(c: Claim) -> float | None:
    """Seconds left on this claim's lease by the server's clock (a read: no write lock); None if it is lost."""
    row = _LEASE_LEFT.execute(**c.slots()).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def finish_done(
    c: Claim,
    *,
    n_slices: int,
    bytes_out: int,
    duration_s: float,
    options_hash: str,
    pixel_bytes: int | None,
    source_state: tuple[int, float] | None = None,
    dimensions: tuple[int, int] | None = None,
) -> bool:
    """Mark done (fenced on the claim, and on `options_hash` still being the job's). source_state = the
    (size, mtime) the output was made from and dimensions its
    (width, height), so the next scan compares against what was actually cut, and may trust the row's
    header fields for a file whose size and mtime still match (scan.probe_all)."""
    src_size, src_mtime = source_state if source_state is not None else (None, None)
    width, height = dimensions if dimensions is not None else (None, None)
    cursor = _FINISH_DONE.execute(
        **c.slots(),
        n_slices=n_slices,
        bytes_out=bytes_out,
        duration_s=duration_s,
        options_hash=options_hash,
        pixel_bytes=pixel_bytes,
        src_size=src_size,
        src_mtime=src_mtime,
        width=width,
        height=height,
    )
    return cursor.rowcount == 1


def job_options_hash(job_id: int) -> str | None:
    """The job's current settings fingerprint (a scan with other options changes it)."""
    return Job.select(Job.options_hash).where(Job.id == job_id).scalar()


def finish_failed(c: Claim, *, error_type: str, message: str, duration_s: float | None) -> bool:
    cursor = _FINISH_FAILED.execute(**c.slots(), error_type=error_type, message=message, duration_s=duration_s)
    return cursor.rowcount == 1


def release_for_retry(c: Claim, *, error_type: str | None, message: str | None) -> bool:
    """Give the image back to the queue after a transient error, keeping the error; the attempt counts."""
    return _RELEASE.execute(**c.slots(), error_type=error_type, message=message, refund=0).rowcount == 1


def release_interrupted(c: Claim) -> bool:
    """Give the image back to the queue because the worker is being stopped: the attempt does not count."""
    return _RELEASE.execute(**c.slots(), error_type=None, message=None, refund=1).rowcount == 1


def image(image_id: int) -> Image | None:
    """The image row with its job (`row.job`), as model instances."""
    values = _IMAGE_WITH_JOB.execute(image_id=image_id).fetchone()
    if values is None:
        return None
    n = len(Image._meta.sorted_fields)
    row = _model_from(Image, values[:n])
    row.job = _model_from(Job, values[n:])
    return row


def _model_from(model: type[peewee.Model], values: tuple[Any, ...]) -> Any:
    fields = model._meta.sorted_fields
    return model(**{f.name: f.python_value(v) for f, v in zip(fields, values, strict=True)})


# ---------------------------------------------------------------- recovery: reaper and repair


def reap_expired(
    max_attempts: int, dead_workers: Iterable[str] = (), *, interrupted: Iterable[str] = ()
) -> tuple[list[int], list[int]]:
    """Running rows whose lease expired (or whose owner is known dead): back to queued, or failed
    once they used every attempt. Returns (requeued ids, failed ids). Safe to run on many machines:
    each UPDATE is guarded by the state it reads.

    Rows of `interrupted` workers (found dead as a daemon starts: their whole run was stopped from outside,
    by kill -9 of the tree, a kernel restart or a reboot) go back with their attempt refunded, so stopping
    a run again and again never fails the image it happened to be cutting."""
    now = now_expr()
    stopped = list(interrupted)
    refunded = (
        _requeue((Image.status == RUNNING) & Image.worker.in_(stopped) & (Image.attempts > 0), refund=True)
        if stopped
        else []
    )
    dead = list(dead_workers) + stopped  # a row the refund did not take is reaped as usual
    lost = (Image.status == RUNNING) & (
        (Image.lease_until < now) | (Image.worker.in_(dead) if dead else peewee.SQL("0=1"))
    )
    failed = [
        r.id
        for r in Image.update(
            status=FAILED,
            lease_until=None,
            finished_at=now,
            error_type="lost",
            error_message=peewee.fn.COALESCE(Image.error_message, "worker died or lost its lease on every attempt"),
        )
        .where(lost & (Image.attempts >= max_attempts))
        .returning(Image.id)
        .execute()
    ]
    requeued = _requeue(lost & (Image.attempts < max_attempts), refund=False)
    return refunded + requeued, failed


def _requeue(rows: peewee.Expression, *, refund: bool) -> list[int]:
    """Running rows back to queued, without a holder; with `refund` their last attempt does not count."""
    values: dict[peewee.Field, Any] = {
        Image.status: QUEUED,
        Image.lease_until: None,
        Image.worker: None,
        Image.queued_at: now_expr(),
    }
    if refund:
        values[Image.attempts] = Image.attempts - 1
    return [r.id for r in Image.update(values).where(rows).returning(Image.id).execute()]


def running_workers() -> list[str]:
    """The lease holders of the running images."""
    return [
        r.worker for r in Image.select(Image.worker).where(Image.status == RUNNING).distinct() if r.worker is not None
    ]


def queued_ids_with_size() -> dict[int, int | None]:
    """Queued image ids and their raw pixel size (the queue's time limit scales with it)."""
    query = Image.select(Image.id, Image.pixel_bytes).where(Image.status == QUEUED).order_by(Image.id)
    return {r.id: r.pixel_bytes for r in query}


def requeue_failed(error_types: Iterable[str] | None = None, job_id: int | None = None) -> list[int]:
    cond = Image.status == FAILED
    if job_id is not None:
        cond &= Image.job == job_id
    types = list(error_types or [])
    if types:
        cond &= Image.error_type.in_(types)
    return [
        r.id
        for r in Image.update(status=QUEUED, attempts=0, worker=None, lease_until=None, queued_at=now_expr())
        .where(cond)
        .returning(Image.id)
        .execute()
    ]


def done_outputs(job_id: int) -> list[tuple[int, str, str, int | None, int | None, int | None]]:
    """(id, rel_path, out_rel, n_slices, bytes_out, verified) of the job's done images (the scan checks them)."""
    return list(
        _tuples(
            Image.select(Image.id, Image.rel_path, Image.out_rel, Image.n_slices, Image.bytes_out, Image.verified)
            .where((Image.job == job_id) & (Image.status == DONE))
            .order_by(Image.id)
        )
    )


def requeue_done(image_ids: Iterable[int]) -> list[int]:
    """Done images back to queued with fresh attempts (their output is missing, damaged or verified different);
    guarded by the state, so an image a worker is redoing right now is left to it."""
    ids = list(image_ids)
    requeued: list[int] = []
    for batch in peewee.chunked(ids, 500):
        requeued.extend(
            r.id
            for r in Image.update(
                status=QUEUED,
                attempts=0,
                worker=None,
                lease_until=None,
                queued_at=now_expr(),
                verified=None,
                verified_at=None,
                error_type=None,
                error_message=None,
            )
            .where(Image.id.in_(batch) & (Image.status == DONE))
            .returning(Image.id)
            .execute()
        )
    return requeued


def forget_done(image_ids: Iterable[int]) -> list[int]:
    """Done images whose source and output are both gone: cancelled as 'source_removed' (as forget_missing
    does for the unfinished ones), so nothing expects their folder any more."""
    ids = list(image_ids)
    forgotten: list[int] = []
    for batch in peewee.chunked(ids, 500):
        forgotten.extend(
            r.id
            for r in Image.update(status=CANCELLED, skip_reason="source_removed", lease_until=None)
            .where(Image.id.in_(batch) & (Image.status == DONE))
            .returning(Image.id)
            .execute()
        )
    return forgotten


def different_ids(job_id: int | None = None) -> list[int]:
    """Done images (of one job, if given) `tessq verify` recorded as not identical to their source."""
    cond = (Image.status == DONE) & (Image.verified == 0)
    if job_id is not None:
        cond &= Image.job == job_id
    return [i for (i,) in _tuples(Image.select(Image.id).where(cond))]


def outstanding() -> int:
    """Images not yet finished: queued or running."""
    return int(_OUTSTANDING.execute().fetchone()[0])


def waiting() -> int:
    """Images queued and not yet claimed by any worker."""
    return int(_WAITING.execute().fetchone()[0])


def running_here() -> int:
    """Workers of this host holding an image (one holding a cut image and its commit counts once)."""
    return len(local_workers(running_workers()))


# ---------------------------------------------------------------- verification and uploads


def done_images(job_id: int | None = None) -> list[Image]:
    cond = Image.status == DONE
    if job_id is not None:
        cond &= Image.job == job_id
    return list(Image.select(Image, Job).join(Job).where(cond).order_by(Image.job, Image.rel_path))


def record_verification(image_id: int, identical: bool) -> None:
    Image.update(verified=1 if identical else 0, verified_at=now_expr()).where(Image.id == image_id).execute()


class UploadTotals(TypedDict):
    objects: int
    bytes: int


class UploadLedger:
    """What has been uploaded, kept in the status database (see upload.py)."""

    def get(self, key: str) -> Upload | None:
        with session():
            return Upload.get_or_none(Upload.key == key)

    def record(self, key: str, local_path: str, size: int, mtime: float, checksum: str, etag: str | None) -> None:
        with session():
            Upload.insert(
                key=key,
                local_path=local_path,
                size=size,
                mtime=mtime,
                checksum=checksum,
                etag=etag,
                uploaded_at=time.time(),
            ).on_conflict(
                conflict_target=[Upload.key],
                update={
                    Upload.local_path: local_path,
                    Upload.size: size,
                    Upload.mtime: mtime,
                    Upload.checksum: checksum,
                    Upload.etag: etag,
                    Upload.uploaded_at: time.time(),
                },
            ).execute()

    def summary(self, local_prefix: str | None = None) -> UploadTotals:
        """Objects and bytes uploaded; with `local_prefix`, only files from under that folder (one job's OUT)."""
        with session():
            row = Upload.select(peewee.fn.COUNT(Upload.id), peewee.fn.COALESCE(peewee.fn.SUM(Upload.size), 0))
            if local_prefix is not None:
                prefix = local_prefix.rstrip("/") + "/"
                row = row.where(peewee.fn.SUBSTR(Upload.local_path, 1, len(prefix)) == prefix)
            [(count, total)] = _tuples(row)  # an aggregate: always one row
            return {"objects": int(count), "bytes": int(total)}


# ---------------------------------------------------------------- the report, the live status, the timings: typed rows
# Each function runs one query (call inside a session) and returns plain typed rows; the arithmetic on them is in
# report.py, status.py and history.py, testable without a database. job_id None means every job's rows.


def _of_job(cond: peewee.Expression, model: type[Image] | type[Folder], job_id: int | None) -> peewee.Expression:
    """`cond` restricted to one job's rows (all rows when job_id is None)."""
    return cond if job_id is None else cond & (model.job == job_id)


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def state_counts(job_id: int | None = None) -> dict[str, int]:
    """Images per state, every state present (0 when none)."""
    query = Image.select(Image.status, peewee.fn.COUNT(Image.id))
    if job_id is not None:
        query = query.where(Image.job == job_id)
    counts = dict.fromkeys(STATES, 0)
    counts.update(_counts(query.group_by(Image.status)))
    return counts


def folder_skip_counts(job_id: int | None, reasons: Iterable[str]) -> dict[str, int]:
    """Folders skipped for one of `reasons`, per reason."""
    cond = _of_job(Folder.skip_reason.in_(list(reasons)), Folder, job_id)
    return _counts(
        Folder.select(Folder.skip_reason, peewee.fn.COUNT(Folder.id)).where(cond).group_by(Folder.skip_reason)
    )


def image_skip_counts(job_id: int | None) -> dict[str, int]:
    """Skipped images per reason."""
    return _counts(
        Image.select(Image.skip_reason, peewee.fn.COUNT(Image.id))
        .where(_of_job(Image.status == SKIPPED, Image, job_id))
        .group_by(Image.skip_reason)
    )


class DoneTotals(NamedTuple):
    """Sums over the done images: first start and last finish (None without any), summed and counted worker
    durations, source, output and decoded pixel bytes."""

    first_start: float | None
    last_finish: float | None
    busy_s: float
    n_timed: int
    source_bytes: int
    output_bytes: int
    pixel_bytes: int


def done_totals(job_id: int | None) -> DoneTotals:
    first_start, last_finish, busy, n_timed, bytes_in, bytes_out, pixels = next(
        _tuples(
            Image.select(
                peewee.fn.MIN(Image.started_at),
                peewee.fn.MAX(Image.finished_at),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.duration_s), 0),
                peewee.fn.COUNT(Image.duration_s),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.src_size), 0),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.bytes_out), 0),
                peewee.fn.COALESCE(peewee.fn.SUM(Image.pixel_bytes), 0),
            ).where(_of_job(Image.status == DONE, Image, job_id))
        )
    )
    # PostgreSQL sums BIGINT columns as NUMERIC (Decimal): plain numbers from here on
    return DoneTotals(
        _float_or_none(first_start),
        _float_or_none(last_finish),
        float(busy),
        int(n_timed),
        int(bytes_in),
        int(bytes_out),
        int(pixels),
    )


def finished_intervals(job_id: int | None) -> list[tuple[float, float]]:
    """(started_at, finished_at) of the done and failed images that have both."""
    cond = Image.status.in_([DONE, FAILED]) & Image.started_at.is_null(False) & Image.finished_at.is_null(False)
    return [
        (float(a), float(b))
        for a, b in _tuples(Image.select(Image.started_at, Image.finished_at).where(_of_job(cond, Image, job_id)))
    ]


class FolderStateCount(NamedTuple):
    folder: str  # relative to the input folder, '' for the root
    status: str
    n: int


def folder_state_counts(job_id: int | None) -> list[FolderStateCount]:
    """Images per (folder, state), cancelled ones left out."""
    return _rows(
        Image.select(Image.folder, Image.status, peewee.fn.COUNT(Image.id))
        .where(_of_job(Image.status != CANCELLED, Image, job_id))
        .group_by(Image.folder, Image.status),
        FolderStateCount,
    )


class ErrorRow(NamedTuple):
    rel_path: str
    error_type: str | None
    error_message: str | None
    attempts: int


def failed_rows(job_id: int | None) -> list[ErrorRow]:
    """The failed images, by path."""
    return _rows(
        Image.select(Image.rel_path, Image.error_type, Image.error_message, Image.attempts)
        .where(_of_job(Image.status == FAILED, Image, job_id))
        .order_by(Image.rel_path),
        ErrorRow,
    )


def latest_failed_rows(job_id: int | None, limit: int) -> list[ErrorRow]:
    """The `limit` images that failed last, the latest first."""
    return _rows(
        Image.select(Image.rel_path, Image.error_type, Image.error_message, Image.attempts)
        .where(_of_job(Image.status == FAILED, Image, job_id))
        .order_by(Image.finished_at.desc())
        .limit(limit),
        ErrorRow,
    )


def verification_counts(job_id: int | None) -> dict[int, int]:
    """Done images `tessq verify` checked, per verdict (1 identical, 0 different)."""
    cond = (Image.status == DONE) & Image.verified.is_null(False)
    return _counts(
        Image.select(Image.verified, peewee.fn.COUNT(Image.id))
        .where(_of_job(cond, Image, job_id))
        .group_by(Image.verified)
    )


class SkipRow(NamedTuple):
    path: str
    reason: str | None


def skipped_image_rows(job_id: int | None) -> list[SkipRow]:
    """The TIFFs the last scans did not cut on purpose, by path."""
    return _rows(
        Image.select(Image.rel_path, Image.skip_reason)
        .where(_of_job(Image.status == SKIPPED, Image, job_id))
        .order_by(Image.rel_path),
        SkipRow,
    )


def skipped_folder_rows(job_id: int | None) -> list[SkipRow]:
    """The folders the last scans did not cut on purpose, by path."""
    return _rows(
        Folder.select(Folder.path, Folder.skip_reason)
        .where(_of_job(Folder.skip_reason.is_null(False), Folder, job_id))
        .order_by(Folder.path),
        SkipRow,
    )


class UnfinishedRow(NamedTuple):
    rel_path: str
    status: str
    worker: str | None


def unfinished_rows(job_id: int | None, limit: int) -> list[UnfinishedRow]:
    """Up to `limit` queued or running images: the running ones first, then by path."""
    return _rows(
        Image.select(Image.rel_path, Image.status, Image.worker)
        .where(_of_job(Image.status.in_([RUNNING, QUEUED]), Image, job_id))
        .order_by(Image.status.desc(), Image.rel_path)
        .limit(limit),
        UnfinishedRow,
    )


class JobRow(NamedTuple):
    id: int
    input_dir: str
    output_dir: str
    options: str  # SliceOptions as JSON


def job_rows(job_id: int | None = None) -> list[JobRow]:
    """One job's row (every job's when job_id is None), by id."""
    query = Job.select(Job.id, Job.input_dir, Job.output_dir, Job.options).order_by(Job.id)
    return _rows(query if job_id is None else query.where(Job.id == job_id), JobRow)


def job_count() -> int:
    return int(Job.select().count())


def output_dirs() -> list[str]:
    """Every job's output folder, by job id."""
    return [out for (out,) in _tuples(Job.select(Job.output_dir).order_by(Job.id))]


def recent_done_intervals(job_id: int | None, since: float) -> list[tuple[float, float]]:
    """(started_at, finished_at) of the done images finished at or after `since` (server clock) that have a start."""
    cond = (Image.status == DONE) & (Image.finished_at >= since) & Image.started_at.is_null(False)
    return [
        (float(a), float(b))
        for a, b in _tuples(Image.select(Image.started_at, Image.finished_at).where(_of_job(cond, Image, job_id)))
    ]


def recent_done_totals(job_id: int | None, since: float) -> tuple[int, int]:
    """(images, decoded pixel bytes) done at or after `since` (server clock)."""
    n, pixels = next(
        _tuples(
            Image.select(peewee.fn.COUNT(Image.id), peewee.fn.COALESCE(peewee.fn.SUM(Image.pixel_bytes), 0)).where(
                _of_job((Image.status == DONE) & (Image.finished_at >= since), Image, job_id)
            )
        )
    )
    return int(n), int(pixels)


class RunningRow(NamedTuple):
    worker: str | None  # host:pid of the lease holder
    rel_path: str
    started_at: float | None
    attempts: int
    lease_until: float | None  # server clock


def running_rows(job_id: int | None) -> list[RunningRow]:
    """The running images, by worker."""
    return _rows(
        Image.select(Image.worker, Image.rel_path, Image.started_at, Image.attempts, Image.lease_until)
        .where(_of_job(Image.status == RUNNING, Image, job_id))
        .order_by(Image.worker),
        RunningRow,
    )


class TimingRow(NamedTuple):
    id: int
    rel_path: str
    status: str
    worker: str | None
    attempts: int
    started_at: float | None
    finished_at: float
    duration_s: float | None
    n_slices: int | None
    bytes_out: int | None
    pixel_bytes: int | None
    out_rel: str
    input_dir: str
    output_dir: str


def finished_rows(statuses: Iterable[str], input_dir: str | None = None) -> list[TimingRow]:
    """Images in one of `statuses` that have a finish time (of one job's input folder, if given), in the order
    they finished (then by id)."""
    query = (
        Image.select(
            Image.id,
            Image.rel_path,
            Image.status,
            Image.worker,
            Image.attempts,
            Image.started_at,
            Image.finished_at,
            Image.duration_s,
            Image.n_slices,
            Image.bytes_out,
            Image.pixel_bytes,
            Image.out_rel,
            Job.input_dir,
            Job.output_dir,
        )
        .join(Job)
        .where(Image.status.in_(list(statuses)) & Image.finished_at.is_null(False))
        .order_by(Image.finished_at, Image.id)
    )
    if input_dir is not None:
        query = query.where(Job.input_dir == input_dir)
    return _rows(query, TimingRow)

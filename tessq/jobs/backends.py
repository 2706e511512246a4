"""Backends chosen by URL: the status database (peewee) and the delivery queue (huey).

This is the only module that knows SQLite, PostgreSQL and Redis apart; everything else
talks to a peewee Database and a huey instance.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import peewee
from huey import Huey, PostgresHuey, PriorityRedisHuey, SqliteHuey
from huey.api import Task
from huey.storage import PostgresStorage, SqliteStorage

from tessq.errors import ConfigError
from tessq.redact import redact_url

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "busy_timeout": 60000,
    "foreign_keys": 1,
}


SCHEMA_LOCK_KEY = 0x7465_7372  # PostgreSQL advisory lock held while tessq or huey create their tables
log = logging.getLogger("tessq.queue")
SQLITE_HEADER = b"SQLite format 3\x00"


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a file, None if it does not exist: tells "the file I opened" from a new one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def looks_like_sqlite(path: str) -> bool | None:
    """Whether a file starts with SQLite's header (an empty file is a valid new database); None if it is missing.

    Only for a file this process has no SQLite connection to: closing the descriptor opened here drops every
    POSIX lock the process holds on the file, SQLite's included."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return None
    return head == SQLITE_HEADER or head == b""


def remove_stale_journal(path: str) -> list[str]:
    """Delete the -wal/-shm files of a database file that is gone: SQLite would replay a stale WAL into the new
    file of the same name (old pages over a new database). Call only when `path` does not exist."""
    removed = []
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
            removed.append(path + suffix)
    return removed


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if needed): one process at a time (re)creates a file."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        yield  # a read-only workspace: nothing can be (re)created there, so there is nothing to serialise
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sqlite_path(url: str) -> str:
    """sqlite:////abs/path.db -> /abs/path.db; sqlite:///rel.db -> rel.db."""
    return urlparse(url).path[1:] if url.startswith("sqlite:///") else url[len("sqlite://") :]


def is_postgres(url: str) -> bool:
    return urlparse(url).scheme.split("+")[0] in ("postgres", "postgresql", "psycopg3", "psycopg2")


def make_database(url: str) -> peewee.Database:
    """A peewee Database for the status table; SQLite in WAL with IMMEDIATE transactions."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        # IMMEDIATE: a deferred BEGIN that reads then writes fails at once with "database is locked"
        # under concurrency, whatever the busy timeout (notes/queue-engine.md section 4).
        return _SqliteDatabase(sqlite_path(url), timeout=60, lock_type="IMMEDIATE", pragmas=SQLITE_PRAGMAS)
    if is_postgres(url):
        from playhouse import db_url  # imports psycopg: only where PostgreSQL is used

        dsn = "psycopg3://" + url.split("://", 1)[1]
        return db_url.connect(dsn)
    raise ConfigError(f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


class _SqliteDatabase(peewee.SqliteDatabase):
    """peewee's SQLite database with a hook run before every new connection: a long-running process (the
    worker daemon and its workers, db.hold_database) sets it so that a status table deleted or replaced
    under it is an error, never a new empty file silently created in its place."""

    connect_check: Callable[[], None] | None = None

    def _connect(self) -> sqlite3.Connection:
        if self.connect_check is not None:
            self.connect_check()
        return super()._connect()  # type: ignore[misc]  # peewee's connection hook, absent from its stubs


class _SqliteStorage(SqliteStorage):
    """huey's SQLite storage with synchronous=NORMAL: 3x faster enqueues (queue-engine.md section 4). A power
    cut may drop the last few messages, never corrupt the file, and the status table re-enqueues them.

    The queue is derived state, so this storage heals itself: a queue.db deleted or replaced while the
    connection is open is noticed (its inode changed) and reconnected to; a missing file is created with
    huey's tables (stale -wal/-shm removed first); a file that is not a SQLite database is moved aside
    (queue.db.damaged-<time>) and replaced. The messages are then re-sent from the status table
    (queue.rebuild_if_changed, queue.repair_unqueued)."""

    _conn: sqlite3.Connection | None  # huey's BaseSqlStorage sets it
    _identity: tuple[int, int] | None = None
    recreated = False  # this process created the file anew (missing or damaged): its messages must be re-sent

    @property
    def conn(self) -> sqlite3.Connection:  # called with self.lock held (BaseSqlStorage.db)
        if self._conn is not None and file_identity(self.filename) != self._identity:
            log.warning("the queue file %s was deleted or replaced: reconnecting", self.filename)
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = self._create_connection()
        return self._conn

    def _create_connection(self) -> sqlite3.Connection:
        with file_lock(self.filename + ".lock"):
            if looks_like_sqlite(self.filename) is False:
                aside = f"{self.filename}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                os.replace(self.filename, aside)
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(self.filename + suffix, aside + suffix)
                self.recreated = True
                log.warning(
                    "the queue file %s is not a SQLite database: moved aside to %s and created anew "
                    "(the queue is rebuilt from the status table)",
                    self.filename,
                    aside,
                )
            created = file_identity(self.filename) is None
            if created:
                remove_stale_journal(self.filename)
                self.recreated = True
            conn = super()._create_connection()
            conn.execute("pragma synchronous=NORMAL")
            if created or not conn.execute("select 1 from sqlite_master where name = 'task'").fetchone():
                for ddl in self.ddl:
                    conn.execute(ddl)
            self._identity = file_identity(self.filename)
        return conn

    def enqueue_many(self, messages: list[tuple[bytes, int]]) -> None:
        with self.db(commit=True) as curs:
            curs.executemany(
                "insert into task (queue, data, priority) values (?, ?, ?)",
                [(self.name, self.to_blob(data), priority) for data, priority in messages],
            )


class _PostgresStorage(PostgresStorage):
    def initialize_schema(self) -> None:
        """huey's CREATE TABLE IF NOT EXISTS under a transaction-scoped advisory lock: two processes creating
        the queue tables at once otherwise fail with a unique violation on pg_type (PostgreSQL's own race)."""
        with self.db(commit=True, close=True) as curs:
            curs.execute("select pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for sql in self.ddl:
                curs.execute(sql)

    def enqueue_many(self, messages: list[tuple[bytes, int]]) -> None:
        with self.db(commit=True) as curs:
            curs.executemany(
                f"insert into {self.table_task} (queue, data, priority) values (%s, %s, %s)",
                [(self.name, data, priority) for data, priority in messages],
            )
            curs.execute("select pg_notify(%s, %s)", (self.channel, ""))


class _TessqQueue:
    """What tessq changes in huey, mixed into each of the three queue classes below.

    - enqueue_many: a scan's messages in one transaction where the storage can (SQLite, PostgreSQL): huey
      commits each message on its own, 0.1 ms apiece, 10 s for a 100,000-image tree.
    - No revocation: tessq cancels and retries through the status table and never revokes a huey task. huey
      still reads the task's revoke keys before running it and deletes its revoke key after (a write
      transaction per image on the queue): both are skipped."""

    def enqueue_many(self, tasks: list[Task]) -> None:
        storage = self.storage  # type: ignore[attr-defined]
        if not hasattr(storage, "enqueue_many"):
            for task in tasks:
                self.enqueue(task)  # type: ignore[attr-defined]
            return
        storage.enqueue_many([(self.serialize_task(t), t.priority or 0) for t in tasks])  # type: ignore[attr-defined]

    def is_revoked(self, task: object, timestamp: object = None, peek: bool = True) -> bool:
        return False

    def delete(self, key: str) -> bool:
        if key.startswith("r:"):  # huey's Task.revoke_id
            return False
        return super().delete(key)  # type: ignore[misc]


class _SqliteQueue(_TessqQueue, SqliteHuey):
    storage_class = _SqliteStorage


class _RedisQueue(_TessqQueue, PriorityRedisHuey):
    """PriorityRedisHuey: plain RedisHuey refuses any non-zero priority."""


class _PostgresQueue(_TessqQueue, PostgresHuey):
    storage_class = _PostgresStorage


def make_queue(url: str, name: str = "tessq") -> Huey:
    """A huey instance delivering image ids; results are off (the status table holds outcomes)."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return _SqliteQueue(name, filename=sqlite_path(url), results=False, timeout=60)
    if parsed.scheme in ("redis", "rediss", "unix"):
        return _RedisQueue(name, url=url, results=False)
    if is_postgres(parsed.geturl()):
        dsn = "postgresql://" + url.split("://", 1)[1]
        return _PostgresQueue(name, dsn=dsn, results=False)
    raise ConfigError(
        f"unsupported queue URL {redact_url(url)!r}: use sqlite:///PATH, redis://HOST:6379/N or postgresql://..."
    )


def server_now(database: peewee.Database) -> peewee.Node:
    """The database server's clock in epoch seconds, so leases never depend on a worker's clock."""
    if isinstance(database, peewee.PostgresqlDatabase) or "postgres" in type(database).__name__.lower():
        return peewee.SQL("extract(epoch from clock_timestamp())::double precision")
    return peewee.SQL("((julianday('now') - 2440587.5) * 86400.0)")

"""Backends chosen by URL: the status database (peewee) and the delivery queue (huey).

This is the only module that knows SQLite, PostgreSQL and Redis apart; everything else
talks to a peewee Database and a huey instance.
"""

from __future__ import annotations

from urllib.parse import urlparse

import peewee
from huey import Huey, PostgresHuey, PriorityRedisHuey, SqliteHuey
from huey.storage import SqliteStorage

from tessq.errors import ConfigError

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "busy_timeout": 60000,
    "foreign_keys": 1,
}


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
        return peewee.SqliteDatabase(sqlite_path(url), timeout=60, lock_type="IMMEDIATE", pragmas=SQLITE_PRAGMAS)
    if is_postgres(url):
        from playhouse import db_url  # imports psycopg: only where PostgreSQL is used

        dsn = "psycopg3://" + url.split("://", 1)[1]
        return db_url.connect(dsn)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


class _QueueStorage(SqliteStorage):
    """huey's SQLite storage with synchronous=NORMAL: 3x faster enqueues (queue-engine.md section 4). A power
    cut may drop the last few messages, never corrupt the file, and the status table re-enqueues them."""

    def _create_connection(self) -> object:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


class _WithoutRevocation:
    """tessq cancels and retries through the status table and never revokes a huey task. huey still reads the
    task's revoke keys before running it and deletes its revoke key after (a write transaction per image on the
    queue): both are skipped. Mixed into each of the three queue classes below."""

    def is_revoked(self, task: object, timestamp: object = None, peek: bool = True) -> bool:
        return False

    def delete(self, key: str) -> bool:
        if key.startswith("r:"):  # huey's Task.revoke_id
            return False
        return super().delete(key)  # type: ignore[misc]


class _SqliteQueue(_WithoutRevocation, SqliteHuey):
    storage_class = _QueueStorage


class _RedisQueue(_WithoutRevocation, PriorityRedisHuey):
    """PriorityRedisHuey: plain RedisHuey refuses any non-zero priority."""


class _PostgresQueue(_WithoutRevocation, PostgresHuey):
    pass


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
    raise ConfigError(f"unsupported queue URL {url!r}: use sqlite:///PATH, redis://HOST:6379/N or postgresql://...")


def server_now(database: peewee.Database) -> peewee.Node:
    """The database server's clock in epoch seconds, so leases never depend on a worker's clock."""
    if isinstance(database, peewee.PostgresqlDatabase) or "postgres" in type(database).__name__.lower():
        return peewee.SQL("extract(epoch from clock_timestamp())::double precision")
    return peewee.SQL("((julianday('now') - 2440587.5) * 86400.0)")


"""alembic_free_schema.sql and the peewee models describe the same tables, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import peewee
import pytest

from tessq.jobs import db


def _columns(database: peewee.Database, table: str) -> dict[str, bool]:
    return {c.name: c.null for c in database.get_columns(table)}


def _indexes(database: peewee.Database, table: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    return {
        i.name: (tuple(i.columns), i.unique)
        for i in database.get_indexes(table)
        if not i.name.startswith("sqlite_") and not i.name.endswith("_pkey")
    }


def _from_models(database: peewee.Database) -> None:
    db.database.initialize(database)
    database.create_tables(db.MODELS)


def _from_file(url: str) -> peewee.Database:
    database = db.open_database(url)
    db.create_schema()
    return database


def _assert_same(file_db: peewee.Database, model_db: peewee.Database) -> None:
    for model in db.MODELS:
        table = model._meta.table_name
        assert _columns(file_db, table) == _columns(model_db, table), table
        assert _indexes(file_db, table) == _indexes(model_db, table), table


def test_schema_file_matches_models_on_sqlite(tmp_path: Path) -> None:
    file_db = _from_file(f"sqlite:///{tmp_path}/file.db")
    file_db.connect()
    model_db = peewee.SqliteDatabase(str(tmp_path / "models.db"))
    _from_models(model_db)
    _assert_same(file_db, model_db)


def test_schema_file_matches_models_on_postgres(postgres_url: str) -> None:
    file_db = _from_file(postgres_url)
    file_db.connect()
    columns_from_file = {m._meta.table_name: _columns(file_db, m._meta.table_name) for m in db.MODELS}
    indexes_from_file = {m._meta.table_name: _indexes(file_db, m._meta.table_name) for m in db.MODELS}
    types = {c.name: c.data_type for c in file_db.get_columns("image")}
    for model in reversed(db.MODELS):
        file_db.execute_sql(f'DROP TABLE "{model._meta.table_name}" CASCADE')
    file_db.create_tables(db.MODELS)
    for model in db.MODELS:
        table = model._meta.table_name
        assert columns_from_file[table] == _columns(file_db, table), table
        assert indexes_from_file[table] == _indexes(file_db, table), table
    # 8-byte timestamps: a 4-byte real has 128 s resolution at today's epoch and breaks leases.
    assert types["lease_until"] == "double precision"
    assert types["src_size"] == "bigint"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_schema_statements_differ_only_in_autoincrement(dialect: str) -> None:
    sqlite_sql = db.schema_statements("sqlite")
    other = db.schema_statements(dialect)
    assert len(sqlite_sql) == len(other)
    keys = [s for s in sqlite_sql if "INTEGER NOT NULL PRIMARY KEY" in s]
    assert keys, "the schema has auto-increment keys"
    for a, b in zip(sqlite_sql, other, strict=True):
        if dialect == "sqlite":
            assert a == b
        elif a in keys:  # PostgreSQL needs SERIAL where SQLite's INTEGER PRIMARY KEY auto-increments
            assert "INTEGER NOT NULL PRIMARY KEY" not in b and b == a.replace(
                "INTEGER NOT NULL PRIMARY KEY", "SERIAL NOT NULL PRIMARY KEY"
            )
        else:
            assert a == b

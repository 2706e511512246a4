"""Status-table rules on a real SQLite file: the messages for a lost or damaged table, the held-file checks,
output and source identity, the reset of a rescanned row, what a storage failure tells the user.

Each test pins one rule of tessq.db that a mutation run showed untested.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

from tessq.errors import ConfigError
from tessq.jobs import db


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A real status table in OUT/.tessq, held by this process like a daemon holds it."""
    path = tmp_path / "out" / ".tessq" / "tessq.db"
    db.open_database(f"sqlite:///{path}")
    db.create_schema()
    with db.session():
        db.upsert_job(str(tmp_path / "in"), str(tmp_path / "out"), {}, "h")
    db.hold_database()
    yield path
    db.release_database()
    db.database.close()


def test_the_damaged_message_names_the_file_the_fix_and_the_job_folder(tmp_path: Path) -> None:
    path = tmp_path / "out" / ".tessq" / "tessq.db"
    message = db.damaged_message(path, "file is not a database")
    out = tmp_path / "out"
    assert message == (
        f"{path} is damaged (not a SQLite database: file is not a database): move it aside (`mv {path}"
        f" {path}.damaged`) and run `tessq run IN {out}` again to rebuild it (images whose folders in "
        f"{out} are complete and match their source and the options are kept as done; the others "
        "are cut again)"
    )


def test_the_lost_message_names_the_job_folder_for_new_and_old_layouts(tmp_path: Path) -> None:
    new = db.lost_message(tmp_path / "out" / ".tessq" / "tessq.db", "was deleted")
    assert new.startswith(f"the status table {tmp_path}/out/.tessq/tessq.db was deleted while workers ran: stopping")
    assert f"`tessq run IN {tmp_path}/out`:" in new and f"in {tmp_path}/out that match" in new
    old = db.lost_message(tmp_path / "ws" / "tessq.db", "was replaced by another file")
    assert f"`tessq run IN {tmp_path}/ws`:" in old


def test_a_held_table_passes_its_check_and_a_grown_one_too(held: Path) -> None:
    db.check_database()
    with db.session():
        db.upsert_job("/elsewhere", "/elsewhere-out", {"x": "y" * 10000}, "h2")
    db.check_database()
    assert db.database_problem(peewee.OperationalError("database is locked")) is None


def test_a_deleted_held_table_is_lost(held: Path) -> None:
    held.unlink()
    with pytest.raises(db.StateLostError, match="was deleted while workers ran"):
        db.check_database()
    problem = db.database_problem(peewee.OperationalError("anything"))
    assert isinstance(problem, db.StateLostError) and "was deleted" in str(problem)


def test_a_replaced_held_table_is_lost(held: Path) -> None:
    copy = held.with_name("copy.db")
    shutil.copy(held, copy)
    os.replace(copy, held)
    with pytest.raises(db.StateLostError) as caught:
        db.check_database()
    assert str(caught.value) == db.lost_message(held, "was replaced by another file")


def test_a_truncated_held_table_is_lost_with_both_sizes(held: Path) -> None:
    size = held.stat().st_size
    os.truncate(held, size - 1)
    with pytest.raises(db.StateLostError, match=rf"was truncated \({size - 1} bytes, {size} before\)"):
        db.check_database()
    os.truncate(held, 0)
    with pytest.raises(db.StateLostError, match=rf"was truncated \(0 bytes, {size} before\)"):
        db.check_database()


def test_a_damaged_or_emptied_held_table_is_lost_and_other_errors_are_not(held: Path) -> None:
    for text in (
        "file is not a database",
        "database disk image is malformed",
        "file is encrypted",
        "no such table: image",
    ):
        problem = db.database_problem(peewee.DatabaseError(text))
        assert isinstance(problem, db.StateLostError) and f"became unreadable ({text})" in str(problem)
    assert db.database_problem(peewee.DatabaseError("disk is full")) is None


def test_without_a_held_table_nothing_is_checked(tmp_path: Path) -> None:
    db.release_database()
    db.check_database()
    assert db.database_problem(peewee.DatabaseError("file is not a database")) is None


def test_holding_a_table_that_is_gone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out" / ".tessq" / "tessq.db"
    db.open_database(f"sqlite:///{path}")
    with pytest.raises(db.StateLostError) as caught:
        db.hold_database()
    assert str(caught.value) == db.lost_message(path, "was deleted")
    db.release_database()


def test_a_held_table_checks_every_new_connection_and_released_it_does_not(held: Path) -> None:
    db.database.close()
    held.unlink()
    with pytest.raises(db.StateLostError), db.session():
        pass
    db.release_database()
    with db.session():  # released: the file may be created again
        pass


def test_outputs_are_one_folder_when_equal_or_nested_trailing_slashes_ignored() -> None:
    assert db.same_output("/a/out", "/a/out/")
    assert db.same_output("/a/out/sub", "/a/out") and db.same_output("/a/out", "/a/out/sub")
    assert not db.same_output("/a/out", "/a/outer") and not db.same_output("/a/outer", "/a/out")
    assert db.same_output("///", "/") and db.same_output("s3://b/p", "s3://b/p/")


def test_same_source_allows_only_float_column_rounding_of_mtime() -> None:
    assert db.same_source(10, 1.5, 10, 1.5 + 1e-7)
    assert db.same_source(10, 1.5, 10, 1.5 + 1e-6)
    assert not db.same_source(10, 1.5, 10, 1.5 + 1e-5) and not db.same_source(10, 1.5 + 1e-5, 10, 1.5)
    assert not db.same_source(10, 1.5, 11, 1.5)


def test_a_known_header_matches_a_file_while_size_and_mtime_are_the_same(tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"12345")
    st = path.stat()
    assert db.KnownHeader(5, st.st_mtime, 1, 1, 1).matches(st)
    assert not db.KnownHeader(6, st.st_mtime, 1, 1, 1).matches(st)
    assert not db.KnownHeader(5, st.st_mtime - 1, 1, 1, 1).matches(st)


def test_the_outputs_a_scan_claims_are_its_cut_images_and_every_folder_above_them() -> None:
    candidates = [
        {"out_rel": "A/B/c", "status": db.QUEUED},
        {"out_rel": "d", "status": db.DONE},
        {"out_rel": "x/y", "status": db.FAILED},
        {"out_rel": None, "status": db.QUEUED},
    ]
    assert db._claimed_outputs(candidates) == ({"a/b/c", "d"}, {"a", "a/b"})


def test_a_stored_output_is_displaced_when_another_image_or_its_folders_now_use_it() -> None:
    claimed = ({"a/b/c", "d"}, {"a", "a/b"})
    assert not db._displaced("old", None, claimed) and not db._displaced("a/b/c", "a/b/c", claimed)
    assert db._displaced("D", "d2", claimed)  # another image's path, ignoring case
    assert db._displaced("a/b", "b2", claimed)  # a folder holding another image's folder
    assert db._displaced("d/inner", "i2", claimed)  # inside another image's folder
    assert not db._displaced("e", "e2", claimed)


def test_a_rescanned_row_is_reset_to_what_the_scan_found() -> None:
    fresh = db._fresh({"job": 1, "rel_path": "a.tif", "status": db.QUEUED, "width": 5, "attempts": 2})
    assert fresh == {
        "attempts": 2,
        "worker": None,
        "lease_until": None,
        "error_type": None,
        "error_message": None,
        "started_at": None,
        "finished_at": None,
        "duration_s": None,
        "verified": None,
        "verified_at": None,
        "status": db.QUEUED,
        "width": 5,
    }
    assert db._fresh({"status": db.QUEUED})["attempts"] == 0


def test_the_worker_identity_is_the_host_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSQ_HOSTNAME", "machine-b")
    assert db.hostname() == "machine-b" and db.worker_identity() == f"machine-b:{os.getpid()}"
    monkeypatch.setenv("TESSQ_HOSTNAME", "")
    assert db.hostname() == socket.gethostname()
    monkeypatch.delenv("TESSQ_HOSTNAME")
    assert db.worker_identity() == f"{socket.gethostname()}:{os.getpid()}"


def test_the_server_schema_uses_serial_keys_and_drops_comments() -> None:
    sqlite, pg = db.schema_statements("sqlite"), db.schema_statements("postgresql")
    assert len(sqlite) == len(pg) > 3
    assert all(not s.startswith("--") and s == s.strip() and s for s in sqlite)
    assert any("INTEGER NOT NULL PRIMARY KEY" in s for s in sqlite)
    assert not any("INTEGER NOT NULL PRIMARY KEY" in s for s in pg) and any(
        "SERIAL NOT NULL PRIMARY KEY" in s for s in pg
    )
    assert [s.replace("SERIAL", "INTEGER") for s in pg] == sqlite


def test_a_file_that_is_not_a_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "out" / ".tessq" / "tessq.db"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all, just some bytes" * 200)
    db.open_database(f"sqlite:///{path}")
    with pytest.raises(ConfigError) as caught:
        db.create_schema()
    assert str(caught.value).startswith(f"{path} is damaged (not a SQLite database: file is not a database)")


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "out" / ".tessq" / "tessq.db"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as other:
        other.execute("PRAGMA application_id = 1234")
        other.execute("CREATE TABLE t (x)")
    db.open_database(f"sqlite:///{path}")
    with pytest.raises(
        ConfigError,
        match=rf"is not a tessq status table \(application_id 0x4d2\): move it aside "
        rf"and run `tessq run IN {tmp_path}/out` again",
    ):
        db.create_schema()
    db.database.close()


def test_a_new_table_is_marked_as_tessqs(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "tessq.db"
    db.open_database(f"sqlite:///{path}")
    db.create_schema()
    db.create_schema()  # idempotent
    db.database.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == db.APPLICATION_ID


def test_an_unwritable_workspace_says_what_to_make_writable() -> None:
    problem = db.storage_problem(OSError(errno.EROFS, "Read-only file system"), where="/ws")
    assert isinstance(problem, ConfigError)
    assert str(problem).startswith(
        "the workspace /ws cannot be written ([Errno 30] Read-only file system): tessq "
        "keeps its status table and queue there;"
    )
    assert "point --workspace / TESSQ_WORKSPACE at a writable folder" in str(problem)
    assert str(db.storage_problem(PermissionError(errno.EACCES, "denied"))).startswith("the tessq workspace cannot")
    locked = db.storage_problem(peewee.OperationalError("attempt to write a readonly database"))
    assert locked is not None and "cannot be written (attempt to write a readonly database)" in str(locked)


def test_an_unreachable_status_server_names_the_redacted_url() -> None:
    url = "postgresql://u:secret@db.example:5432/t"
    problem = db.storage_problem(peewee.OperationalError("could not connect to server: Connection refused\nmore"), url)
    assert isinstance(problem, ConfigError) and "secret" not in str(problem)
    assert str(problem).startswith("cannot reach the status database postgresql://u:")
    assert str(problem).endswith(
        ": could not connect to server: Connection refused; check that PostgreSQL runs and"
        " accepts connections there, or fix TESSQ_DB_URL"
    )


def test_other_failures_are_not_storage_problems() -> None:
    assert db.storage_problem(ValueError("bad value")) is None
    assert db.storage_problem(peewee.OperationalError("database is locked")) is None
    assert db.storage_problem(OSError(errno.ENOENT, "gone")) is None


def test_a_storage_cause_anywhere_in_the_chain_counts() -> None:
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("opening the queue") from inner
    except RuntimeError as outer:
        problem = db.storage_problem(outer, where="/ws")
    assert problem is not None and "cannot be written (opening the queue)" in str(problem)
    assert db.storage_problem(RuntimeError("")) is None

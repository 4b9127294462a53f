"""Storage errors are told transient or permanent by the driver's error code, on errors the real drivers raise."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy

from conftest import MYSQL_SERVER, SERVER, _connect, mysql_connect
from lrsearch.errors import ConfigError, StorageError
from lrsearch.store.retry import driver_code, is_transient, retry_transient
from lrsearch.store.storage import open_storage


def _raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("no error")


def _connect_to(url: str) -> Callable[[], object]:
    def connect() -> None:
        engine = sqlalchemy.create_engine(url)
        try:
            engine.connect().close()
        finally:
            engine.dispose()

    return connect


def _codes(error: BaseException) -> list[object]:
    from lrsearch.store.retry import _chain

    return [code for e in _chain(error) if (code := driver_code(e)) is not None]


def test_sqlite_busy_is_transient_and_a_file_that_cannot_be_opened_is_not(tmp_path: Path) -> None:
    database = tmp_path / "x.db"
    blocker = sqlite3.connect(database)
    blocker.execute("CREATE TABLE t (x)")
    blocker.execute("BEGIN EXCLUSIVE")
    engine = sqlalchemy.create_engine(f"sqlite:///{database}", connect_args={"timeout": 0})
    try:
        busy = _raised(lambda: engine.connect().exec_driver_sql("INSERT INTO t VALUES (1)"))
    finally:
        engine.dispose()
        blocker.rollback()
        blocker.close()
    assert _codes(busy) == [("sqlite", 5)] and is_transient(busy)  # SQLITE_BUSY

    cannot_open = _raised(_connect_to(f"sqlite:///{tmp_path}/no/such/folder/x.db"))
    assert _codes(cannot_open) == [("sqlite", 14)] and not is_transient(cannot_open)  # SQLITE_CANTOPEN


@pytest.mark.postgres
def test_postgresql_errors_by_sqlstate(pg_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as connection:
            undefined = _raised(lambda: connection.exec_driver_sql("SELECT * FROM no_such_table"))
        assert _codes(undefined) == [("postgresql", "42P01")] and not is_transient(undefined)

        with engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            admin = _connect(sqlalchemy.engine.make_url(SERVER))
            admin.autocommit = True  # type: ignore[attr-defined]
            with admin.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
            admin.close()  # type: ignore[attr-defined]
            terminated = _raised(lambda: connection.exec_driver_sql("SELECT 1"))
        assert is_transient(terminated)  # the session was ended by the server: a new one may work
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_refusing_a_login_has_no_sqlstate_and_is_waited_out_with_its_reason(pg_url: str) -> None:
    # libpq reports the server's refusal of a login (here: no such database) as text, without its SQLSTATE, like a
    # refused connection: both are retried, and the error at the end names the reason.
    wrong = sqlalchemy.engine.make_url(pg_url).set(database="no_such_database").render_as_string(False)
    refused = _raised(_connect_to(wrong))
    assert _codes(refused) == [] and is_transient(refused)
    with pytest.raises(StorageError, match='stayed unreachable.*database "no_such_database" does not exist'):
        retry_transient(_connect_to(wrong), "a test", 0.1)
    nothing_listens = _raised(_connect_to("postgresql+psycopg2://postgres@127.0.0.1:1/test"))
    assert _codes(nothing_listens) == [] and is_transient(nothing_listens)


@pytest.mark.mysql
def test_mysql_errors_by_error_number(mysql_url: str) -> None:
    url = sqlalchemy.engine.make_url(mysql_url)
    wrong_database = _raised(_connect_to(url.set(database="no_such_database").render_as_string(False)))
    assert _codes(wrong_database) == [("mysql", 1049)] and not is_transient(wrong_database)
    wrong_password = _raised(_connect_to(url.set(password="wrong").render_as_string(False)))
    assert _codes(wrong_password) == [("mysql", 1045)] and not is_transient(wrong_password)
    nothing_listens = _raised(_connect_to(url.set(port=1).render_as_string(False)))
    assert _codes(nothing_listens) == [("mysql", 2003)] and is_transient(nothing_listens)

    engine = sqlalchemy.create_engine(mysql_url)
    try:
        with engine.connect() as connection:
            syntax = _raised(lambda: connection.exec_driver_sql("SELEKT 1"))
        assert _codes(syntax) == [("mysql", 1064)] and not is_transient(syntax)
        with engine.connect() as connection:
            own_id = connection.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            admin = mysql_connect(sqlalchemy.engine.make_url(MYSQL_SERVER))
            with admin.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute(f"KILL {int(own_id)}")
            admin.close()  # type: ignore[attr-defined]
            killed = _raised(lambda: connection.exec_driver_sql("SELECT 1"))
        assert is_transient(killed)
        # A lock wait that runs out (1205): another session holds the row.
        engine_b = sqlalchemy.create_engine(mysql_url)
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INT PRIMARY KEY) ENGINE=InnoDB")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        holder = engine.connect()
        holder.exec_driver_sql("UPDATE t SET x = 1 WHERE x = 1")  # its transaction stays open
        try:
            with engine_b.connect() as waiter:
                waiter.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
                timeout = _raised(lambda: waiter.exec_driver_sql("UPDATE t SET x = 1 WHERE x = 1"))
        finally:
            holder.rollback()
            holder.close()
            engine_b.dispose()
        assert _codes(timeout) == [("mysql", 1205)] and is_transient(timeout)
    finally:
        engine.dispose()


def test_a_database_without_a_budget_lock_is_refused_by_name() -> None:
    url = "mssql+pyodbc://sa:secret@dbhost/study"
    with pytest.raises(ConfigError) as refused:
        open_storage(url)
    message = str(refused.value)
    assert "mssql+pyodbc://sa:***@dbhost/study" in message and "secret" not in message
    assert "no budget lock for the 'mssql' backend" in message
    assert "SQLite" in message and "PostgreSQL" in message and "MySQL/MariaDB" in message

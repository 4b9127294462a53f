"""The budget lock: held while a worker counts the study's trials and changes the count, so that any number of
workers on any number of hosts end with exactly the budget's count of trials.

One per database:

- SQLite: an exclusive flock on a file beside the database file (every worker that can open the database
  reaches it);
- PostgreSQL: a session advisory lock (`pg_advisory_lock`) keyed by the study's name;
- MySQL/MariaDB: a named lock (`GET_LOCK`) keyed by the study's name, waited for in rounds of LOCK_WAIT_SECONDS.

The server-side locks live in one database session, which a dropped connection ends (and the server then
releases the lock): the lock gives a `held()` check for that. Another database has no lock, so lrsearch refuses
to open it (`check_backend`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from lrsearch.errors import ConfigError
from lrsearch.store.retry import retry_transient, retrying_each_call
from lrsearch.store.urls import mask_url, parse_url, sqlite_file

if TYPE_CHECKING:
    import optuna
    import sqlalchemy

LOCKED_BACKENDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}
LOCK_WAIT_SECONDS = 10  # one round of GET_LOCK's wait; the worker waits as many rounds as it takes

_logger = logging.getLogger(__name__)


def check_backend(url: str) -> None:
    """A storage URL whose database lrsearch can lock (see the module's docstring); else a ConfigError."""
    backend = parse_url(url).get_backend_name()
    if backend not in LOCKED_BACKENDS:
        raise ConfigError(
            f"storage '{mask_url(url)}': lrsearch has no budget lock for the '{backend}' backend, so workers could "
            "run more trials than the budget; use SQLite (sqlite:///file.db), PostgreSQL "
            "(postgresql+psycopg2://user:password@host:5432/db) or MySQL/MariaDB "
            "(mysql+pymysql://user:password@host:3306/db)"
        )


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[Callable[[], bool]]:
    """Held while a worker counts the trials and creates the next one (or changes the count otherwise).

    It gives a check that the lock is still held: on PostgreSQL and MySQL/MariaDB the lock lives in a database
    session, which a dropped connection ends.
    """
    url = storage.engine.url
    database = sqlite_file(url)
    backend = url.get_backend_name()
    if database is not None:
        # SQLite is a local file, so a lock file beside it reaches every worker that can open it.
        with open(database.with_name(database.name + ".lrsearch-lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield lambda: True
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    elif backend == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"lrsearch:{study_name}".encode()).digest()[:8], "big", signed=True)
        with _pg_advisory_lock(storage, key) as held:
            yield held
    elif backend in ("mysql", "mariadb"):
        name = "lrsearch:" + hashlib.sha256(study_name.encode()).hexdigest()[:40]  # at most 64 characters
        with _mysql_named_lock(storage, name) as held:
            yield held
    else:  # open_storage refuses such a database
        raise ConfigError(f"storage '{mask_url(str(url))}': no budget lock for the '{backend}' backend")


def _locked_connection(
    storage: optuna.storages.RDBStorage, lock: Callable[[sqlalchemy.Connection], None]
) -> sqlalchemy.Connection:
    """A connection of its own on which `lock` ran; tried again while that fails for a transient reason (unless
    inside a unit of work, which is retried as a whole)."""

    def connect() -> sqlalchemy.Connection:
        connection = storage.engine.connect()
        try:
            lock(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    retry = float(getattr(storage, "retry_seconds", 0.0))
    return retry_transient(connect, "taking the budget lock", retry) if retry and retrying_each_call() else connect()


def _alive(connection: sqlalchemy.Connection, query: str) -> bool:
    import sqlalchemy

    try:
        return bool(connection.exec_driver_sql(query).scalar())
    except sqlalchemy.exc.SQLAlchemyError:
        return False


@contextlib.contextmanager
def _pg_advisory_lock(storage: optuna.storages.RDBStorage, key: int) -> Iterator[Callable[[], bool]]:
    import sqlalchemy

    def lock(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")

    connection = _locked_connection(storage, lock)
    try:
        yield lambda: _alive(connection, "SELECT 1")
    finally:
        try:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
            connection.commit()
        except sqlalchemy.exc.SQLAlchemyError as e:  # the session ended, and the server released its lock
            _logger.warning("budget lock: the database connection was lost (%s); the server released the lock", e)
        finally:
            connection.close()


@contextlib.contextmanager
def _mysql_named_lock(storage: optuna.storages.RDBStorage, name: str) -> Iterator[Callable[[], bool]]:
    import sqlalchemy

    def lock(connection: sqlalchemy.Connection) -> None:
        # GET_LOCK answers 1 once held, 0 when the wait ran out (another worker holds it: wait again).
        while connection.exec_driver_sql(f"SELECT GET_LOCK('{name}', {LOCK_WAIT_SECONDS})").scalar() != 1:
            _logger.debug("budget lock %s: still held by another worker", name)

    connection = _locked_connection(storage, lock)
    try:
        yield lambda: _alive(connection, f"SELECT IS_USED_LOCK('{name}') = CONNECTION_ID()")
    finally:
        try:
            connection.exec_driver_sql(f"SELECT RELEASE_LOCK('{name}')")
            connection.commit()
        except sqlalchemy.exc.SQLAlchemyError as e:  # the session ended, and the server released its lock
            _logger.warning("budget lock: the database connection was lost (%s); the server released the lock", e)
            connection.invalidate()  # never back to the pool: a live session would keep the lock
        finally:
            connection.close()


__all__ = ["budget_lock", "check_backend", "LOCKED_BACKENDS"]

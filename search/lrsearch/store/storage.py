"""Opening the study database: SQLite, PostgreSQL or MySQL/MariaDB, tuned for several workers, errors turned into
advice."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

from lrsearch import settings
from lrsearch.errors import StorageError
from lrsearch.store.budget_lock import check_backend
from lrsearch.store.retry import _chain, first_line, is_transient, retry_transient
from lrsearch.store.urls import check_sqlite_folder, mask_url, parse_url, require_database

if TYPE_CHECKING:
    import optuna
    import sqlalchemy

# A worker's trial is declared dead when no heartbeat came for settings.heartbeat_grace() seconds; then it is
# failed and run again. A worker retries a storage call that failed for a transient reason (lock timeout, dropped
# connection, server restarting) with backoff for settings.storage_retry_seconds(), then gives up (StorageError).
SQLITE_BUSY_TIMEOUT = 60  # seconds a writer waits for the lock before SQLite gives up
# Seconds to wait for a PostgreSQL server to answer a new connection (psycopg2 waits for the OS otherwise: minutes
# for a host that drops packets). A URL's own ?connect_timeout= wins.
CONNECT_TIMEOUT = 10

_logger = logging.getLogger(__name__)


def _retrying_storage_class() -> type[optuna.storages.RDBStorage]:
    """The RDBStorage class lrsearch opens (a function, so that a test can stand in for it)."""
    from lrsearch.store.optuna_rdb import RetryingRDBStorage

    return RetryingRDBStorage


def retry_seconds_of(storage: optuna.storages.BaseStorage) -> float:
    """How long the storage retries a failed call (0 for one opened without retries)."""
    from lrsearch.store.optuna_rdb import backend_of

    return float(getattr(backend_of(storage), "retry_seconds", 0.0))


def open_storage(url: str, *, retry_seconds: float = 0.0, must_exist: bool = False) -> optuna.storages.RDBStorage:
    """An RDBStorage for `url` (SQLite, PostgreSQL or MySQL/MariaDB), with heartbeats and retry of dead workers'
    trials. Another database is a ConfigError: lrsearch has no budget lock for it.

    With `retry_seconds` (workers do this), a database call that fails for a transient reason (lock timeout,
    dropped connection, server restarting) is tried again with backoff for that long; then StorageError.
    With `must_exist` (commands that only read), a SQLite file that is not there is an error, not a new database.
    """
    check_backend(url)
    if must_exist:
        require_database(url)
    if retry_seconds:
        opening = functools.partial(_open_storage, url, retry_seconds)
        return retry_transient(opening, "opening the storage", retry_seconds, mask_url(url))
    return _open_storage(url, 0.0)


def _open_storage(url: str, retry_seconds: float) -> optuna.storages.RDBStorage:
    import optuna
    import sqlalchemy

    shown = mask_url(url)
    parsed = parse_url(url)
    engine_kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
        check_sqlite_folder(url)
    else:
        engine_kwargs["pool_pre_ping"] = True  # survive a server restart between two uses of a pooled connection
        if parsed.get_driver_name() == "psycopg2":
            engine_kwargs["connect_args"] = _postgres_connect_args(parsed)
    try:
        storage = _new_storage(url, engine_kwargs)
        if parsed.get_backend_name() == "sqlite":
            _tune_sqlite(storage.engine)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError):
        driver = f"{parsed.get_backend_name()} driver '{parsed.get_driver_name()}'"
        raise StorageError(
            f"storage '{shown}': the {driver} is not installed (or not known to SQLAlchemy); install it, or for "
            "PostgreSQL use postgresql+psycopg2://... after pip install 'lrsearch[postgres]' (psycopg2-binary), "
            "for MySQL/MariaDB mysql+pymysql://... after pip install 'lrsearch[mysql]' (PyMySQL)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        if retry_seconds and is_transient(e):
            raise  # retry_transient tries again
        raise StorageError(
            f"cannot open storage '{shown}': {first_line(e)}; check that the database server runs and that the "
            "URL (host, port, user, password, database) is right"
        ) from None
    from lrsearch.store.optuna_rdb import log_path, missing_piece

    storage.retry_seconds, storage.shown_url = retry_seconds, shown  # type: ignore[attr-defined]
    storage.batched = missing_piece() is None  # type: ignore[attr-defined]
    log_path()
    return storage


def _postgres_connect_args(parsed: sqlalchemy.URL) -> dict[str, object]:
    """A connect timeout, and synchronous_commit=off for lrsearch's own sessions: a commit then returns before
    the server has flushed its log to disk (benchmarks/storage_overhead.py measures what it saves). A crashed or
    killed worker still loses nothing; a crash of the server itself may lose the last fraction of a second of
    commits, never the database's consistency. Settings given in the URL (?connect_timeout=, ?options=) win."""
    args: dict[str, object] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = CONNECT_TIMEOUT
    if "options" not in parsed.query:
        args["options"] = "-c synchronous_commit=off"
    return args


def _tune_sqlite(engine: Any) -> None:
    """WAL lets the dashboard read while workers write (the mode is kept in the database file). With WAL,
    synchronous=NORMAL syncs at checkpoints instead of every commit (benchmarks/storage_overhead.py measures what
    it saves). A crashed or killed process still loses nothing; a power cut or kernel
    crash may lose the last commits, never the database's consistency."""
    import sqlalchemy

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # the connections Optuna opened before the listener are closed and reopened with it
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")


def _new_storage(url: str, engine_kwargs: dict[str, object]) -> optuna.storages.RDBStorage:
    import optuna
    import sqlalchemy

    from lrsearch.store.trial_retry import RetryCopy

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _retrying_storage_class()(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=settings.heartbeat_interval(),
                    grace_period=settings.heartbeat_grace(),
                    heartbeat_stale_trial_callback=RetryCopy(),
                )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            # Two processes opening a new database at the same moment both create its tables; the slower one
            # hits a unique constraint and finds the tables made when it tries again.
            if attempt == 2 or not any(isinstance(c, sqlalchemy.exc.IntegrityError) for c in _chain(e)):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")

"""Opening the study database: any SQLAlchemy URL, tuned for several workers, errors turned into advice."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lrsearch import settings
from lrsearch.errors import StorageError
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


# The RDBStorage methods that talk to the database: the public ones and the private ones optuna's cache calls.
_RETRIED_METHODS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


@functools.cache
def _retrying_storage_class() -> type[optuna.storages.RDBStorage]:
    """RDBStorage whose database calls go through `retry_transient` for `retry_seconds` (0: called once)."""
    from optuna.storages import RDBStorage

    def retried(name: str, method: Callable[..., Any] | None = None) -> Callable[..., Any]:
        method = method or getattr(RDBStorage, name)

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.retry_seconds:
                return method(self, *args, **kwargs)
            return retry_transient(lambda: method(self, *args, **kwargs), name, self.retry_seconds, self.shown_url)

        return wrapper

    from lrsearch.store.batching import save_study_note, set_trial_data

    namespace: dict[str, Any] = {name: retried(name) for name in _RETRIED_METHODS}
    namespace.update(retry_seconds=0.0, shown_url="")
    namespace["set_trial_data"] = retried("set_trial_data", set_trial_data)
    namespace["save_study_note"] = retried("save_study_note", save_study_note)
    return type("RetryingRDBStorage", (RDBStorage,), namespace)


def retry_seconds_of(storage: optuna.storages.BaseStorage) -> float:
    """How long the storage retries a failed call (0 for one opened without retries)."""
    backend = getattr(storage, "_backend", storage)  # optuna wraps an RDBStorage in its cache
    return float(getattr(backend, "retry_seconds", 0.0))


def open_storage(url: str, *, retry_seconds: float = 0.0, must_exist: bool = False) -> optuna.storages.RDBStorage:
    """An RDBStorage for `url`, with heartbeats and retry of dead workers' trials.

    With `retry_seconds` (workers do this), a database call that fails for a transient reason (lock timeout,
    dropped connection, server restarting) is tried again with backoff for that long; then StorageError.
    With `must_exist` (commands that only read), a SQLite file that is not there is an error, not a new database.
    """
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
            "PostgreSQL use postgresql+psycopg2://... after pip install 'lrsearch[postgres]' (psycopg2-binary)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        if retry_seconds and is_transient(e):
            raise  # retry_transient tries again
        raise StorageError(
            f"cannot open storage '{shown}': {first_line(e)}; check that the database server runs and that the "
            "URL (host, port, user, password, database) is right"
        ) from None
    storage.retry_seconds, storage.shown_url = retry_seconds, shown  # type: ignore[attr-defined]
    return storage


def _postgres_connect_args(parsed: sqlalchemy.URL) -> dict[str, object]:
    """A connect timeout, and synchronous_commit=off for lrsearch's own sessions: a commit then returns before
    the server has flushed its log to disk (one attribute write to a local server: about 9 ms -> 3 ms; see
    benchmarks/storage_overhead.py for a whole trial). A crashed or killed worker still loses nothing; a crash of
    the server itself may lose the last fraction of a second of commits, never the database's consistency.
    Settings given in the URL (?connect_timeout=, ?options=) win."""
    args: dict[str, object] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = CONNECT_TIMEOUT
    if "options" not in parsed.query:
        args["options"] = "-c synchronous_commit=off"
    return args


def _tune_sqlite(engine: Any) -> None:
    """WAL lets the dashboard read while workers write (the mode is kept in the database file). With WAL,
    synchronous=NORMAL syncs at checkpoints instead of every commit: about 100 ms less storage time per trial
    (benchmarks/storage_overhead.py). A crashed or killed process still loses nothing; a power cut or kernel
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

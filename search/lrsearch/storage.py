"""Opening the study database: any SQLAlchemy URL, tuned for several workers, errors turned into advice."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lrsearch.errors import ConfigError, StorageError

if TYPE_CHECKING:
    import optuna
    import sqlalchemy

DEFAULT_STORAGE = "sqlite:///lrsearch.db"
# A worker's trial is declared dead when no heartbeat came for GRACE seconds; then it is failed and run again.
HEARTBEAT_INTERVAL = int(os.environ.get("LRSEARCH_HEARTBEAT_INTERVAL", "20"))
HEARTBEAT_GRACE = int(os.environ.get("LRSEARCH_HEARTBEAT_GRACE", "120"))
SQLITE_BUSY_TIMEOUT = 60  # seconds a writer waits for the lock before SQLite gives up
# A worker retries a storage call that failed for a transient reason (lock timeout, dropped connection, server
# restarting) with backoff for this long, then gives up with a StorageError.
STORAGE_RETRY_SECONDS = float(os.environ.get("LRSEARCH_STORAGE_RETRY_SECONDS", "300"))
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0
# Seconds to wait for a PostgreSQL server to answer a new connection (psycopg2 waits for the OS otherwise: minutes
# for a host that drops packets). A URL's own ?connect_timeout= wins.
CONNECT_TIMEOUT = 10
URL_EXAMPLES = "e.g. sqlite:///lrsearch.db or postgresql+psycopg2://user:password@host:5432/dbname"

# "Operational" errors that waiting does not fix: a wrong URL, password, database name or path.
_PERMANENT = (
    "authentication failed",
    "does not exist",
    "no password supplied",
    "could not translate host name",
    "unable to open database file",
    "Name or service not known",
)

_logger = logging.getLogger(__name__)
T = TypeVar("T")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and messages."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and its causes (optuna wraps SQLAlchemy's error, which wraps the driver's)."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def is_transient(error: BaseException) -> bool:
    """True for a storage failure that may pass if tried again: lock timeout, lost connection, server down."""
    import sqlalchemy

    transient = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.DisconnectionError,
    )
    chain = list(_chain(error))
    if any(marker in str(e) for e in chain for marker in _PERMANENT):
        return False
    return any(
        isinstance(e, transient) or (isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated)
        for e in chain
    )


def first_line(error: BaseException) -> str:
    """The driver's message of a storage error (first line, password masked), not SQLAlchemy's boilerplate."""
    import sqlalchemy

    for e in _chain(error):
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.orig is not None:
            error = e.orig
            break
    lines = str(error).strip().splitlines()
    return mask_url(lines[0] if lines else type(error).__name__)


def retry_transient(call: Callable[[], T], what: str, retry_seconds: float, shown_url: str = "") -> T:
    """`call()`, tried again with backoff while it fails for a transient reason, for `retry_seconds`."""
    deadline = time.monotonic() + retry_seconds
    delay = BACKOFF_FIRST
    while True:
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(
                    f"the study database {shown_url or ''} stayed unreachable for {retry_seconds:.0f}s "
                    f"({what}: {first_line(e)}); check that the database server runs and the URL is right, "
                    "then start the worker again (a trial it was running is re-run by another worker)"
                ) from e
            _logger.warning("storage error in %s (%s); retrying in %.1fs", what, first_line(e), min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, BACKOFF_MAX)


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

    from lrsearch.batching import save_study_note, set_trial_data

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


def parse_url(url: str) -> sqlalchemy.URL:
    """The parsed storage URL; a malformed one is a ConfigError that shows it with its password masked."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        problem = "its port is not a number" if isinstance(e, ValueError) else "it is not a SQLAlchemy URL"
        raise ConfigError(f"storage URL '{mask_url(url)}': {problem}; use {URL_EXAMPLES}") from None


def sqlite_file(url: str | sqlalchemy.URL) -> Path | None:
    """The database file of a SQLite URL (None for other databases and for an in-memory one)."""
    parsed = parse_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(os.path.abspath(parsed.database))


def check_sqlite_folder(url: str) -> Path | None:
    """The database file of a SQLite URL (see `sqlite_file`), whose folder must exist."""
    file = sqlite_file(url)
    if file is not None and not file.parent.is_dir():
        raise ConfigError(f"storage '{mask_url(url)}': folder {file.parent} does not exist; create it or fix the path")
    return file


def is_new_database(url: str) -> bool:
    """True for a SQLite URL whose file does not exist yet: it holds no study, and opening it would create it.
    Its folder must exist."""
    file = check_sqlite_folder(url)
    return file is not None and not file.exists()


def require_database(url: str) -> None:
    """A SQLite URL must name an existing file: a typo in --storage must not create an empty database."""
    file = sqlite_file(url)
    if file is not None and not file.is_file():
        raise ConfigError(
            f"storage '{mask_url(url)}': the database file {file} does not exist; check --storage (or "
            "LRSEARCH_STORAGE), or create a study there first with lrsearch start or lrsearch create"
        )


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
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _retrying_storage_class()(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    grace_period=HEARTBEAT_GRACE,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            # Two processes opening a new database at the same moment both create its tables; the slower one
            # hits a unique constraint and finds the tables made when it tries again.
            if attempt == 2 or not any(isinstance(c, sqlalchemy.exc.IntegrityError) for c in _chain(e)):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")

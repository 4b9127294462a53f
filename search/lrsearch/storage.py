"""Opening the study database: any SQLAlchemy URL, tuned for several workers, errors turned into advice."""

from __future__ import annotations

import os
import re
import warnings
from typing import TYPE_CHECKING

from lrsearch.errors import StorageError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///lrsearch.db"
# A worker's trial is declared dead when no heartbeat came for GRACE seconds; then it is failed and run again.
HEARTBEAT_INTERVAL = int(os.environ.get("LRSEARCH_HEARTBEAT_INTERVAL", "20"))
HEARTBEAT_GRACE = int(os.environ.get("LRSEARCH_HEARTBEAT_GRACE", "120"))
SQLITE_BUSY_TIMEOUT = 60  # seconds a writer waits for the lock before SQLite gives up


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and messages."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDBStorage for `url`, with heartbeats and retry of dead workers' trials."""
    import optuna
    import sqlalchemy
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    shown = mask_url(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage URL '{shown}' is not a SQLAlchemy URL; use e.g. sqlite:///lrsearch.db or "
            "postgresql+psycopg2://user:password@host:5432/dbname"
        ) from None
    engine_kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
        if parsed.database and parsed.database != ":memory:":
            folder = os.path.dirname(os.path.abspath(parsed.database))
            if not os.path.isdir(folder):
                raise StorageError(f"storage '{shown}': folder {folder} does not exist; create it or fix the path")
    else:
        engine_kwargs["pool_pre_ping"] = True  # survive a server restart between two uses of a pooled connection
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=HEARTBEAT_GRACE,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise StorageError(
            f"storage '{shown}': the database driver is not installed ({e}); for PostgreSQL run "
            "pip install 'lrsearch[postgres]' (psycopg2-binary)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        message = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"cannot open storage '{shown}': {mask_url(message)}") from None
    if parsed.get_backend_name() == "sqlite":
        # WAL lets the dashboard read while workers write; the mode is kept in the database file.
        with storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage

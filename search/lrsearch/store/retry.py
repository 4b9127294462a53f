"""Retrying storage work that failed for a transient reason: lock timeout, dropped connection, server restart.

What is retried where:

- a unit of work of the worker (`unit_of_work`): claiming a trial (the budget lock, reaping dead workers'
  trials, counting, asking, the trial's first heartbeat) and telling a trial's result. The whole unit runs
  again from its start, with backoff, for the storage's retry time; inside it each storage call is made once.
  Each unit is safe to repeat: a trial made by an ask whose answer was lost (or whose first heartbeat failed)
  stays RUNNING without a heartbeat, holds its place, and is voided (or failed and queued again, for a queued
  retry) by a reaping once the grace period has passed (lrsearch.store.liveness); a repeated reaping finds the
  trials it already failed finished and leaves them; a repeated tell of a finished trial is skipped.
- every other storage call, one by one, with the same backoff (lrsearch.store.optuna_rdb.RetryingRDBStorage):
  a trial's writes while it trains (its sampled parameters, an epoch's report and history, its final attributes
  and dashboard note are each one transaction, so the call is the unit), heartbeats, opening the storage.

Whether an error is transient is read from the driver's error code (`is_transient`), not from its message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from lrsearch.errors import DatabaseUnreachableError
from lrsearch.store.urls import mask_url

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0

# PostgreSQL SQLSTATEs (psycopg2 `pgcode`) that waiting may fix: the classes below, and single codes.
_PG_TRANSIENT_CLASSES = ("08", "40")  # connection exception; transaction rollback (serialization, deadlock)
_PG_TRANSIENT = {
    "53300",  # too_many_connections
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up)
}
# SQLite primary result codes (sqlite3 `sqlite_errorcode`, whose low byte is the primary code).
_SQLITE_TRANSIENT = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
# MySQL/MariaDB error numbers (pymysql `args[0]`).
_MYSQL_TRANSIENT = {
    0,  # pymysql: the connection was already closed
    1040,  # too many connections
    1053,  # server shutdown in progress
    1205,  # lock wait timeout
    1213,  # deadlock
    1927,  # connection killed (MariaDB)
    2002,  # can't connect through the socket
    2003,  # can't connect to the server
    2006,  # server has gone away
    2013,  # lost connection during query
}

_logger = logging.getLogger(__name__)
_unit = threading.local()
T = TypeVar("T")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and its causes (optuna wraps SQLAlchemy's error, which wraps the driver's)."""
    seen: BaseException | None = error
    for _ in range(6):
        if seen is None:
            return
        yield seen
        orig = getattr(seen, "orig", None)  # SQLAlchemy's DBAPIError holds the driver's error
        seen = orig if isinstance(orig, BaseException) and orig is not seen else seen.__cause__ or seen.__context__


def driver_code(error: BaseException) -> tuple[str, str | int] | None:
    """(driver family, code) of a database driver's error: ("postgresql", SQLSTATE), ("sqlite", primary result
    code), ("mysql", error number); None for an error that carries none."""
    if type(error).__module__.startswith("pymysql"):
        return ("mysql", error.args[0]) if error.args and isinstance(error.args[0], int) else None
    sqlstate = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)  # psycopg2, psycopg
    if isinstance(sqlstate, str) and sqlstate:
        return "postgresql", sqlstate
    sqlite_code = getattr(error, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return "sqlite", sqlite_code & 0xFF
    return None


def _transient_code(family: str, code: str | int) -> bool:
    if family == "postgresql":
        return str(code)[:2] in _PG_TRANSIENT_CLASSES or code in _PG_TRANSIENT
    if family == "sqlite":
        return code in _SQLITE_TRANSIENT
    return code in _MYSQL_TRANSIENT


def is_transient(error: BaseException) -> bool:
    """True for a storage failure that may pass if tried again: lock timeout, lost connection, server down.

    A driver's error code decides (see the tables above; any other code, e.g. a wrong password, database name or
    SQL, is permanent). A connection SQLAlchemy saw dropped is transient. An error without a code (psycopg2's
    failure to connect: refused, no route, and also the server's refusal of a login, which libpq reports as text
    only) is transient when SQLAlchemy calls it operational or an interface error.
    """
    import sqlalchemy

    chain = list(_chain(error))
    if any(isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated for e in chain):
        return True
    for e in chain:
        code = driver_code(e)
        if code is not None:
            return _transient_code(*code)
    transient = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError)
    return any(isinstance(e, transient) for e in chain)


def first_line(error: BaseException) -> str:
    """The driver's message of a storage error (first line, password masked), not SQLAlchemy's boilerplate."""
    import sqlalchemy

    for e in _chain(error):
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.orig is not None:
            error = e.orig
            break
    lines = str(error).strip().splitlines()
    return mask_url(lines[0] if lines else type(error).__name__)


def retrying_each_call() -> bool:
    """False inside a unit of work in this thread: the unit is retried as a whole, so its calls are made once."""
    return not getattr(_unit, "active", False)


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
                raise DatabaseUnreachableError(
                    f"the study database {shown_url or ''} stayed unreachable for {retry_seconds:.0f}s "
                    f"({what}: {first_line(e)}); check that the database server runs and the URL is right, "
                    "then start the worker again (a trial it was running is re-run by another worker)"
                ) from e
            _logger.warning("storage error in %s (%s); retrying in %.1fs", what, first_line(e), min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, BACKOFF_MAX)


def unit_of_work(call: Callable[[], T], what: str, retry_seconds: float, shown_url: str = "") -> T:
    """`call()` as one unit: run again from its start while it fails for a transient reason (for `retry_seconds`;
    0: once), its storage calls made once each. Nested units belong to the outermost."""
    if not retrying_each_call() or not retry_seconds:
        return call()

    def once() -> T:
        with _inside_unit():
            return call()

    return retry_transient(once, what, retry_seconds, shown_url)


@contextlib.contextmanager
def _inside_unit() -> Iterator[None]:
    _unit.active = True
    try:
        yield
    finally:
        _unit.active = False

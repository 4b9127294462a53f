"""Retrying a storage call that failed for a transient reason: lock timeout, dropped connection, server restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from lrsearch.errors import DatabaseUnreachableError
from lrsearch.store.urls import mask_url

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0
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
                raise DatabaseUnreachableError(
                    f"the study database {shown_url or ''} stayed unreachable for {retry_seconds:.0f}s "
                    f"({what}: {first_line(e)}); check that the database server runs and the URL is right, "
                    "then start the worker again (a trial it was running is re-run by another worker)"
                ) from e
            _logger.warning("storage error in %s (%s); retrying in %.1fs", what, first_line(e), min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, BACKOFF_MAX)

"""Storage URLs: parsing, the SQLite file behind one, masking passwords for messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

from lrsearch.errors import ConfigError

if TYPE_CHECKING:
    import sqlalchemy

DEFAULT_STORAGE = "sqlite:///lrsearch.db"
URL_EXAMPLES = "e.g. sqlite:///lrsearch.db or postgresql+psycopg2://user:password@host:5432/dbname"


# Query parameters whose value is a secret, e.g. ?password=, ?sslpassword= (libpq reads both).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
# Text that is not one URL (an error message, an unparsable URL): the user info up to the token's last @ ...
_USERINFO = re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/@\s'\"]*:)[^\s'\"]*@")
# ... and the value of any secret-looking query parameter.
_QUERY_SECRET = re.compile(r"([?&;][^=&\s'\"]*(?:pass|pwd|secret|token)[^=&\s'\"]*=)[^&\s'\"#]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """The URL (or a message holding URLs) with its passwords replaced by ***, for logs and messages.

    A URL SQLAlchemy parses is shown as SQLAlchemy renders it, with secret query parameters (`?password=`,
    `?sslpassword=`) masked too; a password holding a raw @ is hidden up to the last @. Other text is masked
    by pattern.
    """
    import sqlalchemy

    if not text or any(c.isspace() for c in text):
        return _mask_text(text)
    try:
        url = sqlalchemy.engine.make_url(text)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return _mask_text(text)
    if url.host is not None and "@" in url.host:  # SQLAlchemy cut a password with a raw @ at its first @
        url = url.set(host=url.host.rsplit("@", 1)[1], password="***")
    shown = url.set(query={}).render_as_string(hide_password=True)
    if url.query:
        values = [(key, value) for key, values in url.query.items() for value in _as_tuple(values)]
        shown += "?" + "&".join(
            f"{quote_plus(key)}={'***' if _SECRET_KEY.search(key) else quote_plus(value)}" for key, value in values
        )
    return shown


def _as_tuple(values: str | tuple[str, ...]) -> tuple[str, ...]:
    return (values,) if isinstance(values, str) else values


def _mask_text(text: str) -> str:
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def parse_url(url: str) -> sqlalchemy.URL:
    """The parsed storage URL; a malformed one is a ConfigError that shows it with its password masked."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        problem = "its port is not a number" if isinstance(e, ValueError) else "it is not a SQLAlchemy URL"
        raise ConfigError(f"storage URL '{mask_url(url)}': {problem}; use {URL_EXAMPLES}") from None
    if parsed.host is not None and "@" in parsed.host:
        raise ConfigError(
            f"storage URL '{mask_url(url)}': its user name or password holds a raw '@'; write it as %40 "
            "(percent-encode their special characters: @ %40, : %3A, / %2F, % %25)"
        )
    return parsed


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

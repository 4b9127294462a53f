"""Storage URLs: parsing, the SQLite file behind one, masking passwords for messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from lrsearch.errors import ConfigError

if TYPE_CHECKING:
    import sqlalchemy

DEFAULT_STORAGE = "sqlite:///lrsearch.db"
URL_EXAMPLES = "e.g. sqlite:///lrsearch.db or postgresql+psycopg2://user:password@host:5432/dbname"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and messages."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


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

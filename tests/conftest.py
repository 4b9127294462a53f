from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import sqlalchemy

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST (torchvision layout), named by LRSEARCH_DATA_DIR; CI sets it."""
    folder = os.environ.get("LRSEARCH_DATA_DIR")
    if not folder or not (Path(folder) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip("the real MNIST is not here: set LRSEARCH_DATA_DIR to the folder holding MNIST/raw")
    return Path(folder)


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for lrsearch processes started by tests: the synthetic objective importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return env


def write_study(folder: Path, body: str = "", *, name: str = "synthetic", trials: int = 4, epochs: int = 3) -> Path:
    """A study file on the synthetic objective; `body` adds or replaces tables."""
    path = folder / f"{name}.toml"
    head = f'[study]\nname = "{name}"\ntrials = {trials}\nepochs = {epochs}\n\n'
    if "[objective]" not in body:
        head += '[objective]\nname = "synthetic_objective:Synthetic"\n\n'
    path.write_text(head + body, encoding="utf-8")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


SERVER = os.environ.get("LRSEARCH_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _connect(url: sqlalchemy.URL) -> object:
    import psycopg2

    return psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database,
        connect_timeout=3,
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install 'lrsearch[postgres]'")
    import psycopg2
    import sqlalchemy

    from lrsearch.store.urls import mask_url

    server = sqlalchemy.engine.make_url(SERVER)
    name = f"lrsearch_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(server, f'CREATE DATABASE "{name}"')
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL server answers at {mask_url(SERVER)} (set LRSEARCH_TEST_POSTGRES): {e}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:  # a new connection: a test may have restarted the server
        _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(server: sqlalchemy.URL, statement: str) -> None:
    admin = _connect(server)
    admin.autocommit = True  # type: ignore[attr-defined]
    try:
        with admin.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(statement)
    finally:
        admin.close()  # type: ignore[attr-defined]


MYSQL_SERVER = os.environ.get("LRSEARCH_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


def mysql_connect(url: sqlalchemy.URL, **kwargs: object) -> object:
    import pymysql

    return pymysql.connect(
        host=url.host,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        connect_timeout=3,
        autocommit=True,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A new, empty database on the MySQL/MariaDB test server; dropped afterwards."""
    pytest.importorskip("pymysql", reason="PyMySQL is not installed: pip install 'lrsearch[mysql]'")
    import pymysql
    import sqlalchemy

    from lrsearch.store.urls import mask_url

    server = sqlalchemy.engine.make_url(MYSQL_SERVER)
    name = f"lrsearch_test_{uuid.uuid4().hex[:12]}"
    try:
        _mysql_admin(server, f"CREATE DATABASE `{name}`")
    except pymysql.err.OperationalError as e:
        pytest.skip(f"no MySQL/MariaDB server answers at {mask_url(MYSQL_SERVER)} (set LRSEARCH_TEST_MYSQL): {e}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        _mysql_admin(server, f"DROP DATABASE IF EXISTS `{name}`")


def _mysql_admin(server: sqlalchemy.URL, statement: str) -> None:
    admin = mysql_connect(server)
    try:
        with admin.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(statement)
    finally:
        admin.close()  # type: ignore[attr-defined]


sys.path.insert(0, str(TESTS))
# Processes started by tests find `lrsearch` (and pip) of this interpreter, whether or not the venv is activated.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

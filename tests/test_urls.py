"""Passwords in storage URLs never reach a message: SQLAlchemy's rendering, query parameters, text that is no URL."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_study
from lrsearch.errors import ConfigError
from lrsearch.store.urls import mask_url, parse_url

MASKED = [
    ("postgresql://u:secret@host/db", "postgresql://u:***@host/db"),
    ("postgresql+psycopg2://u:p%40ss%2Fw@host:5433/db", "postgresql+psycopg2://u:***@host:5433/db"),
    (
        "postgresql://u:s3cret@host/db?password=secret&sslmode=require",
        "postgresql://u:***@host/db?password=***&sslmode=require",
    ),
    (
        "postgresql://host/db?user=u&password=secret&sslpassword=secret",
        "postgresql://host/db?user=u&password=***&sslpassword=***",
    ),
    ("postgresql://u@host/db", "postgresql://u@host/db"),
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
    # a raw @ in the password: SQLAlchemy cuts the password at the first @; all up to the last @ is hidden
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("mysql+pymysql://root:a@b@c@127.0.0.1:3306/test", "mysql+pymysql://root:***@127.0.0.1:3306/test"),
    # not a URL SQLAlchemy parses: still no password
    ("postgresql://u:secret@host:notaport/db", "postgresql://u:***@host:notaport/db"),
    (
        "connect to postgresql://u:se@cret@host/db?password=secret failed",
        "connect to postgresql://u:***@host/db?password=*** failed",
    ),
    (
        "'postgresql://u:secret@h/db' and postgres://v:secret@h2/db",
        "'postgresql://u:***@h/db' and postgres://v:***@h2/db",
    ),
]


@pytest.mark.parametrize(("url", "shown"), MASKED)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert "secret" not in shown and "cret" not in shown


def test_a_raw_at_sign_in_the_password_is_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"'postgresql://u:\*\*\*@host/db': its user name or password holds a raw '@'; write it as %40 ",
    ):
        parse_url("postgresql://u:p@ss@host/db")


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: nothing listens there


URLS = [
    "postgresql+psycopg2://postgres:secret@127.0.0.1:{port}/test",
    "postgresql+psycopg2://postgres:se@cret@127.0.0.1:{port}/test",
    "postgresql+psycopg2://postgres@127.0.0.1:{port}/test?password=secret",
    "postgresql+psycopg2://postgres@127.0.0.1:{port}/test?sslpassword=secret&password=secret",
]


def test_studies_never_shows_a_password(closed_port: int, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    pytest.importorskip("psycopg2")
    url = URLS[2].format(port=closed_port)
    result = subprocess.run(
        [sys.executable, "-m", "lrsearch", "studies", "--storage", url],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1 and "secret" not in result.stderr, result.stderr
    assert f"'postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/test?password=***'" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("url", URLS)
def test_no_command_shows_a_password(
    url: str, closed_port: int, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    pytest.importorskip("psycopg2")
    url = url.format(port=closed_port)
    env = dict(subprocess_env, LRSEARCH_STORAGE_RETRY_SECONDS="0", LRSEARCH_WORKERS="1")
    study = write_study(tmp_path, trials=1, epochs=1)
    commands = [
        ["studies"],
        ["best"],
        ["trials", "--study-name", "x"],
        ["report", "--study-name", "x"],
        ["create", str(study)],
        ["start", str(study), "--dry-run"],
        ["worker", "--study-name", "x"],
        ["dashboard", "--port", "1"],
    ]
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "lrsearch", *command, "--storage", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
        output = result.stdout + result.stderr
        assert result.returncode in (1, 2) and "Traceback" not in output, output
        assert "secret" not in output and "cret" not in output, output
        assert "***" in output, output


@pytest.mark.postgres
def test_messages_of_a_working_database_show_no_password(
    pg_url: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """The server trusts its clients, so the passwords given here are never checked, only shown (masked)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(pg_url).set(password="secret", query={"password": "secret"})
    url_text = url.render_as_string(hide_password=False)
    env = dict(subprocess_env, LRSEARCH_ARTIFACT_DIR="off", LRSEARCH_WORKERS="1")
    study = write_study(tmp_path, trials=1, epochs=1)
    outputs = []
    for command in (["start", str(study), "--dry-run"], ["create", str(study)], ["start", str(study)], ["studies"]):
        result = subprocess.run(
            [sys.executable, "-m", "lrsearch", *command, "--storage", url_text],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    assert all("secret" not in output for output in outputs), outputs
    shown = mask_url(url_text)
    assert ":***@" in shown and "password=***" in shown
    assert f"Study 'synthetic' in {shown}: new" in outputs[0]  # the dry-run plan
    assert f"study 'synthetic' in {shown}: 0/1" in outputs[1]  # create
    assert f"lrsearch: study 'synthetic' in {shown}, 1 trials" in outputs[2]  # the start banner
    assert f"--storage {shown}" in outputs[2]  # the next step

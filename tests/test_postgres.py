"""Workers on the real PostgreSQL server named by LRSEARCH_TEST_POSTGRES (a fresh database per test)."""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import write_study
from lrsearch.cli import main
from lrsearch.storage import mask_url
from test_fleet import (
    SLOW,
    _no_leftover_processes,
    assert_exact,
    finish,
    lrsearch_process,
    mid_trial,
    process_env,
    wait_for,
)

__all__ = ["process_env", "_no_leftover_processes"]  # fixtures used here
SERVER = os.environ.get("LRSEARCH_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


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

    server = sqlalchemy.engine.make_url(SERVER)
    try:
        admin = _connect(server)
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL server answers at {mask_url(SERVER)} (set LRSEARCH_TEST_POSTGRES): {e}")
    admin.autocommit = True  # type: ignore[attr-defined]
    name = f"lrsearch_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()  # type: ignore[attr-defined]


def test_four_workers_keep_the_budget_and_every_epoch(tmp_path: Path, pg_url: str, process_env: dict[str, str]) -> None:
    total = 12
    study = write_study(tmp_path, trials=total, epochs=3)  # the median pruner prunes some
    code, err = finish(lrsearch_process(process_env, "start", str(study), "--storage", pg_url, "--workers", "4"))
    assert code == 0, err
    trials = assert_exact(pg_url, total)
    assert len(trials) == total and len({t.user_attrs["worker"] for t in trials}) >= 2
    for trial in trials:
        epochs = {r["epoch"] for r in trial.user_attrs["history"] if math.isfinite(r["train_loss"])}
        assert set(trial.intermediate_values) == epochs, trial.number  # every reported epoch is stored
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_workers_join_a_study_created_on_its_own(tmp_path: Path, pg_url: str, process_env: dict[str, str]) -> None:
    study = write_study(tmp_path, SLOW.format(samples=4000), trials=8, epochs=2)
    created = CliRunner().invoke(main, ["create", str(study), "--storage", pg_url])
    assert created.exit_code == 0 and "0/8 trials finished" in created.stderr
    args = ("worker", "--study-name", "synthetic", "--storage", pg_url)
    first = lrsearch_process(process_env, *args)
    second = lrsearch_process(process_env, *args)
    (code1, err1), (code2, err2) = finish(first), finish(second)
    assert code1 == 0 and code2 == 0, err1 + err2
    workers = Counter(t.user_attrs["worker"] for t in assert_exact(pg_url, 8))
    assert len(workers) == 2, workers


def test_workers_survive_dropped_connections(tmp_path: Path, pg_url: str, process_env: dict[str, str]) -> None:
    total = 8
    study = write_study(tmp_path, SLOW.format(samples=6000), trials=total, epochs=3)
    process = lrsearch_process(process_env, "start", str(study), "--storage", pg_url, "--workers", "3")
    wait_for(lambda: mid_trial(pg_url), 90, "a trial to run")
    database = sqlalchemy.engine.make_url(pg_url).database
    admin = _connect(sqlalchemy.engine.make_url(SERVER))
    admin.autocommit = True  # type: ignore[attr-defined]
    dropped = 0
    for _ in range(3):  # the server ends every session of the study's database, three times
        with admin.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            dropped += cursor.fetchone()[0]
        threading.Event().wait(1.5)
    admin.close()  # type: ignore[attr-defined]
    code, err = finish(process)
    assert dropped >= 3
    assert code == 0, err
    assert_exact(pg_url, total)

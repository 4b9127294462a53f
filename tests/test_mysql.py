"""Workers on the real MySQL/MariaDB server named by LRSEARCH_TEST_MYSQL (a fresh database per test)."""

from __future__ import annotations

import math
import threading
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import MYSQL_SERVER, mysql_connect, write_study
from lrsearch.cli import main
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
pytestmark = [pytest.mark.mysql, pytest.mark.slow]


def test_two_workers_keep_the_budget_and_every_epoch(
    tmp_path: Path, mysql_url: str, process_env: dict[str, str]
) -> None:
    total = 8
    study = write_study(tmp_path, trials=total, epochs=3)  # the median pruner prunes some
    code, err = finish(lrsearch_process(process_env, "start", str(study), "--storage", mysql_url, "--workers", "2"))
    assert code == 0, err
    trials = assert_exact(mysql_url, total)
    assert len(trials) == total and len({t.user_attrs["worker"] for t in trials}) == 2
    for trial in trials:
        epochs = {r["epoch"] for r in trial.user_attrs["history"] if math.isfinite(r["train_loss"])}
        assert set(trial.intermediate_values) == epochs, trial.number  # every reported epoch is stored
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_workers_join_a_study_created_on_its_own(tmp_path: Path, mysql_url: str, process_env: dict[str, str]) -> None:
    study = write_study(tmp_path, SLOW.format(samples=4000), trials=6, epochs=2)
    created = CliRunner().invoke(main, ["create", str(study), "--storage", mysql_url])
    assert created.exit_code == 0 and "0/6 trials finished" in created.stderr
    args = ("worker", "--study-name", "synthetic", "--storage", mysql_url)
    first = lrsearch_process(process_env, *args)
    second = lrsearch_process(process_env, *args)
    (code1, err1), (code2, err2) = finish(first), finish(second)
    assert code1 == 0 and code2 == 0, err1 + err2
    workers = Counter(t.user_attrs["worker"] for t in assert_exact(mysql_url, 6))
    assert len(workers) == 2, workers


def test_workers_survive_dropped_connections(tmp_path: Path, mysql_url: str, process_env: dict[str, str]) -> None:
    total = 6
    study = write_study(tmp_path, SLOW.format(samples=6000), trials=total, epochs=3)
    process = lrsearch_process(process_env, "start", str(study), "--storage", mysql_url, "--workers", "2")
    wait_for(lambda: mid_trial(mysql_url), 90, "a trial to run")
    database = sqlalchemy.engine.make_url(mysql_url).database
    admin = mysql_connect(sqlalchemy.engine.make_url(MYSQL_SERVER))
    dropped = 0
    for _ in range(3):  # the server ends every session of the study's database, three times
        with admin.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()", (database,)
            )
            for (session,) in cursor.fetchall():
                try:
                    cursor.execute(f"KILL {int(session)}")
                    dropped += 1
                except Exception:  # noqa: BLE001 - it ended on its own meanwhile
                    pass
        threading.Event().wait(1.5)
    admin.close()  # type: ignore[attr-defined]
    code, err = finish(process)
    assert dropped >= 3
    assert code == 0, err
    assert_exact(mysql_url, total)

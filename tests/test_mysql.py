"""Workers on the real MySQL/MariaDB server named by LRSEARCH_TEST_MYSQL (a fresh database per test)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy

from conftest import MYSQL_SERVER, mysql_connect, write_study
from test_fleet import (
    SLOW,
    _no_leftover_processes,
    assert_every_epoch_stored,
    assert_exact,
    assert_two_workers_join_a_created_study,
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
    assert_every_epoch_stored(trials)


def test_workers_join_a_study_created_on_its_own(tmp_path: Path, mysql_url: str, process_env: dict[str, str]) -> None:
    assert_two_workers_join_a_created_study(tmp_path, mysql_url, process_env, trials=6)


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

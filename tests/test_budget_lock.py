"""The budget lock of each database lrsearch supports, on the real SQLite, PostgreSQL and MariaDB/MySQL."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy

from conftest import MYSQL_SERVER, SERVER, _connect, mysql_connect, write_study
from lrsearch.fleet.worker import run_worker
from lrsearch.store.budget_lock import budget_lock
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import load_study_file
from lrsearch.study.lifecycle import create_or_resume, load

NO_PRUNING = '[pruner]\nname = "none"\n'


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    return str(request.getfixturevalue({"postgresql": "pg_url", "mysql": "mysql_url"}[request.param]))


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue({"postgresql": "pg_url", "mysql": "mysql_url"}[request.param]))


def test_the_lock_keeps_out_a_second_worker_until_the_first_lets_go(db_url: str) -> None:
    first, second = open_storage(db_url), open_storage(db_url)  # two workers' storages
    events: list[str] = []
    second_tries, second_has_it = threading.Event(), threading.Event()

    def other_worker() -> None:
        second_tries.set()
        with budget_lock(second, "study"):
            events.append("second holds it")
            second_has_it.set()

    with budget_lock(first, "study") as held:
        assert held()
        thread = threading.Thread(target=other_worker)
        thread.start()
        second_tries.wait(10)
        assert not second_has_it.wait(1.5)  # it waits while the first holds the lock
        events.append("first lets go")
    thread.join(30)
    assert events == ["first lets go", "second holds it"]


def _kill_session_holding(url: str, study_name: str) -> None:
    """The database server ends the session that holds the study's budget lock, as when its connection drops."""
    if url.startswith("postgresql"):
        admin = _connect(sqlalchemy.engine.make_url(SERVER))
        admin.autocommit = True  # type: ignore[attr-defined]
        query = (
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = %s)"
        )
        params: tuple[object, ...] = (sqlalchemy.engine.make_url(url).database,)
    else:
        import hashlib

        admin = mysql_connect(sqlalchemy.engine.make_url(MYSQL_SERVER))
        name = "lrsearch:" + hashlib.sha256(study_name.encode()).hexdigest()[:40]
        query, params = "SELECT IS_USED_LOCK(%s)", (name,)
    with admin.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(query, params)
        holder = cursor.fetchone()[0]
        assert holder, "nobody holds the lock"
        if not url.startswith("postgresql"):
            cursor.execute(f"KILL {int(holder)}")
    admin.close()  # type: ignore[attr-defined]


def test_held_says_when_the_locks_session_ended_and_the_server_lets_it_go(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(server_url)
    with caplog.at_level(logging.WARNING, logger="lrsearch.store.budget_lock"):
        with budget_lock(storage, "study") as held:
            assert held()
            _kill_session_holding(server_url, "study")
            assert not held()
    assert "the database connection was lost" in caplog.text
    with budget_lock(open_storage(server_url), "study") as held:  # the server released it: another worker gets it
        assert held()


def test_workers_in_threads_share_an_exact_budget(tmp_path: Path, server_url: str) -> None:
    definition = load_study_file(write_study(tmp_path, NO_PRUNING, trials=8, epochs=2))
    create_or_resume(open_storage(server_url), definition)
    results: list[int | BaseException] = []

    def work() -> None:
        try:
            results.append(run_worker(server_url, definition.name))
        except BaseException as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert all(isinstance(r, int) for r in results), results
    assert sum(r for r in results if isinstance(r, int)) == 8
    study, _ = load(open_storage(server_url), definition.name)
    assert Counter(t.state.name for t in study.get_trials(deepcopy=False)) == Counter(COMPLETE=8)

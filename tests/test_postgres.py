"""Workers on the real PostgreSQL server named by LRSEARCH_TEST_POSTGRES (a fresh database per test)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from conftest import SERVER, _connect, write_study
from lrsearch.store.storage import open_storage
from lrsearch.study.lifecycle import VOID_ATTR
from test_fleet import (
    SLOW,
    _no_leftover_processes,
    assert_every_epoch_stored,
    assert_exact,
    assert_two_workers_join_a_created_study,
    count,
    finish,
    lrsearch_process,
    mid_trial,
    process_env,
    read_trials,
    wait_for,
)

__all__ = ["process_env", "_no_leftover_processes"]  # fixtures used here
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_four_workers_keep_the_budget_and_every_epoch(tmp_path: Path, pg_url: str, process_env: dict[str, str]) -> None:
    total = 12
    study = write_study(tmp_path, trials=total, epochs=3)  # the median pruner prunes some
    code, err = finish(lrsearch_process(process_env, "start", str(study), "--storage", pg_url, "--workers", "4"))
    assert code == 0, err
    trials = assert_exact(pg_url, total)
    assert len(trials) == total and len({t.user_attrs["worker"] for t in trials}) >= 2
    assert_every_epoch_stored(trials)


def test_workers_join_a_study_created_on_its_own(tmp_path: Path, pg_url: str, process_env: dict[str, str]) -> None:
    assert_two_workers_join_a_created_study(tmp_path, pg_url, process_env, trials=8)


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


# --- the server going away ---------------------------------------------------------------------------------


def _local_cluster(port: int) -> tuple[str, str] | None:
    """(version, name) of the Debian/Ubuntu PostgreSQL cluster on this port (pg_lsclusters), if there is one."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == str(port):
            return version, name
    return None


def _pg_ctlcluster(cluster: tuple[str, str], action: str, *options: str) -> None:
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action, *options]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _wait_until_ready(url: sqlalchemy.URL, timeout: float = 120) -> None:
    command = ["pg_isready", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-t", "2"]
    deadline = time.monotonic() + timeout
    while subprocess.run(command, capture_output=True, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"PostgreSQL did not come back within {timeout:.0f}s"
        time.sleep(0.5)


def _epochs(trial: FrozenTrial) -> set[int]:
    return {r["epoch"] for r in trial.user_attrs["history"] if math.isfinite(r["train_loss"])}


def test_workers_wait_for_a_server_restart_and_lose_nothing(
    tmp_path: Path, pg_url: str, process_env: dict[str, str]
) -> None:
    server = sqlalchemy.engine.make_url(SERVER)
    cluster = _local_cluster(server.port or 5432)
    if cluster is None or server.host not in ("127.0.0.1", "localhost"):
        pytest.skip("needs pg_ctlcluster/pg_lsclusters and the test server in a cluster of this host")
    if os.geteuid() != 0:
        pytest.skip("stopping and starting the PostgreSQL cluster needs root")
    total = 8
    study = write_study(tmp_path, SLOW.format(samples=6000), trials=total, epochs=3)
    # Retry far longer than the outage; a grace period above it, so that no live trial is taken for dead.
    env = dict(process_env, LRSEARCH_STORAGE_RETRY_SECONDS="180", LRSEARCH_HEARTBEAT_GRACE="120")
    process = lrsearch_process(env, "start", str(study), "--storage", pg_url, "--workers", "3")
    wait_for(lambda: _finished_and_running(pg_url), 120, "a finished trial and a running one")
    finished_before = {t.number: t for t in read_trials(pg_url) if t.state.is_finished()}
    try:
        _pg_ctlcluster(cluster, "stop", "-m", "fast")
        time.sleep(8)  # the workers train on, and their database calls fail and wait
    finally:
        _pg_ctlcluster(cluster, "start")
        _wait_until_ready(server)
    code, err = finish(process, timeout=300)
    assert code == 0, err
    assert "storage error in" in err and "retrying in" in err  # the outage was seen, and waited out
    trials = assert_exact(pg_url, total)
    assert count(trials)["FAIL"] == 0, count(trials)  # no trial was lost or run twice
    for trial in (t for t in trials if VOID_ATTR not in t.user_attrs):  # a void trial never ran
        assert set(trial.intermediate_values) == _epochs(trial), trial.number  # every epoch it reported is stored
    for number, before in finished_before.items():
        assert trials[number].values == before.values and trials[number].state == before.state
        assert trials[number].intermediate_values == before.intermediate_values


def _finished_and_running(url: str) -> bool:
    try:
        trials = read_trials(url)
    except (KeyError, optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):  # not created yet
        return False
    running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
    return bool(running) and any(t.state.is_finished() for t in trials)


def test_lrsearch_sessions_commit_without_waiting_for_the_disk(pg_url: str) -> None:
    storage = open_storage(pg_url)
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    own = open_storage(pg_url + "?options=-c%20synchronous_commit%3Don")  # the URL's own setting wins
    with own.engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"

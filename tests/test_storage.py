from __future__ import annotations

import sqlite3

import pytest

from lrsearch.storage import open_storage, set_user_attrs


def test_sqlite_runs_in_wal_mode_with_normal_sync(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    storage.engine.dispose()
    with storage.engine.connect() as connection:  # a connection opened after the storage was set up
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (FULL is 2)
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as other:  # the mode is kept in the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    study_id = storage.create_new_study([], "kept")
    assert open_storage(sqlite_url).get_study_id_from_name("kept") == study_id


def test_user_attributes_are_written_in_one_transaction(sqlite_url: str) -> None:
    import optuna
    import sqlalchemy

    storage = open_storage(sqlite_url)
    with pytest.warns(UserWarning, match="Heartbeat"):  # lrsearch's workers run the heartbeat themselves
        trial = optuna.create_study(storage=storage, study_name="attrs").ask()
    commits: list[object] = []
    sqlalchemy.event.listen(storage.engine, "commit", commits.append)
    set_user_attrs(trial, {"seed": 7, "strategy": "SGD(lr=0.1)", "curve": [0.5, None]})
    assert len(commits) == 1
    trial.set_user_attr("one", 1)
    assert len(commits) == 2  # what each attribute costs otherwise
    expected = {"seed": 7, "strategy": "SGD(lr=0.1)", "curve": [0.5, None], "one": 1}
    assert trial.user_attrs == expected
    assert open_storage(sqlite_url).get_trial(trial._trial_id).user_attrs == expected


def test_user_attributes_of_other_storages_are_written_one_by_one() -> None:
    import optuna

    trial = optuna.create_study().ask()  # Optuna's in-memory storage
    set_user_attrs(trial, {"seed": 7, "epoch": 3})
    assert trial.user_attrs == {"seed": 7, "epoch": 3}
    assert trial.study.trials[0].user_attrs == {"seed": 7, "epoch": 3}

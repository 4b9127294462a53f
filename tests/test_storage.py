from __future__ import annotations

import sqlite3

from lrsearch.store.storage import open_storage


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

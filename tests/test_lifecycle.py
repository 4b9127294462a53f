"""Creating a study while another process creates it: the study appears before its definition is stored."""

from __future__ import annotations

import threading

import optuna
import pytest

import lrsearch.study.lifecycle
from lrsearch.errors import StorageError
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import parse_table
from lrsearch.study.lifecycle import DEFINITION_ATTR, create_or_resume

DEFINITION = parse_table({"study": {"name": "racing", "trials": 3}, "objective": {"name": "mnist_mlp"}}, "test")


def _made_by_another_process(url: str) -> optuna.Study:
    """What another process's `create` leaves between its two writes: the study, without its definition yet."""
    return optuna.create_study(storage=url, study_name="racing", direction="maximize")


def test_a_study_another_process_is_creating_is_waited_for(sqlite_url: str) -> None:
    other = _made_by_another_process(sqlite_url)
    writer = threading.Timer(0.6, lambda: other.set_user_attr(DEFINITION_ATTR, DEFINITION.to_json()))
    writer.start()
    try:
        study = create_or_resume(open_storage(sqlite_url), DEFINITION)
    finally:
        writer.join()
    assert study.study_name == "racing" and study.user_attrs[DEFINITION_ATTR] == DEFINITION.to_json()


def test_a_study_that_never_gets_a_definition_is_not_lrsearchs(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lrsearch.study.lifecycle, "CREATING_SECONDS", 0.5)
    _made_by_another_process(sqlite_url)
    with pytest.raises(StorageError, match="was not made by lrsearch"):
        create_or_resume(open_storage(sqlite_url), DEFINITION)

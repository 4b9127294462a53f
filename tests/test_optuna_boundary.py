"""Optuna's and optuna-dashboard's private code is used in one module of lrsearch only: store/optuna_rdb.py."""

from __future__ import annotations

import ast
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from conftest import write_study
from lrsearch.fleet.worker import run_worker
from lrsearch.store import optuna_rdb
from lrsearch.store.batching import write_trial
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import load_study_file
from lrsearch.study.lifecycle import create_or_resume, load

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "store/optuna_rdb.py"
PRIVATE_PACKAGES = ("optuna", "optuna_dashboard")
# Private attributes of Optuna's objects (studies, trials, storages and their cache) that lrsearch reads.
OPTUNA_PRIVATE_ATTRIBUTES = {
    "_storage",
    "_study_id",
    "_trial_id",
    "_backend",
    "_cached_frozen_trial",
    "_read_trials_from_remote_storage",
    "_trial_id_to_study_id_and_number",
    "_studies",
    "_set_trial_param_without_commit",
    "_create_new_trial",
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_CONSTRAINTS_KEY",
}


def _private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in PRIVATE_PACKAGES and any(part.startswith("_") for part in parts[1:])


def violations(package: Path) -> list[str]:
    """`path:line: what` for each use of Optuna's private code outside the boundary module."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative == BOUNDARY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            what = None
            if isinstance(node, ast.Import):
                what = next((a.name for a in node.names if _private_module(a.name)), None)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PRIVATE_PACKAGES:
                private_names = [a.name for a in node.names if a.name.startswith("_")]
                if _private_module(node.module) or private_names:
                    what = f"from {node.module} import {', '.join(a.name for a in node.names)}"
            elif isinstance(node, ast.Attribute) and node.attr in OPTUNA_PRIVATE_ATTRIBUTES:
                own = isinstance(node.value, ast.Name) and node.value.id == "self"  # a class's own attribute
                what = None if own else f".{node.attr}"
            elif isinstance(node, ast.Constant) and node.value in OPTUNA_PRIVATE_ATTRIBUTES:
                what = f"{node.value!r}"  # getattr(x, "_backend", ...)
            if what is not None:
                found.append(f"{relative}:{getattr(node, 'lineno', 0)}: {what}")
    return found


def test_only_the_boundary_module_uses_optunas_private_code() -> None:
    assert violations(ROOT / "search" / "lrsearch") == []


def test_the_check_sees_each_kind_of_use(tmp_path: Path) -> None:
    package = tmp_path / "lrsearch"
    (package / "store").mkdir(parents=True)
    (package / BOUNDARY).write_text("from optuna.storages._rdb import models\nx = study._storage\n")
    (package / "a.py").write_text(
        "import optuna.storages._rdb.models\n"
        "from optuna.study._constrained_optimization import _CONSTRAINTS_KEY\n"
        "from optuna_dashboard import _note\n"
        "from optuna.trial import TrialState\n"  # public: fine
        "n = trial._trial_id\n"
        "b = getattr(storage, '_backend', storage)\n"
        "self._storage = 1\n"  # a class's own attribute: fine
    )
    assert violations(package) == [
        "a.py:1: optuna.storages._rdb.models",
        "a.py:2: from optuna.study._constrained_optimization import _CONSTRAINTS_KEY",
        "a.py:3: from optuna_dashboard import _note",
        "a.py:5: ._trial_id",
        "a.py:6: '_backend'",
    ]


# --- the two paths ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_path_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The path is checked and logged again in this test (once per process otherwise)."""
    monkeypatch.setenv("LRSEARCH_ARTIFACT_DIR", "off")
    check, log = optuna_rdb.missing_piece, optuna_rdb.log_path
    check.cache_clear()
    log.cache_clear()
    yield
    check.cache_clear()
    log.cache_clear()


def _worker_results(tmp_path: Path, url: str) -> list[optuna.trial.FrozenTrial]:
    definition = load_study_file(write_study(tmp_path, trials=2, epochs=2))
    create_or_resume(open_storage(url), definition)
    assert run_worker(url, definition.name) == 2
    study, _ = load(open_storage(url), definition.name)
    return study.trials


def test_the_installed_optuna_takes_the_batched_path(
    tmp_path: Path, sqlite_url: str, fresh_path_check: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert optuna_rdb.missing_piece() is None
    with caplog.at_level(logging.INFO, logger="lrsearch.store"):
        trials = _worker_results(tmp_path, sqlite_url)
    assert f"lrsearch storage: batched writes (optuna {optuna.__version__})" in caplog.messages
    assert caplog.text.count("lrsearch storage:") == 1  # one line per process
    study, _ = load(open_storage(sqlite_url), "synthetic")
    assert isinstance(optuna_rdb.storage_of(study), optuna_rdb.SharingCache)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_a_missing_piece_or_another_optuna_is_named(monkeypatch: pytest.MonkeyPatch, fresh_path_check: None) -> None:
    pieces = (*optuna_rdb._PIECES, ("optuna.storages._rdb.models", ("NoSuchModel",)))
    monkeypatch.setattr(optuna_rdb, "_PIECES", pieces)
    assert optuna_rdb.missing_piece() == "no optuna.storages._rdb.models.NoSuchModel"
    optuna_rdb.missing_piece.cache_clear()
    monkeypatch.setattr(optuna, "__version__", "6.0.0")
    assert optuna_rdb.missing_piece() == "its private storage code was read for optuna 5.x only"


def test_the_public_api_path_runs_a_worker_to_the_same_results(
    tmp_path: Path, fresh_path_check: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    batched = _worker_results(tmp_path, f"sqlite:///{tmp_path / 'batched.db'}")
    optuna_rdb.missing_piece.cache_clear()
    optuna_rdb.log_path.cache_clear()
    monkeypatch.setattr(optuna_rdb, "missing_piece", lambda: "no optuna.storages._rdb.models (forced)")
    url = f"sqlite:///{tmp_path / 'public.db'}"
    with caplog.at_level(logging.INFO, logger="lrsearch.store"):
        public = _worker_results(tmp_path, url)
    assert (
        f"lrsearch storage: public Optuna API, one call per write (optuna {optuna.__version__}: "
        "no optuna.storages._rdb.models (forced))" in caplog.messages
    )
    study, _ = load(open_storage(url), "synthetic")
    assert not isinstance(optuna_rdb.storage_of(study), optuna_rdb.SharingCache)
    for ours, theirs in zip(public, batched, strict=True):
        assert ours.state == theirs.state == TrialState.COMPLETE
        assert ours.user_attrs.keys() == theirs.user_attrs.keys() and ours.params and theirs.params
        assert ours.intermediate_values.keys() == theirs.intermediate_values.keys() == {1, 2}
        assert ours.system_attrs.keys() == theirs.system_attrs.keys()
    notes = open_storage(url).get_study_system_attrs(optuna_rdb.study_id(study))
    assert any(key.endswith(":note_ver") for key in notes)  # the dashboard's notes, written by the dashboard

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat", UserWarning)  # lrsearch's workers beat themselves
        trial = study.ask()
    commits: list[object] = []

    def seen(connection: object) -> None:
        commits.append(connection)

    own_engine = optuna_rdb.backend_of(optuna_rdb.storage_of(study)).engine
    sqlalchemy.event.listen(own_engine, "commit", seen)
    try:
        write_trial(trial, user_attrs={"a": 1, "b": 2}, report=(1, 0.5))
    finally:
        sqlalchemy.event.remove(own_engine, "commit", seen)
    assert len(commits) == 3  # Optuna's own calls: one commit each (the batched path makes one)

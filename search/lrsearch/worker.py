"""A worker: takes trials from the shared study until its global budget is spent.

The budget check and the creation of a trial happen under one lock held in (or next to) the database, so any
number of workers on any number of hosts end with exactly the budget's count of finished trials.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from lrsearch.objective import load_objective
from lrsearch.storage import open_storage
from lrsearch.study import Budget, budget, load
from lrsearch.trial import TrialRunner

if TYPE_CHECKING:
    import torch

_logger = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # how often an idle worker looks for retries while other workers finish

TrialCallback = Callable[[FrozenTrial, Budget], None]


def pick_device(requested: str = "auto") -> torch.device:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Held while a worker counts the trials and creates the next one."""
    url = storage.engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # SQLite is a local file, so a lock file beside it reaches every worker that can open it.
        with open(Path(url.database).with_name(Path(url.database).name + ".lrsearch-lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    elif url.get_backend_name() == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"lrsearch:{study_name}".encode()).digest()[:8], "big", signed=True)
        with storage.engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                connection.commit()
    else:
        yield  # other backends: no lock; the budget may then be exceeded by a few trials under races


def run_worker(
    storage_url: str,
    study_name: str,
    *,
    device: str = "auto",
    data_dir: Path | None = None,
    on_trial: TrialCallback | None = None,
) -> int:
    """Run trials of the study until its budget is spent; returns how many this worker ran."""
    storage = open_storage(storage_url)
    study, definition = load(storage, study_name)
    objective = load_objective(definition.objective, definition.objective_options)
    data = objective.load_data(pick_device(device), data_dir)
    runner = TrialRunner(definition, objective, data)
    ran = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # dead workers' trials: failed, and queued again
        with budget_lock(storage, study_name):
            total = load(storage, study_name)[1].trials  # a later `start --trials N` may have raised it
            state = budget(study, total)
            trial = _ask(study) if state.waiting or state.open_slots > 0 else None
        if trial is None:
            if state.running == 0:
                return ran
            time.sleep(POLL_SECONDS)  # others still run: stay to rerun their trial should their worker die
            continue
        frozen = _run_one(study, trial, runner)
        ran += 1
        if on_trial is not None:
            on_trial(frozen, budget(study, total))


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for optimize(); _run_one runs the heartbeat thread itself.
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return study.ask()


def _run_one(study: optuna.Study, trial: optuna.Trial, runner: TrialRunner) -> FrozenTrial:
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = runner(trial)
        except optuna.TrialPruned:
            return study.tell(trial, state=TrialState.PRUNED)
        except KeyboardInterrupt:
            trial.set_user_attr("stop_reason", "interrupted (Ctrl-C); queued to run again")
            frozen = study.tell(trial, state=TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)
            raise
        except Exception as e:
            trial.set_user_attr("stop_reason", f"failed: {type(e).__name__}: {e}")
            study.tell(trial, state=TrialState.FAIL)
            raise
    return study.tell(trial, value)


__all__ = ["run_worker", "pick_device", "budget_lock"]

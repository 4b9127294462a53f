"""Which trials are alive: heartbeats of running trials, and what a worker does with the trials of dead ones.

A worker records its trial's heartbeat every interval (`Heartbeat`). A trial whose worker died (no heartbeat for
the grace period, or none at all) is failed by the next worker that looks (`reap`, under the budget lock) and
queued again with the same parameters and seed (`fail_and_requeue`); a trial that never ran is voided instead
(`void`): failed in a way that the budget does not count.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import warnings
from typing import TYPE_CHECKING

from lrsearch import settings
from lrsearch.store.optuna_rdb import backend_of, orphan_trial_ids, storage_of, study_id
from lrsearch.store.retry import retry_transient, retrying_each_call
from lrsearch.store.storage import retry_seconds_of

if TYPE_CHECKING:
    import optuna

# A FAIL trial with this user attribute never ran and holds no place in the budget: a worker voided it because
# it was made beyond the budget (the budget lock was lost while it was made) or its worker died at once.
VOID_ATTR = "lrsearch.void"

_logger = logging.getLogger(__name__)


class Heartbeat:
    """Records the trial's heartbeat every interval in a thread; a failed beat is logged, never fatal."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._interval = float(backend_of(storage).get_heartbeat_interval() or 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self._interval:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]
            except Exception as e:  # the storage already retried; the next beat may get through
                _logger.warning("heartbeat of trial id %d not recorded: %s", self._trial_id, e)


def reap(study: optuna.Study) -> None:
    """Fail the trials of dead workers and queue them again (call it under the budget lock)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no heartbeat for the grace period
    for trial_id in orphans(study):  # RUNNING but never a heartbeat: its worker died right after making it
        release(study, trial_id, "its worker died before the trial's first heartbeat")


def release(study: optuna.Study, trial_id: int, reason: str, *, interrupted: bool = False) -> None:
    """Give back the place of a RUNNING trial that never trained: a queued retry is queued again (`interrupted`:
    without counting against its retries), a new trial is voided (it may also be a copy made by a retried
    database call). Call it under the budget lock."""
    if "failed_trial" in storage_of(study).get_trial(trial_id).system_attrs:
        fail_and_requeue(study, trial_id, reason, retry=None, interrupted=interrupted)
    else:
        void(study, trial_id, reason)


def void(study: optuna.Study, trial_id: int, reason: str) -> None:
    """Fail a trial that never ran, in a way that the budget does not count (see lrsearch.study.lifecycle.budget)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = storage_of(study)
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, VOID_ATTR, reason)
        storage.set_trial_user_attr(trial_id, "stop_reason", f"void: {reason}")
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def orphans(study: optuna.Study) -> list[int]:
    """RUNNING trials that never had a heartbeat, older than the grace period."""

    def read() -> list[int]:
        return orphan_trial_ids(storage_of(study), study_id(study), settings.heartbeat_grace())

    retry = retry_seconds_of(storage_of(study))
    return retry_transient(read, "looking for orphaned trials", retry) if retry and retrying_each_call() else read()


def fail_and_requeue(
    study: optuna.Study, trial_id: int, reason: str, *, retry: int | None, interrupted: bool = False
) -> None:
    """Fail a RUNNING trial and queue a copy (same parameters, same seed, see lrsearch.store.trial_retry) unless it
    was retried `retry` times already; nothing if it already finished. An `interrupted` trial is always queued."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from lrsearch.store.trial_retry import RetryCopy

    storage = storage_of(study)
    try:
        storage.set_trial_user_attr(trial_id, "stop_reason", reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return
    except UpdateFinishedTrialError:
        return  # another worker reaped it first and queued its retry
    RetryCopy(retry, interrupted=interrupted)(study, copy.deepcopy(storage.get_trial(trial_id)))


__all__ = ["Heartbeat", "VOID_ATTR", "fail_and_requeue", "orphans", "reap", "release", "void"]

"""A worker: takes trials from the shared study until its global budget is spent.

The budget check and the creation of a trial happen under one lock held in (or next to) the database, so any
number of workers on any number of hosts end with exactly the budget's count of finished trials. Everything
that changes the count (reaping dead workers' trials, queueing retries, asking a new trial) happens under it.

A worker sends heartbeats while it runs a trial; a trial whose worker died (no heartbeat for the grace period)
is failed by the next worker that looks, and queued again with the same parameters and seed. SIGINT and
SIGTERM stop a worker cleanly: its running trial is failed and queued again, so no trial stays RUNNING. A
storage error (lock timeout, dropped connection) is retried with backoff (see lrsearch.store.storage); a database
that stays unreachable ends the worker with a StorageError.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lrsearch.errors import ConfigError, StorageError
from lrsearch.fleet.threads import set_torch_threads
from lrsearch.review.publish import publish_trial
from lrsearch.store.batching import shared_reads, write_trial
from lrsearch.store.retry import retry_transient
from lrsearch.store.storage import HEARTBEAT_GRACE, STORAGE_RETRY_SECONDS, open_storage, retry_seconds_of
from lrsearch.store.urls import sqlite_file
from lrsearch.study.lifecycle import VOID_ATTR, Budget, budget, load, stored_total
from lrsearch.study.runner import WORKER_ATTR, TrialRunner
from lrsearch.train.objective import load_data, load_objective

if TYPE_CHECKING:
    import torch

    from lrsearch.study.definition import StudyDefinition
    from lrsearch.train.objective import Objective, TrainingData

_logger = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # how often an idle worker looks for retries while other workers finish
THREADS_ENV = "LRSEARCH_TORCH_THREADS"  # torch threads of a worker (`start` sets it for its workers)

TrialCallback = Callable[[FrozenTrial, Budget], None]


class _LockLost(Exception):
    """The budget lock was lost while held (its database connection dropped): count again."""


def pick_device(requested: str = "auto") -> torch.device:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ConfigError(
                f"--device {requested}: torch sees {count} CUDA device(s)"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
                + "; check the GPU ids (or the container's GPU reservation), or use --device cpu"
            )
    return device


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Stopper:
    """SIGINT and SIGTERM as a clean stop.

    Inside `interruptible()` (loading data, running a trial) the first signal raises KeyboardInterrupt there;
    outside it only sets `requested` and the loop stops at its next check, so a signal never lands between
    creating a trial and recording its heartbeat. A second signal is ignored while the worker cleans up; a
    third forces the stop.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.signals = 0
        self._interruptible = False
        self._event = threading.Event()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set in the main thread; the caller handles signals then
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.requested is None:
            self.requested = signal.Signals(number).name
            self._event.set()
            if self._interruptible:
                raise KeyboardInterrupt(self.requested)
        elif self.signals >= 3:
            raise KeyboardInterrupt(f"{self.requested}, forced")

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self._interruptible = True
        try:
            if self.requested is not None:
                raise KeyboardInterrupt(self.requested)
            yield
        finally:
            self._interruptible = False

    def wait(self, seconds: float) -> None:
        self._event.wait(seconds)


class Heartbeat:
    """Records the trial's heartbeat every interval in a thread; a failed beat is logged, never fatal."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        backend: Any = getattr(storage, "_backend", storage)
        self._interval = float(backend.get_heartbeat_interval() or 0)
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


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[Callable[[], bool]]:
    """Held while a worker counts the trials and creates the next one (or changes the count otherwise).

    It gives a check that the lock is still held: on PostgreSQL the lock lives in a database session, which a
    dropped connection ends.
    """
    url = storage.engine.url
    database = sqlite_file(url)
    if database is not None:
        # SQLite is a local file, so a lock file beside it reaches every worker that can open it.
        with open(database.with_name(database.name + ".lrsearch-lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield lambda: True
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    elif url.get_backend_name() == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"lrsearch:{study_name}".encode()).digest()[:8], "big", signed=True)
        with _pg_advisory_lock(storage, key) as held:
            yield held
    else:
        yield (lambda: True)  # other backends: no lock; the budget may then be exceeded by a few trials under races


@contextlib.contextmanager
def _pg_advisory_lock(storage: optuna.storages.RDBStorage, key: int) -> Iterator[Callable[[], bool]]:
    import sqlalchemy

    def lock() -> sqlalchemy.Connection:
        connection = storage.engine.connect()
        try:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
        except BaseException:
            connection.close()
            raise
        return connection

    retry = retry_seconds_of(storage)
    connection = retry_transient(lock, "taking the budget lock", retry) if retry else lock()

    def held() -> bool:
        try:
            connection.exec_driver_sql("SELECT 1")
        except sqlalchemy.exc.SQLAlchemyError:
            return False
        return True

    try:
        yield held
    finally:
        try:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
            connection.commit()
        except sqlalchemy.exc.SQLAlchemyError as e:  # the session ended, and the server released its lock
            _logger.warning("budget lock: the database connection was lost (%s); the server released the lock", e)
        finally:
            connection.close()


def run_worker(
    storage_url: str,
    study_name: str,
    *,
    device: str = "auto",
    data_dir: Path | None = None,
    on_trial: TrialCallback | None = None,
    threads: int | None = None,
    loaded: tuple[Objective, TrainingData] | None = None,
) -> int:
    """Run trials of the study until its budget is spent; returns how many this worker ran.

    `loaded`: the study's objective and its data on the CPU, already loaded in this process (by `start`, which
    checked them before it created the study); used as they are on the CPU, read again for another device.

    Raises KeyboardInterrupt after a clean stop on SIGINT/SIGTERM (the running trial failed and queued again),
    StorageError when the database stays unreachable longer than LRSEARCH_STORAGE_RETRY_SECONDS.
    """
    stopper = Stopper()
    with stopper.installed():
        storage = open_storage(storage_url, retry_seconds=STORAGE_RETRY_SECONDS)
        study, definition = load(storage, study_name)
        with stopper.interruptible():
            runner = _make_runner(definition, device, data_dir, threads, loaded)
        ran = _work(study, storage, runner, stopper, on_trial)
        if stopper.requested is not None:
            raise KeyboardInterrupt(stopper.requested)
        return ran


def _work(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    runner: TrialRunner,
    stopper: Stopper,
    on_trial: TrialCallback | None,
) -> int:
    ran = 0
    while stopper.requested is None:
        try:
            trial, state = _claim(study, storage, stopper)
        except _LockLost:
            _logger.warning("the budget lock was lost (database connection dropped); counting again")
            continue
        if trial is None:
            if state.running == 0:
                break
            # Others still run trials: stay, to rerun one of them should its worker die.
            stopper.wait(POLL_SECONDS)
            continue
        frozen = _run_one(study, storage, trial, runner, stopper)
        ran += 1
        if frozen is not None and on_trial is not None:
            on_trial(frozen, budget(study, state.total))
    return ran


def _make_runner(
    definition: StudyDefinition,
    device: str,
    data_dir: Path | None,
    threads: int | None,
    loaded: tuple[Objective, TrainingData] | None = None,
) -> TrialRunner:
    import torch._dynamo  # noqa: F401  # torch.optim imports it at the first step: not inside the first epoch's time

    threads = threads or int(os.environ.get(THREADS_ENV, "0") or 0)
    if threads > 0:
        set_torch_threads(threads)  # `start` divides the cores among its workers
    target = pick_device(device)
    if loaded is not None and loaded[1].train_inputs.device == target:
        objective, data = loaded
    else:  # an objective may load its data differently for another device: ask it
        objective = load_objective(definition.objective, definition.objective_options)
        data = load_data(objective, definition.objective, target, data_dir)
    return TrialRunner(definition, objective, data, worker=worker_id(), publish=publish_trial)


def _claim(
    study: optuna.Study, storage: optuna.storages.RDBStorage, stopper: Stopper
) -> tuple[optuna.Trial | None, Budget]:
    """Under the budget lock: reap dead workers' trials, count, and start a trial if the budget has room."""
    with budget_lock(storage, study.study_name) as held:
        reap(study)
        with shared_reads(study):  # the count's read of the trials serves the ask (the lock keeps it current)
            state = budget(study, stored_total(study))
            if not state.can_start or stopper.requested is not None:
                return None, state
            if not held():  # the connection holding the lock dropped: the count may be stale
                raise _LockLost
            trial = _ask(study)  # a queued retry first, else a new trial
        # Its first heartbeat before the lock is released: any RUNNING trial without one is an orphan.
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        if held():
            return trial, state
    # The lock's connection dropped while the trial was made (a retried call may have made it late): another
    # worker may have counted at the same time. Count again; a trial beyond the budget is voided.
    return _confirm(study, storage, trial)


def _confirm(
    study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial
) -> tuple[optuna.Trial | None, Budget]:
    while True:
        with budget_lock(storage, study.study_name) as held:
            state = budget(study, stored_total(study))
            if not held():
                continue
            if state.finished + state.running + state.waiting <= state.total:
                return trial, state
            _void(study, trial._trial_id, "made while the budget lock was lost; beyond the budget")
            return None, budget(study, state.total)


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for optimize(); this worker runs the heartbeat thread itself.
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return study.ask()


def reap(study: optuna.Study) -> None:
    """Fail the trials of dead workers and queue them again (call it under the budget lock)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no heartbeat for the grace period
    for trial_id in _orphans(study):  # RUNNING but never a heartbeat: its worker died right after making it
        if "failed_trial" in study._storage.get_trial(trial_id).system_attrs:
            _fail_and_requeue(study, trial_id, "its worker died before the trial's first heartbeat", retry=None)
        else:  # nothing ran yet: free its place (it may also be a copy made by a retried database call)
            _void(study, trial_id, "its worker died before the trial's first heartbeat")


def _void(study: optuna.Study, trial_id: int, reason: str) -> None:
    """Fail a trial that never ran, in a way that the budget does not count (see lrsearch.study.lifecycle.budget)."""
    storage = study._storage
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, VOID_ATTR, reason)
        storage.set_trial_user_attr(trial_id, "stop_reason", f"void: {reason}")
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _orphans(study: optuna.Study) -> list[int]:
    import sqlalchemy
    from optuna.storages._rdb import models

    backend: Any = getattr(study._storage, "_backend", study._storage)
    if not hasattr(backend, "engine"):
        return []
    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    query = (
        sqlalchemy.select(trials.c.trial_id)
        .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
        .where(trials.c.study_id == study._study_id, trials.c.state == TrialState.RUNNING)
        .where(
            beats.c.trial_id.is_(None),
            trials.c.datetime_start < datetime.now() - timedelta(seconds=HEARTBEAT_GRACE),
        )
    )

    def read() -> list[int]:
        with backend.engine.connect() as connection:
            return [row[0] for row in connection.execute(query)]

    retry = retry_seconds_of(study._storage)
    return retry_transient(read, "looking for orphaned trials", retry) if retry else read()


def _fail_and_requeue(study: optuna.Study, trial_id: int, reason: str, *, retry: int | None) -> None:
    """Fail a RUNNING trial and queue a copy (same parameters, same seed); nothing if it already finished."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, "stop_reason", reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return
    except UpdateFinishedTrialError:
        return  # another worker reaped it first and queued its retry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry)
    callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def _run_one(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    trial: optuna.Trial,
    runner: TrialRunner,
    stopper: Stopper,
) -> FrozenTrial | None:
    """Run the trial and tell its result; None when another worker took it over (it was reaped as dead)."""
    with Heartbeat(study._storage, trial._trial_id):
        try:
            with stopper.interruptible():
                value = runner(trial)
        except optuna.TrialPruned:
            return _tell(study, trial, None, TrialState.PRUNED)
        except KeyboardInterrupt as e:
            with budget_lock(storage, study.study_name):  # the FAIL and its queued copy appear together
                reason = f"interrupted ({e or 'SIGINT'}); queued to run again"
                _fail_and_requeue(study, trial._trial_id, reason, retry=None)
            raise
        except UpdateFinishedTrialError:
            _taken_over(trial)
            return None
        except StorageError:
            raise  # the database is gone; once it is back, other workers rerun this trial
        except Exception as e:
            failed = {"stop_reason": f"failed: {type(e).__name__}: {e}", WORKER_ATTR: runner.worker}
            with contextlib.suppress(UpdateFinishedTrialError):  # worker too: it may have failed while sampling
                write_trial(trial, user_attrs=failed)
            _tell(study, trial, None, TrialState.FAIL)
            raise
    return _tell(study, trial, value, None)


def _tell(
    study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState | None
) -> FrozenTrial | None:
    try:
        frozen = study.tell(trial, value, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        frozen = None
    if frozen is None or (frozen.state == TrialState.FAIL and state != TrialState.FAIL):
        _taken_over(trial)
        return None
    return frozen


def _taken_over(trial: optuna.Trial) -> None:
    _logger.warning(
        "trial %d was failed by another worker while this one ran it (no heartbeat for %ss: was the database "
        "unreachable?); its copy runs again, this result is dropped",
        trial.number,
        HEARTBEAT_GRACE,
    )


__all__ = ["run_worker", "pick_device", "budget_lock", "reap", "worker_id", "Stopper", "Heartbeat", "WORKER_ATTR"]

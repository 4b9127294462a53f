"""A worker: takes trials from the shared study until its global budget is spent.

The budget check and the creation of a trial happen under one lock held in (or next to) the database, so any
number of workers on any number of hosts end with exactly the budget's count of finished trials. Everything
that changes the count (reaping dead workers' trials, queueing retries, asking a new trial) happens under it
(lrsearch.store.budget_lock; heartbeats, reaping and requeueing: lrsearch.store.liveness).

A worker sends heartbeats while it runs a trial; a trial whose worker died (no heartbeat for the grace period)
is failed by the next worker that looks, and queued again with the same parameters and seed. SIGINT and
SIGTERM stop a worker cleanly: its running trial is failed and queued again, so no trial stays RUNNING. A
storage error (lock timeout, dropped connection) is retried with backoff: claiming a trial and telling its result
as whole units, other calls one by one (see lrsearch.store.retry); a database that stays unreachable ends the
worker with a DatabaseUnreachableError.

An exception raised in a trial (the objective's code, a CUDA out-of-memory error) fails that trial only: its
stop_reason is "failed: <type>: <message>", its user attribute `traceback` holds the traceback (trimmed), it counts
as finished in the budget and is not run again (its worker is alive: a rerun would fail the same way). The worker
frees the CUDA cache and goes on with the next trial. After MAX_FAILURES_IN_A_ROW failed trials in a row of its
own, a worker stops with a TrialsFailingError naming the last error, rather than spend the budget on trials that
all fail the same way; once the cause is fixed, `lrsearch start` resumes the study.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lrsearch import settings
from lrsearch.errors import ConfigError, StorageError, TrialsFailingError
from lrsearch.fleet.threads import set_torch_threads
from lrsearch.review.publish import publish_trial
from lrsearch.store.batching import shared_reads, write_trial
from lrsearch.store.budget_lock import budget_lock
from lrsearch.store.liveness import Heartbeat, fail_and_requeue, reap, release, void
from lrsearch.store.optuna_rdb import backend_of, storage_of, trial_id
from lrsearch.store.retry import unit_of_work
from lrsearch.store.storage import open_storage
from lrsearch.study.lifecycle import Budget, budget, load, stored_total
from lrsearch.study.runner import WORKER_ATTR, TrialRunner
from lrsearch.train.objective import load_data, load_objective

if TYPE_CHECKING:
    import torch

    from lrsearch.study.definition import StudyDefinition
    from lrsearch.train.objective import Objective, TrainingData

_logger = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # how often an idle worker looks for retries while other workers finish
MAX_FAILURES_IN_A_ROW = 3
REASON_CHARS, TRACEBACK_CHARS = 500, 8000  # what a failed trial's stop_reason and traceback keep at most

TrialCallback = Callable[[FrozenTrial, Budget], None]
T = TypeVar("T")


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
    DatabaseUnreachableError when the database stays unreachable longer than LRSEARCH_STORAGE_RETRY_SECONDS,
    TrialsFailingError after MAX_FAILURES_IN_A_ROW failed trials in a row.
    """
    stopper = Stopper()
    with stopper.installed():
        storage = open_storage(storage_url, retry_seconds=settings.storage_retry_seconds())
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
    ran = failed_in_a_row = 0
    unclaimed: list[int] = []  # a trial made by a claim that failed before its first heartbeat
    while stopper.requested is None:
        try:
            trial, state = _unit(storage, "claiming a trial", lambda: _claim(study, storage, stopper, unclaimed))
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
        if frozen is not None:
            failed_in_a_row = failed_in_a_row + 1 if frozen.state == TrialState.FAIL else 0
            if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
                _stop_failing(frozen, failed_in_a_row)
    return ran


def _unit(storage: object, what: str, call: Callable[[], T]) -> T:
    """`call` as a unit of work, retried as a whole (see lrsearch.store.retry)."""
    backend = backend_of(storage)
    return unit_of_work(call, what, backend.retry_seconds, backend.shown_url)


def _stop_failing(last: FrozenTrial, failures: int) -> None:
    _logger.error(
        "the traceback of trial %d (its user attribute `traceback`):\n%s",
        last.number,
        str(last.user_attrs.get("traceback", "")).rstrip(),
    )
    raise TrialsFailingError(
        f"{failures} trials in a row failed in this worker, the last (trial {last.number}) with "
        f"{last.user_attrs.get('stop_reason', 'failed').removeprefix('failed: ')}; the worker stops instead of "
        "failing every trial. Fix the cause (its traceback is above), then `lrsearch start` resumes the study "
        "(failed trials count as finished; raise --trials to run more)"
    )


def _make_runner(
    definition: StudyDefinition,
    device: str,
    data_dir: Path | None,
    threads: int | None,
    loaded: tuple[Objective, TrainingData] | None = None,
) -> TrialRunner:
    import torch._dynamo  # noqa: F401  # torch.optim imports it at the first step: not inside the first epoch's time

    threads = threads or settings.torch_threads()  # `start` sets LRSEARCH_TORCH_THREADS for its workers
    if threads:
        set_torch_threads(threads)  # `start` divides the cores among its workers
    target = pick_device(device)
    if loaded is not None and loaded[1].train_inputs.device == target:
        objective, data = loaded
    else:  # an objective may load its data differently for another device: ask it
        objective = load_objective(definition.objective, definition.objective_options)
        data = load_data(objective, definition.objective, target, data_dir)
    return TrialRunner(definition, objective, data, worker=worker_id(), publish=publish_trial)


def _claim(
    study: optuna.Study, storage: optuna.storages.RDBStorage, stopper: Stopper, unclaimed: list[int]
) -> tuple[optuna.Trial | None, Budget]:
    """Under the budget lock: reap dead workers' trials, count, and start a trial if the budget has room.

    A claim that fails after making its trial (the database went away before the first heartbeat) is run again
    as a whole; its next run gives that trial's place back at once (`unclaimed`) instead of leaving it to be
    reaped as an orphan after the heartbeat grace period."""
    with budget_lock(storage, study.study_name) as held:
        reap(study)
        while unclaimed:
            release(
                study, unclaimed[-1], "its claim failed before the first heartbeat (database error)", interrupted=True
            )
            unclaimed.pop()
        with shared_reads(study):  # the count's read of the trials serves the ask (the lock keeps it current)
            state = budget(study, stored_total(study))
            if not state.can_start or stopper.requested is not None:
                return None, state
            if not held():  # the connection holding the lock dropped: the count may be stale
                raise _LockLost
            trial = _ask(study)  # a queued retry first, else a new trial
        unclaimed.append(trial_id(trial))
        # Its first heartbeat before the lock is released: any RUNNING trial without one is an orphan.
        storage_of(study).record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]
        unclaimed.pop()
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
            void(study, trial_id(trial), "made while the budget lock was lost; beyond the budget")
            return None, budget(study, state.total)


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for optimize(); this worker runs the heartbeat thread itself.
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return study.ask()


def _run_one(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    trial: optuna.Trial,
    runner: TrialRunner,
    stopper: Stopper,
) -> FrozenTrial | None:
    """Run the trial and tell its result; None when another worker took it over (it was reaped as dead)."""
    with Heartbeat(storage_of(study), trial_id(trial)):
        try:
            with stopper.interruptible():
                value = runner(trial)
        except optuna.TrialPruned:
            return _tell(study, trial, None, TrialState.PRUNED)
        except KeyboardInterrupt as e:
            with budget_lock(storage, study.study_name):  # the FAIL and its queued copy appear together
                reason = f"interrupted ({e or 'SIGINT'}); queued to run again"
                fail_and_requeue(study, trial_id(trial), reason, retry=None, interrupted=True)
            raise
        except UpdateFinishedTrialError:
            _taken_over(trial)
            return None
        except StorageError:
            raise  # the database is gone; once it is back, other workers rerun this trial
        except Exception as e:
            failed = _record_failure(study, trial, runner.worker, e)
        else:
            return _tell(study, trial, value, None)
    _free_device_memory(runner)
    return failed


def _record_failure(study: optuna.Study, trial: optuna.Trial, worker: str, error: Exception) -> FrozenTrial | None:
    """Fail the trial with the error as its stop_reason and its traceback (both trimmed) as user attributes."""
    reason = _trimmed(f"failed: {type(error).__name__}: {error}", REASON_CHARS)
    failed = {"stop_reason": reason, "traceback": _traceback_text(error), WORKER_ATTR: worker}
    with contextlib.suppress(UpdateFinishedTrialError):  # worker too: it may have failed while sampling
        write_trial(trial, user_attrs=failed)
    _logger.warning("trial %d %s", trial.number, reason)
    return _tell(study, trial, None, TrialState.FAIL)


def _trimmed(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _traceback_text(error: BaseException) -> str:
    """The traceback as Python prints it, each entry cut to 1000 characters, the earliest frames left out
    beyond TRACEBACK_CHARS (the frame that raised and the error are at the end)."""
    entries = [_trimmed(entry.rstrip("\n"), 1000) + "\n" for entry in traceback.format_exception(error)]
    head, kept, size = entries[0], list[str](), len(entries[0]) + 40
    for entry in reversed(entries[1:]):
        if size + len(entry) > TRACEBACK_CHARS:
            return head + f"  ... ({len(entries) - 1 - len(kept)} entries left out)\n" + "".join(reversed(kept))
        kept.append(entry)
        size += len(entry)
    return "".join(entries)


def _free_device_memory(runner: TrialRunner) -> None:
    """After a failed trial on a GPU (often out of memory): its tensors freed, the CUDA cache emptied."""
    if runner.data.train_inputs.device.type == "cuda":
        import torch

        gc.collect()  # the failed trial's tensors may sit in reference cycles through its traceback
        torch.cuda.empty_cache()


def _tell(
    study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState | None
) -> FrozenTrial | None:
    try:  # a tell repeated after a lost answer finds the trial finished, and skips
        frozen = _unit(
            storage_of(study), "telling a result", lambda: study.tell(trial, value, state=state, skip_if_finished=True)
        )
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
        settings.heartbeat_grace(),
    )


__all__ = ["run_worker", "pick_device", "budget_lock", "reap", "worker_id", "Stopper", "Heartbeat", "WORKER_ATTR"]

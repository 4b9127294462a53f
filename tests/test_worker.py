"""The worker loop in this process: exact budget, reaping dead workers' trials, clean stop, storage errors."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

import lrsearch.fleet.worker
import lrsearch.settings
import lrsearch.store.liveness
import lrsearch.store.storage
from conftest import write_study
from lrsearch.cli import main
from lrsearch.errors import ConfigError, StorageError, TrialsFailingError
from lrsearch.fleet.worker import WORKER_ATTR, pick_device, run_worker, worker_id
from lrsearch.store.retry import retry_transient
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import load_study_file
from lrsearch.study.lifecycle import VOID_ATTR, Budget, budget, create_or_resume, load
from lrsearch.study.runner import trial_seed

NO_PRUNING = '[pruner]\nname = "none"\n'


@pytest.fixture(autouse=True)
def _no_artifact_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRSEARCH_ARTIFACT_DIR", "off")  # per-trial PNGs are not what these tests are about


def make_study(tmp_path: Path, url: str, trials: int, body: str = NO_PRUNING) -> str:
    definition = load_study_file(write_study(tmp_path, body, trials=trials, epochs=2))
    create_or_resume(open_storage(url), definition)
    return definition.name


def states(url: str, name: str = "synthetic") -> Counter[str]:
    study, _ = load(open_storage(url), name)
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def finished(url: str, name: str = "synthetic") -> int:
    c = states(url, name)
    return c["COMPLETE"] + c["PRUNED"] + c["FAIL"] - retried(url, name)


def retried(url: str, name: str = "synthetic") -> int:
    study, _ = load(open_storage(url), name)
    return len({n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])})


def copies_of(study: optuna.Study, number: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == number]


def test_budget_counts() -> None:
    assert Budget(finished=3, running=1, waiting=0, total=5).can_start
    assert not Budget(finished=3, running=2, waiting=0, total=5).can_start
    assert Budget(finished=3, running=1, waiting=1, total=5).can_start  # the retry takes its own slot
    assert not Budget(finished=5, running=0, waiting=1, total=5).can_start  # budget lowered below the queue
    assert Budget(finished=5, running=0, waiting=0, total=5).done
    assert not Budget(finished=5, running=1, waiting=0, total=5).done


def test_worker_runs_to_the_budget_and_signs_its_trials(tmp_path: Path, sqlite_url: str) -> None:
    name = make_study(tmp_path, sqlite_url, trials=3)
    seen: list[int] = []
    assert run_worker(sqlite_url, name, on_trial=lambda trial, state: seen.append(state.finished)) == 3
    assert seen == [1, 2, 3]
    assert run_worker(sqlite_url, name) == 0  # nothing left: returns at once
    study, _ = load(open_storage(sqlite_url), name)
    assert {t.user_attrs[WORKER_ATTR] for t in study.trials} == {worker_id()}


def test_workers_in_threads_share_an_exact_budget(tmp_path: Path, sqlite_url: str) -> None:
    name = make_study(tmp_path, sqlite_url, trials=10)
    results: list[int | BaseException] = []

    def work() -> None:
        try:
            results.append(run_worker(sqlite_url, name))
        except BaseException as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(r, int) for r in results), results
    assert sum(r for r in results if isinstance(r, int)) == 10
    assert states(sqlite_url) == Counter(COMPLETE=10)


def _ask_with_params(url: str, name: str, *, seed: int | None = 4242) -> optuna.trial.FrozenTrial:
    """A RUNNING trial with sampled parameters (and a seed), as a worker leaves it when it dies mid-trial."""
    study, definition = load(open_storage(url), name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask()
    definition.space.sample(trial, definition.epochs)
    if seed is not None:
        trial.set_user_attr("seed", seed)
        trial.report(0.5, 1)
    return study.trials[trial.number]


def _age_heartbeat(url: str, trial_id: int) -> None:
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00' WHERE trial_id = ?", (trial_id,)
        )
    engine.dispose()


@pytest.mark.parametrize("seed", [4242, None])  # None: it died before the seed was recorded
def test_a_dead_workers_trial_is_run_again_with_its_params_and_seed(
    tmp_path: Path, sqlite_url: str, seed: int | None
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=3)
    dead = _ask_with_params(sqlite_url, name, seed=seed)
    open_storage(sqlite_url).record_heartbeat(dead._trial_id)
    _age_heartbeat(sqlite_url, dead._trial_id)  # its worker stopped beating long ago

    assert run_worker(sqlite_url, name) == 3
    study, definition = load(open_storage(sqlite_url), name)
    assert study.trials[dead.number].state == TrialState.FAIL
    [copy] = copies_of(study, dead.number)
    assert copy.state == TrialState.COMPLETE and copy.params == dead.params
    assert copy.user_attrs["seed"] == (seed if seed is not None else trial_seed(definition.seed, dead.number))
    assert copy.number == dead.number + 1  # the queued copy runs before any new trial
    assert finished(sqlite_url) == 3 and states(sqlite_url)["RUNNING"] == 0


def test_a_trial_that_never_had_a_heartbeat_is_voided(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRSEARCH_HEARTBEAT_GRACE", "1")
    name = make_study(tmp_path, sqlite_url, trials=2)
    orphan = _ask_with_params(sqlite_url, name, seed=None)  # its worker died before the first heartbeat
    time.sleep(1.05)  # older than the grace period
    assert run_worker(sqlite_url, name) == 2
    study, _ = load(open_storage(sqlite_url), name)
    voided = study.trials[orphan.number]
    assert voided.state == TrialState.FAIL and VOID_ATTR in voided.user_attrs and not copies_of(study, 0)
    assert states(sqlite_url) == Counter(COMPLETE=2, FAIL=1)
    assert budget(study, 2) == Budget(finished=2, running=0, waiting=0, total=2)  # the void one holds no place


def test_a_trial_made_while_the_lock_was_lost_is_voided_beyond_the_budget(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=1)
    study, _ = load(open_storage(sqlite_url, retry_seconds=30), name)
    checks: list[str] = []

    @contextlib.contextmanager
    def lock_lost_during_ask(storage: Any, study_name: str) -> Iterator[Callable[[], bool]]:
        def held() -> bool:
            checks.append("held")
            if len(checks) == 2:  # after the ask: the connection dropped, and another worker made a trial
                _ask_with_params(sqlite_url, name)
                return False
            return True

        yield held

    monkeypatch.setattr(lrsearch.fleet.worker, "budget_lock", lock_lost_during_ask)
    trial, state = lrsearch.fleet.worker._claim(study, study._storage._backend, lrsearch.fleet.worker.Stopper(), [])
    assert trial is None and state == Budget(finished=0, running=1, waiting=0, total=1)
    ours = study.get_trials(deepcopy=False)[0]
    assert ours.state == TrialState.FAIL and "beyond the budget" in ours.user_attrs[VOID_ATTR]


class _SignalledRunner:
    """Samples the trial like the real runner, then receives SIGTERM mid-trial."""

    def __init__(self, definition: Any, objective: Any, data: Any, worker: str = "", **kwargs: Any) -> None:
        self.definition, self.data, self.worker = definition, data, worker

    def __call__(self, trial: optuna.Trial) -> float:
        self.definition.space.sample(trial, self.definition.epochs)
        trial.set_user_attr("seed", 77)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this
        raise AssertionError("SIGTERM did not interrupt the trial")


class _FailingRunner(_SignalledRunner):
    """Fails while sampling, before the real runner would record anything."""

    def __call__(self, trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        raise RuntimeError("boom")


class _EveryOtherFailingRunner(_SignalledRunner):
    """Fails every trial whose number is odd, with an error whose message is far too long to store whole."""

    def __call__(self, trial: optuna.Trial) -> float:
        self.definition.space.sample(trial, self.definition.epochs)
        if trial.number % 2:
            raise ValueError("bad batch " + "x" * 100_000)
        return 0.5


def test_a_trial_that_fails_records_why_and_the_worker_goes_on(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=2)
    monkeypatch.setattr(lrsearch.fleet.worker, "TrialRunner", _FailingRunner)
    seen: list[str] = []
    assert run_worker(sqlite_url, name, on_trial=lambda trial, state: seen.append(trial.state.name)) == 2
    assert seen == ["FAIL", "FAIL"]
    study, _ = load(open_storage(sqlite_url), name)
    for failed in study.trials:
        assert failed.state == TrialState.FAIL
        assert failed.user_attrs.keys() == {"stop_reason", "traceback", WORKER_ATTR}
        assert failed.user_attrs["stop_reason"] == "failed: RuntimeError: boom"
        assert failed.user_attrs[WORKER_ATTR] == worker_id()
        trace = failed.user_attrs["traceback"]
        assert trace.startswith("Traceback (most recent call last):") and 'raise RuntimeError("boom")' in trace
    assert budget(study, 2) == Budget(finished=2, running=0, waiting=0, total=2)  # not retried: not a dead worker


def test_failures_between_successes_let_the_study_finish(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=7)
    monkeypatch.setattr(lrsearch.fleet.worker, "TrialRunner", _EveryOtherFailingRunner)
    assert run_worker(sqlite_url, name) == 7
    assert states(sqlite_url) == Counter(COMPLETE=4, FAIL=3)
    study, _ = load(open_storage(sqlite_url), name)
    failed = study.trials[1]
    assert failed.user_attrs["stop_reason"].startswith("failed: ValueError: bad batch xxx")
    assert len(failed.user_attrs["stop_reason"]) <= 500 and failed.user_attrs["stop_reason"].endswith("...")
    assert len(failed.user_attrs["traceback"]) <= 8000
    assert failed.user_attrs["traceback"].startswith("Traceback (most recent call last):")
    assert "raise ValueError" in failed.user_attrs["traceback"]  # the raising line stays, the message is cut
    assert (
        "ValueError: bad batch xxx" in failed.user_attrs["traceback"]
        and "x" * 2000 not in failed.user_attrs["traceback"]
    )


def test_a_deep_traceback_keeps_its_end() -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise RuntimeError("at the bottom")
        if n % 2:  # two call sites: Python would print one frame repeated N times as one line
            deep(n - 1)
        else:
            deep(n - 1)

    try:
        deep(300)
    except RuntimeError as e:
        text = lrsearch.fleet.worker._traceback_text(e)
    assert len(text) <= lrsearch.fleet.worker.TRACEBACK_CHARS
    assert text.startswith("Traceback (most recent call last):\n  ... (")
    assert "entries left out)" in text
    assert text.endswith('raise RuntimeError("at the bottom")\nRuntimeError: at the bottom\n')


def test_a_worker_stops_after_three_failed_trials_in_a_row(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=10)
    monkeypatch.setattr(lrsearch.fleet.worker, "TrialRunner", _FailingRunner)
    with pytest.raises(TrialsFailingError) as stopped:
        run_worker(sqlite_url, name)
    message = str(stopped.value)
    assert "3 trials in a row failed in this worker, the last (trial 2) with RuntimeError: boom" in message
    assert "Fix the cause (its traceback is above), then `lrsearch start` resumes the study" in message
    assert stopped.value.exit_code == 3
    assert states(sqlite_url) == Counter(FAIL=3)  # nothing left running, nothing queued


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_out_of_memory_fails_the_trial_and_frees_the_device(tmp_path: Path, sqlite_url: str) -> None:
    body = '[objective]\nname = "synthetic_objective:GreedySynthetic"\n\n' + NO_PRUNING
    name = make_study(tmp_path, sqlite_url, trials=2, body=body)
    reserved: list[int] = []
    ran = run_worker(sqlite_url, name, device="cuda", on_trial=lambda *_: reserved.append(torch.cuda.memory_reserved()))
    assert ran == 2 and states(sqlite_url) == Counter(FAIL=1, COMPLETE=1)
    study, _ = load(open_storage(sqlite_url), name)
    assert study.trials[0].user_attrs["stop_reason"].startswith("failed: OutOfMemoryError: CUDA out of memory")
    assert reserved[0] < 2**30  # what the failed trial took went back to the device, not to torch's cache


def test_sigterm_fails_the_running_trial_and_queues_it(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=2)
    with monkeypatch.context() as patch:
        patch.setattr(lrsearch.fleet.worker, "TrialRunner", _SignalledRunner)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_worker(sqlite_url, name)
        assert time.monotonic() - started < 8
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the worker's handler is gone
    study, _ = load(open_storage(sqlite_url), name)
    interrupted = study.trials[0]
    assert interrupted.state == TrialState.FAIL and "SIGTERM" in interrupted.user_attrs["stop_reason"]
    [copy] = copies_of(study, 0)
    assert copy.state == TrialState.WAITING and copy.params == interrupted.params
    assert states(sqlite_url)["RUNNING"] == 0

    assert run_worker(sqlite_url, name) == 2  # resumes: the queued copy first, with its seed
    study, _ = load(open_storage(sqlite_url), name)
    assert study.trials[copy.number].user_attrs["seed"] == 77
    assert finished(sqlite_url) == 2


def test_a_lock_timeout_is_retried_not_fatal(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=2)
    running = _ask_with_params(sqlite_url, name)
    monkeypatch.setattr(lrsearch.store.storage, "SQLITE_BUSY_TIMEOUT", 0.1)  # SQLite gives up after 0.1 s
    storage = open_storage(sqlite_url, retry_seconds=30)  # as a worker opens it
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # another program holds the write lock for 1.5 s
    release = threading.Timer(1.5, blocker.rollback)
    release.start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lrsearch.store.retry"):
        storage.set_trial_intermediate_value(running._trial_id, 2, 0.75)  # what trial.report does
    release.join()
    blocker.close()
    assert time.monotonic() - started >= 1.4
    assert "storage error in set_trial_intermediate_value (database is locked); retrying" in caplog.text
    assert storage.get_trial(running._trial_id).intermediate_values == {1: 0.5, 2: 0.75}


def test_retry_gives_up_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lrsearch.store.retry, "BACKOFF_FIRST", 0.01)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return "ok"

    assert retry_transient(flaky, "a test", 5) == "ok" and len(calls) == 3

    def refused() -> None:
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    with pytest.raises(StorageError, match=r"stayed unreachable for 0s \(a test: connection refused\)"):
        retry_transient(refused, "a test", 0.05)

    def wrong_path() -> None:  # SQLite's own error: SQLITE_CANTOPEN
        sqlalchemy.create_engine("sqlite:////no/such/folder/x.db").connect()

    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):  # waiting does not fix it: raised at once
        retry_transient(wrong_path, "a test", 30)
    with pytest.raises(ValueError):
        retry_transient(lambda: int("x"), "a test", 30)
    assert time.monotonic() - started < 1


def test_worker_exits_with_a_message_when_the_database_stays_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LRSEARCH_STORAGE_RETRY_SECONDS", "2")
    url = "postgresql+psycopg2://postgres@127.0.0.1:1/test"  # nothing listens on port 1
    result = CliRunner().invoke(main, ["worker", "--storage", url, "--study-name", "x"])
    assert result.exit_code == 4, result.output  # 4: the database stayed unreachable
    assert "stayed unreachable for 2s" in result.stderr and "Connection refused" in result.stderr
    assert "Traceback" not in result.output


def test_a_device_torch_cannot_use_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(ConfigError, match="torch sees 0 CUDA device"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        pick_device("gpu")
    assert pick_device("auto").type == "cpu"


def test_two_processes_creating_a_new_database_at_once(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = lrsearch.store.storage._retrying_storage_class(), []

    def slower_process(*args: Any, **kwargs: Any) -> Any:  # the other process made the tables first
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lrsearch.store.storage, "_retrying_storage_class", lambda: slower_process)
    assert open_storage(sqlite_url).get_all_studies() == [] and len(calls) == 2


def test_a_retry_keeps_only_the_seed_of_the_dead_attempt(tmp_path: Path, sqlite_url: str) -> None:
    name = make_study(tmp_path, sqlite_url, trials=2)
    dead = _ask_with_params(sqlite_url, name, seed=4242)
    storage = open_storage(sqlite_url)
    # What the dead attempt had written by the time its worker died: results of its own epochs.
    for key, value in {"history": [{"epoch": e} for e in range(1, 6)], "stop_reason": "x", "feasible": True}.items():
        storage.set_trial_user_attr(dead._trial_id, key, value)
    storage.set_trial_system_attr(dead._trial_id, "constraints:min_val_acc", -0.5)
    storage.record_heartbeat(dead._trial_id)
    _age_heartbeat(sqlite_url, dead._trial_id)

    study, _ = load(open_storage(sqlite_url), name)
    lrsearch.fleet.worker.reap(study)
    [waiting] = copies_of(study, dead.number)
    assert waiting.state == TrialState.WAITING and waiting.params == dead.params
    assert waiting.user_attrs == {"seed": 4242}
    assert waiting.system_attrs == {"failed_trial": dead.number, "retry_history": [dead.number]}
    assert waiting.intermediate_values == {}

    assert run_worker(sqlite_url, name) == 2
    study, _ = load(open_storage(sqlite_url), name)
    [rerun] = copies_of(study, dead.number)
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["seed"] == 4242
    assert [row["epoch"] for row in rerun.user_attrs["history"]] == [1, 2]  # its own epochs only


def test_interruptions_do_not_use_up_the_retries_of_a_dead_worker(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_study(tmp_path, sqlite_url, trials=1)
    with monkeypatch.context() as patch:
        patch.setattr(lrsearch.fleet.worker, "TrialRunner", _SignalledRunner)
        for _ in range(2):  # Ctrl-C twice while the same trial runs
            with pytest.raises(KeyboardInterrupt):
                run_worker(sqlite_url, name)
    study, _ = load(open_storage(sqlite_url), name)
    assert states(sqlite_url) == Counter(FAIL=2, WAITING=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        third = study.ask()  # the queued copy, taken by a worker that then dies
    open_storage(sqlite_url).record_heartbeat(third._trial_id)
    _age_heartbeat(sqlite_url, third._trial_id)

    assert run_worker(sqlite_url, name) == 1
    study, _ = load(open_storage(sqlite_url), name)
    [rerun] = [t for t in study.trials if t.system_attrs.get("retry_history") == [0, 1, 2]]
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["seed"] == 77
    assert finished(sqlite_url) == 1


def test_a_claim_that_fails_half_way_runs_again_as_a_whole(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lrsearch.store.optuna_rdb import RetryingRDBStorage

    name = make_study(tmp_path, sqlite_url, trials=2)
    monkeypatch.setattr(lrsearch.store.storage, "SQLITE_BUSY_TIMEOUT", 0.1)  # SQLite gives up after 0.1 s
    real, beats = RetryingRDBStorage.record_heartbeat, []

    def first_beat_meets_a_locked_database(self: RetryingRDBStorage, trial_id: int) -> None:
        beats.append(trial_id)
        if len(beats) > 1:
            return real(self, trial_id)
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        blocker.execute("BEGIN EXCLUSIVE")  # another program holds the write lock: a real SQLITE_BUSY
        try:
            return real(self, trial_id)
        finally:
            blocker.rollback()
            blocker.close()

    monkeypatch.setattr(RetryingRDBStorage, "record_heartbeat", first_beat_meets_a_locked_database)
    with caplog.at_level(logging.WARNING, logger="lrsearch.store.retry"):
        assert run_worker(sqlite_url, name) == 2
    assert "storage error in claiming a trial (database is locked); retrying" in caplog.text
    # The trial made before the heartbeat failed never ran: the claim's next run voided it at once, long before
    # the heartbeat grace period (120 s) would have made it an orphan.
    study, _ = load(open_storage(sqlite_url), name)
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs[VOID_ATTR] == "its claim failed before the first heartbeat (database error)"
    assert states(sqlite_url) == Counter(COMPLETE=2, FAIL=1)
    assert budget(study, 2) == Budget(finished=2, running=0, waiting=0, total=2)  # the void one holds no place

"""Worker processes: planning them, an exact global budget, joining, kill -9, SIGINT, SQLite under load.

The process tests run `lrsearch` as users do, on the synthetic objective, with a 1 s heartbeat and a 5 s grace
period so that a killed worker's trial is taken over within seconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
from optuna.trial import FrozenTrial, TrialState

import lrsearch.fleet.supervisor
from conftest import write_study
from lrsearch.cli import main
from lrsearch.errors import ConfigError
from lrsearch.fleet.supervisor import WorkerSpec, plan_workers, worker_command
from lrsearch.study.lifecycle import VOID_ATTR

GRACE = 5
SLOW = '[objective]\nname = "synthetic_objective:SlowSynthetic"\nsamples = {samples}\n\n[pruner]\nname = "none"\n'


# --- helpers shared with test_postgres --------------------------------------------------------------------


@pytest.fixture
def process_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    """For lrsearch processes: the synthetic objective, short heartbeats, no per-trial PNG files."""
    return dict(
        subprocess_env,
        LRSEARCH_HEARTBEAT_INTERVAL="1",
        LRSEARCH_HEARTBEAT_GRACE=str(GRACE),
        LRSEARCH_STORAGE_RETRY_SECONDS="60",
        LRSEARCH_ARTIFACT_DIR="off",
        LRSEARCH_PROGRESS_INTERVAL="0",  # a progress line per trial
        LRSEARCH_TORCH_THREADS="1",  # tiny models, small machine: one thread each
        OMP_NUM_THREADS="1",
    )


_STARTED: list[subprocess.Popen[str]] = []


def lrsearch_process(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "lrsearch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A test that fails half-way leaves no lrsearch process running (SIGTERM: `start` stops its workers)."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def finish(process: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"lrsearch did not end within {timeout}s; its stderr:\n{err}")
    return process.returncode, err


def read_trials(url: str, name: str = "synthetic") -> list[FrozenTrial]:
    # Only reads: it never creates the tables, which `start` may be creating at this moment.
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def count(trials: list[FrozenTrial]) -> Counter[str]:
    """Trial states, and `finished` as the budget counts it (a failed trial queued again is not finished)."""
    trials = [t for t in trials if VOID_ATTR not in t.user_attrs]  # never ran, holds no place in the budget
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    states = Counter(t.state.name for t in trials)
    states["finished"] = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and t.number not in retried)
        for t in trials
    )
    return states


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def mid_trial(url: str, minimum: int = 1) -> list[FrozenTrial]:
    """RUNNING trials that have reported at least one epoch, once there are `minimum` of them."""
    try:
        running = [t for t in read_trials(url) if t.state == TrialState.RUNNING and t.intermediate_values]
    except (
        KeyError,
        optuna.exceptions.StorageInternalError,
        sqlalchemy.exc.SQLAlchemyError,
    ):  # not there yet
        return []
    return running if len(running) >= minimum else []


def assert_exact(url: str, total: int) -> list[FrozenTrial]:
    trials = read_trials(url)
    states = count(trials)
    assert states["finished"] == total, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    return trials


def assert_every_epoch_stored(trials: list[FrozenTrial]) -> None:
    """Each trial completed or was pruned, and every epoch it reported is stored as an intermediate value."""
    for trial in trials:
        epochs = {r["epoch"] for r in trial.user_attrs["history"] if math.isfinite(r["train_loss"])}
        assert set(trial.intermediate_values) == epochs, trial.number  # every reported epoch is stored
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def assert_two_workers_join_a_created_study(tmp_path: Path, url: str, env: dict[str, str], trials: int) -> None:
    """`lrsearch create`, then two `lrsearch worker` processes that share the study and spend its budget exactly."""
    study = write_study(tmp_path, SLOW.format(samples=4000), trials=trials, epochs=2)
    created = CliRunner().invoke(main, ["create", str(study), "--storage", url])
    assert created.exit_code == 0 and f"0/{trials} trials finished" in created.stderr
    args = ("worker", "--study-name", "synthetic", "--storage", url)
    first = lrsearch_process(env, *args)
    second = lrsearch_process(env, *args)
    (code1, err1), (code2, err2) = finish(first), finish(second)
    assert code1 == 0 and code2 == 0, err1 + err2
    workers = Counter(t.user_attrs["worker"] for t in assert_exact(url, trials))
    assert len(workers) == 2, workers


# --- planning ------------------------------------------------------------------------------------------


def test_cpu_workers_divide_the_cores() -> None:
    no_gpu: Callable[[], int] = lambda: 0  # noqa: E731
    [one] = plan_workers(None, None, 1, "auto", 40, gpu_count=no_gpu, cores=8)
    assert one.threads == 8 and one.gpu is None
    four = plan_workers("4", None, 1, "cpu", 40, gpu_count=no_gpu, cores=8)
    assert [s.threads for s in four] == [2, 2, 2, 2] and {s.device for s in four} == {"cpu"}
    assert [s.threads for s in plan_workers("3", None, 1, "cpu", 40, gpu_count=no_gpu, cores=2)] == [1, 1, 1]
    assert len(plan_workers("auto", None, 1, "auto", 40, gpu_count=no_gpu, cores=6)) == 6
    assert len(plan_workers("8", None, 1, "cpu", 3, gpu_count=no_gpu, cores=2)) == 3  # no more than trials left
    env = four[0].env({"PATH": "/bin"}, "sqlite:///x.db")
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["LRSEARCH_TORCH_THREADS"] == "2"
    assert env["LRSEARCH_STORAGE"] == "sqlite:///x.db" and "CUDA_VISIBLE_DEVICES" not in env


def test_gpu_workers_are_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    specs = plan_workers(None, "0,2", 2, "auto", 40, gpu_count=lambda: 4, cores=8)
    assert [s.gpu for s in specs] == ["0", "0", "2", "2"] and {s.device for s in specs} == {"cuda"}
    assert specs[3].env({}, "u")["CUDA_VISIBLE_DEVICES"] == "2" and specs[3].threads == 2
    assert [s.gpu for s in plan_workers("auto", None, 1, "auto", 40, gpu_count=lambda: 2, cores=8)] == [
        "0",
        "1",
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")  # ids count within what this process may see
    assert [s.gpu for s in plan_workers(None, "1,2", 1, "cuda", 40, gpu_count=lambda: 3, cores=8)] == [
        "5",
        "6",
    ]


@pytest.mark.parametrize(
    ("workers", "gpus", "per_gpu", "device", "message"),
    [
        (None, "0,7", 1, "auto", r"no GPU 7 on this host; it has 2 \(ids 0-1"),
        (None, "0,x", 1, "auto", "give GPU ids separated by commas"),
        (None, "1,1", 1, "auto", "distinct GPU ids"),
        ("3", "0,1", 2, "auto", r"--workers 3 does not match --gpus/--per-gpu \(2 GPUs x 2 = 4 workers\)"),
        (None, "0", 1, "cpu", "--device cpu with --gpus"),
        (None, None, 2, "auto", "--per-gpu needs --gpus"),
        ("0", None, 1, "auto", "--workers '0': give a number"),
        ("many", None, 1, "auto", "--workers 'many'"),
    ],
)
def test_bad_worker_layouts_say_what_is_wrong(
    workers: str | None, gpus: str | None, per_gpu: int, device: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_workers(workers, gpus, per_gpu, device, 40, gpu_count=lambda: 2, cores=2)


def test_no_cuda_device_is_named(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lrsearch.fleet.supervisor, "cuda_device_count", lambda: 0)
    study = write_study(tmp_path)
    result = CliRunner().invoke(main, ["start", str(study), "--storage", sqlite_url, "--gpus", "0,1"])
    assert result.exit_code == 2
    assert "this host has no CUDA device that torch can use" in result.stderr


def parse_command_line(argv: list[str]) -> click.Context:
    """Parse an `lrsearch ...` command line as the CLI does, without running it (UsageError if wrong)."""
    group_context = main.make_context("lrsearch", list(argv[:1]))
    command = main.get_command(group_context, argv[0])
    assert command is not None, f"no command {argv[0]!r}"
    return command.make_context(argv[0], list(argv[1:]), parent=group_context)


def test_the_worker_command_line_is_one_the_cli_accepts(tmp_path: Path) -> None:
    spec = WorkerSpec(0, "cuda", 2, gpu="1")
    command = worker_command("my study", spec, tmp_path)
    assert command[:3] == [sys.executable, "-m", "lrsearch"]
    context = parse_command_line(command[3:])
    assert context.params["study_name"] == "my study" and context.params["device"] == "cuda"
    assert context.params["quiet"] and context.params["data_dir"] == tmp_path
    held = parse_command_line(worker_command("my study", spec, None, held=True)[3:])
    assert held.params["wait_for_go"] and not context.params["wait_for_go"]
    with pytest.raises(click.UsageError):
        parse_command_line(["worker", "--no-such-option"])


# --- processes -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_joins_a_running_study(tmp_path: Path, sqlite_url: str, process_env: dict[str, str]) -> None:
    env = dict(process_env, LRSEARCH_HEARTBEAT_GRACE="120")  # the paused process below is not taken for dead
    study = write_study(tmp_path, SLOW.format(samples=8000), trials=6, epochs=2)
    first = lrsearch_process(env, "start", str(study), "--storage", sqlite_url, "--workers", "1")
    # Pause `start` in a trial while the second worker starts (however slow this machine is): work is left.
    _pause_in_a_trial(first, sqlite_url)
    try:
        second = lrsearch_process(env, "worker", "--study-name", "synthetic", "--storage", sqlite_url)
        joined = f":{second.pid}"
        _wait_quietly(lambda: any(t.user_attrs.get("worker", "").endswith(joined) for t in read_trials(sqlite_url)))
    finally:
        first.send_signal(signal.SIGCONT)
    (code1, err1), (code2, err2) = finish(first), finish(second)
    assert code1 == 0 and code2 == 0, err1 + err2
    trials = assert_exact(sqlite_url, 6)
    workers = Counter(t.user_attrs["worker"] for t in trials)
    assert len(workers) == 2, workers  # both processes ran trials of the one study
    assert "worker done: ran" in err2 and "the study has 6/6 finished" in err2


def _pause_in_a_trial(process: subprocess.Popen[str], url: str) -> None:
    """SIGSTOP the process while it trains (not while it holds the budget lock)."""
    for _ in range(10):
        [trial, *_] = wait_for(lambda: mid_trial(url), 60, "a trial to run")  # type: ignore[misc]
        process.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        # Still running (so not in the budget-locked step after it), and not stopped inside a database write.
        if read_trials(url)[trial.number].state == TrialState.RUNNING and _writable(url):
            return
        process.send_signal(signal.SIGCONT)
    pytest.fail("could not pause the worker in a trial")


def _writable(sqlite_url: str) -> bool:
    connection = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0.5)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.rollback()
        return True
    except sqlite3.OperationalError:  # database is locked
        return False
    finally:
        connection.close()


def _wait_quietly(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Wait for `condition`, at most `timeout` seconds (a paused process may hold the SQLite lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.3)


@pytest.mark.slow
def test_kill_9_of_a_worker_reruns_its_trial(tmp_path: Path, sqlite_url: str, process_env: dict[str, str]) -> None:
    total = 8
    study = write_study(tmp_path, SLOW.format(samples=8000), trials=total, epochs=3)
    process = lrsearch_process(process_env, "start", str(study), "--storage", sqlite_url, "--workers", "4")
    [victim, *_] = wait_for(lambda: mid_trial(sqlite_url), 90, "a trial in its first epochs")  # type: ignore[misc]
    killed_worker = victim.user_attrs["worker"]
    pid = int(killed_worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    code, err = finish(process)
    assert code == 0, err
    assert f"(pid {pid}) was killed by SIGKILL; the trial it was running, if any, is failed and run again by " in err
    assert f"once its heartbeat is {GRACE}s old (at most 2 times)" in err
    trials = assert_exact(sqlite_url, total)
    # The trial its worker was running when killed (normally `victim`; a later one if it just moved on).
    [killed] = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs["worker"] == killed_worker]
    [rerun] = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["worker"] != killed_worker
    assert rerun.user_attrs["seed"] == killed.user_attrs["seed"]
    assert rerun.params.items() >= killed.params.items()  # all it had sampled (all of them, mid-trial)
    assert count(trials)["FAIL"] == 1


FAILING = '[objective]\nname = "synthetic_objective:FailingSynthetic"\nfail_every = {every}\n'


@pytest.mark.slow
def test_trials_that_raise_fail_and_the_workers_go_on(
    tmp_path: Path, sqlite_url: str, process_env: dict[str, str]
) -> None:
    total = 8
    study = write_study(tmp_path, FAILING.format(every=2), trials=total, epochs=2)  # every 2nd trial of a worker
    code, err = finish(lrsearch_process(process_env, "start", str(study), "--storage", sqlite_url, "--workers", "2"))
    assert code == 0, err
    trials = assert_exact(sqlite_url, total)  # the failed trials count as finished: nothing was rerun
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and not any("failed_trial" in t.system_attrs for t in trials)
    for trial in failed:
        assert trial.user_attrs["stop_reason"].startswith("failed: RuntimeError: synthetic bug in model ")
        assert "in make_model" in trial.user_attrs["traceback"]
    assert "Traceback" not in err and "run again" not in err and "exited with code" not in err


@pytest.mark.slow
def test_workers_whose_trials_all_fail_stop_and_say_so(
    tmp_path: Path, sqlite_url: str, process_env: dict[str, str]
) -> None:
    study = write_study(tmp_path, FAILING.format(every=1), trials=20, epochs=2)
    code, err = finish(lrsearch_process(process_env, "start", str(study), "--storage", sqlite_url, "--workers", "2"))
    assert code == 1, err
    trials = read_trials(sqlite_url)
    assert count(trials) == Counter(FAIL=6, finished=6)  # 3 per worker; none running, none queued
    assert err.count("3 trials in a row failed in this worker") == 2, err
    assert (
        err.count(
            "stopped: its trials failed again and again (see its error above); its failed trials count "
            "as finished and are not run again"
        )
        == 2
    ), err
    assert "RuntimeError: synthetic bug in model 3" in err and "`lrsearch start` resumes the study" in err
    assert "run again by another worker" not in err
    assert err.count("ERROR lrsearch.fleet.worker: the traceback of trial") == 2  # the user's code's traceback
    assert err.count("Traceback (most recent call last):") == 2 and "in make_model" in err
    assert "the workers ended with 6/20 trials finished and 0 running" in err


@pytest.mark.slow
def test_a_single_worker_whose_trials_all_fail_exits_3(
    tmp_path: Path, sqlite_url: str, process_env: dict[str, str]
) -> None:
    study = write_study(tmp_path, FAILING.format(every=1), trials=20, epochs=2)
    code, err = finish(lrsearch_process(process_env, "start", str(study), "--storage", sqlite_url, "--workers", "1"))
    assert code == 3, err
    assert "Error: 3 trials in a row failed in this worker, the last (trial 2) with RuntimeError" in err
    assert count(read_trials(sqlite_url)) == Counter(FAIL=3, finished=3)


@pytest.mark.slow
def test_sigint_stops_cleanly_and_start_resumes(tmp_path: Path, sqlite_url: str, process_env: dict[str, str]) -> None:
    total = 8
    study = write_study(tmp_path, SLOW.format(samples=30000), trials=total, epochs=3)
    args = ("start", str(study), "--storage", sqlite_url, "--workers", "2")
    process = lrsearch_process(process_env, *args)
    wait_for(lambda: mid_trial(sqlite_url), 90, "a trial to run")
    _wait_quietly(lambda: bool(mid_trial(sqlite_url, minimum=2)), 4)  # both workers in a trial, normally
    process.send_signal(signal.SIGINT)
    code, err = finish(process, timeout=60)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    trials = read_trials(sqlite_url)
    states = count(trials)
    assert states["RUNNING"] == 0 and states["FAIL"] >= 1 and states["WAITING"] == states["FAIL"], states
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        [queued] = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
        assert queued.state == TrialState.WAITING and queued.params == failed.params

    code, err = finish(lrsearch_process(process_env, *args))  # `start` again resumes
    assert code == 0, err
    assert_exact(sqlite_url, total)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _DashboardReader(threading.Thread):
    """Reads the study through optuna-dashboard's JSON API, as a browser on the dashboard does."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.base, self.stop, self.reads = f"http://127.0.0.1:{port}", threading.Event(), 0
        self.errors: list[Exception] = []

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.loads(response.read())

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                studies = self.get("/api/studies")
                for study in studies["study_summaries"]:  # type: ignore[index]
                    self.get(f"/api/studies/{study['study_id']}?after=0")
                    self.reads += 1
            except Exception as e:  # noqa: BLE001 - recorded, asserted on below
                self.errors.append(e)


@pytest.mark.slow
def test_eight_workers_and_the_dashboard_share_sqlite(
    tmp_path: Path, sqlite_url: str, process_env: dict[str, str]
) -> None:
    total = 12
    study = write_study(tmp_path, trials=total, epochs=2)
    assert CliRunner().invoke(main, ["create", str(study), "--storage", sqlite_url]).exit_code == 0
    port = _free_port()
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")), sqlite_url, "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = _DashboardReader(port)
    try:
        wait_for(lambda: _answers(reader), 30, "optuna-dashboard to answer")
        reader.start()
        code, err = finish(
            lrsearch_process(
                process_env, "start", "--study-name", "synthetic", "--storage", sqlite_url, "--workers", "8"
            )
        )
    finally:
        reader.stop.set()
        reader.join(timeout=30)
        dashboard.terminate()
        dashboard_err = dashboard.communicate(timeout=30)[1]
    assert code == 0, err
    trials = assert_exact(sqlite_url, total)
    assert len(trials) == total  # nothing failed, nothing ran twice
    assert len({t.user_attrs["worker"] for t in trials}) >= 4, "the work was not shared"
    assert len(re.findall(r"^started worker \d on cpu, 1 thread", err, re.M)) == 8
    assert len(re.findall(rf"^\[\d+/{total}\] trial \d+ ", err, re.M)) == total  # a progress line per trial
    assert "database is locked" not in err + dashboard_err and "Traceback" not in err
    assert reader.errors == [] and reader.reads >= 5


def _answers(reader: _DashboardReader) -> bool:
    try:
        reader.get("/api/meta")
    except OSError:
        return False
    return True

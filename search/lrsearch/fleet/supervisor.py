"""Several workers on this host: `lrsearch start --workers K` and `--gpus 0,1 --per-gpu M`.

Each worker is a separate process running `lrsearch worker` on the same study. A GPU worker sees only its
device (CUDA_VISIBLE_DEVICES); on CPU the cores are divided among the workers (torch/OpenMP threads), so K
workers do not oversubscribe them. The parent forwards SIGINT/SIGTERM to its workers, which stop cleanly
(their running trials are failed and queued again), and prints a progress line per finished trial by reading
the study.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from lrsearch import settings
from lrsearch.errors import ConfigError, DatabaseUnreachableError, LRSearchError, TrialsFailingError
from lrsearch.fleet.threads import auto_workers, thread_env, threads_per_worker, usable_cores
from lrsearch.store.trial_retry import MAX_RETRY
from lrsearch.store.urls import mask_url

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from lrsearch.study.lifecycle import Budget

_logger = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often the parent reads the study for its progress lines
STOP_TIMEOUT = 60.0  # seconds workers get to stop cleanly after a signal before they are killed
# The command line of a worker process: `lrsearch worker ...`, run by this very Python (no PATH lookup).
WORKER_ENTRY = ("-m", "lrsearch", "worker")


class FleetError(LRSearchError):
    """The workers of `lrsearch start` could not be planned or ended before the budget was spent."""


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: its device, the GPU it is pinned to (CUDA_VISIBLE_DEVICES) and its threads."""

    index: int
    device: str
    threads: int
    gpu: str | None = None

    def env(self, base: dict[str, str], storage_url: str) -> dict[str, str]:
        env = dict(base, LRSEARCH_STORAGE=storage_url)  # not on the command line, where ps shows passwords
        env.update(thread_env(self.threads))
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def describe(self) -> str:
        where = f"GPU {self.gpu}" if self.gpu is not None else self.device
        return f"worker {self.index} on {where}, {self.threads} thread{'s' * (self.threads != 1)}"


def cuda_device_count() -> int:
    import torch

    return int(torch.cuda.device_count())


def parse_gpus(text: str) -> list[int]:
    """'0,1,3' -> [0, 1, 3]; an id that is not a number, or repeated, is an error."""
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise ConfigError(f"--gpus {text!r}: give GPU ids separated by commas, e.g. --gpus 0,1,2,3") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {text!r}: give distinct GPU ids (0, 1, ...) separated by commas, e.g. --gpus 0,1")
    return ids


def check_gpus(ids: Sequence[int], count: int) -> None:
    """Every id names a GPU of this host (as torch.cuda.device_count() sees them)."""
    if count == 0:
        raise ConfigError(
            f"--gpus {','.join(map(str, ids))}: this host has no CUDA device that torch can use "
            "(torch.cuda.device_count() is 0); leave out --gpus to run on the CPU"
        )
    missing = [i for i in ids if i >= count]
    if missing:
        raise ConfigError(
            f"--gpus: no GPU {', '.join(map(str, missing))} on this host; it has {count} "
            f"(ids 0-{count - 1}{', as numbered within CUDA_VISIBLE_DEVICES' if _visible() else ''})"
        )


def _visible() -> list[str] | None:
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def plan_workers(
    workers: str | None,
    gpus: str | None,
    per_gpu: int,
    device: str,
    remaining: int,
    *,
    gpu_count: Callable[[], int] | None = None,
    cores: int | None = None,
) -> list[WorkerSpec]:
    """The worker processes for `start`: --workers N|auto, or --gpus ids with --per-gpu M each."""
    gpu_count = gpu_count or cuda_device_count  # looked up when called, so that a test can fake the count
    cores = cores or usable_cores()
    if per_gpu < 1:
        raise ConfigError(f"--per-gpu {per_gpu}: give 1 or more workers per GPU")
    if gpus is not None:
        ids = parse_gpus(gpus)
        check_gpus(ids, gpu_count())
        return _gpu_specs(ids, per_gpu, workers, device, cores)
    if per_gpu != 1:
        raise ConfigError("--per-gpu needs --gpus (the GPU ids to put the workers on), e.g. --gpus 0,1 --per-gpu 2")
    count = worker_count(workers)
    if count is None:  # auto
        if device in ("auto", "cuda") and gpu_count() > 0:
            return _gpu_specs(list(range(gpu_count())), 1, None, device, cores)
        count = auto_workers(cores)
    if device == "auto":
        device = "cuda" if gpu_count() > 0 else "cpu"
    count = max(1, min(count, remaining))  # no more workers than trials left
    return [WorkerSpec(i, device, threads_per_worker(count, cores)) for i in range(count)]


def worker_count(workers: str | None) -> int | None:
    if workers is None:
        return 1
    if workers.strip().lower() == "auto":
        return None
    try:
        count = int(workers)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"--workers {workers!r}: give a number of worker processes (1 or more) or auto")
    return count


def _gpu_specs(ids: list[int], per_gpu: int, workers: str | None, device: str, cores: int) -> list[WorkerSpec]:
    count = len(ids) * per_gpu
    if workers is not None and workers.strip().lower() != "auto" and worker_count(workers) != count:
        raise ConfigError(
            f"--workers {workers} does not match --gpus/--per-gpu ({len(ids)} GPUs x {per_gpu} = {count} "
            "workers); leave out --workers"
        )
    if device not in ("auto", "cuda"):
        raise ConfigError(
            f"--device {device} with --gpus: each GPU worker uses the one GPU it sees (cuda); leave out --device"
        )
    visible = _visible()
    names = [visible[i] if visible is not None and i < len(visible) else str(i) for i in ids]
    threads = threads_per_worker(count, cores)
    return [WorkerSpec(n, "cuda", threads, names[n // per_gpu]) for n in range(count)]


def worker_command(study_name: str, spec: WorkerSpec, data_dir: Path | None, *, held: bool = False) -> list[str]:
    command = [sys.executable, *WORKER_ENTRY, "--study-name", study_name, "--device", spec.device, "--quiet"]
    command += ["--wait-for-go"] if held else []
    return command + (["--data-dir", str(data_dir)] if data_dir is not None else [])


def spawn_held(
    storage_url: str, study_name: str, specs: Sequence[WorkerSpec], data_dir: Path | None
) -> list[subprocess.Popen[bytes]]:
    """Start the workers of a study that `start` has yet to check and create: they import torch (the slow part
    of their start) meanwhile, then wait. `run_fleet` releases them; `stop_held` ends them, before they have
    touched the database, when the study is not made."""
    return [_spawn(storage_url, study_name, spec, data_dir, held=True) for spec in specs]


def stop_held(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def _release(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.stdin is not None:
            try:
                process.stdin.write(b"go\n")
                process.stdin.close()
            except OSError:  # it has died: the supervision reports its exit
                pass


def prepare_data(storage_url: str, study_name: str, data_dir: Path | None) -> None:
    """Read (download) the objective's data once, so that the workers do not all download it at once."""
    import torch

    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import load
    from lrsearch.train.objective import load_data, load_objective

    definition = load(open_storage(storage_url), study_name)[1]
    objective = load_objective(definition.objective, definition.objective_options)
    load_data(objective, definition.objective, torch.device("cpu"), data_dir)


@dataclass
class Watcher:
    """Reads the study for the parent's progress lines: each trial once, when it finishes."""

    study: optuna.Study
    on_trial: Callable[[FrozenTrial, Budget], None] | None
    seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.seen = {t.number for t in self._finished()}  # a resumed study's earlier trials are not news

    def _finished(self) -> list[FrozenTrial]:
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return self.study.get_trials(deepcopy=False, states=states)

    def poll(self) -> Budget:
        from lrsearch.study.lifecycle import budget, stored_total

        trials = [t for t in self._finished() if t.number not in self.seen]
        state = budget(self.study, stored_total(self.study))
        for trial in sorted(trials, key=lambda t: t.number):
            self.seen.add(trial.number)
            if self.on_trial is not None:
                self.on_trial(trial, state)
        return state

    def poll_quietly(self) -> None:
        """`poll`, with a failed read logged: progress lines only, the workers decide what a storage error means."""
        try:
            self.poll()
        except Exception as e:
            _logger.warning("progress: cannot read the study: %s", e)


def _signal_workers(processes: list[subprocess.Popen[bytes]], number: int, signalled: set[int]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(number)
            signalled.add(process.pid)


@contextmanager
def stop_signals(stop: threading.Event, forward: Callable[[int], None] | None = None) -> Iterator[list[str]]:
    """While inside: SIGINT/SIGTERM/SIGHUP to this process set `stop` and go to `forward` (e.g. to the workers)
    instead of ending it; yields the names of the signals received."""
    received: list[str] = []

    def handle(number: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(number).name)
        stop.set()
        if forward is not None:
            forward(number)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {n: signal.signal(n, handle) for n in numbers}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_fleet(
    storage_url: str,
    study_name: str,
    specs: Sequence[WorkerSpec],
    *,
    data_dir: Path | None = None,
    data_ready: bool = False,
    held: Sequence[subprocess.Popen[bytes]] = (),
    on_trial: Callable[[FrozenTrial, Budget], None] | None = None,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Budget:
    """Run the workers until they have spent the study's budget; returns the final count.

    `data_ready`: the objective's data was just read on this host (by `start`'s check of a new study), so none
    is missing: the workers need not wait for this process to download it. `held`: workers of the first specs
    already started by `spawn_held`, released here.

    Raises KeyboardInterrupt after a signal (workers stopped cleanly), FleetError when the workers ended but
    the budget was not spent (e.g. the objective raised in every worker).
    """
    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import load

    study = load(open_storage(storage_url, retry_seconds=settings.storage_retry_seconds()), study_name)[0]
    watcher = Watcher(study, on_trial)
    if len(specs) > 1 and not data_ready:
        prepare_data(storage_url, study_name, data_dir)
    processes: list[subprocess.Popen[bytes]] = []
    stop, signalled = threading.Event(), set[int]()

    def forward(number: int) -> None:  # the workers stop cleanly
        _signal_workers(processes, signal.SIGINT if number == signal.SIGINT else signal.SIGTERM, signalled)

    with stop_signals(stop, forward) as received:
        processes.extend(held)
        for spec, process in zip(specs, held, strict=False):
            echo(f"started {spec.describe()} (pid {process.pid})")
        _release(held)
        for spec in specs[len(held) :]:
            if stop.is_set():
                break
            processes.append(_spawn(storage_url, study_name, spec, data_dir))
            echo(f"started {spec.describe()} (pid {processes[-1].pid})")
        codes = _supervise(processes, specs, watcher, stop, echo, signalled)
    state = _final_poll(watcher)
    if received:
        raise KeyboardInterrupt(received[0])
    if not state.done:
        failures = ", ".join(f"worker {i}: {_exit(code)}" for i, code in enumerate(codes) if code != 0) or "none"
        raise FleetError(
            f"the workers ended with {state.finished}/{state.total} trials finished and {state.running} "
            f"running (worker exits: {failures}); see their messages above, then run `lrsearch start` again "
            "to resume"
        )
    return state


def _spawn(
    storage_url: str, study_name: str, spec: WorkerSpec, data_dir: Path | None, *, held: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_command(study_name, spec, data_dir, held=held),
        env=spec.env(dict(os.environ), storage_url),
        start_new_session=True,  # a terminal's Ctrl-C reaches the parent only, which forwards it once
        stdin=subprocess.PIPE if held else None,  # "go", or the end of the pipe if this process dies
    )


def _supervise(
    processes: list[subprocess.Popen[bytes]],
    specs: Sequence[WorkerSpec],
    watcher: Watcher,
    stop: threading.Event,
    echo: Callable[[str], None],
    signalled: set[int],
) -> list[int]:
    codes: dict[int, int] = {}
    stop_deadline: float | None = None
    while len(codes) < len(processes):
        stop.wait(POLL_SECONDS)
        if stop.is_set() and stop_deadline is None:
            stop_deadline = time.monotonic() + STOP_TIMEOUT
            echo("stopping: the workers fail their running trials and queue them to run again")
            late = [p for p in processes if p.pid not in signalled]  # started while the signal came
            _signal_workers(late, signal.SIGTERM, signalled)
        for index, process in enumerate(processes):
            code = process.poll()
            if code is not None and index not in codes:
                codes[index] = code
                if code != 0 and not stop.is_set():
                    echo(f"{specs[index].describe()} (pid {process.pid}) {_exit(code)}; {_aftermath(code)}")
        watcher.poll_quietly()
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            _kill(processes, echo)
    return [codes[i] for i in range(len(processes))]


def _final_poll(watcher: Watcher) -> Budget:
    return watcher.poll()


def _kill(processes: list[subprocess.Popen[bytes]], echo: Callable[[str], None]) -> None:
    for process in processes:
        if process.poll() is None:
            echo(f"worker pid {process.pid} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
            process.kill()


def _exit(code: int) -> str:
    """What a worker's exit status says happened (the codes of lrsearch.errors, 130 for a signal it caught)."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return {
        TrialsFailingError.exit_code: "stopped: its trials failed again and again (see its error above)",
        DatabaseUnreachableError.exit_code: "stopped: the study database stayed unreachable (see its error above)",
        130: "was stopped by a signal",
        2: "refused its settings (see its error above)",
    }.get(code, f"exited with code {code} (see its error above)")


def _aftermath(code: int) -> str:
    """What becomes of the trial a worker was running when it ended with `code`."""
    rerun = (
        f"is failed and run again by another worker once its heartbeat is {settings.heartbeat_grace()}s old (at "
        f"most {MAX_RETRY} times)"
    )
    if code == TrialsFailingError.exit_code:
        return "its failed trials count as finished and are not run again; no trial of it is left running"
    if code == 130:
        return "its running trial was failed and queued to run again"
    if code == 2:
        return "it ran no trial"
    if code == DatabaseUnreachableError.exit_code:
        return f"the trial it was running, if any, {rerun}, when the other workers reach the database"
    return f"the trial it was running, if any, {rerun}"


def start_banner(storage_url: str, study_name: str, total: int, specs: Sequence[WorkerSpec]) -> str:
    return f"lrsearch: study '{study_name}' in {mask_url(storage_url)}, {total} trials, {len(specs)} workers"


__all__ = [
    "WorkerSpec",
    "FleetError",
    "plan_workers",
    "run_fleet",
    "parse_gpus",
    "check_gpus",
    "worker_command",
    "spawn_held",
    "stop_held",
]

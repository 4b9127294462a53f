"""Time spent in the study storage per trial, as a share of trial time, with SQLite and with PostgreSQL.

For each storage, a study of the default definition (studies/mnist.toml: real MNIST, 12 epochs, TPE, the
feasible percentile pruner, early stop) is created with a budget of --trials trials, and W = auto_workers() worker
processes (lrsearch.fleet.worker.run_worker, threads_per_worker(W) torch threads each: the `--workers auto` policy) run
it side by side, exactly as `lrsearch start --workers auto` does. Inside each worker:

- storage time: the wall time of every call into the storage (the methods of Optuna's RDBStorage and of
  the cache Optuna puts in front of it, including lrsearch's retry wrapper), the budget lock (file lock for
  SQLite, advisory lock for PostgreSQL) and lrsearch's orphan query; nested calls are counted once. The
  calls of the heartbeat thread run beside the training and are reported apart.
- trial time: the worker's loop from its first claim to its end (claim, sampling, training, reporting,
  publishing, tell) divided by its trials; reading MNIST and opening the storage come before and are not
  counted. Training time (the `train` generator) is reported too, and "other" is what is left (sampling,
  pruning decisions, plots and notes for the dashboard).

    python benchmarks/storage_overhead.py [--data-dir DIR] [--trials N] [--postgres URL] [--skip-postgres]

PostgreSQL: --postgres, else env LRSEARCH_TEST_POSTGRES, else postgresql+psycopg2://postgres@127.0.0.1:5432/test;
the study made there is deleted at the end. SQLite: a database in a temporary folder, opened as lrsearch opens
it (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import add_data_dir, load_average

DEFAULT_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@dataclass
class Clock:
    """Storage seconds per thread kind, counted at the outermost storage call only."""

    main: float = 0.0
    heartbeat: float = 0.0
    calls: int = 0
    counting: bool = False  # set once the worker has loaded its data

    def __post_init__(self) -> None:
        self._local = threading.local()
        self.by_call: dict[str, list[float]] = {}  # main thread: name -> [calls, seconds]

    @contextlib.contextmanager
    def timing(self, name: str = "") -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0 and self.counting:
                spent = time.perf_counter() - started
                if threading.current_thread() is threading.main_thread():
                    self.main += spent
                    self.calls += 1
                    entry = self.by_call.setdefault(name, [0, 0.0])
                    entry[0] += 1
                    entry[1] += spent
                else:
                    self.heartbeat += spent


def _timed(method: Callable[..., Any], clock: Clock, name: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with clock.timing(name):
            return method(*args, **kwargs)

    return wrapper


def _patch(module: Any, name: str, value: Any) -> None:
    setattr(module, name, value)


def instrument(clock: Clock) -> dict[str, float]:
    """Patch the storage classes and lrsearch's direct database uses to report to `clock`.

    Returns a dict that receives `ready` (when the worker has its data) and `training` (seconds in `train`).
    """
    import optuna.storages._cached_storage as cached
    from optuna.storages import BaseStorage, RDBStorage

    import lrsearch.fleet.worker
    import lrsearch.store.liveness
    import lrsearch.study.runner
    from lrsearch.store.optuna_rdb import RetryingRDBStorage

    interface = [
        name for name in dir(BaseStorage) if not name.startswith("__") and callable(getattr(BaseStorage, name))
    ]
    for cls in (RDBStorage, RetryingRDBStorage, cached._CachedStorage):
        for name in {*interface, "record_heartbeat", "_get_stale_trial_ids", "set_trial_data", "save_study_note"}:
            if name in cls.__dict__:
                setattr(cls, name, _timed(cls.__dict__[name], clock, name))
    # Module attributes that the worker looks up at call time.
    _patch(lrsearch.store.liveness, "orphans", _timed(vars(lrsearch.store.liveness)["orphans"], clock, "orphan query"))
    original_lock = lrsearch.fleet.worker.budget_lock

    @contextlib.contextmanager
    def budget_lock(*args: Any, **kwargs: Any) -> Iterator[Any]:
        lock = original_lock(*args, **kwargs)
        with clock.timing("budget lock"):
            held = lock.__enter__()
        try:
            yield _timed(held, clock, "budget lock check") if callable(held) else held
        finally:
            with clock.timing("budget lock"):
                lock.__exit__(None, None, None)

    _patch(lrsearch.fleet.worker, "budget_lock", budget_lock)
    marks: dict[str, float] = {"training": 0.0}
    make_runner = lrsearch.fleet.worker._make_runner

    def timed_make_runner(*args: Any, **kwargs: Any) -> Any:
        runner = make_runner(*args, **kwargs)
        clock.counting = True
        marks["ready"] = time.perf_counter()
        return runner

    _patch(lrsearch.fleet.worker, "_make_runner", timed_make_runner)
    train = vars(lrsearch.study.runner)["train"]

    def timed_train(*args: Any, **kwargs: Any) -> Iterator[Any]:
        epochs = train(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                record = next(epochs)
            except StopIteration:
                marks["training"] += time.perf_counter() - started
                return
            marks["training"] += time.perf_counter() - started
            yield record

    _patch(lrsearch.study.runner, "train", timed_train)
    return marks


def _worker(url: str, study_name: str, threads: int, data_dir: str | None, results: Any) -> None:
    from lrsearch.fleet.worker import run_worker

    clock = Clock()
    marks = instrument(clock)
    trials = run_worker(url, study_name, data_dir=Path(data_dir) if data_dir else None, threads=threads)
    loop = time.perf_counter() - marks["ready"]
    results.put(
        {
            "trials": trials,
            "loop": loop,
            "storage": clock.main,
            "heartbeat": clock.heartbeat,
            "calls": clock.calls,
            "training": marks["training"],
            "by_call": clock.by_call,
        }
    )


@dataclass(frozen=True)
class Outcome:
    backend: str
    workers: int
    trials: int
    loop: float  # worker-seconds from first claim to end, all workers
    storage: float
    heartbeat: float
    training: float
    calls: int
    by_call: dict[str, list[float]]

    def row(self) -> str:
        per = self.loop / self.trials
        return (
            f"| {self.backend} | {self.workers} | {self.trials} | {per:.2f} | "
            f"{self.training / self.trials:.2f} | "
            f"{self.storage / self.trials * 1000:.0f} | {self.calls / self.trials:.0f} | "
            f"{self.storage / self.loop:.2%} | {self.heartbeat / self.loop:.2%} |"
        )


def measure(
    backend: str,
    url: str,
    trials: int,
    workers: int,
    threads: int,
    data_dir: str | None,
) -> Outcome:
    import optuna

    from lrsearch.store.storage import open_storage
    from lrsearch.study.definition import default_study_file, load_study_file
    from lrsearch.study.lifecycle import create_or_resume

    name = f"bench-storage-{uuid.uuid4().hex[:8]}"
    definition = load_study_file(default_study_file()).with_overrides(name=name, trials=trials)
    storage = open_storage(url)
    create_or_resume(storage, definition)
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(url, name, threads, data_dir, results)) for _ in range(workers)]
    try:
        for process in processes:
            process.start()
        parts = _collect(results, processes)
    finally:
        if backend == "postgresql":
            optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()
    return Outcome(
        backend,
        workers,
        sum(p["trials"] for p in parts),
        sum(p["loop"] for p in parts),
        sum(p["storage"] for p in parts),
        sum(p["heartbeat"] for p in parts),
        sum(p["training"] for p in parts),
        sum(p["calls"] for p in parts),
        _merge([p["by_call"] for p in parts]),
    )


def _merge(parts: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    merged: dict[str, list[float]] = {}
    for part in parts:
        for name, (calls, seconds) in part.items():
            entry = merged.setdefault(name, [0, 0.0])
            entry[0] += calls
            entry[1] += seconds
    return merged


def _collect(results: Any, processes: Sequence[Any]) -> list[Any]:
    """The result of every process; an error as soon as one of them ends without giving one."""
    import queue

    parts: list[Any] = []
    while len(parts) < len(processes):
        try:
            parts.append(results.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                for process in processes:
                    process.terminate()
                raise RuntimeError(f"a worker process failed (exit code {dead[0].exitcode})") from None
    for process in processes:
        process.join()
    return parts


def _reachable(url: str) -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means: skip PostgreSQL, saying why
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def main(argv: Sequence[str] | None = None) -> None:
    from lrsearch.fleet.threads import auto_workers, threads_per_worker
    from lrsearch.store.urls import mask_url

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_dir(parser)
    parser.add_argument("--trials", type=int, default=12, help="trials per storage (default 12)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("LRSEARCH_TEST_POSTGRES", DEFAULT_POSTGRES),
        help="PostgreSQL URL (default: env LRSEARCH_TEST_POSTGRES or the local server)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)

    workers = auto_workers()
    threads = threads_per_worker(workers)
    print(
        f"{workers} workers x {threads} thread(s); {args.trials} trials of the default study per storage; "
        f"load average {load_average()}",
        flush=True,
    )
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="lrsearch-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        outcomes.append(measure("sqlite", url, args.trials, workers, threads, args.data_dir))
        print(outcomes[-1].row(), flush=True)
    if not args.skip_postgres:
        why = _reachable(args.postgres)
        if why is None:
            outcomes.append(measure("postgresql", args.postgres, args.trials, workers, threads, args.data_dir))
            print(outcomes[-1].row(), flush=True)
        else:
            print(f"PostgreSQL at {mask_url(args.postgres)} skipped: {why}")
    print(f"\nload average at the end: {load_average()}\n")
    print(
        "| storage | workers | trials | s / trial | training s / trial | storage ms / trial "
        "| storage calls / trial "
        "| storage share of trial time | heartbeat thread share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for outcome in outcomes:
        print(outcome.row())
    for outcome in outcomes:
        top = sorted(outcome.by_call.items(), key=lambda item: -item[1][1])[:8]
        print(
            f"\n{outcome.backend}, the costliest storage calls per trial: "
            + "; ".join(
                f"{name} {calls / outcome.trials:.1f}x {seconds / outcome.trials * 1000:.0f} ms"
                for name, (calls, seconds) in top
            )
        )


if __name__ == "__main__":
    main()

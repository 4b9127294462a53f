"""The workers of `lrsearch start --ray` as Ray actors, on any node of a Ray cluster.

The study database stays the one place of coordination (the exact budget, heartbeats, retries): Ray only
places the workers, restarts lost ones and stops them all. Each actor reserves its worker's share of the
cluster (a fraction 1/M of a GPU with `--per-gpu M`, or CPUs) and runs the same `lrsearch worker` command line
as the local fleet (see `ray_actor`). This process, the driver, prints a progress line per finished trial by
reading the study, and on SIGINT/SIGTERM stops every worker cleanly, so that no trial is left RUNNING.

    with ray_cluster("auto") as cluster:           # "auto": a running cluster; "local": a new one here;
        check_storage(url, cluster)                # "": the Ray default (RAY_ADDRESS, a cluster here, else new)
        planned = plan_ray_workers("auto", None, 2, "auto", remaining, cluster)
        run_ray_fleet(url, name, planned, cluster)

Ray is an optional dependency (`pip install 'lrsearch[ray]'`), imported only here and only when used.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lrsearch import settings
from lrsearch.errors import ConfigError, LRSearchError
from lrsearch.fleet.ray_actor import WorkerProcess, describe_exit
from lrsearch.fleet.supervisor import (
    POLL_SECONDS,
    STOP_TIMEOUT,
    FleetError,
    Watcher,
    WorkerSpec,
    stop_signals,
    worker_count,
)
from lrsearch.fleet.threads import THREAD_ENVS
from lrsearch.store.urls import mask_url, parse_url, sqlite_file

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from lrsearch.study.lifecycle import Budget

_logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'lrsearch[ray]'"
DEVICES = ("auto", "cuda", "cpu")
CONNECT_SECONDS = 10.0  # for the head's port to answer


class RayUnavailable(LRSearchError):
    """Ray is not installed here, or no Ray cluster answers at the address given (exit code 1, as for a database
    server that is down)."""


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Node:
    node_id: str
    address: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Cluster:
    """The alive nodes of the Ray cluster and the one this process runs on (None: not a node of it)."""

    nodes: tuple[Node, ...]
    this_node: str | None

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    def describe(self) -> str:
        count = len(self.nodes)
        return f"{count} node{'s' * (count != 1)}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"


@contextmanager
def ray_cluster(address: str) -> Iterator[Cluster]:
    """Connected to the Ray cluster at `address` while inside (see the module's docstring for the values)."""
    ray = import_ray()
    if not sys.stderr.isatty():  # the workers' lines Ray passes on, without colour codes in a log file
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    _check_answers(address)
    # ray.init installs its own SIGINT/SIGTERM handlers and leaves them after shutdown: this process gets its own back.
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(address=address or None, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as e:
        _restore(handlers)
        # Ray's reason is the last line of the error's cause (e.g. a missing token)
        cause = f" ({(str(e.__cause__).strip().splitlines() or [''])[-1]})" if e.__cause__ is not None else ""
        where = f"at {address}" if address not in ("", "auto") else "running on this host (or at RAY_ADDRESS)"
        raise RayUnavailable(
            f"--ray {address}: cannot connect to a Ray cluster {where}: {str(e).rstrip('.')}{cause}. Start one with "
            "`ray start --head` (and `ray start --address HEAD:6379` on the other nodes), or give its address"
        ) from None
    try:
        yield _cluster(ray)
    finally:
        ray.shutdown()
        _restore(handlers)


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    if threading.current_thread() is threading.main_thread():
        for number, handler in handlers.items():
            signal.signal(number, handler)


def _check_answers(address: str) -> None:
    """A HOST:PORT that nothing answers on is refused at once (Ray would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or "/" in address or not port.isdigit():
        return  # auto, local, the default, or a ray:// URL: Ray resolves them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise RayUnavailable(
            f"--ray {address}: no Ray head answers there ({e}); check the address (`ray status` on the head shows "
            "it), or start one with `ray start --head`"
        ) from None


def _cluster(ray: ModuleType) -> Cluster:
    nodes = tuple(
        Node(
            node_id=str(n["NodeID"]),
            address=str(n["NodeManagerAddress"]),
            cpus=float(n["Resources"].get("CPU", 0.0)),
            gpus=float(n["Resources"].get("GPU", 0.0)),
        )
        for n in ray.nodes()
        if n["Alive"]
    )
    return Cluster(nodes, str(ray.get_runtime_context().get_node_id()))


def check_storage(storage_url: str, cluster: Cluster) -> None:
    """A SQLite file is on this host only: refused when the cluster has other nodes, where workers could run."""
    if parse_url(storage_url).get_backend_name() != "sqlite":
        return
    others = [n.address for n in cluster.nodes if n.node_id != cluster.this_node]
    if others:
        raise ConfigError(
            f"--storage {mask_url(storage_url)} is a SQLite file on this host, but the Ray cluster has other "
            f"nodes ({', '.join(sorted(set(others)))}) where workers would not reach it. Give a PostgreSQL "
            "database that every node reaches, e.g. --storage postgresql+psycopg2://user:password@host:5432/"
            "dbname (pip install 'lrsearch[postgres]')"
        )


def check_layout(workers: str | None, gpus: str | None, per_gpu: int, device: str) -> None:
    """What can be refused before connecting: `--gpus` (this host's GPU ids) and devices Ray cannot place."""
    if gpus is not None:
        raise ConfigError(
            f"--gpus {gpus} names GPUs of this host; with --ray the workers go on the cluster's GPUs: give "
            "--workers N and --per-gpu M (each worker reserves 1/M of a GPU), or leave them out"
        )
    if per_gpu < 1:
        raise ConfigError(f"--per-gpu {per_gpu}: give 1 or more workers per GPU")
    if device not in DEVICES:
        raise ConfigError(
            f"--device {device} with --ray: give auto (a GPU share when the cluster has GPUs), cuda or cpu; Ray "
            "picks the GPU of each worker"
        )
    if device == "cpu" and per_gpu != 1:
        raise ConfigError(f"--per-gpu {per_gpu} with --device cpu: CPU workers reserve no GPU; leave out one of them")
    worker_count(workers)


@dataclass(frozen=True)
class RayWorker:
    """A planned worker and what its actor reserves on the cluster."""

    spec: WorkerSpec
    num_cpus: float
    num_gpus: float

    def describe(self) -> str:
        gpu = f"{self.num_gpus:g} GPU and " if self.num_gpus else ""
        threads = f"{self.spec.threads} thread{'s' * (self.spec.threads != 1)}"
        return f"worker {self.spec.index} reserving {gpu}{self.num_cpus:g} CPU (device {self.spec.device}, {threads})"


def plan_ray_workers(
    workers: str | None, gpus: str | None, per_gpu: int, device: str, remaining: int, cluster: Cluster
) -> list[RayWorker]:
    """The actors for `start --ray`.

    GPU workers (--device cuda, or auto on a cluster with GPUs) reserve 1/per_gpu of a GPU and 1 CPU each;
    --workers auto is per_gpu workers per GPU of the cluster. CPU workers reserve the CPUs of their threads;
    --workers auto is one per CPU of the cluster, one thread each. Never more workers than trials left.
    """
    check_layout(workers, gpus, per_gpu, device)
    count = worker_count(workers)
    use_gpu = device == "cuda" or (device == "auto" and cluster.gpus > 0)
    if use_gpu:
        if cluster.gpus <= 0:
            raise ConfigError(
                f"--device cuda: the Ray cluster has no GPU ({cluster.describe()}); leave out --device to run on CPUs"
            )
        count = max(1, min(count or per_gpu * int(cluster.gpus), remaining))
        fraction = round(1 / per_gpu, 4)  # Ray's precision for fractional resources
        return [RayWorker(WorkerSpec(i, device, 1), 1.0, fraction) for i in range(count)]
    if per_gpu != 1:
        raise ConfigError(f"--per-gpu {per_gpu}: the Ray cluster has no GPU ({cluster.describe()})")
    count = max(1, min(count or int(cluster.cpus), remaining))
    largest = max((int(n.cpus) for n in cluster.nodes), default=1)  # one worker's threads run on one node
    threads = max(1, min(int(cluster.cpus) // count, largest))
    return [RayWorker(WorkerSpec(i, "cpu", threads), float(threads), 0.0) for i in range(count)]


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """This process's LRSEARCH_* settings (heartbeats, retries, artifacts...), for workers on other nodes: a Ray
    worker's environment is its node's, not the driver's. The storage URL and thread counts are set per worker."""
    skip = {"LRSEARCH_STORAGE", *THREAD_ENVS}
    return {k: v for k, v in environ.items() if k.startswith("LRSEARCH_") and k not in skip}


def absolute_url(storage_url: str) -> str:
    """A SQLite URL with an absolute path: the actors do not run in this process's working directory."""
    file = sqlite_file(storage_url)
    if file is None:
        return storage_url
    return str(parse_url(storage_url).set(database=str(file)).render_as_string(hide_password=False))


class RayWorkerProcess(WorkerProcess):
    """The actor: a WorkerProcess that says so when Ray has restarted it after its process or node was lost."""

    def run(self) -> int:
        import ray

        with warnings.catch_warnings():  # Ray's own property reads a deprecated one of its own
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            self._say("was lost with its actor's process or node; Ray restarted the actor, which starts it again")
        return super().run()


def run_ray_fleet(
    storage_url: str,
    study_name: str,
    planned: Sequence[RayWorker],
    cluster: Cluster,
    *,
    data_dir: Path | None = None,
    on_trial: Callable[[FrozenTrial, Budget], None] | None = None,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Budget:
    """Run the actors until their workers have spent the study's budget; returns the final count.

    Raises KeyboardInterrupt after a signal (every worker stopped cleanly), FleetError when the workers ended
    but the budget was not spent.
    """
    ray = import_ray()
    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import load

    study = load(open_storage(storage_url, retry_seconds=settings.storage_retry_seconds()), study_name)[0]
    watcher = Watcher(study, on_trial)
    url = absolute_url(storage_url)
    data = None if data_dir is None else data_dir.absolute()
    actor_class = ray.remote(RayWorkerProcess)
    options = _placement(ray, storage_url, cluster)
    stop = threading.Event()
    with stop_signals(stop) as received:
        actors, runs = [], []
        for worker in planned:
            actor = actor_class.options(
                num_cpus=worker.num_cpus,
                num_gpus=worker.num_gpus,
                max_restarts=-1,  # Ray starts the actor again when its process or node dies...
                max_task_retries=-1,  # ... and runs `run` again in it
                max_concurrency=2,  # `stop` runs while `run` waits for the worker
                **options,
            ).remote(study_name, worker.spec, url, data, forwarded_env(os.environ))
            actors.append(actor)
            runs.append(actor.run.remote())
            echo(f"started {worker.describe()} as a Ray actor")
        codes = _supervise(ray, actors, runs, planned, watcher, stop, echo)
    state = watcher.poll()
    if received:
        raise KeyboardInterrupt(received[0])
    if not state.done:
        failures = ", ".join(f"worker {i}: {code}" for i, code in enumerate(codes) if code != describe_exit(0))
        raise FleetError(
            f"the workers ended with {state.finished}/{state.total} trials finished and {state.running} running "
            f"(worker exits: {failures or 'none'}); see their messages above, then run `lrsearch start` again to "
            "resume"
        )
    return state


def _placement(ray: ModuleType, storage_url: str, cluster: Cluster) -> dict[str, Any]:
    """A SQLite file's workers stay on this node, even when the cluster grows (autoscaling) while they run."""
    if parse_url(storage_url).get_backend_name() != "sqlite" or cluster.this_node is None:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=cluster.this_node, soft=False)}


def _supervise(
    ray: ModuleType,
    actors: list[Any],
    runs: list[Any],
    planned: Sequence[RayWorker],
    watcher: Watcher,
    stop: threading.Event,
    echo: Callable[[str], None],
) -> list[str]:
    """Wait for every actor's `run`; after `stop`, stop their workers, and kill actors that do not stop in time.
    Returns how each worker ended, in words."""
    ends: dict[int, str] = {}
    deadline: float | None = None
    while len(ends) < len(runs):
        if stop.is_set() and deadline is None:
            deadline = time.monotonic() + STOP_TIMEOUT
            echo("stopping: the workers fail their running trials and queue them to run again")
            for actor in actors:
                actor.stop.remote()
        waiting = [run for i, run in enumerate(runs) if i not in ends]
        ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=POLL_SECONDS)
        for run in ready:
            index = runs.index(run)
            ends[index] = _ending(ray, run)
            ray.kill(actors[index], no_restart=True)  # its worker has ended: its share goes to actors still waiting
            if ends[index] != describe_exit(0) and deadline is None:
                echo(f"{planned[index].describe()} ended: it {ends[index]}")
        watcher.poll_quietly()
        if deadline is not None and time.monotonic() > deadline:
            for index in set(range(len(runs))) - set(ends):
                echo(f"worker {index} did not stop within {STOP_TIMEOUT:.0f}s; killing its actor")
                ray.kill(actors[index], no_restart=True)
                ends[index] = "was killed"
    return [ends[i] for i in range(len(runs))]


def _ending(ray: ModuleType, run: Any) -> str:
    try:
        return describe_exit(int(ray.get(run)))
    except ray.exceptions.RayError as e:
        return f"failed in Ray: {e}"


__all__ = [
    "Cluster",
    "Node",
    "RayWorker",
    "ray_cluster",
    "check_layout",
    "check_storage",
    "plan_ray_workers",
    "forwarded_env",
    "run_ray_fleet",
    "INSTALL_HINT",
    "RayUnavailable",
]

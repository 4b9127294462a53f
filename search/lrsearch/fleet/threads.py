"""How a host's CPU cores are divided among its workers: one policy for `--workers auto` and the benchmarks.

On a CPU the per-step work of a small model is too little to keep several cores busy: splitting a step's
small matmuls among threads costs about as much as it saves. Whole trials in parallel scale instead, so
`auto` runs one worker per core with one torch thread each (benchmarks/epoch_speed.py measures both).

    workers = auto_workers()                      # the number of processes for `--workers auto` on CPU
    threads = threads_per_worker(workers)         # torch threads of each (cores // workers, at least 1)
    env = thread_env(threads)                     # the environment a worker process is started with
    set_torch_threads(threads)                    # inside the worker, before it trains

Nothing here imports torch at module level (`lrsearch --help` must not).
"""

from __future__ import annotations

import os

# The variables a worker process is started with, so that OpenMP/MKL size their pools right from the start.
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LRSEARCH_TORCH_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), which can be fewer than the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(cores: int | None = None) -> int:
    """The number of CPU worker processes for `--workers auto`: one per usable core."""
    return max(1, cores if cores is not None else usable_cores())


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """The torch threads of each of `workers` processes sharing the cores: an even share, at least 1."""
    if workers < 1:
        raise ValueError(f"workers must be 1 or more, got {workers}")
    cores = cores if cores is not None else usable_cores()
    return max(1, cores // workers)


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables for a worker process that should use `threads` threads."""
    return {name: str(threads) for name in THREAD_ENVS}


def set_torch_threads(threads: int) -> None:
    """Set this process's torch intra-op threads (and inter-op threads when still allowed) to `threads`."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only possible before the first parallel work; the intra-op setting is what matters
        pass


__all__ = [
    "THREAD_ENVS",
    "usable_cores",
    "auto_workers",
    "threads_per_worker",
    "thread_env",
    "set_torch_threads",
]

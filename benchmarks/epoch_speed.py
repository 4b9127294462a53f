"""Seconds per trial-epoch: lrsearch's training of the default objective vs a DataLoader loop, side by side.

What is measured, all in this one invocation on this one machine (only ratios of these runs are meaningful):

- matmul peak: the best GFLOPS of fp32 matmuls of the sizes in PEAK_SHAPES (a large square one and the
  objective's own), with 1 thread (one core) and with one thread per core (the machine);
- reference: the loop people write (torchvision MNIST + ToTensor + DataLoader(batch 64, shuffle), SGD with
  momentum, the same 784-128-10 MLP, `loss.item()` per step, then the 10k test images in DataLoader batches of
  1000), alone on the machine with torch's default threads; seconds per epoch;
- lrsearch, one worker: `lrsearch.train.loop.train` on the default objective (MnistMLP: real MNIST, batch 64,
  validation on the 10k test images), one process, with all cores' threads and with 1 thread; once more with
  1 thread and `fast_kernels=False` (autograd and unfused optimizers, as before the hand-derived MLP step and
  fused kernels), to show what they bring;
- lrsearch, whole machine: W = auto_workers() processes side by side, threads_per_worker(W) threads each (the
  policy of `--workers auto`, the default of `lrsearch start`), started together; trial-epochs per second of
  the machine = all epochs trained / wall time from the common start to the last process's end.

Each lrsearch process trains whole trials (a fresh model and strategy each, cycling through a few typical
strategies), so a trial-epoch includes model creation, validation and the train-accuracy measurement:
"eval" (the default: an extra forward pass over the 60k training images) and "running" (the accuracy during
the epoch). Each process first trains a short warm-up that is not timed; loading MNIST is not timed either.
All runs are repeated for --rounds rounds, each round in a rotated order, and the medians are reported, so a
burst of load from elsewhere moves one sample, not the result.

FLOPs per epoch count the matmuls only (forward 2*m*k*n per layer; backward: weight gradients of both layers
and the input gradient of the second), so the fraction of the matmul peak is a lower bound on the efficiency.

    python benchmarks/epoch_speed.py [--data-dir DIR] [--epochs N] [--trials N] [--rounds N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import add_data_dir, load_average

LAYERS = ((28 * 28, 128), (128, 10))  # the default objective's MLP
TRAIN_SAMPLES, VAL_SAMPLES = 60_000, 10_000
MODES = ("eval", "running")
PEAK_SHAPES = ((2048, 2048, 2048), (64, 28 * 28, 128), (2048, 28 * 28, 128))


def forward_flops() -> int:
    return sum(2 * k * n for k, n in LAYERS)


def train_flops() -> int:
    """Forward, weight gradients of every layer, input gradients of every layer but the first."""
    return forward_flops() + sum(2 * k * n for k, n in LAYERS) + sum(2 * k * n for k, n in LAYERS[1:])


def epoch_flops(train_accuracy: str) -> float:
    """Matmul FLOPs of one epoch: training, validation, and the "eval" pass over the training set."""
    flops = TRAIN_SAMPLES * train_flops() + VAL_SAMPLES * forward_flops()
    if train_accuracy == "eval":
        flops += TRAIN_SAMPLES * forward_flops()
    return float(flops)


# --- what runs in the child processes ------------------------------------------------------------------


def _matmul_gflops(threads: int, seconds: float = 1.0) -> float:
    """The best of PEAK_SHAPES (m, k, n): small matmuls can beat the large one where their data stays in cache."""
    import torch

    from lrsearch.fleet.threads import set_torch_threads

    set_torch_threads(threads)
    best = 0.0
    for m, k, n in PEAK_SHAPES:
        a, b = torch.rand(m, k), torch.rand(k, n)
        for _ in range(3):
            a @ b
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        best = max(best, 2 * m * k * n * count / (time.perf_counter() - started) / 1e9)
    return best


def _strategies(epochs: int) -> list[Any]:
    """A few typical strategies: per-epoch and per-batch schedules, SGD and adaptive optimizers."""
    from lrsearch.strategy.strategy import LRStrategy

    onecycle = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e3, "anneal_strategy": "cos"}
    return [
        LRStrategy("sgd", 0.05, "cosine", epochs, {"momentum": 0.9, "nesterov": True}, {"min_factor": 0.01}),
        LRStrategy("adam", 2e-3, "onecycle", epochs, {}, onecycle),
        LRStrategy("rmsprop", 1e-3, "step", epochs, {}, {"step_size": 2, "gamma": 0.5}),
    ]


def _lrsearch_process(
    data_dir: str | None,
    threads: int,
    train_accuracy: str,
    trials: int,
    epochs: int,
    index: int,
    fast_kernels: bool,
    barrier: Any,
    results: Any,
) -> None:
    """Train `trials` whole trials after the common start; report (epochs, start, end) in monotonic time."""
    import torch

    from lrsearch.fleet.threads import set_torch_threads
    from lrsearch.train.loop import train
    from lrsearch.train.objective import TrainingData
    from lrsearch_objectives.mnist_mlp import MnistMLP

    set_torch_threads(threads)
    objective = MnistMLP()
    data = objective.load_data(torch.device("cpu"), Path(data_dir) if data_dir else None)
    warmup = TrainingData(data.train_inputs[:6400], data.train_targets[:6400], data.val_inputs, data.val_targets)
    for strategy in _strategies(1):
        for _ in train(strategy, objective, warmup, seed=0, train_accuracy=train_accuracy, fast_kernels=fast_kernels):
            pass
    strategies = _strategies(epochs)
    barrier.wait()
    started, trained = time.monotonic(), 0
    for trial in range(trials):
        strategy = strategies[(index + trial) % len(strategies)]
        for _ in train(strategy, objective, data, seed=trial, train_accuracy=train_accuracy, fast_kernels=fast_kernels):
            trained += 1
    results.put((trained, started, time.monotonic()))


def _reference_process(data_dir: str | None, epochs: int, results: Any) -> None:
    """The loop written the usual way; reports its seconds per epoch (train + test evaluation)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from lrsearch_objectives.mnist_mlp import resolve_root

    root = str(resolve_root(Path(data_dir) if data_dir else None))
    train_set = datasets.MNIST(root, train=True, transform=transforms.ToTensor(), download=False)
    test_set = datasets.MNIST(root, train=False, transform=transforms.ToTensor(), download=False)
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        running_loss, correct = 0.0, 0
        for images, labels in train_loader:
            optimizer.zero_grad()
            outputs = model(images)
            loss = F.cross_entropy(outputs, labels)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            running_loss += loss.item() * len(labels)
            correct += (outputs.argmax(dim=1) == labels).sum().item()
        model.eval()
        val_correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                val_correct += (model(images).argmax(dim=1) == labels).sum().item()
        seconds.append(time.perf_counter() - started)
    results.put(seconds)


# --- the parent ---------------------------------------------------------------------------------------------


def _run(target: Callable[..., None], rows: Sequence[tuple[Any, ...]], *, barrier: bool = False) -> list[Any]:
    """One spawned process (clean thread settings) per argument row, started together; their results.

    With `barrier`, each process also gets a barrier shared by all of them (its argument before the queue).
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    extra = (context.Barrier(len(rows)),) if barrier else ()
    processes = [context.Process(target=target, args=(*row, *extra, results)) for row in rows]
    for process in processes:
        process.start()
    outcome = [results.get() for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a benchmark process failed (exit code {process.exitcode})")
    return outcome


def _matmul_child(threads: int, results: Any) -> None:
    results.put(_matmul_gflops(threads))


def matmul_peak(threads: int) -> float:
    return float(_run(_matmul_child, [(threads,)])[0])


@dataclass(frozen=True)
class Throughput:
    workers: int
    threads: int
    epochs: int
    seconds: float

    @property
    def seconds_per_epoch(self) -> float:
        """Seconds per trial-epoch of the whole set of workers (wall time / all epochs trained)."""
        return self.seconds / self.epochs


def lrsearch_throughput(
    data_dir: str | None,
    workers: int,
    threads: int,
    train_accuracy: str,
    trials: int,
    epochs: int,
    fast_kernels: bool = True,
) -> Throughput:
    rows = [(data_dir, threads, train_accuracy, trials, epochs, i, fast_kernels) for i in range(workers)]
    outcome = _run(_lrsearch_process, rows, barrier=True)
    trained = sum(o[0] for o in outcome)
    wall = max(o[2] for o in outcome) - min(o[1] for o in outcome)
    return Throughput(workers, threads, trained, wall)


def reference_seconds(data_dir: str | None, epochs: int) -> list[float]:
    return list(_run(_reference_process, [(data_dir, epochs)])[0])


@dataclass(frozen=True)
class Config:
    label: str
    workers: int  # 0: the reference loop
    threads: int
    train_accuracy: str = "eval"
    fast_kernels: bool = True


def main(argv: Sequence[str] | None = None) -> None:
    from lrsearch.fleet.threads import auto_workers, threads_per_worker, usable_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_dir(parser)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each timed trial (default 2)")
    parser.add_argument("--trials", type=int, default=1, help="timed trials per lrsearch process (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all runs; medians are shown (default 3)")
    args = parser.parse_args(argv)

    import torch

    cores = usable_cores()
    workers = auto_workers(cores)
    threads = threads_per_worker(workers, cores)
    print(f"machine: {cores} cores, torch {torch.__version__}; load average {load_average()}", flush=True)
    peak_core, peak_machine = matmul_peak(1), matmul_peak(cores)
    print(
        f"matmul peak (best fp32 of {PEAK_SHAPES}): {peak_core:.1f} GFLOPS on 1 thread, {peak_machine:.1f} on {cores}"
    )

    configs = [Config(f"reference loop alone ({torch.get_num_threads()} threads)", 0, 0)]
    configs.append(Config("lrsearch 1 worker, 1 thread, autograd + unfused optimizers", 1, 1, fast_kernels=False))
    for mode in MODES:
        configs += [
            Config(f"lrsearch 1 worker, {cores} threads", 1, cores, mode),
            Config("lrsearch 1 worker, 1 thread", 1, 1, mode),
            Config(f"lrsearch whole machine (default: {workers} workers x {threads} thread)", workers, threads, mode),
        ]
    seconds: dict[Config, list[float]] = {c: [] for c in configs}
    for round_ in range(args.rounds):
        for config in configs[round_ % len(configs) :] + configs[: round_ % len(configs)]:  # rotated order
            if config.workers == 0:
                measured = statistics.median(reference_seconds(args.data_dir, 1))
            else:
                throughput = lrsearch_throughput(
                    args.data_dir,
                    config.workers,
                    config.threads,
                    config.train_accuracy,
                    args.trials,
                    args.epochs,
                    config.fast_kernels,
                )
                measured = throughput.seconds_per_epoch
            seconds[config].append(measured)
            mode = "" if config.workers == 0 else f" [{config.train_accuracy}]"
            print(f"  round {round_ + 1}: {config.label}{mode}: {measured:.3f} s/epoch", flush=True)

    reference = statistics.median(seconds[configs[0]])
    print(f"\nload average at the end: {load_average()}; medians of {args.rounds} rounds\n")
    print(
        "| run | train accuracy | s / trial-epoch (whole machine) | speed-up vs the reference loop "
        "| share of the matmul peak (epoch FLOPs / time / peak) |"
    )
    print("|---|---|---|---|---|")
    for config, values in seconds.items():
        median = statistics.median(values)
        mode = "running (usual)" if config.workers == 0 else config.train_accuracy
        peak = peak_core if config.workers * config.threads == 1 else peak_machine
        share = epoch_flops("running" if config.workers == 0 else config.train_accuracy) / median / 1e9 / peak
        print(f"| {config.label} | {mode} | {median:.3f} | {reference / median:.1f}x | {share:.1%} |")


if __name__ == "__main__":
    main()

"""Search quality per epoch trained: lrsearch's defaults vs random search on the real MNIST, several seeds.

Two methods, each run as real lrsearch studies (the default definition from studies/mnist.toml, created in
a temporary SQLite database and run by lrsearch.fleet.worker.run_worker, the code behind `lrsearch worker`):

- lrsearch: the definition as it is: multivariate TPE that learns from the constraints, the feasible pruner
  (below the 25th percentile), and the early stop of a trial whose training accuracy stays above the ceiling;
- random: the same definition with Optuna's RandomSampler, no pruning (`none`) and no early stop
  (overfit_patience 0), so every trial trains its full 12 epochs unless its loss diverges.

Both spend the same budget, counted in epochs actually trained (the sum of the trials' history lengths,
pruned trials included). A worker stops claiming trials once its study has spent the budget; a trial that
ends beyond it is not counted in the results. Each seed gives a study seed (the trials' training seeds); the
samplers are lrsearch's own (unseeded), so runs of one method differ in both. Studies run two at a time per
the `--workers auto` policy of lrsearch.fleet.threads (one per core, threads_per_worker threads each); seed s of
both methods run side by side, so their wall times compare under the same load.

Reported per run and as medians: epochs and wall time (from the first trial's start) to the first feasible
trial, the best feasible validation accuracy within the budget, and the epochs each run needed to reach
random search's final best (the median over the random runs of their best feasible val accuracy).

    python benchmarks/search_efficiency.py [--data-dir DIR] [--budget EPOCHS] [--seeds N]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import add_data_dir, load_average

METHODS = ("lrsearch", "random")


@dataclass(frozen=True)
class TrialResult:
    number: int
    state: str
    epochs: int  # epochs trained
    feasible: bool  # complete and feasible
    value: float  # val accuracy at the best feasible epoch (0 when not feasible)
    seconds: float  # from the study's first trial start to this trial's end


@dataclass(frozen=True)
class Run:
    method: str
    seed: int
    budget: int
    trials: list[TrialResult]

    def counted(self) -> list[tuple[int, TrialResult]]:
        """Trials in the order they finished with the epochs spent when each ended, within the budget."""
        spent, out = 0, []
        for trial in sorted(self.trials, key=lambda t: t.seconds):
            spent += trial.epochs
            if spent <= self.budget:
                out.append((spent, trial))
        return out

    def first_feasible(self) -> tuple[int, float] | None:
        """Epochs spent and seconds elapsed when the first feasible trial ended."""
        return next(((spent, t.seconds) for spent, t in self.counted() if t.feasible), None)

    def best(self) -> float:
        return max((t.value for _, t in self.counted() if t.feasible), default=0.0)

    def epochs_to_reach(self, target: float) -> int | None:
        return next((spent for spent, t in self.counted() if t.feasible and t.value >= target), None)

    def epochs_spent(self) -> int:
        return self.counted()[-1][0] if self.counted() else 0


def definition_for(method: str, seed: int, budget: int) -> Any:
    """The default study definition, or its random-search variant, for one run."""
    from lrsearch.study.definition import default_study_file, load_study_file, parse_table

    table = load_study_file(default_study_file()).to_table()
    table["study"].update(name=f"bench-{method}-{seed}", seed=seed, trials=budget)  # never the limit
    if method == "random":
        table["sampler"] = {"name": "random"}
        table["pruner"] = {"name": "none"}
        table["targets"]["overfit_patience"] = 0
    return parse_table(table, f"{method} study")


class BudgetSpent(Exception):
    """Raised from the worker's per-trial callback once the study has trained its epoch budget."""


def run_study(method: str, seed: int, budget: int, threads: int, data_dir: str | None, folder: str) -> Run:
    """One study, run by lrsearch's worker until `budget` epochs are trained (in a process of its own)."""
    import logging

    import optuna

    from lrsearch.fleet.worker import run_worker
    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import create_or_resume

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lrsearch").setLevel(logging.ERROR)
    definition = definition_for(method, seed, budget)
    url = f"sqlite:///{Path(folder) / f'{definition.name}.db'}"
    study = create_or_resume(open_storage(url), definition)

    def spent() -> int:
        return sum(len(t.user_attrs.get("history", [])) for t in study.get_trials(deepcopy=False))

    def on_trial(*_: Any) -> None:
        if spent() >= budget:
            raise BudgetSpent

    try:
        run_worker(
            url,
            definition.name,
            data_dir=Path(data_dir) if data_dir else None,
            threads=threads,
            on_trial=on_trial,
        )
    except BudgetSpent:
        pass
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    started = min(t.datetime_start for t in trials if t.datetime_start is not None)
    results = [
        TrialResult(
            number=t.number,
            state=t.state.name,
            epochs=len(t.user_attrs.get("history", [])),
            feasible=_feasible(t),
            value=float(t.value) if _feasible(t) and t.value is not None else 0.0,
            seconds=(t.datetime_complete - started).total_seconds() if t.datetime_complete else float("inf"),
        )
        for t in trials
    ]
    return Run(method, seed, budget, results)


def _feasible(trial: Any) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE and bool(trial.user_attrs.get("feasible"))


def _run_study(args: tuple[str, int, int, int, str | None, str]) -> dict[str, Any]:
    """In a pool process: the run as plain data (a spawned __main__'s classes do not unpickle here)."""
    return asdict(run_study(*args))


def _from_dict(data: dict[str, Any]) -> Run:
    return Run(data["method"], data["seed"], data["budget"], [TrialResult(**t) for t in data["trials"]])


def main(argv: Sequence[str] | None = None) -> None:
    from lrsearch.fleet.threads import auto_workers, threads_per_worker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_dir(parser)
    parser.add_argument(
        "--budget", type=int, default=264, help="epochs per study (default 264: 22 full trials; ~30 min on 2 cores)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="studies per method (default 3)")
    args = parser.parse_args(argv)

    workers = auto_workers()
    threads = threads_per_worker(workers)
    print(
        f"budget {args.budget} epochs per study; {args.seeds} seeds x {len(METHODS)} methods; "
        f"{workers} studies at a time, {threads} thread(s) each; load average {load_average()}",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lrsearch-bench-") as folder:
        jobs = [(m, s, args.budget, threads, args.data_dir, folder) for s in range(args.seeds) for m in METHODS]
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            runs = []
            for data in pool.imap(_run_study, jobs):
                run = _from_dict(data)
                runs.append(run)
                first = run.first_feasible()
                when = "none" if first is None else f"after {first[0]} epochs, {first[1]:.0f} s"
                print(
                    f"  {run.method} seed {run.seed}: {len(run.counted())} trials, "
                    f"{run.epochs_spent()} epochs, best {run.best():.4f}, first feasible {when}",
                    flush=True,
                )
    report(runs, args.budget)
    print(f"\ntotal time {time.monotonic() - started:.0f} s; load average at the end {load_average()}")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.inf


def _shown(value: float, digits: int = 0) -> str:
    return "not reached" if math.isinf(value) else f"{value:.{digits}f}"


def report(runs: list[Run], budget: int) -> None:
    by_method = {m: [r for r in runs if r.method == m] for m in METHODS}
    target = statistics.median(r.best() for r in by_method["random"])

    def reach(run: Run, goal: float) -> float:
        epochs = run.epochs_to_reach(goal) if goal > 0 else None
        return math.inf if epochs is None else float(epochs)

    def first(run: Run, index: int) -> float:
        found = run.first_feasible()
        return math.inf if found is None else float(found[index])

    print(f"\nrandom search's final best (median of its runs' best feasible val accuracy): {target:.4f}")
    print(
        "\n| method | seed | trials | epochs to first feasible | s to first feasible | best feasible val acc "
        f"| epochs to reach {target:.4f} |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run.method} | {run.seed} | {len(run.counted())} | {_shown(first(run, 0))} | "
            f"{_shown(first(run, 1))} | {run.best():.4f} | {_shown(reach(run, target))} |"
        )
    print(
        "\n| method (median of runs) | epochs to first feasible | s to first feasible "
        f"| best feasible val acc at {budget} epochs | epochs to reach {target:.4f} |"
    )
    print("|---|---|---|---|---|")
    for method, group in by_method.items():
        print(
            f"| {method} | {_shown(_median([first(r, 0) for r in group]))} | "
            f"{_shown(_median([first(r, 1) for r in group]))} | "
            f"{statistics.median(r.best() for r in group):.4f} | "
            f"{_shown(_median([reach(r, target) for r in group]))} |"
        )
    mine = _median([reach(r, target) for r in by_method["lrsearch"]])
    own = _median([reach(r, r.best()) for r in by_method["random"]])
    print(
        f"\nlrsearch reached random search's final best after {_shown(mine)} epochs (median), "
        f"{mine / budget:.0%} of random search's budget of {budget} epochs (target: at most a third); "
        f"random search itself first reached its own final best after {_shown(own)} epochs (median)."
    )


if __name__ == "__main__":
    main()

"""Start-up cost of `lrsearch start`: wall time to the end of the first epoch, and outside training in a study.

Each run is a real `python -m lrsearch start` subprocess on a fresh SQLite file (the default objective on the
real MNIST; a new study, so its objective and data are checked before it is created). This script polls the
database file, read-only, every POLL seconds and records when the first epoch's result appears (its
intermediate value, or a finished trial for an epoch that diverged).

- small: --trials 2 --epochs 1, with --workers 1 and with --workers 2: seconds from the start of the
  subprocess to the end of the first epoch ("first epoch"); the same less that epoch's own training seconds
  ("start-up"); to the end of the command ("end"); CPU seconds of the command and its workers, in all ("CPU") and
  up to the first epoch's result ("CPU 1st ep"): the figures that load from other processes moves least, with
  --threads 1 (several threads spin while they wait for a busy core);
- study (--study): --trials 16 --epochs 4 with --workers 2: wall time, and the share of it spent outside
  training = 1 - (sum of all epochs' training seconds, from the trials' `history`) / (workers x wall time).

With --baseline-src DIR (a source tree of an earlier commit, e.g. `git archive <commit> | tar -x -C DIR`) every
case also runs with DIR/search and DIR/objectives on PYTHONPATH, interleaved with the current tree's runs, and
the ratio baseline / current is printed. Medians over --rounds rounds. Only ratios of one invocation mean much:
the same machine, the same load.

    python benchmarks/startup.py [--data-dir DIR] [--baseline-src DIR] [--rounds N] [--study]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import add_data_dir, load_average

HERE = Path(__file__).resolve().parent.parent
POLL = 0.02


@dataclass(frozen=True)
class Run:
    first_epoch: float  # seconds from the subprocess start to the first epoch's result in the database
    wall: float  # seconds from the subprocess start to its exit
    training: float  # sum of all epochs' training seconds
    epoch_one: float  # training seconds of the first trial's first epoch
    cpu: float  # CPU seconds (user + system) of the command and all its worker processes
    cpu_first: float  # the same, up to the first epoch's result

    @property
    def startup(self) -> float:
        """Seconds to the end of the first epoch, less that epoch's own training."""
        return self.first_epoch - self.epoch_one


def python_path(source: Path) -> str:
    return os.pathsep.join([str(source / "search"), str(source / "objectives")])


def first_result(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1, isolation_level=None)
        try:
            reported = connection.execute("SELECT COUNT(*) FROM trial_intermediate_values").fetchone()[0]
            finished = connection.execute("SELECT COUNT(*) FROM trials WHERE state != 'RUNNING'").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:  # not created yet, or locked by a writer this instant
        return False
    return bool(reported or finished)


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by process `root` and its descendants (Linux /proc)."""
    parents, used = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        pid = int(entry.name)
        parents[pid], used[pid] = int(fields[1]), int(fields[11]) + int(fields[12])  # ppid, utime + stime
    tree, changed = {root}, True
    while changed:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        changed, tree = grown != tree, grown
    return sum(used.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def training_seconds(db: Path) -> tuple[float, float]:
    """All epochs' training seconds, and those of the first epoch of the first trial."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT a.value_json FROM trial_user_attributes a JOIN trials t ON a.trial_id = t.trial_id "
            "WHERE a.key = 'history' ORDER BY t.number"
        ).fetchall()
    finally:
        connection.close()
    histories = [json.loads(text) for (text,) in rows]
    return sum(epoch["seconds"] for history in histories for epoch in history), histories[0][0]["seconds"]


def run_start(source: Path, data_dir: str | None, trials: int, epochs: int, workers: int, threads: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="lrsearch-startup-") as folder:
        db = Path(folder) / "study.db"
        env = dict(os.environ, PYTHONPATH=python_path(source))
        if threads:
            env.update(LRSEARCH_TORCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        if data_dir is not None:
            env["LRSEARCH_DATA_DIR"] = data_dir
        command = [sys.executable, "-m", "lrsearch", "start", "--storage", f"sqlite:///{db}"]
        command += ["--trials", str(trials), "--epochs", str(epochs), "--workers", str(workers)]
        cpu_before = _children_cpu()
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first, cpu_first = None, 0.0
        while process.poll() is None:
            if first is None and first_result(db):
                first = time.perf_counter() - started
                cpu_first = tree_cpu(process.pid)
            time.sleep(POLL)
        wall = time.perf_counter() - started
        cpu = _children_cpu() - cpu_before  # the workers were waited for by the command, so they count too
        stderr = process.stderr.read().decode() if process.stderr else ""
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}")
        training, epoch_one = training_seconds(db)
        return Run(first if first is not None else wall, wall, training, epoch_one, cpu, cpu_first or cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--baseline-src", type=Path, help="source tree of the baseline (holding search/, objectives/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--study", action="store_true", help="also the 16-trial, 4-epoch study with 2 workers")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of every worker (default: lrsearch's own choice)"
    )
    args = parser.parse_args()

    sources = {"current": HERE}
    if args.baseline_src is not None:
        sources = {"baseline": args.baseline_src.resolve(), **sources}
    cases = [("2 trials x 1 epoch, --workers 1", 2, 1, 1), ("2 trials x 1 epoch, --workers 2", 2, 1, 2)]
    if args.study:
        cases.append(("16 trials x 4 epochs, --workers 2", 16, 4, 2))
    print(f"load average before: {load_average()}")
    for source in sources.values():  # not timed: compiles the sources' bytecode, warms the file cache
        run_start(source, args.data_dir, 1, 1, 1, args.threads)
    results: dict[tuple[str, str], list[Run]] = {}
    for _ in range(args.rounds):
        for label, trials, epochs, workers in cases:
            for name, source in sources.items():  # interleaved: a burst of load hits both alike
                run = run_start(source, args.data_dir, trials, epochs, workers, args.threads)
                results.setdefault((label, name), []).append(run)
    print(f"load average after: {load_average()}; medians of {args.rounds} rounds, seconds")
    columns = ("first epoch", "start-up", "end", "CPU", "CPU 1st ep")
    print(f"{'':34} {'':9} " + " ".join(f"{c:>11}" for c in columns) + "  outside training")
    for label, _trials, _epochs, workers in cases:
        figures = {}
        for name in sources:
            runs = results[(label, name)]
            attrs = ("first_epoch", "startup", "wall", "cpu", "cpu_first")
            figures[name] = [statistics.median(getattr(r, attr) for r in runs) for attr in attrs]
            outside = statistics.median(1 - r.training / (workers * r.wall) for r in runs)
            print(f"{label:34} {name:9} " + " ".join(f"{x:11.2f}" for x in figures[name]) + f"  {outside:16.0%}")
        if "baseline" in figures:
            ratios = [b / c for b, c in zip(figures["baseline"], figures["current"], strict=True)]
            print(f"{label:34} {'ratio':9} " + " ".join(f"{r:10.2f}x" for r in ratios) + "  (baseline / current)")


if __name__ == "__main__":
    main()

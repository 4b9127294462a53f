"""Progress of `lrsearch start` on stderr: trials done of the total, pruned, failed, best feasible, ETA.

On a terminal: a line per finished trial, and a progress bar kept on the last line (redrawn as trials finish,
like tqdm). Otherwise (CI, pipes, files): plain log lines, one at most every LRSEARCH_PROGRESS_INTERVAL
seconds (30 by default; 0 prints every trial), plus every failure, new best feasible value and the last trial.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from optuna.trial import FrozenTrial

from lrsearch import settings
from lrsearch.study.lifecycle import Budget
from lrsearch.study.record import TrialRecord

BAR_WIDTH = 24
_CLEAR = "\r\x1b[K"  # back to the line start, erase to its end


def _stderr() -> TextIO:
    return sys.stderr


def duration(seconds: float) -> str:
    """3s, 4m05s, 2h03m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Progress:
    total: int
    started: float = field(default_factory=time.monotonic)
    out: TextIO = field(default_factory=_stderr)
    interactive: bool | None = None  # None: a progress bar when `out` is a terminal
    # seconds between log lines when not interactive
    interval: float = field(default_factory=settings.progress_interval)
    clock: Callable[[], float] = time.monotonic  # tests pass their own
    pruned: int = 0
    failed: int = 0
    best: tuple[float, int] | None = None  # (val_acc, trial number) of the best feasible trial so far
    finished: int = 0  # finished trials of the study (all workers), as of the last report
    _baseline: int | None = None  # finished trials when this process reported its first one, minus that one
    _last_line: float | None = None
    _bar_shown: bool = False

    def __post_init__(self) -> None:
        if self.interactive is None:
            isatty = getattr(self.out, "isatty", None)
            self.interactive = bool(isatty and isatty())

    # --- the interface `lrsearch start` uses ---------------------------------------------------------------

    def trial_done(self, trial: FrozenTrial, budget: Budget) -> None:
        record = TrialRecord.from_trial(trial)
        improved = self._count(record, budget)
        line = self._trial_line(record)
        if self.interactive:
            self.echo(line)
            return
        now = self.clock()
        due = self._last_line is None or now - self._last_line >= self.interval
        if due or improved or record.state == "fail" or budget.finished >= self.total:
            print(line, file=self.out, flush=True)
            self._last_line = now

    def closing_line(self) -> str:
        self._clear_bar()
        return f"done: {self._totals(eta=False)}"

    def echo(self, line: str) -> None:
        """Print a line; on a terminal above the progress bar, which is then drawn again."""
        self._clear_bar()
        print(line, file=self.out, flush=True)
        if self.interactive:
            self._draw_bar()

    # --- state ---------------------------------------------------------------------------------------------

    def _count(self, trial: TrialRecord, budget: Budget) -> bool:
        """Update the totals; True when the trial is a new best feasible one."""
        self.pruned += trial.state == "pruned"
        self.failed += trial.state == "fail"
        self.finished = max(self.finished, budget.finished)
        if self._baseline is None:
            self._baseline = budget.finished - 1
        if trial.counts_as_best and trial.val_acc is not None:
            value = trial.val_acc
            if self.best is None or value > self.best[0]:
                self.best = (value, trial.number)
                return True
        return False

    def eta(self) -> float | None:
        """Seconds until the budget is spent, at the rate trials finished since this process started."""
        done = self.finished - (self._baseline if self._baseline is not None else self.finished)
        elapsed = self.clock() - self.started
        remaining = max(0, self.total - self.finished)
        if remaining == 0:
            return 0.0
        if done <= 0 or elapsed <= 0:
            return None
        return remaining * elapsed / done

    # --- text ----------------------------------------------------------------------------------------------

    def _trial_line(self, trial: TrialRecord) -> str:
        val = trial.val_acc
        result = "" if val is None else f" val {val:.4f} at epoch {trial.chosen_epoch}"
        if trial.feasible:
            result += " (feasible)"
        if trial.state == "fail":
            result += f" ({trial.stop_reason or 'failed'})"
        totals = "" if self.interactive else f" | {self._totals()}"
        return f"[{self.finished}/{self.total}] trial {trial.number} {trial.state}{result}: {trial.strategy}{totals}"

    def _totals(self, *, eta: bool = True) -> str:
        best = "none yet" if self.best is None else f"{self.best[0]:.4f} (trial {self.best[1]})"
        text = f"pruned {self.pruned}, failed {self.failed}, best feasible {best}, "
        text += f"{duration(self.clock() - self.started)} elapsed"
        if eta:
            left = self.eta()
            text += ", ETA " + ("?" if left is None else duration(left))
        return text

    def bar(self) -> str:
        """E.g. `[#########---------------] 7/20 trials, pruned 2, failed 0, best feasible ..., ETA 1m10s`."""
        filled = min(BAR_WIDTH, BAR_WIDTH * self.finished // max(1, self.total))
        drawn = "#" * filled + "-" * (BAR_WIDTH - filled)
        return f"[{drawn}] {self.finished}/{self.total} trials, {self._totals()}"

    def _draw_bar(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        self.out.write(_CLEAR + self.bar()[: max(10, width - 1)])  # never wrap: \r must reach the line start
        self.out.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.out.write(_CLEAR)
            self.out.flush()
            self._bar_shown = False

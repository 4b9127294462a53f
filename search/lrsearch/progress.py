"""Progress of `lrsearch start`, as lines on stderr: trials done of the total, pruned, failed, best feasible."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from optuna.trial import FrozenTrial

from lrsearch.study import Budget


@dataclass
class Progress:
    total: int
    started: float = field(default_factory=time.monotonic)
    out: TextIO = sys.stderr
    pruned: int = 0
    failed: int = 0
    best: tuple[float, int] | None = None  # (val_acc, trial number) of the best feasible trial so far

    def trial_done(self, trial: FrozenTrial, budget: Budget) -> None:
        state = trial.state.name.lower()
        self.pruned += state == "pruned"
        self.failed += state == "fail"
        if state == "complete" and trial.user_attrs.get("feasible"):
            value = float(trial.user_attrs["val_acc"])
            if self.best is None or value > self.best[0]:
                self.best = (value, trial.number)
        val = trial.user_attrs.get("val_acc")
        result = "" if val is None else f" val {val:.4f} at epoch {trial.user_attrs.get('epoch')}"
        if trial.user_attrs.get("feasible"):
            result += " (feasible)"
        print(f"[{budget.finished}/{self.total}] trial {trial.number} {state}{result}: "
              f"{trial.user_attrs.get('strategy', '')} | {self._totals()}", file=self.out, flush=True)  # fmt: skip

    def _totals(self) -> str:
        best = "none yet" if self.best is None else f"{self.best[0]:.4f} (trial {self.best[1]})"
        elapsed = time.monotonic() - self.started
        return f"pruned {self.pruned}, failed {self.failed}, best feasible {best}, {elapsed:.0f}s"

    def closing_line(self) -> str:
        return f"done: {self._totals()}"

"""A median pruner that ranks trials the way the study does: by their best feasible epoch so far.

Optuna's MedianPruner compares raw validation accuracy. Under a training-accuracy ceiling that prunes the wrong
trials: a fast learner about to overfit (val 0.97, train 0.98) raises the median, and a slowly rising trial that
will end feasible at val 0.955 falls below it. This pruner compares, at each epoch, every trial's score so far
(`EpochSelector.score`: the best feasible val_acc, or minus the violation while none is feasible), computed from
the per-epoch history each trial stores.

The finished trials are read from the storage once per pruned trial, at its first check past the warmup, and
reused for its later epochs: one storage read per trial instead of one per epoch (the read re-fetches every
running trial of the other workers), at the price of not seeing trials that finish meanwhile.
"""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrsearch.definition import Targets
from lrsearch.records import EpochRecord
from lrsearch.scoring import EpochSelector


class FeasibleMedianPruner(optuna.pruners.BasePruner):
    def __init__(self, targets: Targets, *, n_startup_trials: int = 5, n_warmup_steps: int = 2):
        self.targets, self.n_startup_trials, self.n_warmup_steps = targets, n_startup_trials, n_warmup_steps
        self._finished: tuple[int, list[FrozenTrial]] | None = None  # (trial number, what it compares with)

    def score(self, trial: FrozenTrial, epoch: int) -> float | None:
        """The trial's score after `epoch` epochs, or None when that is unknown.

        A complete trial that stopped early (it could not improve, or diverged) keeps its final score; a pruned
        trial is unknown beyond its last epoch.
        """
        history = trial.user_attrs.get("history", [])
        if not history or (len(history) < epoch and trial.state != TrialState.COMPLETE):
            return None
        selector = EpochSelector(self.targets)
        for row in history[:epoch]:
            selector.add(EpochRecord(**row))
        return selector.score

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch is None or epoch <= self.n_warmup_steps:
            return False
        finished = self._finished_before(study, trial)
        if len(finished) < self.n_startup_trials:
            return False
        others = [s for s in (self.score(t, epoch) for t in finished) if s is not None]
        mine = self.score(trial, epoch)
        if not others or mine is None:
            return False
        return mine < statistics.median(others)

    def _finished_before(self, study: optuna.Study, trial: FrozenTrial) -> list[FrozenTrial]:
        if self._finished is None or self._finished[0] != trial.number:
            states = (TrialState.COMPLETE, TrialState.PRUNED)
            self._finished = (trial.number, study.get_trials(deepcopy=False, states=states))
        return self._finished[1]

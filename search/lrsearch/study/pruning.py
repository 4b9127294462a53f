"""A percentile pruner that ranks trials the way the study does: by their best feasible epoch so far.

Optuna's MedianPruner compares raw validation accuracy. Under a training-accuracy ceiling that prunes the wrong
trials: a fast learner about to overfit (val 0.97, train 0.98) raises the median, and a slowly rising trial that
will end feasible at val 0.955 falls below it. This pruner compares, at each epoch, every trial's score so far
(`EpochSelector.score`: the best feasible val_acc, or minus the violation while none is feasible), computed from
the per-epoch history each trial stores, and prunes a trial below the `percentile` of the others' scores.

The default percentile is 25, not 50: fast learners stop early with high scores, so at epoch 3 the median is
theirs, and the slow risers that end just under the ceiling later (where the best feasible values are; in a
100-trial study of the default objective the best trials had val 0.925-0.937 at epoch 3, like many of the pruned
ones) were cut. benchmarks/search_efficiency.py: with 50, lrsearch's best per run 0.9469-0.9496 (median 0.9475);
with 25, 0.9476-0.9486 (median 0.9482), at 43-49 trials per 264 epochs instead of 52-63.

The finished trials are read from the storage (as trial records) once per pruned trial, at its first check past
the warmup, and reused for its later epochs: one storage read per trial instead of one per epoch (the read
re-fetches every running trial of the other workers), at the price of not seeing trials that finish meanwhile.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrsearch.study.record import TrialRecord
from lrsearch.study.scoring import EpochSelector
from lrsearch.study.targets import Targets


class FeasiblePercentilePruner(optuna.pruners.BasePruner):
    def __init__(
        self, targets: Targets, *, n_startup_trials: int = 5, n_warmup_steps: int = 2, percentile: float = 25.0
    ):
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        self.targets, self.n_startup_trials, self.n_warmup_steps = targets, n_startup_trials, n_warmup_steps
        self.percentile = percentile
        self._finished: tuple[int, list[TrialRecord]] | None = None  # (trial number, what it compares with)

    def score(self, trial: FrozenTrial | TrialRecord, epoch: int) -> float | None:
        """The trial's score after `epoch` epochs, or None when that is unknown.

        A complete trial that stopped early (it could not improve, or diverged) keeps its final score; a pruned
        trial is unknown beyond its last epoch.
        """
        record = trial if isinstance(trial, TrialRecord) else TrialRecord.from_trial(trial)
        history = record.history
        if not history or (len(history) < epoch and record.state != "complete"):
            return None
        selector = EpochSelector(self.targets)
        for row in history[:epoch]:
            selector.add(row)
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
        return mine < percentile(others, self.percentile)

    def _finished_before(self, study: optuna.Study, trial: FrozenTrial) -> list[TrialRecord]:
        if self._finished is None or self._finished[0] != trial.number:
            states = (TrialState.COMPLETE, TrialState.PRUNED)
            finished = study.get_trials(deepcopy=False, states=states)
            self._finished = (trial.number, [TrialRecord.from_trial(t) for t in finished])
        return self._finished[1]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of `values` (0 <= q <= 100), interpolated linearly between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

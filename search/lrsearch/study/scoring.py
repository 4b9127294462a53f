"""Which epoch of a trial counts: the best feasible one, or, when none is feasible, the least infeasible one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lrsearch.study.targets import Targets
from lrsearch.train.records import EpochRecord


@dataclass
class EpochSelector:
    """Follows a trial's epochs and keeps the one that is its result.

    An epoch is feasible when val_acc >= min_val and train_acc <= max_train. The result is the feasible epoch with
    the highest val_acc (the earliest on ties: fewer epochs to train); without one, the epoch with the smallest total
    violation, so the sampler still learns how far off the trial was. An epoch whose loss diverged (NaN or inf)
    violates one more constraint, by 1: whatever its accuracies, it ranks below every epoch that trained.
    """

    targets: Targets
    chosen: EpochRecord | None = None
    overfit_streak: int = 0  # epochs in a row with train_acc above max_train
    epoch: int = 0  # the last epoch added
    _key: tuple[bool, float] = field(default=(False, float("-inf")))

    def feasible(self, record: EpochRecord) -> bool:
        return not record.diverged and self.violations(record) == (0.0, 0.0)

    def violations(self, record: EpochRecord) -> tuple[float, float]:
        """How far val_acc is below min_val and train_acc above max_train (0 when met)."""
        return (
            max(0.0, self.targets.min_val - record.val_acc),
            max(0.0, record.train_acc - self.targets.max_train),
        )

    def constraints(self, record: EpochRecord) -> dict[str, float]:
        """Optuna constraint values: <= 0 means satisfied; all are satisfied exactly when `feasible` says so."""
        return {
            "val_acc_ge_min": self.targets.min_val - record.val_acc,
            "train_acc_le_max": record.train_acc - self.targets.max_train,
            "loss_finite": 1.0 if record.diverged else 0.0,
        }

    def violation(self, record: EpochRecord) -> float:
        """The total violation: the sum of the constraints' positive values (0 exactly when feasible)."""
        return sum(self.violations(record)) + (1.0 if record.diverged else 0.0)

    @property
    def score(self) -> float:
        """The trial's result so far on one scale: val_acc when feasible (>= 0), minus the violation otherwise (< 0)."""
        return self._key[1]

    def add(self, record: EpochRecord) -> None:
        feasible = self.feasible(record)
        key = (feasible, record.val_acc if feasible else -self.violation(record))
        if key > self._key:
            self.chosen, self._key = record, key
        self.overfit_streak = self.overfit_streak + 1 if record.train_acc > self.targets.max_train else 0
        self.epoch = record.epoch

    def should_stop(self, last_rise: Callable[[], int]) -> bool:
        """True once training accuracy has stayed above the ceiling for `overfit_patience` epochs in a row (0: never)
        and the LR cannot rise any more: `last_rise()`, the last epoch in which the schedule raises the LR (see
        lrsearch.strategy.schedule.last_rise_epoch), is at most the last epoch added. It is called only then.

        The stop assumes that under an LR that only stays or falls, a model above the ceiling for that long stays
        above it, so no later epoch is feasible. A rising LR (a warmup, OneCycleLR before its peak, CyclicLR,
        CosineAnnealingWarmRestarts) can knock the training accuracy back under the ceiling: such a trial trains on
        at least until its last rise.
        """
        patience = self.targets.overfit_patience
        return patience > 0 and self.overfit_streak >= patience and last_rise() <= self.epoch

"""What a study aims at: the bounds that make an epoch feasible, and when a trial stops early."""

from __future__ import annotations

from dataclasses import dataclass

TRAIN_ACCURACY = ("eval", "running")


@dataclass(frozen=True)
class Targets:
    min_val: float = 0.90  # an epoch is feasible when val_acc >= min_val ...
    max_train: float = 0.95  # ... and train_acc <= max_train
    train_accuracy: str = "eval"  # "eval": a pass over the training set after the epoch; "running": during it
    overfit_patience: int = 2  # stop a trial after this many epochs in a row above max_train (0: never)

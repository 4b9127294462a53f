"""What one epoch of a trial measured. Plain data, no torch: read commands and pruners use it too."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean loss over the epoch's batches, as trained
    train_acc: float  # see `train_accuracy` in training.train()
    val_loss: float
    val_acc: float
    lr: float  # LR of the epoch's first step
    lr_end: float  # LR of its last step (differs from `lr` for per-batch schedules)
    seconds: float

    @property
    def diverged(self) -> bool:
        return not (math.isfinite(self.train_loss) and math.isfinite(self.val_loss))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

"""The training loop that applies an LR strategy to an objective, one epoch at a time.

Data stays on the device; batches are slices of a permutation made on the device; losses are summed on the device
and read once per epoch, so no step waits for the host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lrsearch.objective import Objective, TrainingData
from lrsearch.strategy import LRStrategy

EVAL_BATCH = 8192


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean loss over the epoch's batches, as trained
    train_acc: float  # see `train_accuracy` in train()
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


def steps_per_epoch(data: TrainingData, batch_size: int) -> int:
    return math.ceil(len(data.train_targets) / batch_size)


def train(
    strategy: LRStrategy,
    objective: Objective,
    data: TrainingData,
    *,
    seed: int,
    train_accuracy: str = "eval",
) -> Iterator[EpochRecord]:
    """Train a fresh model for `strategy.epochs` epochs, yielding each epoch's record as it ends.

    `train_accuracy` "eval": accuracy of the epoch's final weights over the whole training set (an extra forward
    pass); "running": accuracy of the batches as they were trained during the epoch (free, but lags the weights).
    The same seed on the same device gives the same records.
    """
    device = data.train_inputs.device
    torch.manual_seed(seed)
    model = objective.make_model().to(device)
    batch_size = objective.batch_size
    schedule = strategy.build(model.parameters(), steps_per_epoch(data, batch_size))
    optimizer = schedule.optimizer
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    inputs, targets = data.train_inputs, data.train_targets
    n = len(targets)

    for epoch in range(1, strategy.epochs + 1):
        started = time.perf_counter()
        model.train()
        lr_first = schedule.lr
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            x, y = inputs[batch], targets[batch]
            # forward / backward / step; the scheduler steps after the optimizer
            outputs = model(x)
            loss = objective.loss(outputs, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_last = schedule.lr
            schedule.after_batch()
            # bookkeeping stays on the device
            loss_sum += loss.detach() * len(batch)
            if train_accuracy == "running":
                correct += (outputs.detach().argmax(dim=1) == y).sum()
        train_loss = loss_sum.item() / n
        val_loss, val_acc = evaluate(model, objective, data.val_inputs, data.val_targets)
        if train_accuracy == "running":
            train_acc = correct.item() / n
        else:
            train_acc = evaluate(model, objective, inputs, targets)[1]
        schedule.after_epoch(val_loss)
        yield EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=lr_first,
            lr_end=lr_last,
            seconds=time.perf_counter() - started,
        )


@torch.inference_mode()
def evaluate(model: torch.nn.Module, objective: Objective, inputs: torch.Tensor, targets: torch.Tensor
             ) -> tuple[float, float]:  # fmt: skip
    """Mean loss and accuracy over a whole set, in large batches."""
    model.eval()
    loss_sum = torch.zeros((), device=inputs.device)
    correct = torch.zeros((), device=inputs.device, dtype=torch.long)
    for start in range(0, len(targets), EVAL_BATCH):
        x, y = inputs[start : start + EVAL_BATCH], targets[start : start + EVAL_BATCH]
        outputs = model(x)
        loss_sum += objective.loss(outputs, y) * len(y)
        correct += (outputs.argmax(dim=1) == y).sum()
    return loss_sum.item() / len(targets), correct.item() / len(targets)

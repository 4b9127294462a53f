"""Steps a strategy's optimizer and scheduler(s) in the right unit; the training loop never asks which family."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from lrsearch.strategy.optimizers import OPTIMIZERS
from lrsearch.strategy.schedulers import SCHEDULERS, StepUnit

if TYPE_CHECKING:
    from lrsearch.strategy.strategy import LRStrategy


class Schedule:
    """The optimizer plus the scheduler of a strategy, with its warmup in front.

    Call `after_batch()` after every `optimizer.step()` and `after_epoch(val_loss)` after every epoch's
    validation; each scheduler steps only in its own unit. This is what `LRStrategy.to_code` prints, except
    that with `fused` (the default) the optimizer uses PyTorch's fused kernel where it has one (SGD, Adam,
    AdamW, Adagrad): the same update within float rounding, in one kernel instead of a few per parameter
    (Adam's step on the MNIST MLP: 0.70 -> 0.15 ms on a CPU core).
    """

    def __init__(
        self,
        strategy: LRStrategy,
        parameters: Iterable[torch.nn.Parameter],
        steps_per_epoch: int,
        *,
        fused: bool = True,
    ):
        family = SCHEDULERS[strategy.scheduler]
        self.optimizer = _optimizer(strategy, list(parameters), fused=fused)
        self.unit = family.unit
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        if family.torch_name is not None:
            scheduler_class = getattr(torch.optim.lr_scheduler, family.torch_name)
            self.scheduler = scheduler_class(self.optimizer, **strategy.scheduler_kwargs(steps_per_epoch))
        self.warmup_steps = strategy.warmup_steps(steps_per_epoch)
        self.warmup: torch.optim.lr_scheduler.LinearLR | None = None
        if self.warmup_steps:
            # Made after the scheduler: LinearLR then starts the LR at start_factor times the scheduler's start.
            self.warmup = torch.optim.lr_scheduler.LinearLR(
                self.optimizer, start_factor=strategy.warmup_start_factor, total_iters=self.warmup_steps
            )
        self._steps = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def after_batch(self) -> None:
        if self.unit is StepUnit.BATCH:
            self._advance(None)

    def after_epoch(self, val_loss: float) -> None:
        if self.unit is not StepUnit.BATCH:
            self._advance(val_loss)

    def _advance(self, val_loss: float | None) -> None:
        if self.warmup is not None and self._steps < self.warmup_steps:
            self.warmup.step()
        elif isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)  # type: ignore[arg-type]
        elif self.scheduler is not None:
            self.scheduler.step()
        self._steps += 1


def _optimizer(strategy: LRStrategy, parameters: list[torch.nn.Parameter], *, fused: bool) -> torch.optim.Optimizer:
    optimizer_class = getattr(torch.optim, OPTIMIZERS[strategy.optimizer].torch_name)
    kwargs = strategy.optimizer_kwargs()
    if fused and "fused" in inspect.signature(optimizer_class).parameters:
        try:
            return optimizer_class(parameters, **kwargs, fused=True)  # type: ignore[no-any-return]
        except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
            pass
    return optimizer_class(parameters, **kwargs)  # type: ignore[no-any-return]


def last_rise_epoch(strategy: LRStrategy, steps_per_epoch: int) -> int:
    """The last epoch (1-based) in which the strategy's LR goes up at some step; 0 when it never does.

    After that epoch the LR never rises again within `strategy.epochs`. Found by stepping the real schedule on a
    stand-in parameter, so it holds for every family and warmup as PyTorch runs them: a warmup rises to its end,
    OneCycleLR to its peak, CyclicLR in every up phase, CosineAnnealingWarmRestarts at every restart, and the
    decaying families (and ReduceLROnPlateau, which only lowers it) never.
    """
    schedule = Schedule(strategy, [torch.nn.Parameter(torch.zeros(1))], steps_per_epoch, fused=False)
    per_epoch = steps_per_epoch if schedule.unit is StepUnit.BATCH else 1  # the LR changes only between these
    last, previous = 0, schedule.lr
    with warnings.catch_warnings():
        # Nothing is trained: the scheduler steps without optimizer.step(), which PyTorch warns about.
        warnings.simplefilter("ignore", UserWarning)
        for epoch in range(1, strategy.epochs + 1):
            for step in range(per_epoch):
                lr = schedule.lr
                if lr > previous * (1 + 1e-9) and (epoch, step) != (1, 0):  # float noise is no rise
                    last = epoch
                previous = lr
                schedule.after_batch()
            schedule.after_epoch(0.0)
    return last

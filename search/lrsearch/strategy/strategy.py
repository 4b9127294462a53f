"""An LR strategy as plain data: optimizer, peak LR, scheduler family, optional warmup; buildable and printable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lrsearch.strategy.optimizers import OPTIMIZERS
from lrsearch.strategy.schedulers import SCHEDULERS, Horizon, StepUnit


@dataclass(frozen=True)
class LRStrategy:
    optimizer: str
    lr: float
    scheduler: str
    epochs: int  # the horizon the schedule is planned for
    optimizer_params: Mapping[str, Any] = field(default_factory=dict)
    scheduler_params: Mapping[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 0
    warmup_start_factor: float = 1.0

    @property
    def unit(self) -> StepUnit:
        return SCHEDULERS[self.scheduler].unit

    @classmethod
    def from_params(cls, params: Mapping[str, Any], epochs: int) -> LRStrategy:
        """The strategy of a trial, from its Optuna params (`optimizer`, `lr`, `scheduler`, `{family}.{param}`)."""
        optimizer, scheduler = params["optimizer"], params["scheduler"]

        def prefixed(prefix: str) -> dict[str, Any]:
            return {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(prefix + ".")}

        warmup = prefixed("warmup")
        return cls(
            optimizer=optimizer,
            lr=float(params["lr"]),
            scheduler=scheduler,
            epochs=epochs,
            optimizer_params=prefixed(optimizer),
            scheduler_params=prefixed(scheduler),
            warmup_epochs=int(warmup.get("epochs", 0)),
            warmup_start_factor=float(warmup.get("start_factor", 1.0)),
        )

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return self.warmup_epochs * (steps_per_epoch if self.unit is StepUnit.BATCH else 1)

    def optimizer_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"lr": self.lr, **self.optimizer_params}
        return kwargs

    def scheduler_kwargs(self, steps_per_epoch: int) -> dict[str, Any]:
        per_epoch = steps_per_epoch if self.unit is StepUnit.BATCH else 1
        steps = self.epochs * per_epoch - self.warmup_steps(steps_per_epoch)
        return SCHEDULERS[self.scheduler].kwargs(self.scheduler_params, Horizon(self.lr, steps, steps_per_epoch))

    def describe(self) -> str:
        """One line, e.g. `SGD(lr=0.05, momentum=0.9) + CosineAnnealingLR [min_factor=0.001]`.

        The optimizer shows its constructor arguments; the scheduler its sampled parameters, in brackets.
        """
        family = SCHEDULERS[self.scheduler]
        optimizer = f"{OPTIMIZERS[self.optimizer].torch_name}({_args(self.optimizer_kwargs(), exact=False)})"
        sampled = f" [{_args(self.scheduler_params, exact=False)}]" if self.scheduler_params else ""
        scheduler = "constant LR" if family.torch_name is None else f"{family.torch_name}{sampled}"
        warmup = ""
        if self.warmup_epochs:
            plural = "s" if self.warmup_epochs > 1 else ""
            warmup = f", linear warmup {self.warmup_epochs} epoch{plural} from {self.warmup_start_factor:.3g}x"
        return f"{optimizer} + {scheduler}{warmup}"

    def to_code(self, steps_per_epoch: int, train_epochs: int | None = None) -> str:
        """The PyTorch lines that build and step this strategy, for a user's own training loop.

        The code uses the names `model`, `train_loader`, `loss_fn` and, for ReduceLROnPlateau, `evaluate(model)`
        returning the validation loss. `steps_per_epoch` must equal `len(train_loader)`.
        """
        family = SCHEDULERS[self.scheduler]
        epochs = self.epochs if train_epochs is None else train_epochs
        warmup = self.warmup_steps(steps_per_epoch)
        optimizer_class = OPTIMIZERS[self.optimizer].torch_name
        lines = [
            "import torch",
            "",
            f"optimizer = torch.optim.{optimizer_class}(model.parameters(), {_args(self.optimizer_kwargs())})",
        ]
        if family.torch_name is not None:
            kwargs = _args(self.scheduler_kwargs(steps_per_epoch))
            lines.append(f"scheduler = torch.optim.lr_scheduler.{family.torch_name}(optimizer, {kwargs})")
        if warmup:
            lines += [
                "# Made after the scheduler, so that it starts the LR low; the scheduler takes over when it ends.",
                "warmup = torch.optim.lr_scheduler.LinearLR("
                f"optimizer, start_factor={self.warmup_start_factor!r}, total_iters={warmup})",
            ]
        horizon = "" if epochs == self.epochs else f"  # of a schedule planned for {self.epochs} epochs"
        lines += [
            "",
            *(["step = 0"] if family.unit is StepUnit.BATCH else []),
            f"for epoch in range({epochs}):{horizon}",
        ]
        lines += [
            "    for inputs, targets in train_loader:",
            "        optimizer.zero_grad()",
            "        loss_fn(model(inputs), targets).backward()",
            "        optimizer.step()",
        ]
        if family.unit is StepUnit.BATCH:
            lines += [
                f"        (warmup if step < {warmup} else scheduler).step()" if warmup else "        scheduler.step()",
                "        step += 1",
            ]
        elif family.unit is StepUnit.METRIC:
            lines.append("    val_loss = evaluate(model)")
            if warmup:
                lines += [f"    if epoch < {warmup}:", "        warmup.step()", "    else:"]
                lines.append("        scheduler.step(val_loss)")
            else:
                lines.append("    scheduler.step(val_loss)")
        elif family.torch_name is None:
            lines += [f"    if epoch < {warmup}:", "        warmup.step()"] if warmup else []
        else:
            lines.append(
                f"    (warmup if epoch < {warmup} else scheduler).step()" if warmup else "    scheduler.step()"
            )
        return "\n".join(lines) + "\n"


def _args(kwargs: Mapping[str, Any], *, exact: bool = True) -> str:
    """Keyword arguments as Python source: exact (round-trip) floats for code, 4 digits for a description."""

    def literal(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) and not exact else repr(value)

    return ", ".join(f"{key}={literal(value)}" for key, value in kwargs.items())

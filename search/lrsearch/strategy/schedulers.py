"""The LR-scheduler families: PyTorch's own classes, what lrsearch samples for each, and when each one steps.

`lr` in a strategy is always the schedule's peak learning rate: the starting LR of the decaying families and the
top of the cycle for OneCycleLR and CyclicLR.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lrsearch.strategy.params import Choice, FloatRange, IntRange, ParamSpec


class StepUnit(enum.Enum):
    BATCH = "batch"  # scheduler.step() after every optimizer.step()
    EPOCH = "epoch"  # scheduler.step() after every epoch
    METRIC = "metric"  # scheduler.step(val_loss) after every epoch's validation


@dataclass(frozen=True)
class Horizon:
    """What a family's arguments may depend on besides its sampled parameters."""

    lr: float
    steps: int  # how many times the scheduler will step, in its own unit
    steps_per_epoch: int


KwargsBuilder = Callable[[Mapping[str, Any], Horizon], dict[str, Any]]


@dataclass(frozen=True)
class SchedulerFamily:
    name: str
    torch_name: str | None  # the class in torch.optim.lr_scheduler; None: the LR stays constant
    unit: StepUnit
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    kwargs: KwargsBuilder = lambda params, horizon: {}


def _multistep(p: Mapping[str, Any], h: Horizon) -> dict[str, Any]:
    # A milestone at the last step would decay the LR after training ends: keep them inside the schedule.
    last = max(1, h.steps - 1)
    milestones = sorted({min(last, max(1, round(p[key] * h.steps))) for key in ("first", "second")})
    return {"milestones": milestones, "gamma": p["gamma"]}


def _cyclic(p: Mapping[str, Any], h: Horizon) -> dict[str, Any]:
    return {
        "base_lr": h.lr / p["ratio"],
        "max_lr": h.lr,
        "step_size_up": max(1, round(p["cycle_epochs"] * h.steps_per_epoch / 2)),
        "mode": p["mode"],
        # lrsearch varies the learning rate only; momentum cycling would change more than that.
        "cycle_momentum": False,
    }


def _onecycle(p: Mapping[str, Any], h: Horizon) -> dict[str, Any]:
    return {
        "max_lr": h.lr,
        "total_steps": h.steps,
        "pct_start": p["pct_start"],
        "div_factor": p["div_factor"],
        "final_div_factor": p["final_div_factor"],
        "anneal_strategy": p["anneal_strategy"],
        "cycle_momentum": False,
    }


_GAMMA = FloatRange(0.05, 0.9, log=True, minimum=1e-6, maximum=1.0)
_MIN_FACTOR = FloatRange(1e-4, 0.1, log=True, minimum=0.0, maximum=1.0)

SCHEDULERS: dict[str, SchedulerFamily] = {
    family.name: family
    for family in (
        SchedulerFamily("constant", None, StepUnit.EPOCH),
        SchedulerFamily(
            "step",
            "StepLR",
            StepUnit.EPOCH,
            {"step_size": IntRange(1, 5, minimum=1), "gamma": _GAMMA},
            lambda p, h: {"step_size": p["step_size"], "gamma": p["gamma"]},
        ),
        SchedulerFamily(
            "multistep",
            "MultiStepLR",
            StepUnit.EPOCH,
            {
                # Milestones as fractions of the scheduled epochs.
                "first": FloatRange(0.2, 0.6, minimum=0.0, maximum=1.0),
                "second": FloatRange(0.6, 0.95, minimum=0.0, maximum=1.0),
                "gamma": _GAMMA,
            },
            _multistep,
        ),
        SchedulerFamily(
            "exponential",
            "ExponentialLR",
            StepUnit.EPOCH,
            {"gamma": FloatRange(0.5, 0.99, minimum=1e-6, maximum=1.0)},
            lambda p, h: {"gamma": p["gamma"]},
        ),
        SchedulerFamily(
            "cosine",
            "CosineAnnealingLR",
            StepUnit.EPOCH,
            {"min_factor": _MIN_FACTOR},
            lambda p, h: {"T_max": h.steps, "eta_min": h.lr * p["min_factor"]},
        ),
        SchedulerFamily(
            "cosine_restarts",
            "CosineAnnealingWarmRestarts",
            StepUnit.EPOCH,
            {
                "T_0": IntRange(1, 4, minimum=1),
                "T_mult": Choice((1, 2), allowed=(1, 2, 3)),
                "min_factor": _MIN_FACTOR,
            },
            lambda p, h: {"T_0": p["T_0"], "T_mult": p["T_mult"], "eta_min": h.lr * p["min_factor"]},
        ),
        SchedulerFamily(
            "onecycle",
            "OneCycleLR",
            StepUnit.BATCH,
            {
                "pct_start": FloatRange(0.1, 0.5, minimum=0.01, maximum=0.99),
                "div_factor": FloatRange(5.0, 100.0, log=True, minimum=1.0),
                "final_div_factor": FloatRange(10.0, 1e4, log=True, minimum=1.0),
                "anneal_strategy": Choice(("cos", "linear"), allowed=("cos", "linear")),
            },
            _onecycle,
        ),
        SchedulerFamily(
            "cyclic",
            "CyclicLR",
            StepUnit.BATCH,
            {
                "ratio": FloatRange(2.0, 50.0, log=True, minimum=1.0),  # max_lr / base_lr
                "cycle_epochs": FloatRange(0.5, 4.0, minimum=0.01),  # length of one up-and-down cycle
                "mode": Choice(("triangular", "triangular2"), allowed=("triangular", "triangular2")),
            },
            _cyclic,
        ),
        SchedulerFamily(
            "plateau",
            "ReduceLROnPlateau",
            StepUnit.METRIC,
            {"factor": FloatRange(0.1, 0.7, minimum=0.01, maximum=0.99), "patience": IntRange(0, 3)},
            lambda p, h: {"mode": "min", "factor": p["factor"], "patience": p["patience"]},
        ),
        SchedulerFamily(
            "polynomial",
            "PolynomialLR",
            StepUnit.EPOCH,
            {"power": FloatRange(0.5, 3.0, minimum=0.01, maximum=10.0)},
            lambda p, h: {"total_iters": h.steps, "power": p["power"]},
        ),
    )
}

# A linear warmup may stand in front of any family: the LR climbs from start_factor times the scheduler's own
# starting LR (lr for the decaying families, lr / div_factor for OneCycleLR, lr / ratio for CyclicLR) up to it over
# `epochs` epochs, stepped in the family's unit; then the family's scheduler starts as if fresh.
WARMUP_PARAMS: dict[str, ParamSpec] = {
    "epochs": IntRange(0, 2),
    "start_factor": FloatRange(0.01, 0.5, log=True, minimum=1e-4, maximum=1.0),
}

"""Schedule: every optimizer and scheduler family, with and without warmup, steps as PyTorch does by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from lrsearch.strategy.optimizers import OPTIMIZERS
from lrsearch.strategy.schedule import Schedule, last_rise_epoch
from lrsearch.strategy.schedulers import SCHEDULERS, StepUnit
from lrsearch.strategy.strategy import LRStrategy

EPOCHS, STEPS = 4, 5
LR = 0.1
START_FACTOR = 0.1
# Validation losses per epoch: no improvement from epoch 2 on, so ReduceLROnPlateau cuts the LR.
VAL_LOSSES = [1.0, 1.0, 1.0, 0.9, 0.9, 0.9]

SCHEDULER_PARAMS: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"step_size": 1, "gamma": 0.5},
    "multistep": {"first": 0.3, "second": 0.6, "gamma": 0.3},
    "exponential": {"gamma": 0.8},
    "cosine": {"min_factor": 0.01},
    "cosine_restarts": {"T_0": 1, "T_mult": 2, "min_factor": 0.05},
    "onecycle": {"pct_start": 0.3, "div_factor": 10.0, "final_div_factor": 100.0, "anneal_strategy": "cos"},
    "cyclic": {"ratio": 4.0, "cycle_epochs": 1.0, "mode": "triangular2"},
    "plateau": {"factor": 0.5, "patience": 0},
    "polynomial": {"power": 2.0},
}
OPTIMIZER_PARAMS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.9, "nesterov": True},
    "adam": {},
    "adamw": {},
    "rmsprop": {},
    "adagrad": {},
}
OPTIMIZER_CLASSES = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
UNITS = {
    "onecycle": StepUnit.BATCH,
    "cyclic": StepUnit.BATCH,
    "plateau": StepUnit.METRIC,
}


def _reference_scheduler(family: str, optimizer: torch.optim.Optimizer, p: dict[str, Any], steps: int) -> Any:
    """The PyTorch scheduler of a family, its arguments worked out here; `steps` in the family's unit."""
    if family == "constant":
        return None
    if family == "step":
        return lr_scheduler.StepLR(optimizer, step_size=p["step_size"], gamma=p["gamma"])
    if family == "multistep":
        milestones = sorted({max(1, round(p["first"] * steps)), max(1, round(p["second"] * steps))})
        return lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=p["gamma"])
    if family == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=p["gamma"])
    if family == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=LR * p["min_factor"])
    if family == "cosine_restarts":
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=p["T_0"], T_mult=p["T_mult"], eta_min=LR * p["min_factor"]
        )
    if family == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=LR,
            total_steps=steps,
            pct_start=p["pct_start"],
            div_factor=p["div_factor"],
            final_div_factor=p["final_div_factor"],
            anneal_strategy=p["anneal_strategy"],
            cycle_momentum=False,
        )
    if family == "cyclic":
        return lr_scheduler.CyclicLR(
            optimizer,
            base_lr=LR / p["ratio"],
            max_lr=LR,
            step_size_up=max(1, round(p["cycle_epochs"] * STEPS / 2)),
            mode=p["mode"],
            cycle_momentum=False,
        )
    if family == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=p["factor"], patience=p["patience"])
    if family == "polynomial":
        return lr_scheduler.PolynomialLR(optimizer, total_iters=steps, power=p["power"])
    raise AssertionError(family)


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    # A fixed gradient (no autograd: the LR does not depend on it) keeps hundreds of these tests fast.
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    optimizer.step()


def reference_trajectory(optimizer_name: str, family: str, warmup_epochs: int, epochs: int = EPOCHS) -> list[float]:
    """The LR of every batch, PyTorch's classes made and stepped by hand (the LinearLR warmup made last)."""
    model = _model()
    optimizer = OPTIMIZER_CLASSES[optimizer_name](model.parameters(), lr=LR, **OPTIMIZER_PARAMS[optimizer_name])
    unit = UNITS.get(family, StepUnit.EPOCH)
    per_epoch = STEPS if unit is StepUnit.BATCH else 1
    warmup_steps = warmup_epochs * per_epoch
    main = _reference_scheduler(family, optimizer, SCHEDULER_PARAMS[family], epochs * per_epoch - warmup_steps)
    warmup = lr_scheduler.LinearLR(optimizer, START_FACTOR, total_iters=warmup_steps) if warmup_steps else None
    done = 0

    def advance(val_loss: float | None) -> None:
        nonlocal done
        if warmup is not None and done < warmup_steps:
            warmup.step()
        elif isinstance(main, lr_scheduler.ReduceLROnPlateau):
            main.step(val_loss)
        elif main is not None:
            main.step()
        done += 1

    lrs = []
    for epoch in range(epochs):
        for _ in range(STEPS):
            lrs.append(optimizer.param_groups[0]["lr"])
            _train_step(model, optimizer)
            if unit is StepUnit.BATCH:
                advance(None)
        if unit is not StepUnit.BATCH:
            advance(VAL_LOSSES[epoch])
    return lrs


def strategy(optimizer: str, family: str, warmup_epochs: int, epochs: int = EPOCHS) -> LRStrategy:
    return LRStrategy(
        optimizer=optimizer,
        lr=LR,
        scheduler=family,
        epochs=epochs,
        optimizer_params=OPTIMIZER_PARAMS[optimizer],
        scheduler_params=SCHEDULER_PARAMS[family],
        warmup_epochs=warmup_epochs,
        warmup_start_factor=START_FACTOR if warmup_epochs else 1.0,
    )


def schedule_trajectory(s: LRStrategy, epochs: int | None = None) -> list[float]:
    """The LR of every batch with the Schedule driver, called the way the training loop calls it."""
    model = _model()
    schedule = Schedule(s, model.parameters(), STEPS)
    lrs = []
    for epoch in range(s.epochs if epochs is None else epochs):
        for _ in range(STEPS):
            lrs.append(schedule.lr)
            _train_step(model, schedule.optimizer)
            schedule.after_batch()
        schedule.after_epoch(VAL_LOSSES[epoch])
    return lrs


def test_the_families_tested_are_the_registered_ones() -> None:
    assert set(SCHEDULER_PARAMS) == set(SCHEDULERS)
    assert set(OPTIMIZER_PARAMS) == set(OPTIMIZERS)
    for name, family in SCHEDULERS.items():
        assert family.unit is UNITS.get(name, StepUnit.EPOCH), name
        assert set(SCHEDULER_PARAMS[name]) == set(family.params), name


@pytest.mark.parametrize("optimizer", list(OPTIMIZER_PARAMS))
@pytest.mark.parametrize("family", list(SCHEDULER_PARAMS))
@pytest.mark.parametrize("warmup_epochs", [0, 1, 3])
def test_trajectory_equals_pytorch_by_hand(optimizer: str, family: str, warmup_epochs: int) -> None:
    expected = reference_trajectory(optimizer, family, warmup_epochs)
    actual = schedule_trajectory(strategy(optimizer, family, warmup_epochs))
    assert len(actual) == EPOCHS * STEPS
    assert actual == expected


@pytest.mark.parametrize("family", list(SCHEDULER_PARAMS))
def test_trajectory_is_not_trivially_constant(family: str) -> None:
    """Guards the comparison above: the chosen parameters make every family (but `constant`) move the LR."""
    lrs = schedule_trajectory(strategy("sgd", family, 0))
    assert (len(set(lrs)) == 1) == (family == "constant")
    warmed = schedule_trajectory(strategy("sgd", family, 1))
    assert warmed[0] == pytest.approx(START_FACTOR * lrs[0], rel=1e-12)


@pytest.mark.parametrize("optimizer", list(OPTIMIZER_PARAMS))
def test_builds_pytorch_optimizer_with_sampled_arguments(optimizer: str) -> None:
    schedule = Schedule(strategy(optimizer, "constant", 0), _model().parameters(), STEPS)
    assert type(schedule.optimizer) is OPTIMIZER_CLASSES[optimizer]
    group = schedule.optimizer.param_groups[0]
    assert group["lr"] == LR
    for key, value in OPTIMIZER_PARAMS[optimizer].items():
        assert group[key] == value
    assert schedule.scheduler is None and schedule.warmup is None


@pytest.mark.parametrize("family", [f for f in SCHEDULER_PARAMS if f != "constant"])
def test_builds_pytorch_scheduler_class(family: str) -> None:
    schedule = Schedule(strategy("adam", family, 1), _model().parameters(), STEPS)
    assert type(schedule.scheduler).__name__ == SCHEDULERS[family].torch_name
    assert isinstance(schedule.warmup, lr_scheduler.LinearLR)
    per_epoch = STEPS if SCHEDULERS[family].unit is StepUnit.BATCH else 1
    assert schedule.warmup_steps == per_epoch


@pytest.mark.parametrize("family", list(SCHEDULER_PARAMS))
def test_steps_only_in_its_own_unit(family: str) -> None:
    model = _model()
    schedule = Schedule(strategy("sgd", family, 0), model.parameters(), STEPS)
    unit = SCHEDULERS[family].unit
    before = schedule.lr
    _train_step(model, schedule.optimizer)
    if unit is StepUnit.BATCH:
        schedule.after_epoch(1.0)  # not its unit: nothing happens
        assert schedule.lr == before
        schedule.after_batch()
        assert schedule.lr != before
    else:
        for _ in range(3 * STEPS):
            schedule.after_batch()  # not its unit: nothing happens
        assert schedule.lr == before
        schedule.after_epoch(1.0)
        schedule.after_epoch(1.0)  # plateau (patience 0) cuts on the second epoch without improvement
        assert (schedule.lr == before) == (family == "constant")


@pytest.mark.parametrize("family", list(SCHEDULER_PARAMS))
@pytest.mark.parametrize("warmup_epochs", [1, 2])
def test_warmup_climbs_linearly_then_the_scheduler_starts_fresh(family: str, warmup_epochs: int) -> None:
    """After W warmup epochs the LR follows the family's own schedule planned over the remaining epochs."""
    warmed = schedule_trajectory(strategy("sgd", family, warmup_epochs))
    cold = strategy("sgd", family, 0, epochs=EPOCHS - warmup_epochs)
    # The same validation losses, shifted by the warmup epochs.
    model = _model()
    schedule = Schedule(cold, model.parameters(), STEPS)
    rest = []
    for epoch in range(cold.epochs):
        for _ in range(STEPS):
            rest.append(schedule.lr)
            _train_step(model, schedule.optimizer)
            schedule.after_batch()
        schedule.after_epoch(VAL_LOSSES[warmup_epochs + epoch])
    tail = warmed[warmup_epochs * STEPS :]
    assert len(tail) == len(rest)
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(tail, rest, strict=True)), (tail, rest)

    head = warmed[: warmup_epochs * STEPS]
    start = rest[0]  # the scheduler's own first LR: lr, or the bottom of the cycle for onecycle / cyclic
    assert math.isclose(head[0], START_FACTOR * start, rel_tol=1e-12)
    distinct = sorted(set(head))
    steps = warmup_epochs * (STEPS if SCHEDULERS[family].unit is StepUnit.BATCH else 1)
    assert head == sorted(head) and len(distinct) == steps  # climbs at every warmup step, in the family's unit
    assert head[-1] < tail[0]


def test_lr_property_reads_the_first_param_group() -> None:
    schedule: Schedule = Schedule(strategy("sgd", "constant", 0), _model().parameters(), STEPS)
    schedule.optimizer.param_groups[0]["lr"] = 0.25
    assert schedule.lr == 0.25


@pytest.mark.parametrize("family", ["onecycle", "cyclic", "cosine", "step"])
@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_a_step_before_the_optimizer_step_would_fail_these_tests(family: str, warmup_epochs: int) -> None:
    """PyTorch warns (an error in this suite) when a scheduler steps before the optimizer (ReduceLROnPlateau
    excepted): the trajectory tests above would catch a driver that stepped too early."""
    schedule = Schedule(strategy("sgd", family, warmup_epochs), _model().parameters(), STEPS)
    with pytest.warns(UserWarning, match=r"lr_scheduler.step\(\)` before `optimizer.step\(\)`"):
        schedule.after_batch()
        schedule.after_epoch(1.0)


@pytest.mark.parametrize(
    ("scheduler", "params", "warmup", "last"),
    [
        ("constant", {}, 0, 0),
        ("step", {"step_size": 1, "gamma": 0.5}, 0, 0),
        ("cosine", {"min_factor": 0.01}, 0, 0),
        ("polynomial", {"power": 2.0}, 0, 0),
        ("plateau", {"factor": 0.5, "patience": 0}, 0, 0),
        ("cosine", {"min_factor": 0.01}, 2, 3),  # the warmup's last step up is the first epoch at the peak
        ("cosine_restarts", {"T_0": 2, "T_mult": 2, "min_factor": 0.01}, 0, 7),  # restarts after epochs 2 and 6
        ("cosine_restarts", {"T_0": 1, "T_mult": 1, "min_factor": 0.01}, 0, 0),  # restarts every epoch: constant
        ("onecycle", {"pct_start": 0.3, "div_factor": 10.0, "final_div_factor": 100.0, "anneal_strategy": "cos"}, 0, 3),
        ("cyclic", {"ratio": 10.0, "cycle_epochs": 4.0, "mode": "triangular"}, 0, 7),  # peaks at steps 20 and 60
        ("cyclic", {"ratio": 10.0, "cycle_epochs": 3.0, "mode": "triangular2"}, 1, 8),
    ],
)
def test_last_rise_epoch(scheduler: str, params: dict[str, object], warmup: int, last: int) -> None:
    strategy = LRStrategy("sgd", 0.1, scheduler, 8, {}, params, warmup_epochs=warmup, warmup_start_factor=0.1)
    assert last_rise_epoch(strategy, 10) == last

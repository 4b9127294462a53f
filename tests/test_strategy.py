"""LRStrategy: from trial params, scheduler arguments over its horizon, to_code() that runs like Schedule."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lrsearch.strategy.schedule import Schedule
from lrsearch.strategy.schedulers import SCHEDULERS, StepUnit
from lrsearch.strategy.strategy import LRStrategy
from test_schedule import OPTIMIZER_PARAMS, SCHEDULER_PARAMS, STEPS, VAL_LOSSES, schedule_trajectory, strategy


class RecordingLoader:
    """A `train_loader` for generated code: records the optimizer's LR as each batch is handed out."""

    def __init__(self, namespace: dict[str, Any], steps: int):
        self.namespace, self.steps = namespace, steps
        self.lrs: list[float] = []

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            self.lrs.append(self.namespace["optimizer"].param_groups[0]["lr"])
            yield torch.ones(2, 3), torch.zeros(2, 1)


def run_code(code: str, steps: int = STEPS) -> tuple[list[float], int]:
    """Exec generated code with stubs; returns the LR of every batch and how often `evaluate` was called."""
    torch.manual_seed(0)
    namespace: dict[str, Any] = {}
    loader = RecordingLoader(namespace, steps)
    evaluations: list[float] = []

    def evaluate(model: torch.nn.Module) -> float:
        evaluations.append(VAL_LOSSES[len(evaluations)])
        return evaluations[-1]

    namespace.update(
        model=torch.nn.Linear(3, 1),
        train_loader=loader,
        loss_fn=torch.nn.functional.mse_loss,
        evaluate=evaluate,
    )
    exec(compile(code, "<to_code>", "exec"), namespace)
    return loader.lrs, len(evaluations)


@pytest.mark.parametrize("family", list(SCHEDULER_PARAMS))
@pytest.mark.parametrize("warmup_epochs", [0, 1, 3])
def test_to_code_runs_exactly_like_the_schedule(family: str, warmup_epochs: int) -> None:
    s = strategy("sgd", family, warmup_epochs)
    code = s.to_code(STEPS)
    ast.parse(code)
    lrs, evaluations = run_code(code)
    assert lrs == schedule_trajectory(s)
    assert evaluations == (s.epochs if SCHEDULERS[family].unit is StepUnit.METRIC else 0)
    assert ("LinearLR" in code) == bool(warmup_epochs)
    torch_name = SCHEDULERS[family].torch_name
    assert torch_name is None or f"torch.optim.lr_scheduler.{torch_name}(" in code


@pytest.mark.parametrize("optimizer", list(OPTIMIZER_PARAMS))
@pytest.mark.parametrize("family", ["onecycle", "cosine", "plateau"])
def test_to_code_every_optimizer(optimizer: str, family: str) -> None:
    s = strategy(optimizer, family, 1)
    code = s.to_code(STEPS)
    lrs, _ = run_code(code)
    assert lrs == schedule_trajectory(s)
    assert code.count("optimizer = torch.optim.") == 1


@pytest.mark.parametrize("family", list(SCHEDULER_PARAMS))
@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_to_code_trains_fewer_epochs_of_the_planned_schedule(family: str, warmup_epochs: int) -> None:
    """`lrsearch best` prints code for the best epoch: the same schedule, cut short."""
    s = strategy("adam", family, warmup_epochs)
    code = s.to_code(STEPS, train_epochs=2)
    assert "for epoch in range(2):  # of a schedule planned for 4 epochs" in code
    lrs, _ = run_code(code)
    assert lrs == schedule_trajectory(s, epochs=2)


def test_to_code_writes_floats_exactly() -> None:
    s = LRStrategy("sgd", 0.1 + 0.2, "cosine", 3, {"momentum": 1 / 3}, {"min_factor": 1 / 7})
    code = s.to_code(10)
    assert f"lr={0.1 + 0.2!r}" in code and f"momentum={1 / 3!r}" in code
    assert f"eta_min={(0.1 + 0.2) * (1 / 7)!r}" in code


def test_from_params_round_trip() -> None:
    params = {
        "optimizer": "sgd",
        "scheduler": "cosine",
        "lr": 0.05,
        "sgd.momentum": 0.9,
        "sgd.nesterov": True,
        "cosine.min_factor": 0.001,
        "warmup.epochs": 2,
        "warmup.start_factor": 0.1,
    }
    s = LRStrategy.from_params(params, 12)
    assert s == LRStrategy(
        optimizer="sgd",
        lr=0.05,
        scheduler="cosine",
        epochs=12,
        optimizer_params={"momentum": 0.9, "nesterov": True},
        scheduler_params={"min_factor": 0.001},
        warmup_epochs=2,
        warmup_start_factor=0.1,
    )


def test_from_params_does_not_mix_families_with_a_common_prefix() -> None:
    """`adam.` is not a prefix of `adamw.x`, nor `cosine.` of `cosine_restarts.x`; no warmup means none."""
    params = {
        "optimizer": "adam",
        "scheduler": "cosine",
        "lr": 0.01,
        "adamw.x": 1,
        "cosine_restarts.T_0": 2,
        "cosine.min_factor": 0.01,
        "warmup.epochs": 0,
    }
    s = LRStrategy.from_params(params, 5)
    assert s.optimizer_params == {}
    assert s.scheduler_params == {"min_factor": 0.01}
    assert (s.warmup_epochs, s.warmup_start_factor) == (0, 1.0)
    assert LRStrategy.from_params({"optimizer": "adam", "scheduler": "constant", "lr": 1}, 5).lr == 1.0


@pytest.mark.parametrize(
    ("family", "warmup_epochs", "expected_steps"),
    [("cosine", 0, 10), ("cosine", 3, 7), ("onecycle", 0, 10 * 7), ("onecycle", 2, 8 * 7), ("plateau", 1, 9)],
)
def test_horizon_excludes_warmup_in_the_family_unit(family: str, warmup_epochs: int, expected_steps: int) -> None:
    s = LRStrategy("sgd", 0.1, family, 10, {}, SCHEDULER_PARAMS[family], warmup_epochs, 0.1)
    assert s.warmup_steps(7) == warmup_epochs * (7 if family == "onecycle" else 1)
    kwargs = s.scheduler_kwargs(7)
    if family == "cosine":
        assert kwargs == {"T_max": expected_steps, "eta_min": 0.1 * 0.01}
    elif family == "onecycle":
        assert kwargs["total_steps"] == expected_steps and kwargs["max_lr"] == 0.1
    else:
        assert kwargs == {"mode": "min", "factor": 0.5, "patience": 0}


@pytest.mark.parametrize(
    ("first", "second", "epochs", "milestones"),
    # a milestone never falls on the last epoch, where its decay would come after training ends
    [
        (0.3, 0.6, 10, [3, 6]),
        (0.5, 0.5, 10, [5]),
        (0.01, 0.02, 10, [1]),
        (0.2, 0.95, 4, [1, 3]),
        (0.9, 1.0, 1, [1]),
    ],
)
def test_multistep_milestones(first: float, second: float, epochs: int, milestones: list[int]) -> None:
    s = LRStrategy("sgd", 0.1, "multistep", epochs, {}, {"first": first, "second": second, "gamma": 0.1})
    assert s.scheduler_kwargs(100) == {"milestones": milestones, "gamma": 0.1}


def test_cyclic_arguments() -> None:
    s = LRStrategy("adam", 0.02, "cyclic", 5, {}, {"ratio": 4.0, "cycle_epochs": 2.0, "mode": "triangular"})
    assert s.scheduler_kwargs(50) == {
        "base_lr": 0.005,
        "max_lr": 0.02,
        "step_size_up": 50,
        "mode": "triangular",
        "cycle_momentum": False,
    }
    tiny = LRStrategy("adam", 0.02, "cyclic", 5, {}, {"ratio": 4.0, "cycle_epochs": 0.5, "mode": "triangular"})
    assert tiny.scheduler_kwargs(1)["step_size_up"] == 1


def test_unit_and_describe() -> None:
    s = LRStrategy("sgd", 0.05, "cosine", 10, {"momentum": 0.9}, {"min_factor": 0.001}, 1, 0.1)
    assert s.unit is StepUnit.EPOCH
    assert (
        s.describe()
        == "SGD(lr=0.05, momentum=0.9) + CosineAnnealingLR [min_factor=0.001], linear warmup 1 epoch from 0.1x"
    )
    constant = LRStrategy("adam", 1 / 3, "constant", 10, warmup_epochs=2, warmup_start_factor=0.5)
    assert constant.describe() == "Adam(lr=0.3333) + constant LR, linear warmup 2 epochs from 0.5x"
    assert LRStrategy("adam", 0.1, "onecycle", 3, {}, SCHEDULER_PARAMS["onecycle"]).unit is StepUnit.BATCH


def test_cosine_decays_to_its_floor_at_the_horizon() -> None:
    """The horizon is right: a cosine planned over 4 epochs reaches eta_min at the end of the 4th."""
    s = strategy("sgd", "cosine", 1)
    model = torch.nn.Linear(3, 1)
    schedule = Schedule(s, model.parameters(), STEPS)
    for _ in range(s.epochs):
        model.weight.grad = torch.ones_like(model.weight)
        schedule.optimizer.step()
        schedule.after_epoch(0.0)
    assert math.isclose(schedule.lr, 0.1 * SCHEDULER_PARAMS["cosine"]["min_factor"], rel_tol=1e-9)

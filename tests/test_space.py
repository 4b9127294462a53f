"""SearchSpace: conditional sampling with a real Optuna study, and the [space] table it is read from."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from lrsearch.errors import ConfigError
from lrsearch.strategy.optimizers import OPTIMIZERS
from lrsearch.strategy.params import Choice, FloatRange, IntRange
from lrsearch.strategy.schedule import Schedule
from lrsearch.strategy.schedulers import SCHEDULERS, WARMUP_PARAMS
from lrsearch.strategy.space import DEFAULT_LR, SearchSpace
from lrsearch.strategy.strategy import LRStrategy

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space: SearchSpace, epochs: int, n: int, seed: int = 0) -> list[tuple[dict[str, Any], LRStrategy]]:
    """n strategies sampled by a seeded RandomSampler in an in-memory study, with each trial's params."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        strategy = space.sample(trial, epochs)
        out.append((dict(trial.params), strategy))
        study.tell(trial, 0.0)
    return out


def in_range(value: Any, spec: Any) -> bool:
    if isinstance(spec, Choice):
        return value in spec.options
    return spec.low <= value <= spec.high


@pytest.fixture(scope="module")
def full_space() -> SearchSpace:
    return SearchSpace.from_table({}, "test.toml")


@pytest.fixture(scope="module")
def samples(full_space: SearchSpace) -> list[tuple[dict[str, Any], LRStrategy]]:
    return sample(full_space, epochs=6, n=300)


def test_param_names_and_only_the_chosen_family(samples: list[tuple[dict[str, Any], LRStrategy]]) -> None:
    for params, strategy in samples:
        optimizer, scheduler = params["optimizer"], params["scheduler"]
        expected = {"optimizer", "scheduler", "lr", "warmup.epochs"}
        expected |= {f"{optimizer}.{key}" for key in strategy.optimizer_params}
        expected |= {f"{scheduler}.{key}" for key in SCHEDULERS[scheduler].params}
        if params["warmup.epochs"]:
            expected.add("warmup.start_factor")
        assert set(params) == expected
        assert set(strategy.scheduler_params) == set(SCHEDULERS[scheduler].params)
        optimizer_keys = set(OPTIMIZERS[optimizer].params)
        if optimizer == "sgd" and params["sgd.momentum"] == 0:
            optimizer_keys.discard("nesterov")
        assert set(strategy.optimizer_params) == optimizer_keys


def test_every_family_is_sampled(samples: list[tuple[dict[str, Any], LRStrategy]]) -> None:
    assert {p["optimizer"] for p, _ in samples} == set(OPTIMIZERS)
    assert {p["scheduler"] for p, _ in samples} == set(SCHEDULERS)
    assert {p["warmup.epochs"] for p, _ in samples} == {0, 1, 2}


def test_values_lie_within_bounds(full_space: SearchSpace, samples: list[tuple[dict[str, Any], LRStrategy]]) -> None:
    specs = {"lr": full_space.lr, **{f"warmup.{k}": v for k, v in full_space.warmup.items()}}
    for family, params in {**full_space.optimizers, **full_space.schedulers}.items():
        specs.update({f"{family}.{key}": spec for key, spec in params.items()})
    for params, _ in samples:
        for name, value in params.items():
            if name not in ("optimizer", "scheduler"):
                assert in_range(value, specs[name]), (name, value)


def test_from_params_round_trips(samples: list[tuple[dict[str, Any], LRStrategy]]) -> None:
    for params, strategy in samples:
        assert LRStrategy.from_params(params, 6) == strategy


def test_sampled_strategies_build_and_step(samples: list[tuple[dict[str, Any], LRStrategy]]) -> None:
    import torch

    for _, strategy in samples[:60]:
        model = torch.nn.Linear(2, 1)
        schedule = Schedule(strategy, model.parameters(), 3)
        used = []
        for _ in range(strategy.epochs):
            for _ in range(3):
                used.append(schedule.lr)
                model.weight.grad = torch.ones_like(model.weight)
                schedule.optimizer.step()
                schedule.after_batch()
            schedule.after_epoch(1.0)
        assert all(0 < lr <= strategy.lr * (1 + 1e-12) for lr in used), (strategy, used)


def test_nesterov_only_with_momentum() -> None:
    space = SearchSpace.from_table(
        {"optimizers": ["sgd"], "schedulers": ["constant"], "sgd": {"momentum": [0.0, 0.0]}}, "t.toml"
    )
    for params, strategy in sample(space, 3, 20):
        assert "sgd.nesterov" not in params
        assert strategy.optimizer_params == {"momentum": 0.0}
    with_momentum = SearchSpace.from_table(
        {
            "optimizers": ["sgd"],
            "schedulers": ["constant"],
            "sgd": {"momentum": [0.5, 0.9], "nesterov": [True]},
        },
        "t.toml",
    )
    for params, strategy in sample(with_momentum, 3, 20):
        assert params["sgd.nesterov"] is True
        assert strategy.optimizer_params["nesterov"] is True


@pytest.mark.parametrize(("epochs", "most"), [(1, 0), (2, 1), (3, 2), (10, 5)])
def test_warmup_epochs_capped_at_epochs_minus_one(epochs: int, most: int) -> None:
    space = SearchSpace.from_table({"warmup": {"epochs": [0, 5]}}, "t.toml")
    seen = {strategy.warmup_epochs for _, strategy in sample(space, epochs, 60)}
    assert max(seen) == most and min(seen) == 0
    for params, strategy in sample(space, epochs, 30, seed=1):
        assert params["warmup.epochs"] == strategy.warmup_epochs <= epochs - 1
        assert strategy.warmup_start_factor == (params["warmup.start_factor"] if strategy.warmup_epochs else 1.0)


def test_warmup_range_that_cannot_fit_the_epochs_is_an_error() -> None:
    """A warmup of at least 3 epochs leaves no epoch for the scheduler of a 3-epoch study."""
    space = SearchSpace.from_table({"warmup": {"epochs": [3, 4]}}, "t.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with pytest.raises(ConfigError, match=r"warmup.*epochs.*3"):
        space.sample(study.ask(), 3)
    assert space.sample(study.ask(), 4).warmup_epochs == 3


def test_narrowed_ranges_are_respected() -> None:
    table = {
        "optimizers": ["adam", "sgd", "adam"],
        "schedulers": ["cyclic"],
        "lr": [0.01, 0.02],
        "cyclic": {"ratio": 3.0, "mode": ["triangular2"]},
        "warmup": {"epochs": 1, "start_factor": [0.2, 0.3]},
    }
    space = SearchSpace.from_table(table, "t.toml")
    assert list(space.optimizers) == ["adam", "sgd"]
    for params, strategy in sample(space, 4, 30):
        assert 0.01 <= params["lr"] <= 0.02
        assert params["cyclic.ratio"] == 3.0 and params["cyclic.mode"] == "triangular2"
        assert params["warmup.epochs"] == 1 and 0.2 <= params["warmup.start_factor"] <= 0.3
        assert 0.5 <= strategy.scheduler_params["cycle_epochs"] <= 4.0


def test_defaults_are_the_registries() -> None:
    space = SearchSpace.from_table({}, "t.toml")
    assert list(space.optimizers) == list(OPTIMIZERS)
    assert list(space.schedulers) == list(SCHEDULERS)
    assert space.lr == DEFAULT_LR
    assert dict(space.warmup) == WARMUP_PARAMS
    for name, family in SCHEDULERS.items():
        assert dict(space.schedulers[name]) == dict(family.params)


def test_to_table_round_trips() -> None:
    table = {
        "optimizers": ["sgd", "rmsprop"],
        "schedulers": ["step", "cosine_restarts", "constant"],
        "lr": [0.001, 0.5],
        "sgd": {"momentum": [0.5, 0.9], "nesterov": [True]},
        "step": {"step_size": [2, 3]},
        "cosine_restarts": {"T_mult": [1, 3]},
    }
    space = SearchSpace.from_table(table, "t.toml")
    written = space.to_table()
    assert written["sgd"] == {"momentum": [0.5, 0.9], "nesterov": [True]}
    assert written["step"]["step_size"] == [2, 3]
    assert "rmsprop" not in written and "constant" not in written  # no parameters
    assert SearchSpace.from_table(written, "t.toml") == space


def test_a_range_in_a_family_not_chosen_is_still_checked() -> None:
    with pytest.raises(ConfigError, match=r"t.toml: \[space.step\] unknown key 'gama'; accepted: step_size, gamma"):
        SearchSpace.from_table({"schedulers": ["cosine"], "step": {"gama": 0.5}}, "t.toml")
    with pytest.raises(ConfigError, match=r"\[space.sgd\] momentum"):
        SearchSpace.from_table({"optimizers": ["adam"], "sgd": {"momentum": [0.5, 2.0]}}, "t.toml")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"optimisers": ["sgd"]},
            r"t.toml: \[space\] unknown key 'optimisers'; accepted: optimizers, schedulers",
        ),
        ({"optimizers": []}, r"t.toml: \[space\] optimizers is empty; give one or more of: sgd, adam"),
        ({"optimizers": "sgd"}, r"t.toml: \[space\] optimizers must be a list of names from: sgd, adam"),
        ({"optimizers": ["sgd", 1]}, r"optimizers must be a list of names"),
        (
            {"optimizers": ["nadam"]},
            r"t.toml: \[space\] unknown optimizer 'nadam'; choose from: sgd, adam, adamw",
        ),
        (
            {"schedulers": ["cosine", "warm"]},
            r"unknown scheduler 'warm'; choose from: constant, step, .*polynomial",
        ),
        ({"sgd": 0.9}, r"t.toml: \[space\] sgd must be a table \(\[space.sgd\]\), got 0.9"),
        (
            {"adam": {"beta": 0.9}},
            r"\[space.adam\] unknown key 'beta'; accepted: none \(this family has no param",
        ),
        ({"lr": [0.1, 0.01]}, r"t.toml: \[space\] lr: low 0.1 is greater than high 0.01"),
        ({"lr": [0.0, 0.01]}, r"\[space\] lr: expected 1e-08 <= low <= high <= 100 with low > 0"),
        ({"lr": [1e-9, 0.01]}, r"\[space\] lr: expected 1e-08 <= low"),
        ({"lr": "0.1"}, r'\[space\] lr: expected \[low, high\] or a single value, both numbers; got "0.1"'),
        ({"warmup": {"epochs": [0.0, 2.0]}}, r"\[space.warmup\] epochs: expected .* both whole numbers"),
        ({"plateau": {"patience": [-1, 2]}}, r"\[space.plateau\] patience: expected whole numbers 0 <= low"),
        (
            {"cosine_restarts": {"T_mult": [4]}},
            r"\[space.cosine_restarts\] T_mult: 4 is not accepted; choose from: 1",
        ),
    ],
)
def test_errors_name_file_key_and_what_is_accepted(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_table(table, "t.toml")


def test_spec_types() -> None:
    space = SearchSpace.from_table({}, "t.toml")
    assert isinstance(space.lr, FloatRange) and space.lr.log
    assert isinstance(space.warmup["epochs"], IntRange)
    assert isinstance(space.optimizers["sgd"]["nesterov"], Choice)

"""Typed parameter ranges: study-file overrides, their errors, and how Optuna samples them."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from lrsearch.errors import ConfigError
from lrsearch.strategy.params import Choice, FloatRange, IntRange

optuna.logging.set_verbosity(optuna.logging.WARNING)

LOG = FloatRange(1e-3, 0.5, log=True, minimum=1e-6, maximum=1.0)
LINEAR = FloatRange(0.0, 0.9, minimum=0.0, maximum=0.99)
INT = IntRange(1, 5, minimum=1, maximum=10)
CHOICE = Choice((1, 2), allowed=(1, 2, 3))


def trials(n: int, seed: int = 0) -> list[optuna.Trial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.ask() for _ in range(n)]


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        (LOG, [0.01, 0.1], FloatRange(0.01, 0.1, True, 1e-6, 1.0)),
        (LOG, 0.2, FloatRange(0.2, 0.2, True, 1e-6, 1.0)),
        (LOG, [1, 1], FloatRange(1.0, 1.0, True, 1e-6, 1.0)),
        (LINEAR, [0, 0.99], FloatRange(0.0, 0.99, False, 0.0, 0.99)),
        (INT, [2, 10], IntRange(2, 10, 1, 10)),
        (INT, 3, IntRange(3, 3, 1, 10)),
        (CHOICE, [3, 1, 3], Choice((3, 1), (1, 2, 3))),
        (CHOICE, 2, Choice((2,), (1, 2, 3))),
    ],
)
def test_override(spec: Any, value: Any, expected: Any) -> None:
    overridden = spec.override(value, "f.toml: [space.x] y")
    assert overridden == expected
    assert spec.override(overridden.as_toml(), "f.toml: [space.x] y") == overridden


def test_float_override_keeps_floats() -> None:
    overridden = LOG.override([1, 1], "w")
    assert type(overridden.low) is float and type(overridden.high) is float


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (LOG, [0.1, 0.01], "w: low 0.1 is greater than high 0.01; write [low, high]"),
        (
            LOG,
            [0.0, 0.1],
            "w: expected 1e-06 <= low <= high <= 1 with low > 0 (sampled on a log scale), got [0, 0.1]",
        ),
        (
            LOG,
            [1e-7, 0.1],
            "w: expected 1e-06 <= low <= high <= 1 with low > 0 (sampled on a log scale), got [1e-07, 0.1]",
        ),
        (
            LOG,
            [0.1, 2],
            "w: expected 1e-06 <= low <= high <= 1 with low > 0 (sampled on a log scale), got [0.1, 2]",
        ),
        (LINEAR, [-0.1, 0.5], "w: expected 0 <= low <= high <= 0.99, got [-0.1, 0.5]"),
        (
            FloatRange(0.0, 1.0, log=True),
            [0.0, 1.0],
            "w: expected -inf <= low <= high <= inf with low > 0 (sampled on a log scale), got [0, 1]",
        ),
        (LOG, [0.1, math.inf], "w: bounds must be finite, got [0.1, inf]"),
        (LOG, math.nan, "w: bounds must be finite, got nan"),
        (LOG, [0.1], "w: expected [low, high] or a single value, both numbers; got [0.1]"),
        (
            LOG,
            [0.1, 0.2, 0.3],
            "w: expected [low, high] or a single value, both numbers; got [0.1, 0.2, 0.3]",
        ),
        (LOG, "0.1", 'w: expected [low, high] or a single value, both numbers; got "0.1"'),
        (LOG, [True, 0.5], "w: expected [low, high] or a single value, both numbers; got [True, 0.5]"),
        (LOG, {"low": 0.1}, "w: expected [low, high] or a single value, both numbers; got {'low': 0.1}"),
        (INT, [1.0, 3], "w: expected [low, high] or a single value, both whole numbers; got [1.0, 3]"),
        (INT, True, "w: expected [low, high] or a single value, both whole numbers; got true"),
        (INT, [0, 3], "w: expected whole numbers 1 <= low <= high <= 10, got [0, 3]"),
        (INT, [2, 11], "w: expected whole numbers 1 <= low <= high <= 10, got [2, 11]"),
        (INT, [4, 2], "w: low 4 is greater than high 2; write [low, high]"),
        (CHOICE, [], "w: the list is empty; give one or more of: 1, 2, 3"),
        (CHOICE, [4], "w: 4 is not accepted; choose from: 1, 2, 3"),
        (CHOICE, [1.0], "w: 1.0 is not accepted; choose from: 1, 2, 3"),
        (CHOICE, ["1"], 'w: "1" is not accepted; choose from: 1, 2, 3'),
        (Choice((False,), (False, True)), [0], "w: 0 is not accepted; choose from: false, true"),
        (Choice((False,), (False, True)), "yes", 'w: "yes" is not accepted; choose from: false, true'),
        (Choice(("a",), ("a", "b")), [["a"]], 'w: [\'a\'] is not accepted; choose from: "a", "b"'),
    ],
)
def test_override_errors(spec: Any, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec.override(value, "w")
    assert str(info.value) == message


def test_float_suggest_within_bounds_and_log_scale() -> None:
    values = [LOG.suggest(t, "x") for t in trials(200)]
    assert all(1e-3 <= v <= 0.5 for v in values)
    # Log-uniform: about half the draws lie below the geometric mean; a uniform draw gives far fewer.
    below = sum(v < math.sqrt(1e-3 * 0.5) for v in values)
    assert 70 < below < 130
    linear = [LINEAR.suggest(t, "x") for t in trials(200)]
    assert all(0.0 <= v <= 0.9 for v in linear)
    assert sum(v < math.sqrt(1e-3 * 0.5) for v in linear) < 20


def test_fixed_values_are_suggested_as_themselves() -> None:
    (trial,) = trials(1)
    assert FloatRange(0.3, 0.3).suggest(trial, "a") == 0.3
    assert IntRange(4, 4).suggest(trial, "b") == 4
    assert Choice((True,), (False, True)).suggest(trial, "c") is True
    assert trial.params == {"a": 0.3, "b": 4, "c": True}


def test_int_suggest_and_cap() -> None:
    spec = IntRange(0, 5)
    assert {spec.suggest(t, "n") for t in trials(100)} == set(range(6))
    assert {spec.suggest(t, "n", cap=2) for t in trials(100)} == {0, 1, 2}
    assert {spec.suggest(t, "n", cap=9) for t in trials(100)} == set(range(6))
    # The cap never goes below `low`.
    assert {IntRange(2, 5).suggest(t, "n", cap=0) for t in trials(10)} == {2}


def test_choice_suggest() -> None:
    assert {CHOICE.suggest(t, "c") for t in trials(50)} == {1, 2}


def test_as_toml() -> None:
    assert LOG.as_toml() == [1e-3, 0.5]
    assert INT.as_toml() == [1, 5]
    assert CHOICE.as_toml() == [1, 2]

"""Typed parameter ranges: their defaults, the study-file values that override them, and how Optuna samples them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class FloatRange:
    """A float sampled uniformly (or log-uniformly) in [low, high], inside hard limits [minimum, maximum]."""

    low: float
    high: float
    log: bool = False
    minimum: float = -math.inf
    maximum: float = math.inf

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def override(self, value: object, where: str) -> FloatRange:
        low, high = _bounds(value, where, (int, float), "numbers")
        low, high = float(low), float(high)
        if not (self.minimum <= low <= high <= self.maximum) or (self.log and low <= 0):
            raise ConfigError(
                f"{where}: expected {self.minimum:g} <= low <= high <= {self.maximum:g}"
                + (" with low > 0 (sampled on a log scale)" if self.log else "")
                + f", got [{low:g}, {high:g}]"
            )
        return FloatRange(low, high, self.log, self.minimum, self.maximum)

    def as_toml(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class IntRange:
    """An integer sampled uniformly in [low, high], inside hard limits [minimum, maximum]."""

    low: int
    high: int
    minimum: int = 0
    maximum: int = 1_000_000

    def suggest(self, trial: optuna.Trial, name: str, *, cap: int | None = None) -> int:
        high = self.high if cap is None else max(self.low, min(self.high, cap))
        return trial.suggest_int(name, self.low, high)

    def override(self, value: object, where: str) -> IntRange:
        low, high = _bounds(value, where, (int,), "whole numbers")
        if not (self.minimum <= low <= high <= self.maximum):
            raise ConfigError(
                f"{where}: expected whole numbers {self.minimum} <= low <= high <= {self.maximum}, got [{low}, {high}]"
            )
        return IntRange(int(low), int(high), self.minimum, self.maximum)

    def as_toml(self) -> list[int]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Choice:
    """One of `options`, which must be a non-empty subset of `allowed`."""

    options: tuple[Any, ...]
    allowed: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.options)

    def override(self, value: object, where: str) -> Choice:
        values = value if isinstance(value, list) else [value]
        accepted = ", ".join(map(_show, self.allowed))
        if not values:
            raise ConfigError(f"{where}: the list is empty; give one or more of: {accepted}")
        for item in values:
            if not any(type(item) is type(a) and item == a for a in self.allowed):
                raise ConfigError(f"{where}: {_show(item)} is not accepted; choose from: {accepted}")
        return Choice(tuple(dict.fromkeys(values)), self.allowed)

    def as_toml(self) -> list[Any]:
        return list(self.options)


ParamSpec = FloatRange | IntRange | Choice


def _bounds(value: object, where: str, kinds: tuple[type, ...], noun: str) -> tuple[Any, Any]:
    """A scalar fixes the value; a two-item list [low, high] is a range."""
    items: list[Any] = value if isinstance(value, list) else [value, value]
    if len(items) != 2 or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"{where}: expected [low, high] or a single value, both {noun}; got {_show(value)}")
    if not all(math.isfinite(v) for v in items):
        raise ConfigError(f"{where}: bounds must be finite, got {_show(value)}")
    if items[0] > items[1]:
        raise ConfigError(f"{where}: low {items[0]} is greater than high {items[1]}; write [low, high]")
    return items[0], items[1]


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)

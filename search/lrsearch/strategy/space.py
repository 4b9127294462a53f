"""The conditional search space: optimizer and scheduler family first, then only that family's parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrsearch.errors import ConfigError
from lrsearch.strategy.optimizers import OPTIMIZERS
from lrsearch.strategy.params import Choice, FloatRange, IntRange, ParamSpec
from lrsearch.strategy.schedulers import SCHEDULERS, WARMUP_PARAMS
from lrsearch.strategy.strategy import LRStrategy

if TYPE_CHECKING:
    import optuna

DEFAULT_LR = FloatRange(1e-4, 1.0, log=True, minimum=1e-8, maximum=100.0)
Params = Mapping[str, ParamSpec]


@dataclass(frozen=True)
class SearchSpace:
    optimizers: Mapping[str, Params]  # the families allowed, each with its parameter ranges
    schedulers: Mapping[str, Params]
    lr: FloatRange
    warmup: Params

    def sample(self, trial: optuna.Trial, epochs: int) -> LRStrategy:
        optimizer = trial.suggest_categorical("optimizer", list(self.optimizers))
        scheduler = trial.suggest_categorical("scheduler", list(self.schedulers))
        lr = self.lr.suggest(trial, "lr")
        optimizer_params = _suggest_all(trial, optimizer, self.optimizers[optimizer], OPTIMIZERS[optimizer].conditions)
        scheduler_params = _suggest_all(trial, scheduler, self.schedulers[scheduler], {})
        warmup_range = self.check_epochs(epochs, "search space")
        # At least one epoch is left for the scheduler itself.
        warmup_epochs = warmup_range.suggest(trial, "warmup.epochs", cap=epochs - 1)
        start_factor = self.warmup["start_factor"].suggest(trial, "warmup.start_factor") if warmup_epochs else 1.0
        return LRStrategy(
            optimizer=optimizer,
            lr=lr,
            scheduler=scheduler,
            epochs=epochs,
            optimizer_params=optimizer_params,
            scheduler_params=scheduler_params,
            warmup_epochs=warmup_epochs,
            warmup_start_factor=start_factor,
        )

    def check_epochs(self, epochs: int, where: str) -> IntRange:
        """The warmup range, checked to leave at least one of `epochs` epochs to the scheduler."""
        warmup_range = self.warmup["epochs"]
        assert isinstance(warmup_range, IntRange)
        if warmup_range.low > epochs - 1:
            raise ConfigError(
                f"{where}: [space.warmup] epochs: a warmup of {warmup_range.low} or more epochs leaves none "
                f"of the {epochs} epochs to the scheduler; use low <= {epochs - 1} (epochs - 1)"
            )
        return warmup_range

    def to_table(self) -> dict[str, Any]:
        """The space as a study file's [space] table, every range written out."""
        table: dict[str, Any] = {
            "optimizers": list(self.optimizers),
            "schedulers": list(self.schedulers),
            "lr": self.lr.as_toml(),
        }
        for name, params in {**self.optimizers, **self.schedulers, "warmup": self.warmup}.items():
            if params:
                table[name] = {key: spec.as_toml() for key, spec in params.items()}
        return table

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> SearchSpace:
        """Parse a study file's [space] table; `where` names the file for error messages."""
        known = {"optimizers", "schedulers", "lr", "warmup", *OPTIMIZERS, *SCHEDULERS}
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"{where}: [space] unknown key '{key}'; accepted: optimizers, schedulers, lr, warmup, "
                    f"or a family's table: {', '.join([*OPTIMIZERS, *SCHEDULERS])}"
                )
        optimizers = _family_list(table, "optimizers", OPTIMIZERS, where)
        schedulers = _family_list(table, "schedulers", SCHEDULERS, where)
        lr = DEFAULT_LR.override(table["lr"], f"{where}: [space] lr") if "lr" in table else DEFAULT_LR
        # Every family table is checked, also of a family not chosen: a typo there is still an error.
        params = {name: _params(table, name, family.params, where) for name, family in OPTIMIZERS.items()}
        params |= {name: _params(table, name, family.params, where) for name, family in SCHEDULERS.items()}
        return cls(
            optimizers={name: params[name] for name in optimizers},
            schedulers={name: params[name] for name in schedulers},
            lr=lr,
            warmup=_params(table, "warmup", WARMUP_PARAMS, where),
        )


def _suggest_all(trial: optuna.Trial, family: str, params: Params, conditions: Mapping[str, Any]) -> dict[str, Any]:
    sampled: dict[str, Any] = {}
    for key, spec in params.items():
        if key in conditions and not conditions[key](sampled):
            continue
        sampled[key] = spec.suggest(trial, f"{family}.{key}")
    return sampled


def _family_list(table: Mapping[str, Any], key: str, registry: Mapping[str, Any], where: str) -> list[str]:
    accepted = ", ".join(registry)
    names = table.get(key, list(registry))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: [space] {key} must be a list of names from: {accepted}")
    if not names:
        raise ConfigError(f"{where}: [space] {key} is empty; give one or more of: {accepted}")
    for name in names:
        if name not in registry:
            raise ConfigError(f"{where}: [space] unknown {key[:-1]} '{name}'; choose from: {accepted}")
    return list(dict.fromkeys(names))


def _params(table: Mapping[str, Any], family: str, defaults: Params, where: str) -> dict[str, ParamSpec]:
    overrides = table.get(family, {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: [space] {family} must be a table ([space.{family}]), got {overrides!r}")
    for key in overrides:
        if key not in defaults:
            accepted = ", ".join(defaults) or "none (this family has no parameters)"
            raise ConfigError(f"{where}: [space.{family}] unknown key '{key}'; accepted: {accepted}")
    return {
        key: spec.override(overrides[key], f"{where}: [space.{family}] {key}") if key in overrides else spec
        for key, spec in defaults.items()
    }


__all__ = ["SearchSpace", "Choice", "FloatRange", "IntRange"]

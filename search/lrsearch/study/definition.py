"""A study definition: read from a TOML study file, every key checked, stored in the study as JSON.

The parser is strict (an unknown key, a wrong type, an empty list or low > high is an error naming the file, the
key and what is accepted), and it is the only parser: a stored definition is read back through it.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lrsearch.errors import ConfigError
from lrsearch.strategy.space import SearchSpace
from lrsearch.study.targets import TRAIN_ACCURACY, Targets

SAMPLERS: dict[str, dict[str, type]] = {"tpe": {"n_startup_trials": int}, "random": {}}
PRUNERS: dict[str, dict[str, type]] = {
    "feasible": {"n_startup_trials": int, "n_warmup_steps": int, "percentile": float},
    "median": {"n_startup_trials": int, "n_warmup_steps": int},
    "halving": {"min_resource": int, "reduction_factor": int},
    "hyperband": {"min_resource": int, "reduction_factor": int},
    "none": {},
}
# Options a sampler or pruner gets when the study file does not set them.
OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpe": {"n_startup_trials": 10},
    "feasible": {"n_startup_trials": 5, "n_warmup_steps": 2, "percentile": 25.0},
    "median": {"n_startup_trials": 5, "n_warmup_steps": 2},
}
_OPTION_CHECKS: dict[str, tuple[Any, str]] = {"percentile": (lambda v: 0 <= v <= 100, "use a value in [0, 100]")}


@dataclass(frozen=True)
class Component:
    """A sampler or pruner by name, with its options."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyDefinition:
    name: str
    objective: str
    space: SearchSpace
    objective_options: Mapping[str, Any] = field(default_factory=dict)
    trials: int = 100
    epochs: int = 12
    seed: int = 0
    targets: Targets = Targets()
    sampler: Component = Component("tpe", {"n_startup_trials": 10})
    pruner: Component = Component("feasible", {"n_startup_trials": 5, "n_warmup_steps": 2, "percentile": 25.0})

    def to_table(self) -> dict[str, Any]:
        """The definition as a complete study-file table (every default written out)."""
        return {
            "study": {"name": self.name, "trials": self.trials, "epochs": self.epochs, "seed": self.seed},
            "objective": {"name": self.objective, **self.objective_options},
            "targets": {
                "min_val": self.targets.min_val,
                "max_train": self.targets.max_train,
                "train_accuracy": self.targets.train_accuracy,
                "overfit_patience": self.targets.overfit_patience,
            },
            "sampler": {"name": self.sampler.name, **self.sampler.options},
            "pruner": {"name": self.pruner.name, **self.pruner.options},
            "space": self.space.to_table(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_table(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> StudyDefinition:
        return parse_table(json.loads(text), where)

    def differences(self, other: StudyDefinition) -> list[str]:
        """The keys (as `section.key`) where two definitions differ, ignoring the trial budget."""
        mine, theirs = _flatten(self.to_table()), _flatten(other.to_table())
        return sorted(k for k in mine.keys() | theirs.keys() if k != "study.trials" and mine.get(k) != theirs.get(k))

    def with_overrides(self, **overrides: Any) -> StudyDefinition:
        """Apply command-line overrides (None means not given), checked like the file's keys."""
        given = {k: v for k, v in overrides.items() if v is not None}
        table = self.to_table()
        sections = {
            "trials": "study",
            "epochs": "study",
            "seed": "study",
            "name": "study",
            "min_val": "targets",
            "max_train": "targets",
        }
        for key, value in given.items():
            if key in ("sampler", "pruner"):
                # A new sampler or pruner comes with its own default options.
                table[key] = {"name": value}
            else:
                table[sections[key]][key] = value
        return parse_table(table, "command line")


def default_study_file() -> Path:
    """studies/mnist.toml: from the installed package, or from the source tree in an editable install."""
    packaged = resources.files("lrsearch") / "studies" / "mnist.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "studies" / "mnist.toml"


def load_study_file(path: Path | str) -> StudyDefinition:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: study file not found; give an existing .toml file (see studies/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the study file: {e}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_table(table, str(path))


class _Section:
    """One table of a study file, read key by key; leftover keys are errors."""

    def __init__(self, table: Mapping[str, Any], name: str, where: str):
        value = table.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table, got {value!r}")
        self.values, self.name, self.where = dict(value), name, where

    def take(self, key: str, kind: type, default: Any, *, check: Any = None, accepted: str = "") -> Any:
        value = self.values.pop(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        label = f"{self.where}: [{self.name}] {key}"
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ConfigError(f"{label} must be {_NOUNS[kind]}, got {value!r}")
        if check is not None and not check(value):
            raise ConfigError(f"{label}: {value!r} is not accepted; {accepted}")
        return value

    def rest(self) -> dict[str, Any]:
        rest, self.values = self.values, {}
        return rest

    def finish(self, accepted: list[str]) -> None:
        if self.values:
            key = next(iter(self.values))
            raise ConfigError(
                f"{self.where}: [{self.name}] unknown key '{key}'; accepted: {', '.join(accepted) or 'none'}"
            )


_NOUNS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _component(
    table: Mapping[str, Any], section: str, registry: Mapping[str, Mapping[str, type]], default: Component, where: str
) -> Component:
    reader = _Section(table, section, where)
    name = reader.take(
        "name", str, default.name, check=registry.__contains__, accepted=f"choose from: {', '.join(registry)}"
    )
    defaults = OPTION_DEFAULTS.get(name, {})
    options: dict[str, Any] = {}
    for key, kind in registry[name].items():
        if key in reader.values or key in defaults:
            check, accepted = _OPTION_CHECKS.get(key, (lambda v: v >= 0, "it must be >= 0"))
            options[key] = reader.take(key, kind, defaults.get(key), check=check, accepted=accepted)
    reader.finish(["name", *registry[name]])
    return Component(name, options)


def parse_table(table: Mapping[str, Any], where: str) -> StudyDefinition:
    """Turn a study file's tables into a checked StudyDefinition."""
    sections = ["study", "objective", "targets", "sampler", "pruner", "space"]
    for key in table:
        if key not in sections:
            raise ConfigError(f"{where}: unknown section [{key}]; accepted: {', '.join(f'[{s}]' for s in sections)}")
    base = StudyDefinition(name="", objective="", space=SearchSpace.from_table({}, where))
    positive: dict[str, Any] = {"check": lambda v: v >= 1, "accepted": "it must be 1 or more"}

    study = _Section(table, "study", where)
    name = study.take("name", str, "lrsearch", check=lambda v: v.strip() != "", accepted="give a non-empty name")
    trials = study.take("trials", int, base.trials, **positive)
    epochs = study.take("epochs", int, base.epochs, **positive)
    seed = study.take("seed", int, base.seed, check=lambda v: 0 <= v < 2**32, accepted="use 0 <= seed < 2**32")
    study.finish(["name", "trials", "epochs", "seed"])

    objective = _Section(table, "objective", where)
    objective_name = objective.take(
        "name", str, "mnist_mlp", check=lambda v: v.strip() != "", accepted="give a registered name or module:attr"
    )
    objective_options = objective.rest()
    for key, value in objective_options.items():
        if not _is_json(value):
            raise ConfigError(
                f"{where}: [objective] {key}: {value!r} is not accepted; use a string, number, true/false, "
                "or a list or table of them (not nan, nor a date or time: the study could not store it)"
            )

    targets = _Section(table, "targets", where)
    fraction: dict[str, Any] = {
        "check": lambda v: 0.0 <= v <= 1.0 and not math.isnan(v),
        "accepted": "use a value in [0, 1]",
    }
    parsed_targets = Targets(
        min_val=targets.take("min_val", float, Targets.min_val, **fraction),
        max_train=targets.take("max_train", float, Targets.max_train, **fraction),
        train_accuracy=targets.take(
            "train_accuracy",
            str,
            Targets.train_accuracy,
            check=TRAIN_ACCURACY.__contains__,
            accepted=f"choose from: {', '.join(TRAIN_ACCURACY)}",
        ),
        overfit_patience=targets.take(
            "overfit_patience",
            int,
            Targets.overfit_patience,
            check=lambda v: v >= 0,
            accepted="it must be 0 (never stop) or more",
        ),
    )
    targets.finish(["min_val", "max_train", "train_accuracy", "overfit_patience"])

    space_table = table.get("space", {})
    if not isinstance(space_table, dict):
        raise ConfigError(f"{where}: [space] must be a table, got {space_table!r}")

    space = SearchSpace.from_table(space_table, where)
    space.check_epochs(epochs, where)
    return StudyDefinition(
        name=name,
        objective=objective_name,
        objective_options=objective_options,
        trials=trials,
        epochs=epochs,
        seed=seed,
        targets=parsed_targets,
        sampler=_component(table, "sampler", SAMPLERS, base.sampler, where),
        pruner=_component(table, "pruner", PRUNERS, base.pruner, where),
        space=space,
    )


def _is_json(value: Any) -> bool:
    """Whether the study can store this objective option as JSON and read it back unchanged."""
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return isinstance(value, (str, int, bool)) or (isinstance(value, float) and not math.isnan(value))


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


__all__ = ["StudyDefinition", "Targets", "Component", "load_study_file", "parse_table", "default_study_file"]

"""Study files: the shipped ones load, definitions round-trip through JSON, every mistake is a clear error."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, write_study
from lrsearch.errors import ConfigError
from lrsearch.strategy.optimizers import OPTIMIZERS
from lrsearch.strategy.params import FloatRange
from lrsearch.strategy.schedulers import SCHEDULERS, WARMUP_PARAMS
from lrsearch.strategy.space import SearchSpace
from lrsearch.study.definition import (
    PRUNERS,
    SAMPLERS,
    Component,
    StudyDefinition,
    Targets,
    default_study_file,
    load_study_file,
    parse_table,
)

STUDIES = REPO / "studies"


def load(tmp_path: Path, body: str) -> StudyDefinition:
    path = tmp_path / "s.toml"
    path.write_text(body, encoding="utf-8")
    return load_study_file(path)


def error(tmp_path: Path, body: str) -> str:
    """The message of the ConfigError a study file with this body gives; it always names the file."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 's.toml'}: "), message
    return message


# ----- the shipped study files -----


def test_mnist_study_loads() -> None:
    definition = load_study_file(STUDIES / "mnist.toml")
    assert (definition.name, definition.trials, definition.epochs, definition.seed) == (
        "mnist-mlp",
        100,
        12,
        0,
    )
    assert definition.objective == "mnist_mlp" and definition.objective_options == {"validation": "test"}
    assert definition.targets == Targets(0.90, 0.95, "eval", 2)
    assert definition.sampler == Component("tpe", {"n_startup_trials": 10})
    assert definition.pruner == Component("feasible", {"n_startup_trials": 5, "n_warmup_steps": 2, "percentile": 25.0})
    assert list(definition.space.optimizers) == ["sgd", "adam", "adamw", "rmsprop", "adagrad"]
    assert len(definition.space.schedulers) == 10
    assert definition.space.lr == FloatRange(1e-4, 1.0, log=True, minimum=1e-8, maximum=100.0)
    assert default_study_file().resolve() == (STUDIES / "mnist.toml").resolve()


def test_smoke_study_loads() -> None:
    definition = load_study_file(STUDIES / "smoke.toml")
    assert (definition.name, definition.trials, definition.epochs) == ("mnist-smoke", 4, 2)
    assert definition.objective_options == {"train_samples": 6000}
    assert definition.pruner == Component("none", {})
    assert list(definition.space.optimizers) == ["sgd", "adam"]
    assert list(definition.space.schedulers) == ["constant", "cosine", "onecycle", "plateau"]
    assert (definition.space.lr.low, definition.space.lr.high) == (1e-3, 0.1)


def test_empty_file_takes_every_default(tmp_path: Path) -> None:
    definition = load(tmp_path, "")
    assert definition == StudyDefinition(
        name="lrsearch", objective="mnist_mlp", space=SearchSpace.from_table({}, "x"), objective_options={}
    )


def test_write_study_helper_file_loads(tmp_path: Path) -> None:
    definition = load_study_file(write_study(tmp_path, "[pruner]\nname = 'halving'\n", trials=7, epochs=3))
    assert definition.objective == "synthetic_objective:Synthetic"
    assert (definition.name, definition.trials, definition.epochs) == ("synthetic", 7, 3)
    assert definition.pruner == Component("halving", {})


# ----- JSON, overrides, differences -----


@pytest.mark.parametrize("name", ["mnist.toml", "smoke.toml"])
def test_json_round_trip(name: str) -> None:
    definition = load_study_file(STUDIES / name)
    text = definition.to_json()
    again = StudyDefinition.from_json(text, "stored")
    assert again == definition
    assert again.to_json() == text
    assert definition.differences(again) == []


def test_json_round_trip_of_narrowed_space(tmp_path: Path) -> None:
    definition = load(
        tmp_path,
        """
[objective]
name = "pkg.mod:Obj"
nested = {a = [1, 2.5, "x"], b = true}
[sampler]
name = "random"
[pruner]
name = "hyperband"
min_resource = 2
[space]
optimizers = ["adagrad"]
schedulers = ["cyclic", "multistep"]
lr = 0.01
[space.cyclic]
mode = "triangular"
ratio = [3, 9]
[space.warmup]
epochs = [1, 1]
""",
    )
    assert definition.space.schedulers["cyclic"]["ratio"] == FloatRange(3.0, 9.0, log=True, minimum=1.0)
    again = StudyDefinition.from_json(definition.to_json(), "stored")
    assert again == definition
    assert again.objective_options == {"nested": {"a": [1, 2.5, "x"], "b": True}}
    assert again.pruner == Component("hyperband", {"min_resource": 2})


def test_with_overrides_applies_and_validates() -> None:
    base = load_study_file(STUDIES / "mnist.toml")
    changed = base.with_overrides(trials=7, epochs=None, seed=3, min_val=0.8, max_train=1, sampler="random")
    assert (changed.trials, changed.epochs, changed.seed) == (7, 12, 3)
    assert changed.targets == Targets(0.8, 1.0, "eval", 2)
    assert changed.sampler == Component("random", {})
    assert changed.pruner == base.pruner
    assert changed.space == base.space
    assert base.with_overrides(pruner="median").pruner == Component(
        "median", {"n_startup_trials": 5, "n_warmup_steps": 2}
    )
    assert base.with_overrides() == base

    with pytest.raises(ConfigError, match=r"^command line: \[study\] trials: 0 is not accepted; it must be 1 or more"):
        base.with_overrides(trials=0)
    with pytest.raises(ConfigError, match=r"^command line: \[targets\] min_val: 1.5 is not accepted; use a value in"):
        base.with_overrides(min_val=1.5)
    with pytest.raises(
        ConfigError,
        match=r"^command line: \[pruner\] name: 'asha' is not accepted; choose from: feasible, med",
    ):
        base.with_overrides(pruner="asha")
    with pytest.raises(ConfigError, match=r"^command line: \[study\] name: '  ' is not accepted"):
        base.with_overrides(name="  ")


def test_with_overrides_epochs_checks_the_warmup(tmp_path: Path) -> None:
    definition = load(tmp_path, "[space.warmup]\nepochs = [1, 2]\n")
    assert definition.with_overrides(epochs=2).epochs == 2
    with pytest.raises(ConfigError, match=r"command line: \[space.warmup\] epochs: .*use low <= 0"):
        definition.with_overrides(epochs=1)


def test_differences_ignores_trials() -> None:
    base = load_study_file(STUDIES / "mnist.toml")
    assert base.differences(base.with_overrides(trials=5)) == []
    other = base.with_overrides(trials=5, epochs=3, max_train=0.99, pruner="none")
    assert other.differences(base) == [
        "pruner.n_startup_trials",
        "pruner.n_warmup_steps",
        "pruner.name",
        "pruner.percentile",
        "study.epochs",
        "targets.max_train",
    ]


def test_differences_sees_the_space(tmp_path: Path) -> None:
    a = load(tmp_path, "[space]\nlr = [0.001, 0.1]\n")
    b = load(tmp_path, "[space]\nlr = [0.001, 0.2]\n[space.step]\ngamma = 0.5\n")
    assert a.differences(b) == ["space.lr", "space.step.gamma"]


# ----- errors: each names the file, the key and what is accepted -----


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: study file not found; give an existing"):
        load_study_file(path)


def test_not_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in error(tmp_path, "[study\nname = 1\n")


def test_a_folder_is_not_a_study_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}: cannot read the study file"):
        load_study_file(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"[study]\nname = '\xff'\n")
    with pytest.raises(ConfigError, match="cannot read the study file"):
        load_study_file(path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "[studdy]\n",
            "unknown section [studdy]; accepted: [study], [objective], [targets], [sampler], [pruner], ",
        ),
        ("[study]\ntrial = 3\n", "[study] unknown key 'trial'; accepted: name, trials, epochs, seed"),
        (
            "[targets]\nmin_acc = 0.9\n",
            "[targets] unknown key 'min_acc'; accepted: min_val, max_train, train_ac",
        ),
        ("[sampler]\nseed = 1\n", "[sampler] unknown key 'seed'; accepted: name, n_startup_trials"),
        (
            "[sampler]\nname = 'random'\nn_startup_trials = 3\n",
            "[sampler] unknown key 'n_startup_trials'; accepted: name",
        ),
        (
            "[pruner]\nname = 'none'\nn_warmup_steps = 2\n",
            "[pruner] unknown key 'n_warmup_steps'; accepted: name",
        ),
        ("[pruner]\npercentile = 150\n", "[pruner] percentile: 150.0 is not accepted; use a value in [0, 100]"),
        (
            "[pruner]\nname = 'halving'\nwarmup = 1\n",
            "[pruner] unknown key 'warmup'; accepted: name, min_resource, redu",
        ),
        (
            "[space]\nlrs = [0.1, 1]\n",
            "[space] unknown key 'lrs'; accepted: optimizers, schedulers, lr, warmup, or",
        ),
        ("[space.sgd]\nmomentun = 0.9\n", "[space.sgd] unknown key 'momentun'; accepted: momentum, nesterov"),
        (
            "[space.warmup]\nstart = 0.1\n",
            "[space.warmup] unknown key 'start'; accepted: epochs, start_factor",
        ),
        ("[space.cosine]\nT_max = 3\n", "[space.cosine] unknown key 'T_max'; accepted: min_factor"),
        (
            "[space.constant]\nlr = 1\n",
            "[space.constant] unknown key 'lr'; accepted: none (this family has no param",
        ),
        ("study = 3\n", "[study] must be a table, got 3"),
        ("space = [1]\n", "[space] must be a table, got [1]"),
        ("[space]\nsgd = 0.5\n", "[space] sgd must be a table ([space.sgd]), got 0.5"),
        ("[study]\ntrials = '10'\n", "[study] trials must be a whole number, got '10'"),
        ("[study]\ntrials = true\n", "[study] trials must be a whole number, got True"),
        ("[study]\nepochs = 2.0\n", "[study] epochs must be a whole number, got 2.0"),
        ("[study]\nseed = 1.5\n", "[study] seed must be a whole number, got 1.5"),
        ("[study]\nname = 3\n", "[study] name must be a string, got 3"),
        ("[study]\nseed = -1\n", "[study] seed: -1 is not accepted; use 0 <= seed < 2**32"),
        ("[study]\nepochs = 0\n", "[study] epochs: 0 is not accepted; it must be 1 or more"),
        ("[targets]\nmin_val = 'high'\n", "[targets] min_val must be a number, got 'high'"),
        ("[targets]\nmax_train = false\n", "[targets] max_train must be a number, got False"),
        ("[targets]\nmax_train = 95\n", "[targets] max_train: 95.0 is not accepted; use a value in [0, 1]"),
        ("[targets]\nmin_val = nan\n", "[targets] min_val: nan is not accepted; use a value in [0, 1]"),
        (
            "[targets]\ntrain_accuracy = 'eager'\n",
            "[targets] train_accuracy: 'eager' is not accepted; choose from: e",
        ),
        (
            "[targets]\noverfit_patience = -1\n",
            "[targets] overfit_patience: -1 is not accepted; it must be 0 (never",
        ),
        ("[targets]\noverfit_patience = 1.0\n", "[targets] overfit_patience must be a whole number, got 1.0"),
        (
            "[objective]\nname = ''\n",
            "[objective] name: '' is not accepted; give a registered name or module:attr",
        ),
        ("[objective]\nname = 5\n", "[objective] name must be a string, got 5"),
        (
            "[objective]\nsince = 2024-01-01\n",
            "[objective] since: datetime.date(2024, 1, 1) is not accepted; use a",
        ),
        (
            "[objective]\nx = {y = [1, nan]}\n",
            "[objective] x: {'y': [1, nan]} is not accepted; use a string, num",
        ),
        (
            "[objective]\nat = 07:32:00\n",
            "[objective] at: datetime.time(7, 32) is not accepted; use a string, num",
        ),
        (
            "[space]\noptimizers = []\n",
            "[space] optimizers is empty; give one or more of: sgd, adam, adamw, rmsp",
        ),
        (
            "[space]\nschedulers = []\n",
            "[space] schedulers is empty; give one or more of: constant, step, multi",
        ),
        (
            "[space]\noptimizers = 'sgd'\n",
            "[space] optimizers must be a list of names from: sgd, adam, adamw",
        ),
        (
            "[space]\noptimizers = ['sgd', 'lion']\n",
            "[space] unknown optimizer 'lion'; choose from: sgd, adam, ada",
        ),
        (
            "[space]\nschedulers = ['cosine', 'linear']\n",
            "[space] unknown scheduler 'linear'; choose from: constant, step, multistep, exponential, "
            "cosine, cosine_restarts, onecycle, cyclic, plateau, polynomial",
        ),
        ("[sampler]\nname = 'cmaes'\n", "[sampler] name: 'cmaes' is not accepted; choose from: tpe, random"),
        ("[sampler]\nname = 1\n", "[sampler] name must be a string, got 1"),
        (
            "[sampler]\nn_startup_trials = 'ten'\n",
            "[sampler] n_startup_trials must be a whole number, got 'ten'",
        ),
        (
            "[sampler]\nn_startup_trials = -1\n",
            "[sampler] n_startup_trials: -1 is not accepted; it must be >= 0",
        ),
        (
            "[pruner]\nname = 'asha'\n",
            "[pruner] name: 'asha' is not accepted; choose from: feasible, median, halving, hyper",
        ),
        ("[pruner]\nn_warmup_steps = 1.5\n", "[pruner] n_warmup_steps must be a whole number, got 1.5"),
        ("[space]\nlr = [0.1, 0.001]\n", "[space] lr: low 0.1 is greater than high 0.001; write [low, high]"),
        (
            "[space]\nlr = [0, 0.1]\n",
            "[space] lr: expected 1e-08 <= low <= high <= 100 with low > 0 (sampled on a",
        ),
        ("[space]\nlr = [-1.0, 0.1]\n", "[space] lr: expected 1e-08 <= low <= high <= 100 with low > 0"),
        (
            "[space]\nlr = [1e-4, 1e3]\n",
            "[space] lr: expected 1e-08 <= low <= high <= 100 with low > 0 (sampled on a",
        ),
        ("[space]\nlr = [1e-4, inf]\n", "[space] lr: bounds must be finite, got [0.0001, inf]"),
        (
            "[space]\nlr = [1e-4, 0.1, 1]\n",
            "[space] lr: expected [low, high] or a single value, both numbers; got",
        ),
        (
            "[space]\nlr = ['a', 'b']\n",
            "[space] lr: expected [low, high] or a single value, both numbers; got",
        ),
        ("[space.step]\ngamma = [0.5, 0.1]\n", "[space.step] gamma: low 0.5 is greater than high 0.1"),
        (
            "[space.step]\ngamma = [0.0, 0.5]\n",
            "[space.step] gamma: expected 1e-06 <= low <= high <= 1 with low > 0",
        ),
        (
            "[space.step]\nstep_size = [0, 3]\n",
            "[space.step] step_size: expected whole numbers 1 <= low <= high <= 10",
        ),
        (
            "[space.step]\nstep_size = [1, 2.5]\n",
            "[space.step] step_size: expected [low, high] or a single value, both",
        ),
        (
            "[space.step]\nstep_size = true\n",
            "[space.step] step_size: expected [low, high] or a single value, both w",
        ),
        (
            "[space.sgd]\nmomentum = [0.5, 1.5]\n",
            "[space.sgd] momentum: expected 0 <= low <= high <= 0.999, got [0.5, 1",
        ),
        (
            "[space.multistep]\nfirst = [-0.1, 0.5]\n",
            "[space.multistep] first: expected 0 <= low <= high <= 1, got",
        ),
        (
            "[space.sgd]\nnesterov = ['yes']\n",
            '[space.sgd] nesterov: "yes" is not accepted; choose from: false, true',
        ),
        (
            "[space.sgd]\nnesterov = []\n",
            "[space.sgd] nesterov: the list is empty; give one or more of: false, true",
        ),
        ("[space.sgd]\nnesterov = 1\n", "[space.sgd] nesterov: 1 is not accepted; choose from: false, true"),
        (
            "[space.onecycle]\nanneal_strategy = ['cos', 'exp']\n",
            'anneal_strategy: "exp" is not accepted; choose fr',
        ),
        (
            "[space.cosine_restarts]\nT_mult = [1.0]\n",
            "[space.cosine_restarts] T_mult: 1.0 is not accepted; choose fr",
        ),
        (
            "[space.plateau]\nfactor = 1.0\n",
            "[space.plateau] factor: expected 0.01 <= low <= high <= 0.99, got [1, 1]",
        ),
        (
            "[space.warmup]\nepochs = [-1, 1]\n",
            "[space.warmup] epochs: expected whole numbers 0 <= low <= high <= 1000",
        ),
        (
            "[study]\nepochs = 2\n[space.warmup]\nepochs = [2, 3]\n",
            "[space.warmup] epochs: a warmup of 2 or more epochs leaves none of the 2 epochs to the "
            "scheduler; use low <= 1 (epochs - 1)",
        ),
        (
            "[space.rmsprop]\nalpha = 0.9\n",
            "[space.rmsprop] unknown key 'alpha'; accepted: none (this family has no",
        ),
    ],
)
def test_errors(tmp_path: Path, body: str, expected: str) -> None:
    message = error(tmp_path, body)
    assert expected in message, message


def test_parse_table_errors_name_the_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^study 'x' \(stored definition\): \[study\] trials must be a whole"):
        StudyDefinition.from_json(json.dumps({"study": {"trials": "3"}}), "study 'x' (stored definition)")


# ----- any table: a definition or a ConfigError, never another exception -----

WORDS = [
    "tpe",
    "random",
    "feasible",
    "median",
    "halving",
    "hyperband",
    "none",
    "eval",
    "running",
    "sgd",
    "adam",
    "cosine",
    "step",
    "cyclic",
    "onecycle",
    "plateau",
    "cos",
    "linear",
    "triangular",
    "mnist_mlp",
    "",
]
numbers = (
    st.integers(min_value=-3, max_value=12)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(min_value=-2, max_value=200)
    | st.floats()
    | st.sampled_from([0, 0.0, 1e-9, 1e-4, 0.05, 0.5, 0.95, 1, 1.0, 2**32])
)
leaves = numbers | st.booleans() | st.sampled_from(WORDS) | st.text(max_size=4)
# Arbitrary TOML-like values: nested tables and lists of strings, numbers and booleans.
toml_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
values = leaves | st.lists(leaves, min_size=1, max_size=3) | toml_values


def section(names: list[str], value: st.SearchStrategy[Any] = values) -> st.SearchStrategy[Any]:
    """A table of (mostly) known keys with values of any kind, or sometimes no table at all."""
    known = st.fixed_dictionaries({}, optional={name: value for name in names})
    extra = st.dictionaries(st.sampled_from([*names, "x"]) | st.text(max_size=3), value, max_size=2)
    return known | known | extra | toml_values


space_tables = st.fixed_dictionaries(
    {},
    optional={
        "optimizers": st.lists(st.sampled_from([*OPTIMIZERS, "lion"]), max_size=3) | values,
        "schedulers": st.lists(st.sampled_from([*SCHEDULERS, "linear"]), max_size=3) | values,
        "lr": values,
        "warmup": section(list(WARMUP_PARAMS)),
        **{name: section(list(family.params)) for name in OPTIMIZERS for family in [OPTIMIZERS[name]]},
        **{name: section(list(family.params)) for name in SCHEDULERS for family in [SCHEDULERS[name]]},
    },
) | st.dictionaries(st.text(max_size=4), values, max_size=3)
tables = st.fixed_dictionaries(
    {},
    optional={
        "study": section(["name", "trials", "epochs", "seed"]),
        "objective": section(["name", "validation", "train_samples"]),
        "targets": section(["min_val", "max_train", "train_accuracy", "overfit_patience"]),
        "sampler": section(["name", *SAMPLERS["tpe"]]),
        "pruner": section(["name", *PRUNERS["median"], *PRUNERS["halving"]]),
        "space": space_tables | values,
    },
) | st.dictionaries(st.text(max_size=8), values, max_size=3)

# A complete, valid table (every section, every family's ranges) to change in a few places.
VALID = parse_table({"space": {"warmup": {"epochs": [1, 2]}}}, "valid").to_table()


def _paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for key, value in table.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found += _paths(value, (*prefix, key))
    return found


PATHS = _paths(VALID)


@st.composite
def changed_tables(draw: st.DrawFn) -> dict[str, Any]:
    """The valid table with one to three keys replaced by any value, removed, or joined by an unknown key."""
    table = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = table
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        action = draw(st.sampled_from(["replace", "replace", "item", "delete", "add"]))
        if action == "delete":
            parent.pop(path[-1], None)
        elif action == "add":
            parent[draw(st.sampled_from(WORDS) | st.text(max_size=3))] = draw(values)
        elif action == "item" and isinstance(parent.get(path[-1]), list) and parent[path[-1]]:
            items = parent[path[-1]]
            items[draw(st.integers(min_value=0, max_value=len(items) - 1))] = draw(leaves)
        else:
            parent[path[-1]] = draw(values)
    return table


def parses_or_raises_config_error(table: dict[str, Any]) -> StudyDefinition | None:
    try:
        definition = parse_table(table, "fuzz.toml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml: ")
        return None
    # What parses can be stored and read back as the same definition.
    again = StudyDefinition.from_json(definition.to_json(), "stored")
    assert again == definition and again.to_json() == definition.to_json()
    assert definition.differences(again) == []
    return definition


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables)
def test_any_table_parses_or_raises_config_error(table: dict[str, Any]) -> None:
    parses_or_raises_config_error(table)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space_tables)
def test_any_space_table_parses_or_raises_config_error(space: dict[str, Any]) -> None:
    parses_or_raises_config_error({"space": space})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changed_tables())
def test_a_valid_table_changed_anywhere_parses_or_raises_config_error(table: dict[str, Any]) -> None:
    parses_or_raises_config_error(table)

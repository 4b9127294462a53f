"""Creating, resuming and loading lrsearch studies; the definition lives in the study, so workers need only its name."""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrsearch.errors import ConfigError, StorageError
from lrsearch.store.urls import mask_url
from lrsearch.study.definition import StudyDefinition
from lrsearch.study.record import VOID_ATTR, voided

if TYPE_CHECKING:
    import optuna

DEFINITION_ATTR = "lrsearch.definition"
CREATING_SECONDS = 10.0  # how long a study made by another process may be without its definition


@dataclass(frozen=True)
class Budget:
    finished: int  # complete, pruned, or failed for good (not retried)
    running: int
    waiting: int  # queued retries of trials whose worker died
    total: int

    @property
    def open_slots(self) -> int:
        return self.total - self.finished - self.running - self.waiting

    @property
    def can_start(self) -> bool:
        """A worker may start a trial: a new one in an open slot, or a queued retry while there is room."""
        return self.open_slots > 0 or (self.waiting > 0 and self.finished + self.running < self.total)

    @property
    def done(self) -> bool:
        return self.finished >= self.total and self.running == 0


def create_or_resume(
    storage: optuna.storages.BaseStorage, definition: StudyDefinition, *, compare: bool = True
) -> optuna.Study:
    """Create the study, or resume it: its stored definition must match (only `trials` may change)."""
    import optuna

    try:
        study = optuna.create_study(
            storage=storage, study_name=definition.name, direction="maximize", load_if_exists=False
        )
    except optuna.exceptions.DuplicatedStudyError:
        study, stored = _load_once_defined(storage, definition.name)
        if compare:
            check_resumable(stored, definition)
        if stored.trials != definition.trials:
            study.set_user_attr(DEFINITION_ATTR, stored.with_overrides(trials=definition.trials).to_json())
        return study
    try:
        study.set_user_attr(DEFINITION_ATTR, definition.to_json())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_acc_at_best_feasible_epoch"])
    except BaseException:
        optuna.delete_study(study_name=definition.name, storage=storage)  # no half-made study stays behind
        raise
    return study


def check_resumable(stored: StudyDefinition, definition: StudyDefinition) -> None:
    """The stored study may be resumed with `definition`: they differ in the trial budget at most."""
    conflicts = stored.differences(definition)
    if conflicts:
        raise ConfigError(
            f"study '{definition.name}' already exists with a different definition "
            f"(differs in: {', '.join(conflicts)}); resume it with the same settings, or start a new study "
            "with --study-name"
        )


def load(storage: optuna.storages.BaseStorage, name: str) -> tuple[optuna.Study, StudyDefinition]:
    """An existing lrsearch study, with its definition's sampler and pruner (Optuna does not store them, so each
    process makes them), and its stored definition."""
    import optuna

    from lrsearch.store.batching import sharing_cache

    cached = sharing_cache(storage)
    try:
        study_id = cached.get_study_id_from_name(name)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        known = ", ".join(names) if names else "none yet; create one with lrsearch start"
        raise ConfigError(f"no study named '{name}' in this storage; studies there: {known}") from None
    definition = _stored_definition(name, cached.get_study_user_attrs(study_id).get(DEFINITION_ATTR))
    study = optuna.Study(name, cached, sampler=make_sampler(definition), pruner=make_pruner(definition))
    return study, definition


class _Undefined(StorageError):
    """A study without a stored definition: not made by lrsearch, or being created by another process."""


def _load_once_defined(storage: optuna.storages.BaseStorage, name: str) -> tuple[optuna.Study, StudyDefinition]:
    """`load`, waiting up to CREATING_SECONDS while the study has no definition yet: another process (a Slurm
    array task, a Kubernetes pod, a second `lrsearch create`) made it a moment ago and is storing its definition."""
    deadline = time.monotonic() + CREATING_SECONDS
    while True:
        try:
            return load(storage, name)
        except _Undefined:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _stored_definition(name: str, text: object) -> StudyDefinition:
    if not isinstance(text, str):
        raise _Undefined(f"study '{name}' was not made by lrsearch (it has no stored definition)")
    return _parse_stored(name, text)


@functools.lru_cache(maxsize=8)
def _parse_stored(name: str, text: str) -> StudyDefinition:
    """Parsed once per text: workers and the fleet's parent read the stored definition again and again for its
    budget, which changes only when `start --trials N` resumes the study."""
    return StudyDefinition.from_json(text, f"study '{name}' (stored definition)")


def make_sampler(definition: StudyDefinition) -> optuna.samplers.BaseSampler:
    import optuna

    options = dict(definition.sampler.options)
    if definition.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=None)
    with warnings.catch_warnings():
        # group=True is marked experimental; it splits the conditional space by family, which is what we need.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, **options)


def make_pruner(definition: StudyDefinition) -> optuna.pruners.BasePruner:
    import optuna

    options, epochs = dict(definition.pruner.options), definition.epochs
    match definition.pruner.name:
        case "feasible":
            from lrsearch.study.pruning import FeasiblePercentilePruner

            return FeasiblePercentilePruner(definition.targets, **options)
        case "median":
            return optuna.pruners.MedianPruner(**options)
        case "halving":
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        case "hyperband":
            return optuna.pruners.HyperbandPruner(max_resource=epochs, **options)
        case _:
            return optuna.pruners.NopPruner()


def budget(study: optuna.Study, total: int) -> Budget:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not voided(t)]
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = sum(t.state in done or (t.state == TrialState.FAIL and t.number not in retried) for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return Budget(finished, running, waiting, total)


def stored_total(study: optuna.Study) -> int:
    """The study's budget as stored now (a later `start --trials N` may have changed it), read uncached."""
    return _stored_definition(study.study_name, study.user_attrs.get(DEFINITION_ATTR)).trials


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    import optuna

    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))


__all__ = ["Budget", "create_or_resume", "check_resumable", "load", "budget", "stored_total", "mask_url", "VOID_ATTR"]

from __future__ import annotations

import math
import warnings

import optuna
from optuna.storages import InMemoryStorage

from lrsearch.definition import default_study_file, load_study_file
from lrsearch.sampler import OneReadTPESampler

SPACE = load_study_file(default_study_file()).space


class CountingStorage(InMemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get_all_trials(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().get_all_trials(*args, **kwargs)


def run(sampler_class: type[optuna.samplers.TPESampler]) -> tuple[list[dict[str, object]], int]:
    storage = CountingStorage()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = sampler_class(multivariate=True, group=True, n_startup_trials=5, seed=3)
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=storage)
    for _ in range(5):  # the random start-up trials
        trial = study.ask()
        study.tell(trial, -abs(math.log10(SPACE.sample(trial, 10).lr) + 2))
    storage.reads = 0
    for _ in range(8):
        trial = study.ask()
        study.tell(trial, -abs(math.log10(SPACE.sample(trial, 10).lr) + 2))
    assert "_get_trials" not in vars(study)  # the study's own method is back after each sampling
    return [t.params for t in study.trials], storage.reads


def test_samples_the_same_strategies_with_far_fewer_reads() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        theirs, their_reads = run(optuna.samplers.TPESampler)
        mine, my_reads = run(OneReadTPESampler)
    assert mine == theirs
    assert my_reads < their_reads / 2, (my_reads, their_reads)

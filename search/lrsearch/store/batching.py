"""Fewer database round trips per trial: a trial's writes grouped into transactions, one read of the trials
shared by steps that follow each other within milliseconds.

Optuna's RDBStorage gives every call its own session, queries and commit: an epoch's report and its history were
two commits, a trial's constraints four calls, a dashboard note three reads of every note in the study. Here:

- `write_trial`: user attributes, constraints, an epoch's intermediate value, in one transaction (one multi-row
  upsert per table on SQLite, PostgreSQL and MySQL/MariaDB);
- `save_note`: a dashboard note (optuna-dashboard's own format) written in one transaction that reads only that
  note's keys, not every note of the study;
- `shared_reads`: inside it, the study's trials are read from the database once (Optuna re-reads every unfinished
  trial at each `get_trials`) and the sampled parameters are written in one transaction when it ends.

Each falls back to Optuna's own calls for a storage that is not lrsearch's (e.g. an in-memory study) and where
the installed Optuna lacks the private code they use (see lrsearch.store.optuna_rdb, which holds that code).
benchmarks/storage_overhead.py measures what they save.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lrsearch.store.optuna_rdb import (
    batched,
    cached_trial,
    constraint_key,
    save_study_note,
    set_trial_data,
    shared_reads,
    sharing_cache,
    storage_of,
    study_id,
    trial_id,
)

if TYPE_CHECKING:
    import optuna


def write_trial(
    trial: optuna.Trial,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    constraints: Mapping[str, float] | None = None,
    report: tuple[int, float] | None = None,
) -> None:
    """`trial.set_user_attr` for each attribute, `trial.set_constraint` for each constraint and
    `trial.report(value, step)` for `report` = (step, value): in one transaction on lrsearch's storage. Unlike
    Optuna's calls, an already reported step or an already set constraint (a retried trial inherits its first
    attempt's) is replaced, not ignored with a warning."""
    cached = cached_trial(trial)  # what trial.user_attrs and should_prune read
    if not batched(trial.storage) or cached is None:
        for key, value in (user_attrs or {}).items():
            trial.set_user_attr(key, value)
        for key, limit in (constraints or {}).items():
            trial.set_constraint(key, limit)
        if report is not None:
            trial.report(report[1], report[0])
        return
    system_attrs = {}
    for key, limit in (constraints or {}).items():
        if math.isnan(limit):
            raise ValueError(f"constraint {key!r} is NaN")
        system_attrs[constraint_key(key)] = float(limit)
    if report is not None:
        report = (int(report[0]), float(report[1]))
        if report[0] < 0:
            raise ValueError(f"step {report[0]} must be non-negative")
    set_trial_data(trial.storage, trial_id(trial), user_attrs=user_attrs, system_attrs=system_attrs, report=report)
    cached.user_attrs.update(user_attrs or {})
    cached.system_attrs.update(system_attrs)
    if report is not None:
        cached.intermediate_values[report[0]] = report[1]


def save_note(study_or_trial: optuna.Study | optuna.Trial, body: str, *, only_if_changed: bool = False) -> None:
    """optuna_dashboard.save_note, in one transaction on lrsearch's storage; with `only_if_changed`, a note
    that already reads `body` is left as it is."""
    import optuna

    if isinstance(study_or_trial, optuna.Study):
        storage, study, trial = storage_of(study_or_trial), study_id(study_or_trial), None
    else:
        storage, study, trial = study_or_trial.storage, study_id(study_or_trial.study), trial_id(study_or_trial)
    if batched(storage):
        save_study_note(storage, study, trial, body, only_if_changed=only_if_changed)
        return
    from optuna_dashboard import get_note
    from optuna_dashboard import save_note as dashboard_save_note

    if not only_if_changed or get_note(study_or_trial) != body:
        dashboard_save_note(study_or_trial, body)


__all__ = ["write_trial", "save_note", "shared_reads", "sharing_cache"]

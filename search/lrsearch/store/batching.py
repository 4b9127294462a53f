"""Fewer database round trips per trial: a trial's writes grouped into transactions, one read of the trials
shared by steps that follow each other within milliseconds.

Optuna's RDBStorage gives every call its own session, queries and commit: an epoch's report and its history were
two commits, a trial's constraints four calls, a dashboard note three reads of every note in the study. Here:

- `write_trial`: user attributes, constraints, an epoch's intermediate value, in one transaction (one multi-row
  upsert per table on SQLite and PostgreSQL);
- `save_note`: a dashboard note (optuna-dashboard's own format) written in one transaction that reads only that
  note's keys, not every note of the study;
- `shared_reads`: inside it, the study's trials are read from the database once (Optuna re-reads every unfinished
  trial at each `get_trials`) and the sampled parameters are written in one transaction when it ends.

Each falls back to Optuna's own calls for a storage that is not lrsearch's (e.g. an in-memory study).
benchmarks/storage_overhead.py measures what they save.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from optuna.storages._cached_storage import _CachedStorage
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

from lrsearch.errors import StorageError
from lrsearch.store.retry import is_transient

if TYPE_CHECKING:
    import optuna
    import sqlalchemy.orm

CONSTRAINT_PREFIX = f"{_CONSTRAINTS_KEY}:"  # optuna 5 keeps constraint `k` as trial system attribute `constraints:k`


# --- the backend side: methods of lrsearch's RDBStorage (see lrsearch.store.storage) ------------------------------


def set_trial_data(
    self: optuna.storages.RDBStorage,
    trial_id: int,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    system_attrs: Mapping[str, Any] | None = None,
    report: tuple[int, float] | None = None,
    params: list[tuple[str, float, Any, Any]] | None = None,
) -> None:
    """One transaction: user and system attributes, an intermediate value (step, value) and parameters
    (name, internal value, distribution, the study's known distribution of that name or None)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(self.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        self.check_trial_is_updatable(trial_id, trial.state)  # type: ignore[arg-type]
        for model, attrs in (
            (models.TrialUserAttributeModel, user_attrs),
            (models.TrialSystemAttributeModel, system_attrs),
        ):
            if attrs:
                _upsert_attrs(self, session, model, "trial_id", trial_id, attrs)
        if report is not None:
            table = models.TrialIntermediateValueModel
            value, kind = table.intermediate_value_to_stored_repr(report[1])
            row = {
                "trial_id": trial_id,
                "step": report[0],
                "intermediate_value": value,
                "intermediate_value_type": kind,
            }
            _upsert(self, session, table, [row], keys=("trial_id", "step"))
        for name, value, distribution, known in params or ():
            self._set_trial_param_without_commit(session, trial_id, name, value, distribution, known)


def save_study_note(
    self: optuna.storages.RDBStorage, study_id: int, trial_id: int | None, body: str, *, only_if_changed: bool
) -> bool:
    """optuna-dashboard's note of the study (trial_id None) or of a trial, in one transaction that reads only
    that note's keys. Returns whether it was written. Like the dashboard's own save_note, two saves at the same
    moment may both write the same next version number; each writes its whole note in one statement, so the
    note is one or the other, never a mix."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna_dashboard._note import note_str_key_prefix, note_ver_key, split_body

    table = models.StudySystemAttributeModel
    version_key, prefix = note_ver_key(trial_id), note_str_key_prefix(trial_id)
    with _create_scoped_session(self.scoped_session, True) as session:
        rows = session.execute(
            sqlalchemy.select(table.key, table.value_json).where(
                table.study_id == study_id,
                sqlalchemy.or_(table.key == version_key, table.key.startswith(prefix, autoescape=True)),
            )
        ).all()
        stored = {key: json.loads(value) for key, value in rows}
        chunks = split_body(body, trial_id)
        old_chunks = [stored[f"{prefix}{i}"] for i in range(len(stored) - (version_key in stored))]
        if only_if_changed and version_key in stored and "".join(old_chunks) == body:
            return False
        attrs: dict[str, Any] = {version_key: int(stored.get(version_key, 0)) + 1, **chunks}
        attrs.update({f"{prefix}{i}": "" for i in range(len(chunks), len(old_chunks))})  # as the dashboard does
        _upsert_attrs(self, session, table, "study_id", study_id, attrs)
    return True


def _upsert_attrs(
    storage: optuna.storages.RDBStorage,
    session: sqlalchemy.orm.Session,
    model: Any,
    owner: str,
    owner_id: int,
    attrs: Mapping[str, Any],
) -> None:
    """Insert or update `attrs` (key -> JSON value) of one trial (owner "trial_id") or study ("study_id")."""
    rows = [{owner: owner_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    _upsert(storage, session, model, rows, keys=(owner, "key"))


def _upsert(
    storage: optuna.storages.RDBStorage,
    session: sqlalchemy.orm.Session,
    model: Any,
    rows: list[dict[str, Any]],
    *,
    keys: tuple[str, str],
) -> None:
    """Insert `rows`, or update the row with the same `keys` (a unique constraint of the table): one statement on
    SQLite and PostgreSQL, a query per row elsewhere."""
    dialect = storage.engine.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:
        for row in rows:
            existing = session.query(model).filter_by(**{key: row[key] for key in keys}).one_or_none()
            if existing is None:
                session.add(model(**row))
            else:
                for column, value in row.items():
                    setattr(existing, column, value)
        return
    statement = insert(model).values(rows)
    updated = {column: statement.excluded[column] for column in rows[0] if column not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=[getattr(model, k) for k in keys], set_=updated))


# --- the trial side -----------------------------------------------------------------------------------------


def _backend(storage: object) -> Any:
    return getattr(storage, "_backend", storage)  # optuna wraps an RDBStorage in its cache


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
    write = getattr(_backend(trial.storage), "set_trial_data", None)
    cached = getattr(trial, "_cached_frozen_trial", None)  # what trial.user_attrs and should_prune read
    if write is None or cached is None:
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
        system_attrs[f"{CONSTRAINT_PREFIX}{key}"] = float(limit)
    if report is not None:
        report = (int(report[0]), float(report[1]))
        if report[0] < 0:
            raise ValueError(f"step {report[0]} must be non-negative")
    write(trial._trial_id, user_attrs=user_attrs, system_attrs=system_attrs, report=report)
    cached.user_attrs.update(user_attrs or {})
    cached.system_attrs.update(system_attrs)
    if report is not None:
        cached.intermediate_values[report[0]] = report[1]


def save_note(study_or_trial: optuna.Study | optuna.Trial, body: str, *, only_if_changed: bool = False) -> None:
    """optuna_dashboard.save_note, in one transaction on lrsearch's storage; with `only_if_changed`, a note
    that already reads `body` is left as it is."""
    import optuna

    if isinstance(study_or_trial, optuna.Study):
        storage, study_id, trial_id = study_or_trial._storage, study_or_trial._study_id, None
    else:
        storage, study_id, trial_id = study_or_trial.storage, study_or_trial.study._study_id, study_or_trial._trial_id
    write = getattr(_backend(storage), "save_study_note", None)
    if write is not None:
        write(study_id, trial_id, body, only_if_changed=only_if_changed)
        return
    from optuna_dashboard import get_note
    from optuna_dashboard import save_note as dashboard_save_note

    if not only_if_changed or get_note(study_or_trial) != body:
        dashboard_save_note(study_or_trial, body)


# --- one read of the trials ---------------------------------------------------------------------------------


class SharingCache(_CachedStorage):
    """Optuna's cache in front of an RDBStorage, plus `shared_reads` (see the module's docstring)."""

    def __init__(self, backend: optuna.storages.RDBStorage) -> None:
        super().__init__(backend)
        self._scope = threading.local()  # the heartbeat thread never shares the main thread's scope

    @contextlib.contextmanager
    def shared_reads(self) -> Iterator[None]:
        if getattr(self._scope, "read", None) is not None:
            yield  # nested: the outer scope decides
            return
        self._scope.read, self._scope.params = set(), []
        try:
            yield
        except Exception as e:
            # What the trial holds is written, unless the database is what failed (it was retried already).
            if not isinstance(e, StorageError) and not is_transient(e):
                with contextlib.suppress(Exception):  # the error that ended the scope is the one to report
                    self._write_params()
            raise
        else:
            self._write_params()
        finally:
            self._scope.read = self._scope.params = None

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        read = getattr(self._scope, "read", None)
        if read is not None and study_id in read:
            return
        super()._read_trials_from_remote_storage(study_id)
        if read is not None:
            read.add(study_id)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        params = getattr(self._scope, "params", None)
        if params is None or not hasattr(self._backend, "set_trial_data"):
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        from optuna.distributions import check_distribution_compatibility

        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            known = self._studies[study_id].param_distribution.get(param_name)
        if known is not None:
            check_distribution_compatibility(known, distribution)  # fail at the suggest call, as Optuna does
        params.append((trial_id, (param_name, param_value_internal, distribution, known)))

    def _write_params(self) -> None:
        by_trial: dict[int, list[tuple[str, float, Any, Any]]] = {}
        for trial_id, param in self._scope.params:
            by_trial.setdefault(trial_id, []).append(param)
        for trial_id, params in by_trial.items():
            self._backend.set_trial_data(trial_id, params=params)  # type: ignore[attr-defined]
            with self._lock:
                study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
                for name, _value, distribution, _known in params:
                    self._studies[study_id].param_distribution.setdefault(name, distribution)


@contextlib.contextmanager
def shared_reads(study: optuna.Study) -> Iterator[None]:
    """Inside: the study's trials are read from the database once, and the parameters sampled are written in
    one transaction at the end (also when it ends with an error, unless the database failed: the trial's params
    are then what the database holds). For steps a few milliseconds apart
    (counting the budget and asking a trial, under the budget lock; sampling a trial's strategy)."""
    storage = study._storage
    if isinstance(storage, SharingCache):
        with storage.shared_reads():
            yield
    else:
        yield


def sharing_cache(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage to give a Study: lrsearch's cache in front of an RDBStorage; any other storage as it is."""
    from optuna.storages import RDBStorage

    return SharingCache(storage) if isinstance(storage, RDBStorage) else storage

"""The one module of lrsearch that uses Optuna's and optuna-dashboard's private code.

Everything else reaches a study's storage, ids and cached trial through the small public functions here
(`storage_of`, `study_id`, `trial_id`, `backend_of`, `frozen_trial`, `orphan_trial_ids`, `constraint_key`);
tests/test_optuna_boundary.py fails when another module imports a private Optuna name or touches one of
Optuna's private attributes.

Two paths, chosen once per process when a storage is opened (`missing_piece`, logged by `log_path`):

- batched writes: the private pieces below exist in the installed Optuna (a version read for them) and
  optuna-dashboard, so `RetryingRDBStorage.set_trial_data` and `save_study_note` write a trial's data and a
  dashboard note in one transaction each, and `SharingCache` (Optuna's own cache, subclassed) lets steps that
  follow each other read the trials once (see lrsearch.store.batching);
- public Optuna API: any piece is missing or the Optuna version was not read for them, so lrsearch calls
  Optuna's own `trial.set_user_attr`, `set_constraint`, `report` and `optuna_dashboard.save_note`, and gives
  Optuna the storage as it is. Slower (more round trips), the same results.

`RetryingRDBStorage` retries its database calls in both paths (see lrsearch.store.retry).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.storages import RDBStorage

from lrsearch.errors import StorageError
from lrsearch.store.retry import is_transient, retry_transient, retrying_each_call

try:
    from optuna.storages._cached_storage import _CachedStorage
except ImportError:  # another Optuna: `missing_piece` names it and SharingCache is never made
    _CachedStorage = object  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    import sqlalchemy.orm
    from optuna.trial import FrozenTrial

# Optuna major versions whose private code below was read; another version takes the public path.
READ_FOR_OPTUNA = (5,)
T = TypeVar("T")
_logger = logging.getLogger("lrsearch.store")

# (module, names) that the batched path uses.
_PIECES = (
    (
        "optuna.storages._rdb.models",
        (
            "TrialModel",
            "TrialHeartbeatModel",
            "TrialUserAttributeModel",
            "TrialSystemAttributeModel",
            "TrialIntermediateValueModel",
            "StudySystemAttributeModel",
        ),
    ),
    ("optuna.storages._rdb.storage", ("_create_scoped_session",)),
    ("optuna.storages._cached_storage", ("_CachedStorage",)),
    ("optuna.study._constrained_optimization", ("_CONSTRAINTS_KEY",)),
    ("optuna_dashboard._note", ("note_str_key_prefix", "note_ver_key", "split_body")),
)
_METHODS = (
    (RDBStorage, ("_set_trial_param_without_commit", "check_trial_is_updatable")),
    (_CachedStorage, ("_read_trials_from_remote_storage", "set_trial_param")),
)


# --- which path -----------------------------------------------------------------------------------------------


@functools.cache
def missing_piece() -> str | None:
    """None when the batched path can run; else what is missing (for the log line)."""
    major = int(optuna.__version__.split(".")[0])
    if major not in READ_FOR_OPTUNA:
        return f"its private storage code was read for optuna {'/'.join(map(str, READ_FOR_OPTUNA))}.x only"
    for module_name, names in _PIECES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return f"no module {module_name}"
        for name in names:
            if not hasattr(module, name):
                return f"no {module_name}.{name}"
    for cls, methods in _METHODS:
        for method in methods:
            if not callable(getattr(cls, method, None)):
                return f"no {cls.__name__}.{method}"
    return None


@functools.cache
def log_path() -> None:
    """One log line per process: which path the storage takes."""
    missing = missing_piece()
    if missing is None:
        _logger.info("lrsearch storage: batched writes (optuna %s)", optuna.__version__)
    else:
        _logger.warning(
            "lrsearch storage: public Optuna API, one call per write (optuna %s: %s)", optuna.__version__, missing
        )


def batched(storage: object) -> bool:
    """The storage (or the RDBStorage behind Optuna's cache) takes lrsearch's batched writes."""
    return bool(getattr(backend_of(storage), "batched", False))


# --- public handles on Optuna's private attributes ------------------------------------------------------------


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes through (Optuna's cache in front of an RDBStorage)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial) -> int:
    return trial._trial_id


def backend_of(storage: object) -> Any:
    """The RDBStorage behind Optuna's cache; any other storage as it is."""
    return getattr(storage, "_backend", storage)


def cached_trial(trial: optuna.Trial) -> FrozenTrial | None:
    """The FrozenTrial that `trial.user_attrs` and the pruners read (None where Optuna keeps none)."""
    return getattr(trial, "_cached_frozen_trial", None)


def frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """The trial as read when it was made, else read again from the storage."""
    return cached_trial(trial) or trial.storage.get_trial(trial_id(trial))


def constraint_key(name: str) -> str:
    """The trial system attribute under which Optuna keeps constraint `name`."""
    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    return f"{_CONSTRAINTS_KEY}:{name}"


def orphan_trial_ids(storage: optuna.storages.BaseStorage, study: int, older_than_seconds: float) -> list[int]:
    """RUNNING trials of the study that never had a heartbeat and started more than `older_than_seconds` ago."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    backend = backend_of(storage)
    if not hasattr(backend, "engine"):
        return []
    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    query = (
        sqlalchemy.select(trials.c.trial_id)
        .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
        .where(trials.c.study_id == study, trials.c.state == TrialState.RUNNING)
        .where(
            beats.c.trial_id.is_(None),
            trials.c.datetime_start < datetime.now() - timedelta(seconds=older_than_seconds),
        )
    )
    with backend.engine.connect() as connection:
        return [row[0] for row in connection.execute(query)]


# --- the storage ------------------------------------------------------------------------------------------------


def _retried(method: Callable[..., T], name: str = "") -> Callable[..., T]:
    """`method`, tried again while it fails for a transient reason (see `RetryingRDBStorage`)."""
    name = name or method.__name__

    @functools.wraps(method)
    def wrapper(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> T:
        if not self.retry_seconds or not retrying_each_call():
            return method(self, *args, **kwargs)
        return retry_transient(lambda: method(self, *args, **kwargs), name, self.retry_seconds, self.shown_url)

    return wrapper


class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose database calls are tried again with backoff for `retry_seconds` while they fail
    for a transient reason (0: called once), outside a unit of work (which is retried as a whole instead, see
    lrsearch.store.retry); plus lrsearch's batched writes when `batched`."""

    retry_seconds = 0.0
    shown_url = ""  # the URL with its password masked, for messages
    batched = False  # set_trial_data and save_study_note may be used (see `missing_piece`)

    # The methods that talk to the database: the public ones and the private ones Optuna's cache calls.
    create_new_study = _retried(RDBStorage.create_new_study)
    delete_study = _retried(RDBStorage.delete_study)
    set_study_user_attr = _retried(RDBStorage.set_study_user_attr)
    set_study_system_attr = _retried(RDBStorage.set_study_system_attr)
    get_study_id_from_name = _retried(RDBStorage.get_study_id_from_name)
    get_study_name_from_id = _retried(RDBStorage.get_study_name_from_id)
    get_study_directions = _retried(RDBStorage.get_study_directions)
    get_study_user_attrs = _retried(RDBStorage.get_study_user_attrs)
    get_study_system_attrs = _retried(RDBStorage.get_study_system_attrs)
    get_trial_user_attrs = _retried(RDBStorage.get_trial_user_attrs)
    get_trial_system_attrs = _retried(RDBStorage.get_trial_system_attrs)
    get_all_studies = _retried(RDBStorage.get_all_studies)
    create_new_trial = _retried(RDBStorage.create_new_trial)
    set_trial_param = _retried(RDBStorage.set_trial_param)
    get_trial_param = _retried(RDBStorage.get_trial_param)
    set_trial_state_values = _retried(RDBStorage.set_trial_state_values)
    set_trial_intermediate_value = _retried(RDBStorage.set_trial_intermediate_value)
    set_trial_user_attr = _retried(RDBStorage.set_trial_user_attr)
    set_trial_system_attr = _retried(RDBStorage.set_trial_system_attr)
    get_trial_id_from_study_id_trial_number = _retried(RDBStorage.get_trial_id_from_study_id_trial_number)
    get_trial = _retried(RDBStorage.get_trial)
    get_all_trials = _retried(RDBStorage.get_all_trials)
    get_best_trial = _retried(RDBStorage.get_best_trial)
    record_heartbeat = _retried(RDBStorage.record_heartbeat)
    if hasattr(RDBStorage, "_create_new_trial"):
        _create_new_trial = _retried(RDBStorage._create_new_trial)
    if hasattr(RDBStorage, "_set_trial_param"):
        _set_trial_param = _retried(RDBStorage._set_trial_param)
    if hasattr(RDBStorage, "_get_trials"):
        _get_trials = _retried(RDBStorage._get_trials)
    if hasattr(RDBStorage, "_get_best_trial_id"):
        _get_best_trial_id = _retried(RDBStorage._get_best_trial_id)
    if hasattr(RDBStorage, "_get_stale_trial_ids"):
        _get_stale_trial_ids = _retried(RDBStorage._get_stale_trial_ids)

    def _set_trial_data(
        self,
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
                    self._upsert_attrs(session, model, "trial_id", trial_id, attrs)
            if report is not None:
                table = models.TrialIntermediateValueModel
                value, kind = table.intermediate_value_to_stored_repr(report[1])
                row = {
                    "trial_id": trial_id,
                    "step": report[0],
                    "intermediate_value": value,
                    "intermediate_value_type": kind,
                }
                self._upsert(session, table, [row], keys=("trial_id", "step"))
            for name, value, distribution, known in params or ():
                self._set_trial_param_without_commit(session, trial_id, name, value, distribution, known)

    set_trial_data = _retried(_set_trial_data, "set_trial_data")

    def _save_study_note(self, study_id: int, trial_id: int | None, body: str, *, only_if_changed: bool) -> bool:
        """optuna-dashboard's note of the study (trial_id None) or of a trial, in one transaction that reads only
        that note's keys. Returns whether it was written. Like the dashboard's own save_note, two saves at the
        same moment may both write the same next version number; each writes its whole note in one statement,
        so the note is one or the other, never a mix."""
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
            self._upsert_attrs(session, table, "study_id", study_id, attrs)
        return True

    save_study_note = _retried(_save_study_note, "save_study_note")

    def _upsert_attrs(
        self, session: sqlalchemy.orm.Session, model: Any, owner: str, owner_id: int, attrs: Mapping[str, Any]
    ) -> None:
        """Insert or update `attrs` (key -> JSON value) of one trial (owner "trial_id") or study ("study_id")."""
        rows = [{owner: owner_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
        self._upsert(session, model, rows, keys=(owner, "key"))

    def _upsert(
        self, session: sqlalchemy.orm.Session, model: Any, rows: list[dict[str, Any]], *, keys: tuple[str, str]
    ) -> None:
        """Insert `rows`, or update the row with the same `keys` (a unique constraint of the table): one statement
        on SQLite, PostgreSQL and MySQL/MariaDB, a query per row elsewhere."""
        dialect = self.engine.name
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            upsert = mysql_insert(model).values(rows)
            updated = {column: upsert.inserted[column] for column in rows[0] if column not in keys}
            session.execute(upsert.on_duplicate_key_update(updated))
            return
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
        excluded = {column: statement.excluded[column] for column in rows[0] if column not in keys}
        session.execute(
            statement.on_conflict_do_update(index_elements=[getattr(model, k) for k in keys], set_=excluded)
        )


def save_study_note(storage: object, study: int, trial: int | None, body: str, *, only_if_changed: bool) -> bool:
    """RetryingRDBStorage.save_study_note of the RDBStorage behind `storage`."""
    return bool(backend_of(storage).save_study_note(study, trial, body, only_if_changed=only_if_changed))


def set_trial_data(storage: object, trial: int, **data: Any) -> None:
    """RetryingRDBStorage.set_trial_data of the RDBStorage behind `storage`."""
    backend_of(storage).set_trial_data(trial, **data)


# --- one read of the trials ---------------------------------------------------------------------------------------


class SharingCache(_CachedStorage):
    """Optuna's cache in front of an RDBStorage, plus `shared_reads` (see lrsearch.store.batching)."""

    def __init__(self, backend: RDBStorage) -> None:
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
        if params is None or not batched(self._backend):
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


def sharing_cache(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage to give a Study: lrsearch's cache in front of an RDBStorage that takes batched writes; any
    other storage as it is (Optuna puts its own cache in front of an RDBStorage)."""
    return SharingCache(storage) if isinstance(storage, RDBStorage) and batched(storage) else storage


@contextlib.contextmanager
def shared_reads(study: optuna.Study) -> Iterator[None]:
    """SharingCache.shared_reads of the study's storage; nothing for another storage."""
    storage = storage_of(study)
    if isinstance(storage, SharingCache):
        with storage.shared_reads():
            yield
    else:
        yield


# --- optuna-dashboard ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving_constraints() -> Iterator[None]:
    """Inside: optuna-dashboard serializes each trial with its constraint values (Optuna 5's, in the order Optuna
    reads them) as the `constraints` list its pages read, unless the trial has that list already. optuna-dashboard
    0.21 reads only that older format; without its serializer (another version), trials are served as they are."""
    try:
        from optuna_dashboard import _serializer
    except ImportError:
        _logger.warning("lrsearch dashboard: optuna-dashboard has no _serializer; infeasible trials are not marked")
        yield
        return

    original = _serializer.serialize_frozen_trial

    def serialize(study_id: int, trial: FrozenTrial, study_system_attrs: dict[str, Any]) -> dict[str, Any]:
        serialized: dict[str, Any] = original(study_id, trial, study_system_attrs)
        if not serialized.get("constraints") and trial.constraints:
            serialized["constraints"] = list(trial.constraints.values())
        return serialized

    _serializer.serialize_frozen_trial = serialize
    try:
        yield
    finally:
        _serializer.serialize_frozen_trial = original


__all__ = [
    "serving_constraints",
    "RetryingRDBStorage",
    "SharingCache",
    "backend_of",
    "batched",
    "cached_trial",
    "constraint_key",
    "frozen_trial",
    "log_path",
    "missing_piece",
    "orphan_trial_ids",
    "save_study_note",
    "set_trial_data",
    "shared_reads",
    "sharing_cache",
    "storage_of",
    "study_id",
    "trial_id",
]

"""What a trial stores, in one place: the typed trial record and its Optuna user attributes.

Readers (the pruner, progress, results, report, plots, dashboard notes) build a `TrialRecord` from a trial with
`TrialRecord.from_trial` and never index the attributes by hand; the trial runner writes a record's parts as they
become known (`started_attrs`, `history_attrs`, `result_attrs`; together `to_user_attrs`).

Record formats (the user attribute `lrsearch.format`):
- 1: no format attribute: studies written before the record had a version. Read as they are.
- 2: the same attribute keys and values as format 1, plus `lrsearch.format`.
A record of a newer format than this release knows is refused with a message (upgrade lrsearch to read it).

Non-finite numbers (the NaN or infinite loss of a diverged epoch) are stored as the JSON tokens `NaN`,
`Infinity` and `-Infinity`, as Optuna's storages write every float attribute; Python's `json` reads them back
as floats. The dashboard's `curve_*` attributes hold null for them instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LRSearchError
from lrsearch.store.liveness import VOID_ATTR as VOID_ATTR  # a voided trial never ran: store sets it
from lrsearch.train.records import EpochRecord

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

FORMAT = 2
FORMAT_ATTR = "lrsearch.format"

WORKER_ATTR = "worker"  # host:pid of the worker that ran the trial
SEED_ATTR = "seed"
STRATEGY_ATTR = "strategy"  # LRStrategy.describe()
STEPS_ATTR = "steps_per_epoch"
DEVICE_ATTR = "device"
HISTORY_ATTR = "history"  # one EpochRecord (as a JSON object) per epoch
FEASIBLE_ATTR = "feasible"
VAL_ACC_ATTR = "val_acc"  # at the chosen epoch
TRAIN_ACC_ATTR = "train_acc"
EPOCH_ATTR = "epoch"  # the chosen epoch (1-based)
STOP_REASON_ATTR = "stop_reason"
TRACEBACK_ATTR = "traceback"  # of the exception that failed the trial

# For the dashboard's trial table: the score (sortable) and short per-epoch curves.
SCORE_ATTR = "feasible_val_acc"
CURVES = ("val_acc", "train_acc", "val_loss", "train_loss", "lr")

_EPOCH_DEFAULTS = {"seconds": 0.0}  # optional in a stored epoch; `lr_end` defaults to `lr`


class RecordFormatError(LRSearchError):
    """A trial record written by a newer lrsearch."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as lrsearch sees it. Fields that a trial has not reached yet (a running or failed trial) are None
    or empty."""

    number: int
    state: str  # Optuna's state in lower case: complete, pruned, fail, running, waiting
    params: Mapping[str, Any] = field(default_factory=dict)  # the sampled parameters
    value: float | None = None  # Optuna's objective value (complete trials)
    strategy: str = ""  # the sampled strategy, described
    seed: int | None = None
    worker: str = ""
    device: str = ""
    steps_per_epoch: int | None = None
    history: tuple[EpochRecord, ...] = ()
    chosen_epoch: int | None = None  # the best feasible epoch, or the least infeasible one
    val_acc: float | None = None  # at the chosen epoch
    train_acc: float | None = None
    feasible: bool | None = None  # None until the trial has a result
    stop_reason: str | None = None
    traceback: str | None = None
    void: str | None = None  # why a trial that never ran was voided
    format: int = FORMAT  # the format it was read in

    # --- derived ---------------------------------------------------------------------------------------------

    @property
    def chosen(self) -> EpochRecord | None:
        return next((e for e in self.history if e.epoch == self.chosen_epoch), None)

    @property
    def status(self) -> str:
        """The state, or `void` for a trial that never ran and does not count."""
        return "void" if self.void is not None else self.state

    @property
    def family(self) -> str:
        """The LR-scheduler family, "" when unknown."""
        return str(self.params.get("scheduler", ""))

    @property
    def counts_as_best(self) -> bool:
        """Complete and feasible: what Optuna 5 (and `lrsearch best`) may pick as the best trial."""
        return self.state == "complete" and bool(self.feasible) and self.val_acc is not None

    @property
    def score(self) -> float:
        """The dashboard's sortable score: val accuracy of a complete feasible trial, else 0."""
        return float(self.val_acc) if self.counts_as_best and self.val_acc is not None else 0.0

    # --- to attributes ---------------------------------------------------------------------------------------

    def started_attrs(self) -> dict[str, Any]:
        """Written when the trial starts: the format, the worker, seed, strategy, steps per epoch, device."""
        attrs: dict[str, Any] = {FORMAT_ATTR: FORMAT}
        if self.worker:
            attrs[WORKER_ATTR] = self.worker
        return attrs | {
            SEED_ATTR: self.seed,
            STRATEGY_ATTR: self.strategy,
            STEPS_ATTR: self.steps_per_epoch,
            DEVICE_ATTR: self.device,
        }

    def history_attrs(self) -> dict[str, Any]:
        """Written after every epoch (the pruner of every worker reads it)."""
        return {HISTORY_ATTR: [epoch_to_json(epoch) for epoch in self.history]}

    def result_attrs(self) -> dict[str, Any]:
        """Written when the trial's result is known: the chosen epoch, its accuracies, feasibility, why it
        stopped, and the dashboard's score and curves."""
        attrs: dict[str, Any] = {
            FEASIBLE_ATTR: self.feasible,
            VAL_ACC_ATTR: self.val_acc,
            TRAIN_ACC_ATTR: self.train_acc,
            EPOCH_ATTR: self.chosen_epoch,
            STOP_REASON_ATTR: self.stop_reason,
        }
        if self.traceback is not None:
            attrs[TRACEBACK_ATTR] = self.traceback
        attrs[SCORE_ATTR] = self.score
        for key in CURVES:
            attrs[f"curve_{key}"] = [_short(getattr(epoch, key)) for epoch in self.history]
        return attrs

    def to_user_attrs(self) -> dict[str, Any]:
        attrs = self.started_attrs() | self.history_attrs() | self.result_attrs()
        if self.void is not None:
            attrs[VOID_ATTR] = self.void
        return attrs

    # --- from attributes -------------------------------------------------------------------------------------

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a stored trial (any state), from any record format this release reads."""
        return cls.from_attrs(
            trial.user_attrs,
            number=trial.number,
            state=trial.state.name.lower(),
            params=trial.params,
            value=trial.value if trial.state.name == "COMPLETE" else None,
        )

    @classmethod
    def from_attrs(
        cls,
        attrs: Mapping[str, Any],
        *,
        number: int,
        state: str,
        params: Mapping[str, Any] | None = None,
        value: float | None = None,
    ) -> TrialRecord:
        version = attrs.get(FORMAT_ATTR, 1)
        if not isinstance(version, int) or not 1 <= version <= FORMAT:
            raise RecordFormatError(
                f"trial {number} was written in trial-record format {version!r}; this lrsearch reads formats 1 to "
                f"{FORMAT}: upgrade lrsearch to read this study"
            )
        return cls(
            number=number,
            state=state,
            params=dict(params or {}),
            value=value,
            strategy=str(attrs.get(STRATEGY_ATTR) or ""),
            seed=_int(attrs.get(SEED_ATTR)),
            worker=str(attrs.get(WORKER_ATTR) or ""),
            device=str(attrs.get(DEVICE_ATTR) or ""),
            steps_per_epoch=_int(attrs.get(STEPS_ATTR)),
            history=epochs_from_json(attrs.get(HISTORY_ATTR) or ()),
            chosen_epoch=_int(attrs.get(EPOCH_ATTR)),
            val_acc=_float(attrs.get(VAL_ACC_ATTR)),
            train_acc=_float(attrs.get(TRAIN_ACC_ATTR)),
            feasible=None if attrs.get(FEASIBLE_ATTR) is None else bool(attrs[FEASIBLE_ATTR]),
            stop_reason=_text(attrs.get(STOP_REASON_ATTR)),
            traceback=_text(attrs.get(TRACEBACK_ATTR)),
            void=_text(attrs.get(VOID_ATTR)),
            format=version,
        )


def epoch_to_json(epoch: EpochRecord) -> dict[str, Any]:
    """An epoch as a JSON object: its fields in order (`dataclasses.asdict` would copy deeply, per epoch, and
    the runner writes the whole history after every epoch)."""
    return dict(vars(epoch))


def epochs_from_json(rows: Sequence[Mapping[str, Any]]) -> tuple[EpochRecord, ...]:
    """Stored epochs (JSON objects with EpochRecord's fields) as records."""
    return tuple(epoch_from_json(row) for row in rows)


def epoch_from_json(row: Mapping[str, Any]) -> EpochRecord:
    values = {**_EPOCH_DEFAULTS, "lr_end": row.get("lr"), **row}
    return EpochRecord(
        epoch=int(values["epoch"]),
        train_loss=float(values["train_loss"]),
        train_acc=float(values["train_acc"]),
        val_loss=float(values["val_loss"]),
        val_acc=float(values["val_acc"]),
        lr=float(values["lr"]),
        lr_end=float(values["lr_end"]),
        seconds=float(values["seconds"]),
    )


def stored_seed(trial: optuna.Trial) -> int | None:
    """The seed a (retried) trial carries from its first attempt, if it recorded one."""
    return _int(trial.user_attrs.get(SEED_ATTR))


def voided(trial: FrozenTrial) -> bool:
    """A trial that never ran and holds no place in the budget."""
    return VOID_ATTR in trial.user_attrs


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _short(value: float) -> float | None:
    """A number to 4 significant digits for the curve attributes; None for a non-finite value."""
    return float(f"{value:.4g}") if math.isfinite(value) else None

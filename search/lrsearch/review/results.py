"""What a finished study says: the best feasible strategy, its epochs and code, and a line per trial."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LRSearchError
from lrsearch.review.tables import Column, epoch_table_text, text_table
from lrsearch.strategy.strategy import LRStrategy
from lrsearch.study.definition import StudyDefinition
from lrsearch.study.record import TrialRecord, epochs_from_json

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible complete trial (Optuna 5 honours the constraints), or None."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_record(study: optuna.Study) -> TrialRecord | None:
    trial = best_trial(study)
    return None if trial is None else TrialRecord.from_trial(trial)


def best_summary(study: optuna.Study, definition: StudyDefinition) -> dict[str, Any]:
    record = best_record(study)
    if record is None:
        complete = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        raise LRSearchError(
            f"study '{study.study_name}' has no feasible trial yet ({complete} complete): none reached "
            f"val_acc >= {definition.targets.min_val} with train_acc <= {definition.targets.max_train}; "
            "run more trials (lrsearch start) or widen the space"
        )
    epoch, steps = record.chosen_epoch, record.steps_per_epoch
    if epoch is None or steps is None:
        raise LRSearchError(f"trial {record.number} of study '{study.study_name}' has no recorded result")
    strategy = LRStrategy.from_params(record.params, definition.epochs)
    return {
        "study": study.study_name,
        "trial": record.number,
        "val_acc": record.val_acc,
        "train_acc": record.train_acc,
        "epochs_to_train": epoch,
        "scheduled_epochs": definition.epochs,
        "strategy": strategy.describe(),
        "params": dict(record.params),
        "seed": record.seed,
        "history": record.history_attrs()["history"],
        "code": strategy.to_code(steps, train_epochs=epoch),
    }


def format_best(summary: dict[str, Any]) -> str:
    lines = [
        f"Best feasible strategy of study '{summary['study']}' (trial {summary['trial']}):",
        f"  {summary['strategy']}",
        f"  val accuracy {summary['val_acc']:.4f}, train accuracy {summary['train_acc']:.4f} "
        f"after epoch {summary['epochs_to_train']}: train {summary['epochs_to_train']} of the "
        f"{summary['scheduled_epochs']} epochs the schedule is planned for",
        "",
        epoch_table_text(epochs_from_json(summary["history"]), chosen=summary["epochs_to_train"]),
        "",
        "PyTorch code:",
        "",
        summary["code"],
    ]
    return "\n".join(lines)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.from_trial(t)
        rows.append(
            {
                "number": record.number,
                # A trial made past the budget after a lost lock is voided: failed, and not counted.
                "state": record.status,
                "optimizer": record.params.get("optimizer"),
                "scheduler": record.params.get("scheduler"),
                "lr": record.params.get("lr"),
                "feasible": record.feasible,
                "val_acc": record.val_acc,
                "train_acc": record.train_acc,
                "epoch": record.chosen_epoch,
                "stop_reason": record.stop_reason,
            }
        )
    return rows


def yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


Row = Mapping[str, Any]
TRIAL_COLUMNS: tuple[Column[Row], ...] = (
    Column("#", lambda r: r["number"], "d"),
    Column("state", lambda r: r["state"], align="left"),
    Column("optimizer", lambda r: r["optimizer"], align="left"),
    Column("scheduler", lambda r: r["scheduler"], align="left"),
    Column("lr", lambda r: r["lr"], ".3g"),
    Column("feasible", lambda r: yes_no(r["feasible"]), align="left"),
    Column("val acc", lambda r: r["val_acc"], ".4f"),
    Column("train acc", lambda r: r["train_acc"], ".4f"),
    Column("epoch", lambda r: r["epoch"], "d"),
)


def format_trials(rows: list[dict[str, Any]]) -> str:
    return text_table(TRIAL_COLUMNS, rows)


def study_rows(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    from lrsearch.study.lifecycle import budget, load, study_names

    rows = []
    for name in study_names(storage):
        try:
            study, definition = load(storage, name)
        except LRSearchError:
            continue  # not an lrsearch study
        best = best_record(study)
        rows.append(
            {
                "name": name,
                "trials": definition.trials,
                "finished": budget(study, definition.trials).finished,
                "best_val_acc": None if best is None else best.val_acc,
                "best_trial": None if best is None else best.number,
            }
        )
    return rows

"""What a finished study says: the best feasible strategy, its epochs and code, and a line per trial."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrsearch.errors import LRSearchError
from lrsearch.strategy.strategy import LRStrategy
from lrsearch.study.definition import StudyDefinition

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

EPOCH_COLUMNS = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr")


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible complete trial (Optuna 5 honours the constraints), or None."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_summary(study: optuna.Study, definition: StudyDefinition) -> dict[str, Any]:
    trial = best_trial(study)
    if trial is None:
        complete = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        raise LRSearchError(
            f"study '{study.study_name}' has no feasible trial yet ({complete} complete): none reached "
            f"val_acc >= {definition.targets.min_val} with train_acc <= {definition.targets.max_train}; "
            "run more trials (lrsearch start) or widen the space"
        )
    strategy = LRStrategy.from_params(trial.params, definition.epochs)
    epoch = int(trial.user_attrs["epoch"])
    steps = int(trial.user_attrs["steps_per_epoch"])
    return {
        "study": study.study_name,
        "trial": trial.number,
        "val_acc": trial.user_attrs["val_acc"],
        "train_acc": trial.user_attrs["train_acc"],
        "epochs_to_train": epoch,
        "scheduled_epochs": definition.epochs,
        "strategy": strategy.describe(),
        "params": trial.params,
        "seed": trial.user_attrs.get("seed"),
        "history": trial.user_attrs.get("history", []),
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
        format_table(summary["history"], chosen=summary["epochs_to_train"]),
        "",
        "PyTorch code:",
        "",
        summary["code"],
    ]
    return "\n".join(lines)


def format_table(history: list[dict[str, Any]], *, chosen: int | None = None) -> str:
    header = f"  {'epoch':>5}  {'train loss':>10}  {'val loss':>9}  {'train acc':>9}  {'val acc':>8}  {'lr':>10}"
    rows = [header]
    for r in history:
        mark = "  <- best feasible" if r["epoch"] == chosen else ""
        rows.append(
            f"  {r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['val_loss']:>9.4f}  {r['train_acc']:>9.4f}  "
            f"{r['val_acc']:>8.4f}  {r['lr']:>10.3g}{mark}"
        )
    return "\n".join(rows)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                # A trial made past the budget after a lost lock is voided: failed, and not counted.
                "state": "void" if t.user_attrs.get("lrsearch.void") else t.state.name.lower(),
                "optimizer": t.params.get("optimizer"),
                "scheduler": t.params.get("scheduler"),
                "lr": t.params.get("lr"),
                "feasible": t.user_attrs.get("feasible"),
                "val_acc": t.user_attrs.get("val_acc"),
                "train_acc": t.user_attrs.get("train_acc"),
                "epoch": t.user_attrs.get("epoch"),
                "stop_reason": t.user_attrs.get("stop_reason"),
            }
        )
    return rows


def format_trials(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'#':>4}  {'state':<8}  {'optimizer':<9}  {'scheduler':<15}  {'lr':>9}  {'feasible':<8}  "
        f"{'val acc':>7}  {'train acc':>9}  {'epoch':>5}"
    ]

    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        feasible = "-" if r["feasible"] is None else ("yes" if r["feasible"] else "no")
        lines.append(
            f"{r['number']:>4}  {r['state']:<8}  {r['optimizer'] or '-':<9}  {r['scheduler'] or '-':<15}  "
            f"{num(r['lr'], '9.3g')}  {feasible:<8}  {num(r['val_acc'], '7.4f')}  "
            f"{num(r['train_acc'], '9.4f')}  {num(r['epoch'], '5d')}"
        )
    return "\n".join(lines)


def study_rows(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    from lrsearch.study.lifecycle import budget, load, study_names

    rows = []
    for name in study_names(storage):
        try:
            study, definition = load(storage, name)
        except LRSearchError:
            continue  # not an lrsearch study
        best = best_trial(study)
        rows.append(
            {
                "name": name,
                "trials": definition.trials,
                "finished": budget(study, definition.trials).finished,
                "best_val_acc": None if best is None else best.user_attrs.get("val_acc"),
                "best_trial": None if best is None else best.number,
            }
        )
    return rows

"""What a finished trial leaves for people reviewing the study in optuna-dashboard, written by the worker.

Always, in the study database (so it reaches the dashboard from any host):

- user attributes `feasible_val_acc` (the trial's score as lrsearch ranks it: val accuracy at its best
  feasible epoch for a complete feasible trial, 0 otherwise; numeric, so the dashboard can sort by it) and
  `curve_val_acc`, `curve_train_acc`, `curve_val_loss`, `curve_train_loss`, `curve_lr` (one number per epoch,
  short enough for the dashboard to show whole; it cuts the full `history` attribute at 1024 characters);
- a trial note: the strategy, the result and the epoch table (Markdown);
- the study note: what the objective value means and which trial is the best feasible one. optuna-dashboard
  does not read Optuna 5 constraints, so its own "Best Trial" badge may sit on an infeasible trial.

When an artifact folder is configured (see `artifact_dir`): `trial-N-history.csv`, and `trial-N-curves.png`
for a complete trial, shown by the dashboard when it is started with the same folder (`lrsearch dashboard`
finds it the same way).

Publishing is for people: a failure here is logged and never fails the trial.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.store.optuna_rdb import backend_of
from lrsearch.study.definition import StudyDefinition
from lrsearch.study.record import SCORE_ATTR

if TYPE_CHECKING:
    import optuna

_logger = logging.getLogger(__name__)

ARTIFACT_DIR_ENV = "LRSEARCH_ARTIFACT_DIR"
ARTIFACTS_OFF = "off"
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "lr_end", "seconds")


# --- where artifacts go -------------------------------------------------------------------------------------


def default_artifact_dir(storage_url: str | None) -> Path | None:
    """`<database file>.artifacts/` beside a SQLite file; None (no artifacts) for other databases, whose
    workers may run on hosts that share no folder."""
    from lrsearch.errors import ConfigError
    from lrsearch.store.urls import sqlite_file

    if not storage_url:
        return None
    try:
        database = sqlite_file(storage_url)
    except ConfigError:  # not a URL: no artifacts (opening the storage reports it)
        return None
    return None if database is None else database.with_name(database.name + ".artifacts")


def artifact_dir(storage_url: str | None, given: str | Path | None = None) -> Path | None:
    """The artifact folder: `given` (e.g. --artifact-dir), else $LRSEARCH_ARTIFACT_DIR, else the default
    beside a SQLite file. The value `off` turns artifacts off."""
    value = str(given) if given is not None else os.environ.get(ARTIFACT_DIR_ENV, "")
    if value.strip().lower() == ARTIFACTS_OFF:
        return None
    if value.strip():
        return Path(value).expanduser().absolute()
    return default_artifact_dir(storage_url)


def storage_url_of(storage: object) -> str | None:
    """The SQLAlchemy URL behind an Optuna storage (Optuna wraps an RDBStorage in a cache), or None."""
    url = getattr(backend_of(storage), "url", None)
    return url if isinstance(url, str) else None


# --- the hook -----------------------------------------------------------------------------------------------


def publish_trial(trial: optuna.Trial, definition: StudyDefinition, complete: bool) -> None:
    """Called by the trial runner once a trial's result is known, before it is told to Optuna (a finished
    trial takes no more attributes or artifacts). `complete` is False for a pruned trial."""
    try:
        _publish(trial, definition, complete=complete)
    except Exception as e:  # noqa: BLE001 - reviewing aids must not cost a trial
        _logger.warning(
            "trial %d: could not publish its curves and notes for the dashboard: %s: %s",
            trial.number,
            type(e).__name__,
            e,
        )


def _publish(trial: optuna.Trial, definition: StudyDefinition, *, complete: bool) -> None:
    attrs = dict(trial.user_attrs)
    history: list[dict[str, Any]] = list(attrs.get("history", []))
    feasible = complete and bool(attrs.get("feasible"))
    folder = artifact_dir(storage_url_of(trial.storage))
    uploaded = []
    if folder is not None:
        uploaded = _upload_artifacts(trial, folder, history, attrs, definition, plot=complete)

    from lrsearch.store.batching import save_note

    save_note(trial, trial_note(trial.number, attrs, definition, complete=complete, artifacts=uploaded))
    best = _best_candidate(trial.study, (trial.number, attrs) if feasible else None)
    write_study_note(trial.study, study_note(trial.study.study_name, definition, best))


# --- artifacts ----------------------------------------------------------------------------------------------


def _upload_artifacts(
    trial: optuna.Trial,
    folder: Path,
    history: list[dict[str, Any]],
    attrs: Mapping[str, Any],
    definition: StudyDefinition,
    *,
    plot: bool,
) -> list[str]:
    """`trial-N-history.csv`, and with `plot` `trial-N-curves.png` (about 0.3 s of matplotlib per trial, so
    only complete trials get one; pruned ones have the table, the curve attributes and the note)."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    folder.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(folder)
    with tempfile.TemporaryDirectory(prefix="lrsearch-artifacts-") as scratch:
        files = [Path(scratch) / f"trial-{trial.number}-history.csv"]
        write_history_csv(history, files[0])
        if plot:
            files.insert(0, Path(scratch) / f"trial-{trial.number}-curves.png")
            files[0].write_bytes(_curves_png(trial.number, history, attrs, definition))
        for path in files:
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return [path.name for path in files]


def _curves_png(
    number: int, history: list[dict[str, Any]], attrs: Mapping[str, Any], definition: StudyDefinition
) -> bytes:
    from lrsearch.review.plots import trial_curves

    targets = definition.targets
    title = f"trial {number}: {attrs.get('strategy', '')}"
    return trial_curves(
        history,
        title=title,
        min_val=targets.min_val,
        max_train=targets.max_train,
        chosen_epoch=attrs.get("epoch"),
    )


def write_history_csv(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


# --- notes --------------------------------------------------------------------------------------------------


def trial_note(
    number: int,
    attrs: Mapping[str, Any],
    definition: StudyDefinition,
    *,
    complete: bool,
    artifacts: Sequence[str] = (),
) -> str:
    """Markdown for the trial's note in the dashboard: strategy, result, epoch table."""
    targets = definition.targets
    feasible = bool(attrs.get("feasible"))
    if not complete:
        verdict = "pruned (Optuna never picks a pruned trial as best)"
    else:
        verdict = "complete, **feasible**" if feasible else "complete, **not feasible** (it cannot be the best trial)"
    lines = [f"### Trial {number}: {verdict}", "", f"`{attrs.get('strategy', '?')}`", ""]
    if attrs.get("val_acc") is not None:
        kind = "best feasible epoch" if feasible else "no feasible epoch; least infeasible"
        lines += [
            f"- chosen epoch **{attrs.get('epoch')}** ({kind}): val accuracy {attrs['val_acc']:.4f}, "
            f"train accuracy {attrs['train_acc']:.4f}",
            f"- feasible: val accuracy >= {targets.min_val:g} and train accuracy <= {targets.max_train:g}",
        ]
    if attrs.get("stop_reason"):
        lines.append(f"- {attrs['stop_reason']}")
    lines += ["", *epoch_table_markdown(attrs.get("history", []), chosen=attrs.get("epoch"))]
    if artifacts:
        lines += ["", "Curves: artifacts " + ", ".join(f"`{name}`" for name in artifacts) + " (below)."]
    return "\n".join(lines) + "\n"


def epoch_table_markdown(history: Sequence[Mapping[str, Any]], *, chosen: int | None) -> list[str]:
    lines = [
        "| epoch | train loss | val loss | train acc | val acc | LR first step | LR last step |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in history:
        epoch = f"**{row['epoch']}** (chosen)" if row["epoch"] == chosen else str(row["epoch"])
        lines.append(
            f"| {epoch} | {row['train_loss']:.4f} | {row['val_loss']:.4f} | {row['train_acc']:.4f} | "
            f"{row['val_acc']:.4f} | {row['lr']:.3g} | {row.get('lr_end', row['lr']):.3g} |"
        )
    return lines


def _best_candidate(
    study: optuna.Study, current: tuple[int, Mapping[str, Any]] | None
) -> tuple[int, Mapping[str, Any]] | None:
    """The best feasible complete trial, counting the current one (not yet told to Optuna)."""
    from optuna.trial import TrialState

    candidates: list[tuple[int, Mapping[str, Any]]] = [
        (t.number, t.user_attrs)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("feasible") and t.user_attrs.get("val_acc") is not None
    ]
    if current is not None:
        candidates.append(current)
    return max(candidates, key=lambda c: (float(c[1]["val_acc"]), -c[0]), default=None)


def study_note(study_name: str, definition: StudyDefinition, best: tuple[int, Mapping[str, Any]] | None) -> str:
    """Markdown for the study's note in the dashboard: how to read the values; the best feasible trial."""
    low, high = definition.targets.min_val, definition.targets.max_train
    if best is None:
        headline = (
            "**No feasible trial yet**: no complete trial has an epoch with val accuracy >= "
            f"{low:g} and train accuracy <= {high:g}."
        )
    else:
        number, attrs = best
        headline = (
            f"**Best feasible trial: {number}**: val accuracy {float(attrs['val_acc']):.4f} after epoch "
            f"{attrs.get('epoch')} (train accuracy {float(attrs['train_acc']):.4f}), with "
            f"`{attrs.get('strategy', '?')}`.\n\nIts epoch table and PyTorch code: "
            f"`lrsearch best --study-name {study_name}`."
        )
    meaning = (
        "**The objective value** (`val_acc_at_best_feasible_epoch`) is a trial's validation accuracy at "
        f"its best *feasible* epoch: an epoch is feasible when val accuracy >= {low:g} and train accuracy "
        f"<= {high:g}. A trial without a feasible epoch reports its least infeasible epoch instead; Optuna "
        "knows it is infeasible through constraints."
    )
    badge = (
        "**optuna-dashboard does not read Optuna 5 constraints**: its *Best Trial* badge and the history "
        "plot's best line may sit on an infeasible trial. Trust the line above, or sort the trial table by "
        f"the user attribute `{SCORE_ATTR}` (descending; 0 means infeasible or pruned)."
    )
    per_trial = (
        "Per trial: *intermediate values* are the val accuracy of each epoch (the learning-curve plot); user "
        "attributes `feasible`, `val_acc`, `train_acc` and `epoch` describe the chosen epoch, `curve_*` hold "
        "the per-epoch train/val accuracy and loss and the LR; the trial note has the epoch table; artifacts "
        "`trial-N-curves.png` (complete trials) and `trial-N-history.csv` appear when the workers' artifact "
        "folder is shared with the dashboard."
    )
    footer = "_Written by lrsearch as trials finish and when `lrsearch dashboard` starts; edits are replaced._"
    return "\n\n".join([f"## lrsearch study `{study_name}`", headline, meaning, badge, per_trial, footer]) + "\n"


def write_study_note(study: optuna.Study, text: str) -> None:
    from lrsearch.store.batching import save_note

    save_note(study, text, only_if_changed=True)


def refresh_study_note(study: optuna.Study, definition: StudyDefinition) -> None:
    """Rewrite the study note from the stored trials (the authority once no worker is finishing a trial)."""
    from lrsearch.review.results import best_trial

    best = best_trial(study)
    write_study_note(
        study,
        study_note(study.study_name, definition, None if best is None else (best.number, best.user_attrs)),
    )


__all__ = [
    "publish_trial",
    "artifact_dir",
    "refresh_study_note",
    "study_note",
    "trial_note",
    "ARTIFACT_DIR_ENV",
]

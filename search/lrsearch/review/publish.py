"""What a finished trial leaves for people reviewing the study in optuna-dashboard, written by the worker.

Always, in the study database (so it reaches the dashboard from any host):

- user attributes `feasible_val_acc` (the trial's score as lrsearch ranks it: val accuracy at its best
  feasible epoch for a complete feasible trial, 0 otherwise; numeric, so the dashboard can sort by it) and
  `curve_val_acc`, `curve_train_acc`, `curve_val_loss`, `curve_train_loss`, `curve_lr` (one number per epoch,
  short enough for the dashboard to show whole; it cuts the full `history` attribute at 1024 characters);
- a trial note: the strategy, the result and the epoch table (Markdown);
- the study note: what the objective value means and which trial is the best feasible one. optuna-dashboard
  picks its own "Best Trial" badge without the constraints, so the badge may sit on an infeasible trial.

When an artifact folder is configured (see `artifact_dir`): `trial-N-history.csv`, and `trial-N-curves.png`
for a complete trial, shown by the dashboard when it is started with the same folder (`lrsearch dashboard`
finds it the same way).

Publishing is for people: a failure here is logged and never fails the trial.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lrsearch import settings
from lrsearch.review.tables import epoch_table_markdown
from lrsearch.store.optuna_rdb import backend_of
from lrsearch.study.definition import StudyDefinition
from lrsearch.study.record import SCORE_ATTR, TrialRecord
from lrsearch.train.records import EpochRecord

if TYPE_CHECKING:
    import optuna

_logger = logging.getLogger(__name__)

ARTIFACTS_OFF = "off"
HISTORY_COLUMNS = tuple(f.name for f in dataclasses.fields(EpochRecord))  # of the CSV artifact


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
    value = str(given) if given is not None else settings.artifact_dir()
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


def publish_trial(trial: optuna.Trial, definition: StudyDefinition, record: TrialRecord) -> None:
    """Called by the trial runner with the trial's record once its result is known, before it is told to Optuna
    (a finished trial takes no more attributes or artifacts). The record's state is complete or pruned."""
    try:
        _publish(trial, definition, record)
    except Exception as e:  # noqa: BLE001 - reviewing aids must not cost a trial
        _logger.warning(
            "trial %d: could not publish its curves and notes for the dashboard: %s: %s",
            trial.number,
            type(e).__name__,
            e,
        )


def _publish(trial: optuna.Trial, definition: StudyDefinition, record: TrialRecord) -> None:
    folder = artifact_dir(storage_url_of(trial.storage))
    uploaded = []
    if folder is not None:
        uploaded = _upload_artifacts(trial, folder, record, definition)

    from lrsearch.store.batching import save_note

    save_note(trial, trial_note(record, definition, artifacts=uploaded))
    best = _best_candidate(trial.study, record if record.counts_as_best else None)
    write_study_note(trial.study, study_note(trial.study.study_name, definition, best))


# --- artifacts ----------------------------------------------------------------------------------------------


def _upload_artifacts(trial: optuna.Trial, folder: Path, record: TrialRecord, definition: StudyDefinition) -> list[str]:
    """`trial-N-history.csv`, and for a complete trial `trial-N-curves.png` (a plot costs a noticeable
    fraction of a second, so pruned ones have only the table, the curve attributes and the note)."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    folder.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(folder)
    with tempfile.TemporaryDirectory(prefix="lrsearch-artifacts-") as scratch:
        files = [Path(scratch) / f"trial-{trial.number}-history.csv"]
        write_history_csv(record.history, files[0])
        if record.state == "complete":
            files.insert(0, Path(scratch) / f"trial-{trial.number}-curves.png")
            files[0].write_bytes(_curves_png(record, definition))
        for path in files:
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return [path.name for path in files]


def _curves_png(record: TrialRecord, definition: StudyDefinition) -> bytes:
    from lrsearch.review.plots import trial_curves

    targets = definition.targets
    return trial_curves(
        record.history,
        title=f"trial {record.number}: {record.strategy}",
        min_val=targets.min_val,
        max_train=targets.max_train,
        chosen_epoch=record.chosen_epoch,
    )


def write_history_csv(history: Sequence[EpochRecord], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(epoch.as_dict() for epoch in history)


# --- notes --------------------------------------------------------------------------------------------------


def trial_note(record: TrialRecord, definition: StudyDefinition, *, artifacts: Sequence[str] = ()) -> str:
    """Markdown for the trial's note in the dashboard: strategy, result, epoch table."""
    targets = definition.targets
    if record.state != "complete":
        verdict = "pruned (Optuna never picks a pruned trial as best)"
    elif record.feasible:
        verdict = "complete, **feasible**"
    else:
        verdict = "complete, **not feasible** (it cannot be the best trial)"
    lines = [f"### Trial {record.number}: {verdict}", "", f"`{record.strategy or '?'}`", ""]
    if record.val_acc is not None and record.train_acc is not None:
        kind = "best feasible epoch" if record.feasible else "no feasible epoch; least infeasible"
        lines += [
            f"- chosen epoch **{record.chosen_epoch}** ({kind}): val accuracy {record.val_acc:.4f}, "
            f"train accuracy {record.train_acc:.4f}",
            f"- feasible: val accuracy >= {targets.min_val:g} and train accuracy <= {targets.max_train:g}",
        ]
    if record.stop_reason:
        lines.append(f"- {record.stop_reason}")
    lines += ["", *epoch_table_markdown(record.history, chosen=record.chosen_epoch)]
    if artifacts:
        lines += ["", "Curves: artifacts " + ", ".join(f"`{name}`" for name in artifacts) + " (below)."]
    return "\n".join(lines) + "\n"


def _best_candidate(study: optuna.Study, current: TrialRecord | None) -> TrialRecord | None:
    """The best feasible complete trial, counting the current one (not yet told to Optuna)."""
    from optuna.trial import TrialState

    candidates = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    candidates = [c for c in candidates if c.counts_as_best]
    if current is not None:
        candidates.append(current)
    return max(candidates, key=lambda c: (c.score, -c.number), default=None)


def study_note(study_name: str, definition: StudyDefinition, best: TrialRecord | None) -> str:
    """Markdown for the study's note in the dashboard: how to read the values; the best feasible trial."""
    low, high = definition.targets.min_val, definition.targets.max_train
    if best is None:
        headline = (
            "**No feasible trial yet**: no complete trial has an epoch with val accuracy >= "
            f"{low:g} and train accuracy <= {high:g}."
        )
    else:
        headline = (
            f"**Best feasible trial: {best.number}**: val accuracy {best.val_acc:.4f} after epoch "
            f"{best.chosen_epoch} (train accuracy {best.train_acc:.4f}), with "
            f"`{best.strategy or '?'}`.\n\nIts epoch table and PyTorch code: "
            f"`lrsearch best --study-name {study_name}`."
        )
    meaning = (
        "**The objective value** (`val_acc_at_best_feasible_epoch`) is a trial's validation accuracy at "
        f"its best *feasible* epoch: an epoch is feasible when val accuracy >= {low:g} and train accuracy "
        f"<= {high:g}. A trial without a feasible epoch reports its least infeasible epoch instead; Optuna "
        "knows it is infeasible through constraints."
    )
    badge = (
        "**optuna-dashboard picks its *Best Trial* badge without the constraints**: it may sit on an "
        "infeasible trial (`lrsearch dashboard` marks infeasible trials in the plots; a plain optuna-dashboard "
        "shows every trial as feasible). Trust the line above, or sort the trial table by "
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
    from lrsearch.review.results import best_record

    write_study_note(study, study_note(study.study_name, definition, best_record(study)))


__all__ = [
    "publish_trial",
    "artifact_dir",
    "refresh_study_note",
    "study_note",
    "trial_note",
]

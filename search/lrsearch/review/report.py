"""`lrsearch report`: one self-contained HTML file (images embedded as data: URIs, inline CSS, no script, no
external URL, so it opens offline and can be mailed) plus the same figures as PNG files beside it."""

from __future__ import annotations

import base64
import datetime
import html
import statistics
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import LRSearchError
from lrsearch.review.tables import Column, epoch_table_html, html_table
from lrsearch.study.definition import StudyDefinition
from lrsearch.study.record import TrialRecord, epochs_from_json

if TYPE_CHECKING:
    import optuna

TOP_LR_TRIALS = 5
MIN_IMPORTANCE = 0.005  # parameters below it are left out of the importance chart
FINISHED = ("complete", "pruned", "fail")


@dataclass(frozen=True)
class Figure:
    name: str  # file stem of the PNG
    png: bytes
    caption: str


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: str  # HTML


def write_report(study: optuna.Study, definition: StudyDefinition, out: Path, *, storage_label: str = "") -> Path:
    """Write `out/index.html` and `out/<figure>.png`; returns the HTML file."""
    trials = trial_views(study)
    figures = make_figures(study, definition, trials)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for figure in figures.values():
            (out / f"{figure.name}.png").write_bytes(figure.png)
        index = out / "index.html"
        index.write_text(render_html(study, definition, trials, figures, storage_label), encoding="utf-8")
    except OSError as e:
        raise LRSearchError(f"cannot write the report to {out}: {e.strerror or e}; choose another --out") from None
    return index


# --- data ---------------------------------------------------------------------------------------------------


def trial_views(study: optuna.Study) -> list[TrialRecord]:
    return [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]


def ranked(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Complete trials, best first: feasible ones by val accuracy, then infeasible ones by val accuracy."""
    complete = [t for t in trials if t.state == "complete" and t.val_acc is not None]
    return sorted(complete, key=lambda t: (t.counts_as_best, t.val_acc, -t.number), reverse=True)


def family_rows(trials: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """Per scheduler family: finished trials, how many complete / pruned / feasible, best and median val."""
    rows = []
    for family in sorted({t.family for t in trials if t.state in FINISHED}):
        mine = [t for t in trials if t.family == family and t.state in FINISHED]
        feasible = [t.val_acc for t in mine if t.counts_as_best and t.val_acc is not None]
        complete = [t.val_acc for t in mine if t.state == "complete" and t.val_acc is not None]
        rows.append(
            {
                "family": family or "?",
                "trials": len(mine),
                "complete": sum(t.state == "complete" for t in mine),
                "pruned": sum(t.state == "pruned" for t in mine),
                "feasible": len(feasible),
                "best_val": max(feasible, default=None),
                "median_val": statistics.median(complete) if complete else None,
            }
        )
    return sorted(rows, key=lambda r: (r["best_val"] is not None, r["best_val"] or 0.0, r["trials"]), reverse=True)


def compute_summary(study: optuna.Study, trials: Sequence[TrialRecord], epochs: int) -> dict[str, Any]:
    """Epochs and seconds spent, and epochs saved by pruning and by early stopping, over finished trials."""
    finished = [t for t in trials if t.state in FINISHED]
    trained = sum(len(t.history) for t in finished)
    seconds = sum(epoch.seconds for t in finished for epoch in t.history)
    per_epoch = seconds / trained if trained else 0.0
    by_pruning = sum(max(0, epochs - len(t.history)) for t in finished if t.state == "pruned")
    by_stopping = sum(max(0, epochs - len(t.history)) for t in finished if t.state == "complete")
    times = [
        (t.datetime_start, t.datetime_complete)
        for t in study.get_trials(deepcopy=False)
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    trial_seconds = sum((end - start).total_seconds() for start, end in times)
    span = (max(end for _, end in times) - min(start for start, _ in times)).total_seconds() if times else 0.0
    return {
        "finished": len(finished),
        "epochs_trained": trained,
        "epochs_full": len(finished) * epochs,
        "saved_by_pruning": by_pruning,
        "saved_by_stopping": by_stopping,
        "train_seconds": seconds,
        "seconds_per_epoch": per_epoch,
        "trial_seconds": trial_seconds,
        "wall_seconds": span,
    }


def param_importances(study: optuna.Study, trials: Sequence[TrialRecord]) -> tuple[dict[str, float], str]:
    """Importances (Optuna's default evaluator) for the feasible score (val accuracy when feasible, else 0),
    or for the objective value while no trial is feasible; the text says which, or why there are none."""
    import optuna

    complete = [t for t in trials if t.state == "complete"]
    if len(complete) < 2:
        return {}, f"parameter importance needs at least 2 complete trials (the study has {len(complete)})"
    # Negated: given a target, Optuna's default evaluator (PED-ANOVA) finds what makes it *low*.
    scores = {t.number: -(t.val_acc or 0.0) if t.counts_as_best else 0.0 for t in complete}
    use_score = any(t.counts_as_best for t in complete)
    target: Callable[[optuna.trial.FrozenTrial], float] | None = (lambda t: scores[t.number]) if use_score else None
    what = (
        "the feasible score (val accuracy of feasible trials, 0 for infeasible ones)"
        if use_score
        else "the objective value (no trial is feasible yet)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes the importances", UserWarning)
            warnings.filterwarnings("ignore", "Some regimes for parameter", UserWarning)  # said in the caption
            values = optuna.importance.get_param_importances(study, target=target)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return {}, f"parameter importance could not be computed: {e}"
    note = f"importance for {what}, over {len(complete)} complete trials; a family's own parameters count "
    return {k: float(v) for k, v in values.items()}, note + "only that family's trials, so they are less certain"


def make_figures(study: optuna.Study, definition: StudyDefinition, trials: Sequence[TrialRecord]) -> dict[str, Figure]:
    from lrsearch.review import plots

    targets = definition.targets
    top = ranked(trials)[:TOP_LR_TRIALS]
    importance, importance_note = param_importances(study, trials)
    shown = {name: value for name, value in importance.items() if value >= MIN_IMPORTANCE}
    if len(shown) < len(importance):
        importance_note += f"; {len(importance) - len(shown)} parameters below {MIN_IMPORTANCE} are not drawn"
    feasibility, outside = plots.feasibility_map(trials, min_val=targets.min_val, max_train=targets.max_train)
    hidden = f" {outside} epochs with lower accuracies lie outside the window." if outside else ""
    figures = [
        Figure(
            "history",
            plots.optimization_history(trials, min_val=targets.min_val),
            "Each finished trial's val accuracy at its chosen epoch; the line is the best feasible value so far.",
        ),
        Figure(
            "val_curves",
            plots.val_curves_by_family(trials, min_val=targets.min_val),
            "Validation accuracy per epoch of every trial, coloured by LR-scheduler family (thin: pruned).",
        ),
        Figure(
            "lr_curves",
            plots.lr_curves(top),
            f"Learning rate over the epochs of the top {len(top)} complete trials (feasible first); each "
            "epoch "
            "is "
            "drawn from the LR of its first step to that of its last, and a dot marks the chosen epoch.",
        ),
        Figure(
            "feasibility",
            feasibility,
            f"Train vs val accuracy. Feasible: val accuracy >= {targets.min_val:g} and train accuracy <= "
            f"{targets.max_train:g} (shaded); the star is the best feasible trial.{hidden}",
        ),
        Figure(
            "importance",
            plots.importances(shown, note="" if shown else importance_note),
            importance_note[:1].upper() + importance_note[1:] + ".",
        ),
    ]
    return {f.name: f for f in figures}


# --- HTML ---------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1em 2em 4em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; } .muted { color: #666; } figure { margin: 0; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; } th { background: #f4f4f4; }
td.text, th.text { text-align: left; } tr.chosen { background: #e8f5e9; font-weight: 600; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; border: 1px solid #e1e4e8; font-size: 0.9em; }
.best { font-size: 1.1em; } .warn { color: #a33; }
"""


def render_html(
    study: optuna.Study,
    definition: StudyDefinition,
    trials: Sequence[TrialRecord],
    figures: Mapping[str, Figure],
    storage_label: str,
) -> str:
    sections = [
        Section("summary", "Study", _summary_html(study, definition, trials, storage_label)),
        Section("best", "Best strategy", _best_html(study, definition)),
        Section("history", "Optimization history", _figure_html(figures["history"])),
        Section("curves", "Validation accuracy by scheduler family", _figure_html(figures["val_curves"])),
        Section("lr", "LR per epoch of the top trials", _figure_html(figures["lr_curves"])),
        Section("feasibility", "Train vs val accuracy", _figure_html(figures["feasibility"])),
        Section("importance", "Parameter importance", _figure_html(figures["importance"])),
        Section("families", "Scheduler families", _families_html(family_rows(trials))),
        Section(
            "compute",
            "Compute spent and saved",
            _compute_html(compute_summary(study, trials, definition.epochs)),
        ),
        Section("trials", "All trials", _trials_html(study)),
    ]
    nav = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{s.id}">\n<h2>{html.escape(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    title = f"lrsearch report: {study.study_name}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{CSS}</style>\n</head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.caption)}" '
        f'data-file="{figure.name}.png">\n<figcaption>{html.escape(figure.caption)} '
        f"(<code>{figure.name}.png</code>)</figcaption></figure>"
    )


def _table(
    headers: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    *,
    text: Collection[int] = (0,),
    classes: Sequence[str] = (),
) -> str:
    """An HTML table; columns in `text` are left-aligned, `classes` are CSS classes of the rows."""

    def cell(tag: str, index: int, value: Any) -> str:
        kind = ' class="text"' if index in text else ""
        return f"<{tag}{kind}>{html.escape(str(value))}</{tag}>"

    head = "" if headers is None else "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers))
    lines = ["<table>", head + ("</tr></thead>" if head else ""), "<tbody>"]
    for n, row in enumerate(rows):
        css = f' class="{classes[n]}"' if n < len(classes) and classes[n] else ""
        lines.append(f"<tr{css}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return "\n".join([*lines, "</tbody>", "</table>"])


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _summary_html(
    study: optuna.Study, definition: StudyDefinition, trials: Sequence[TrialRecord], storage_label: str
) -> str:
    count = {
        state: sum(t.state == state for t in trials) for state in ("complete", "pruned", "fail", "running", "waiting")
    }
    feasible = sum(t.counts_as_best for t in trials)
    targets = definition.targets
    rows = [
        ("Study", study.study_name),
        ("Storage", storage_label or "-"),
        ("Objective", definition.objective),
        (
            "Trials",
            f"{sum(count[s] for s in FINISHED)} finished of {definition.trials}: "
            f"{count['complete']} complete "
            f"({feasible} feasible), {count['pruned']} pruned, {count['fail']} failed"
            + (f", {count['running']} running" if count["running"] else ""),
        ),
        ("Epoch budget per trial", definition.epochs),
        (
            "Feasible epoch",
            f"val accuracy >= {targets.min_val:g} and train accuracy <= {targets.max_train:g} "
            f"(train accuracy measured: {targets.train_accuracy})",
        ),
        (
            "Value of a trial",
            "val accuracy at its best feasible epoch (or its least infeasible epoch, which makes it infeasible)",
        ),
        ("Sampler / pruner", f"{definition.sampler.name} / {definition.pruner.name}"),
        ("Report written", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]
    return _table(None, rows, text=(0, 1))


def _best_html(study: optuna.Study, definition: StudyDefinition) -> str:
    from lrsearch.review.results import best_summary

    try:
        summary = best_summary(study, definition)
    except LRSearchError as e:
        return f'<p class="warn">{html.escape(str(e))}</p>'
    chosen = summary["epochs_to_train"]
    return "\n".join(
        [
            f'<p class="best">Trial {summary["trial"]}: <code>{html.escape(summary["strategy"])}</code></p>',
            f"<p>Val accuracy <b>{summary['val_acc']:.4f}</b>, train accuracy "
            f"{summary['train_acc']:.4f} after epoch <b>{chosen}</b>: train {chosen} of the "
            f"{summary['scheduled_epochs']} epochs the schedule is "
            "planned for "
            f"(seed {summary['seed']}).</p>",
            epoch_table_html(epochs_from_json(summary["history"]), chosen=chosen),
            "<p>PyTorch code for your own training loop (uses <code>model</code>, <code>train_loader</code>, "
            "<code>loss_fn</code>):</p>",
            f"<pre><code>{html.escape(summary['code'])}</code></pre>",
        ]
    )


def _families_html(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<p class="muted">No finished trial yet.</p>'
    table = _table(
        [
            "scheduler",
            "trials",
            "complete",
            "pruned",
            "feasible",
            "best val (feasible)",
            "median val (complete)",
        ],
        [
            [
                r["family"],
                r["trials"],
                r["complete"],
                r["pruned"],
                r["feasible"],
                _fmt(r["best_val"]),
                _fmt(r["median_val"]),
            ]
            for r in rows
        ],
    )
    return (
        f'{table}\n<p class="muted">Trials: finished trials (complete, pruned or failed). Best val: the best '
        "val accuracy of a feasible complete trial. Median val: over complete trials, each at its chosen "
        "epoch.</p>"
    )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def _compute_html(c: Mapping[str, Any]) -> str:
    full = c["epochs_full"] or 1
    per = c["seconds_per_epoch"]

    def saved(epochs: int) -> str:
        share = 100 * epochs / full
        return f"{epochs} epochs ({share:.0f}% of the full budget, about {_duration(epochs * per)})"

    rows = [
        ("Finished trials", c["finished"]),
        (
            "Epochs trained",
            f"{c['epochs_trained']} of {c['epochs_full']} (every finished trial run to its budget)",
        ),
        ("Saved by pruning", saved(c["saved_by_pruning"])),
        (
            "Saved by early stopping (train accuracy above the ceiling, or divergence)",
            saved(c["saved_by_stopping"]),
        ),
        ("Training time (sum of epoch times)", f"{_duration(c['train_seconds'])}, {per:.2f}s per epoch"),
        (
            "Trial time (sum of trial durations, with data loading and evaluation)",
            _duration(c["trial_seconds"]),
        ),
        ("Wall time (first trial start to last trial end)", _duration(c["wall_seconds"])),
    ]
    return _table(None, rows, text=(0, 1))


def _trials_html(study: optuna.Study) -> str:
    from lrsearch.review.results import TRIAL_COLUMNS, trial_rows

    rows = trial_rows(study)
    if not rows:
        return '<p class="muted">No trial yet.</p>'
    stop_reason: Column[Mapping[str, Any]] = Column("stop reason", lambda r: r["stop_reason"], align="left")
    return html_table((*TRIAL_COLUMNS, stop_reason), rows)


__all__ = ["write_report", "trial_views", "family_rows", "compute_summary", "param_importances"]

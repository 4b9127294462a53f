"""The PNG figures of lrsearch: a trial's learning curves, and the report's study-wide plots.

Figures are plain matplotlib `Figure` objects rendered by the Agg canvas, so no GUI backend and no pyplot
state is involved; every function takes plain data (trial records, epoch records) and returns PNG bytes.
Importing this module imports matplotlib: import it inside the functions that draw.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from lrsearch.strategy.schedulers import SCHEDULERS
from lrsearch.study.record import TrialRecord
from lrsearch.train.records import EpochRecord

DPI = 100
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
)
FEASIBLE_FILL = "#2ca02c"


def family_colour(family: str) -> str:
    """A family's colour: the same in every run (its place among the known families, or for another name a
    digest of it: Python's `hash` of a string changes from run to run)."""
    names = list(SCHEDULERS)
    index = names.index(family) if family in names else len(names) + zlib.crc32(family.encode()) % 2
    return _PALETTE[index % len(_PALETTE)]


def to_png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _finite(values: Iterable[float | None]) -> list[float]:
    """Numbers to plot: missing or non-finite values (a diverged epoch) become NaN, which plots as a gap."""
    return [math.nan if value is None or not math.isfinite(value) else float(value) for value in values]


Metric = Callable[[EpochRecord], float]


def _train_acc(epoch: EpochRecord) -> float:
    return epoch.train_acc


def _val_acc(epoch: EpochRecord) -> float:
    return epoch.val_acc


def _column(history: Sequence[EpochRecord], metric: Metric) -> list[float]:
    return _finite(metric(epoch) for epoch in history)


def _lr_path(history: Sequence[EpochRecord]) -> tuple[list[float], list[float]]:
    """The LR across epochs: from each epoch's first step (at x = epoch - 1) to its last (at x = epoch)."""
    xs: list[float] = []
    ys: list[float] = []
    for epoch in history:
        xs += [epoch.epoch - 1, epoch.epoch]
        ys += _finite([epoch.lr, epoch.lr_end])
    return xs, ys


def _log_if_positive(axes: Axes, values: Iterable[float]) -> None:
    """A log y axis labelled in plain numbers (matplotlib's 10^x labels go through its slow TeX parser)."""
    if any(v > 0 for v in values if math.isfinite(v)):
        axes.set_yscale("log", nonpositive="mask")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())


def _message(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=12, color="#555555")
    axes.set_xticks([])
    axes.set_yticks([])


def _target_lines(axes: Axes, min_val: float, max_train: float | None = None) -> None:
    axes.axhline(min_val, color="#555555", linestyle="--", linewidth=1, label=f"min val {min_val:g}")
    if max_train is not None:
        axes.axhline(max_train, color="#aa3333", linestyle=":", linewidth=1, label=f"max train {max_train:g}")


def trial_curves(
    history: Sequence[EpochRecord],
    *,
    title: str,
    min_val: float,
    max_train: float,
    chosen_epoch: int | None = None,
) -> bytes:
    """One trial: train/val accuracy with the targets, train/val loss, and the LR per epoch."""
    figure = Figure(figsize=(12, 3.4))  # fixed margins: a layout engine costs more than the drawing
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.83, wspace=0.2)
    accuracy, loss, lr = figure.subplots(1, 3)
    epochs = [epoch.epoch for epoch in history]
    if not epochs:
        _message(accuracy, "no epoch finished")
    accuracy.plot(epochs, _column(history, _train_acc), "o-", color="#ff7f0e", markersize=3, label="train acc")
    accuracy.plot(epochs, _column(history, _val_acc), "o-", color="#1f77b4", markersize=3, label="val acc")
    _target_lines(accuracy, min_val, max_train)
    loss.plot(epochs, _column(history, lambda e: e.train_loss), "o-", color="#ff7f0e", markersize=3, label="train loss")
    loss.plot(epochs, _column(history, lambda e: e.val_loss), "o-", color="#1f77b4", markersize=3, label="val loss")
    xs, ys = _lr_path(history)
    lr.plot(xs, ys, "-", color="#2ca02c", label="LR")
    _log_if_positive(lr, ys)
    if chosen_epoch is not None:
        for axes in (accuracy, loss):
            axes.axvline(chosen_epoch, color="#999999", linewidth=1, label=f"chosen epoch {chosen_epoch}")
    for axes, name in ((accuracy, "accuracy"), (loss, "loss"), (lr, "learning rate")):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    figure.suptitle(title, fontsize=10)
    return to_png(figure)


def optimization_history(trials: Sequence[TrialRecord], *, min_val: float) -> bytes:
    """Each finished trial's value (feasible, infeasible, pruned) and the best feasible value so far."""
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.subplots()
    groups = {
        "complete, feasible": ([t for t in trials if t.counts_as_best], "o", "#2ca02c"),
        "complete, infeasible": (
            [t for t in trials if t.state == "complete" and not t.counts_as_best],
            "x",
            "#d62728",
        ),
        "pruned (val at its chosen epoch)": ([t for t in trials if t.state == "pruned"], ".", "#999999"),
    }
    for label, (group, marker, colour) in groups.items():
        points = [(t.number, t.val_acc) for t in group if t.val_acc is not None]
        if points:
            axes.plot(*zip(*points, strict=True), marker, color=colour, linestyle="none", label=label)
    best: list[tuple[int, float]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.counts_as_best and (not best or trial.val_acc > best[-1][1]):  # type: ignore[operator]
            best.append((trial.number, trial.val_acc))  # type: ignore[arg-type]
    if best:
        last = max(t.number for t in trials)
        xs, ys = zip(*[*best, (last, best[-1][1])], strict=True)
        axes.step(xs, ys, where="post", color="#2ca02c", linewidth=1.5, label="best feasible so far")
    if not any(t.val_acc is not None for t in trials):
        _message(axes, "no finished trial yet")
    else:
        _target_lines(axes, min_val)
        axes.legend(fontsize=8, loc="lower right")
    axes.set_xlabel("trial number")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("val accuracy (at the chosen epoch)")
    axes.grid(alpha=0.3)
    return to_png(figure)


def val_curves_by_family(trials: Sequence[TrialRecord], *, min_val: float) -> bytes:
    """Validation accuracy per epoch of every trial, one colour per scheduler family."""
    figure = Figure(figsize=(9, 5), layout="constrained")
    axes = figure.subplots()
    families: dict[str, str] = {}
    for trial in trials:
        if not trial.history:
            continue
        colour = family_colour(trial.family)
        families.setdefault(trial.family or "?", colour)
        epochs = [epoch.epoch for epoch in trial.history]
        width, alpha = (0.8, 0.45) if trial.state == "pruned" else (1.4, 0.85)
        axes.plot(epochs, _column(trial.history, _val_acc), "-", color=colour, linewidth=width, alpha=alpha)
    if not families:
        _message(axes, "no trial has finished an epoch yet")
    else:
        _target_lines(axes, min_val)
        handles = [Line2D([], [], color=c, label=f) for f, c in sorted(families.items())]
        handles.append(Line2D([], [], color="#555555", linestyle="--", label=f"min val {min_val:g}"))
        axes.legend(handles=handles, fontsize=8, loc="lower right", title="scheduler (thin: pruned)")
        axes.set_ylim(bottom=max(0.0, min(min_val - 0.1, _low_quantile(trials, _val_acc))))
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("val accuracy")
    axes.grid(alpha=0.3)
    return to_png(figure)


def _low_quantile(trials: Sequence[TrialRecord], metric: Metric, q: float = 0.1) -> float:
    values = sorted(v for t in trials for v in _column(t.history, metric) if not math.isnan(v))
    return values[int(q * (len(values) - 1))] if values else 0.0


def lr_curves(trials: Sequence[TrialRecord]) -> bytes:
    """The LR over the epochs of the given (top) trials; a dot marks each trial's chosen epoch."""
    figure = Figure(figsize=(9, 4.5 + 0.2 * len(trials)), layout="constrained")
    axes = figure.subplots()
    all_lrs: list[float] = []
    for rank, trial in enumerate(trials, start=1):
        xs, ys = _lr_path(trial.history)
        all_lrs += ys
        verdict = f"val {trial.val_acc:.4f}" if trial.val_acc is not None else "no result"
        verdict += "" if trial.counts_as_best else ", infeasible"
        label = f"#{rank} trial {trial.number} ({verdict}): {trial.strategy}"
        line = axes.plot(xs, ys, "-", linewidth=1.6, label=label[:140])[0]
        chosen = trial.chosen
        if chosen is not None:
            axes.plot([chosen.epoch], _finite([chosen.lr_end]), "o", color=line.get_color())
    if not all_lrs:
        _message(axes, "no trial has finished an epoch yet")
    else:
        _log_if_positive(axes, all_lrs)
        figure.legend(fontsize=7, loc="outside lower center")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("learning rate")
    axes.grid(alpha=0.3, which="both")
    return to_png(figure)


def importances(values: Mapping[str, float], *, note: str = "") -> bytes:
    """Horizontal bars, most important parameter on top; `note` replaces the bars when there are none."""
    figure = Figure(figsize=(8, max(2.5, 0.45 * len(values) + 1.2)), layout="constrained")
    axes = figure.subplots()
    if not values:
        _message(axes, note or "not enough complete trials")
        return to_png(figure)
    names = list(values)[::-1]
    axes.barh(names, [values[n] for n in names], color="#1f77b4")
    for y, name in enumerate(names):
        axes.text(values[name], y, f" {values[name]:.2f}", va="center", fontsize=8)
    axes.set_xlabel("importance")
    axes.set_xlim(0, max(values.values()) * 1.15 or 1.0)
    if note:
        axes.set_title(note, fontsize=9)
    axes.grid(alpha=0.3, axis="x")
    return to_png(figure)


def feasibility_map(trials: Sequence[TrialRecord], *, min_val: float, max_train: float) -> tuple[bytes, int]:
    """Train vs val accuracy: every epoch (small) and every trial's chosen epoch (large), the targets and the
    feasible region shaded. Returns the PNG and how many points lie outside the drawn window."""
    figure = Figure(figsize=(8, 6.5), layout="constrained")
    axes = figure.subplots()
    pairs = [
        (x, y)
        for t in trials
        for x, y in zip(_column(t.history, _train_acc), _column(t.history, _val_acc), strict=True)
        if not (math.isnan(x) or math.isnan(y))
    ]
    if not pairs:
        _message(axes, "no trial has finished an epoch yet")
        return to_png(figure), 0
    low = max(
        0.0,
        min(min_val, max_train) - 0.15,
        min(_quantile([x for x, _ in pairs]), _quantile([y for _, y in pairs])) - 0.02,
    )
    low = min(low, min_val - 0.05, max_train - 0.05)
    axes.set_xlim(low, 1.0)
    axes.set_ylim(low, 1.0)
    axes.axvspan(
        low,
        max_train,
        ymin=(min_val - low) / (1.0 - low),
        ymax=1.0,
        color=FEASIBLE_FILL,
        alpha=0.12,
        label="feasible region",
    )
    axes.axhline(min_val, color="#555555", linestyle="--", linewidth=1, label=f"val acc = {min_val:g}")
    axes.axvline(max_train, color="#aa3333", linestyle=":", linewidth=1, label=f"train acc = {max_train:g}")
    families: dict[str, str] = {}
    for trial in trials:
        colour = family_colour(trial.family)
        if trial.history:
            families.setdefault(trial.family or "?", colour)
        axes.scatter(
            _column(trial.history, _train_acc),
            _column(trial.history, _val_acc),
            s=6,
            color=colour,
            alpha=0.35,
            linewidths=0,
        )
        if trial.train_acc is not None and trial.val_acc is not None and trial.state in ("complete", "pruned"):
            marker = "o" if trial.state == "complete" else "^"
            edge = "black" if trial.counts_as_best else "none"
            axes.scatter(
                [trial.train_acc],
                [trial.val_acc],
                s=40,
                color=colour,
                marker=marker,
                edgecolors=edge,
                linewidths=0.8,
                zorder=3,
            )
    best = max((t for t in trials if t.counts_as_best), key=lambda t: t.val_acc or 0.0, default=None)
    if best is not None:
        axes.scatter(
            _finite([best.train_acc]),
            _finite([best.val_acc]),
            s=260,
            marker="*",
            color="gold",
            edgecolors="black",
            zorder=4,
            label=f"best feasible: trial {best.number}",
        )
    outside = sum(x < low or y < low for x, y in pairs)
    handles, _ = axes.get_legend_handles_labels()
    handles += [Line2D([], [], color=c, marker="o", linestyle="none", label=f) for f, c in sorted(families.items())]
    axes.legend(handles=handles, fontsize=7, loc="lower right")
    axes.set_xlabel("train accuracy")
    axes.set_ylabel("val accuracy")
    axes.set_title(
        "dots: epochs; large: each trial's chosen epoch (o complete, ^ pruned; black edge: feasible)",
        fontsize=8,
    )
    axes.grid(alpha=0.3)
    return to_png(figure), outside


def _quantile(values: Sequence[float], q: float = 0.05) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]

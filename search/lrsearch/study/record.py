"""What a finished trial stores for people: its score and per-epoch curves as dashboard-friendly attributes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CURVES = ("val_acc", "train_acc", "val_loss", "train_loss", "lr")
SCORE_ATTR = "feasible_val_acc"


def dashboard_attrs(
    summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]], *, complete: bool
) -> dict[str, Any]:
    """The user attributes for the dashboard's trial table: the score and the per-epoch curves. The trial
    runner writes them with the trial's summary (`summary`: feasible, val_acc, ...)."""
    score = float(summary["val_acc"]) if complete and summary.get("feasible") else 0.0
    return {SCORE_ATTR: score, **{f"curve_{key}": [_short(row.get(key)) for row in history] for key in CURVES}}


def _short(value: Any) -> float | None:
    """A number to 4 significant digits for the curve attributes; None for a missing or non-finite value."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(f"{value:.4g}")

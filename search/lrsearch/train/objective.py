"""What an objective supplies (model, data, batch size) and how one is found by name or `module:attr`.

lrsearch supplies the training loop: an objective never writes one. Loading an objective by `module:attr` imports
and runs that module's code, exactly as `python -c "import module"` would.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrsearch.errors import ObjectiveError

if TYPE_CHECKING:
    import torch

ENTRY_POINT_GROUP = "lrsearch.objectives"
BUILT_IN = {"mnist_mlp": "lrsearch_objectives.mnist_mlp:MnistMLP"}


@dataclass(frozen=True)
class TrainingData:
    """Inputs and integer class targets, already on the training device."""

    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    val_inputs: torch.Tensor
    val_targets: torch.Tensor


class Objective:
    """Subclass this (or match its shape): a classification model and its data; lrsearch does the training.

    The loop minimises `loss` and measures accuracy as argmax(model(x)) == target.
    """

    batch_size: int = 64
    # True: the model is a plain MLP (nn.Sequential of Linear and ReLU, a Flatten first at most) and `loss` is
    # this class's cross-entropy; lrsearch may then compute the gradients by hand instead of by autograd (the
    # same values, a faster step; lrsearch.train.mlp_step). It still uses autograd where it sees anything else.
    fast_mlp_step: bool = False

    def load_data(self, device: torch.device, data_dir: Path | None) -> TrainingData:
        """Read the data once per worker process and put it on `device`."""
        raise NotImplementedError

    def make_model(self) -> torch.nn.Module:
        """A freshly initialised model (lrsearch seeds torch before calling this)."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(outputs, targets)


def load_objective(name: str, options: Mapping[str, Any]) -> Objective:
    """The objective `name` (a registered name or `module:attr`), made with the study file's [objective] options."""
    factory = _find_factory(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**options)
        except TypeError as e:
            accepted = ", ".join(p for p in signature.parameters if p != "self") or "none"
            raise ObjectiveError(
                f"objective '{name}' does not accept these [objective] options ({e}); accepted: {accepted}"
            ) from None
    try:
        objective = factory(**options)
    except Exception as e:  # the user's constructor: anything it raises is reported, not a traceback
        raise ObjectiveError(f"objective '{name}' could not be created: {type(e).__name__}: {e}") from e
    missing = [attr for attr in ("load_data", "make_model", "loss") if not callable(getattr(objective, attr, None))]
    batch_size = getattr(objective, "batch_size", None)
    if missing or not isinstance(batch_size, int) or batch_size < 1:
        problems = [f"no method {m}()" for m in missing]
        if not isinstance(batch_size, int) or batch_size < 1:
            problems.append(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        raise ObjectiveError(
            f"objective '{name}' lacks the objective interface: {'; '.join(problems)} (subclass lrsearch.Objective)"
        )
    return objective  # type: ignore[no-any-return]


def _find_factory(name: str) -> Callable[..., Any]:
    target = name if ":" in name else _registered(name)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ObjectiveError(f"objective '{name}': write it as module:attr, e.g. my_package.objectives:MyObjective")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ObjectiveError(
            f"objective '{name}': cannot import module '{module_name}': {type(e).__name__}: {e}"
        ) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ObjectiveError(f"objective '{name}': module '{module_name}' has no callable '{attr}'")
    return factory  # type: ignore[no-any-return]


def _registered(name: str) -> str:
    registered = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    registered = {**BUILT_IN, **registered}
    if name not in registered:
        raise ObjectiveError(
            f"unknown objective '{name}'; registered: {', '.join(sorted(registered))}, or give module:attr"
        )
    return registered[name]


def load_data(objective: Objective, name: str, device: torch.device, data_dir: Path | None) -> TrainingData:
    """The objective's data; an unexpected error in the user's loader becomes an ObjectiveError naming it."""
    from lrsearch.errors import LRSearchError

    try:
        return objective.load_data(device, data_dir)
    except LRSearchError:
        raise
    except Exception as e:  # the user's code: report it, do not crash with a traceback
        raise ObjectiveError(f"objective '{name}' could not load its data: {type(e).__name__}: {e}") from e

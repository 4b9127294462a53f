"""The optimizer families a strategy can use: PyTorch's own classes, with the arguments lrsearch samples."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lrsearch.strategy.params import Choice, FloatRange, ParamSpec


@dataclass(frozen=True)
class OptimizerFamily:
    name: str
    torch_name: str  # the class in torch.optim
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    # A parameter listed here is sampled only when its condition holds for the parameters sampled before it.
    conditions: Mapping[str, Callable[[Mapping[str, Any]], bool]] = field(default_factory=dict)


OPTIMIZERS: dict[str, OptimizerFamily] = {
    family.name: family
    for family in (
        OptimizerFamily(
            "sgd",
            "SGD",
            {
                "momentum": FloatRange(0.0, 0.99, minimum=0.0, maximum=0.999),
                "nesterov": Choice((False, True), allowed=(False, True)),
            },
            # Nesterov momentum needs a non-zero momentum.
            {"nesterov": lambda sampled: sampled["momentum"] > 0},
        ),
        OptimizerFamily("adam", "Adam"),
        OptimizerFamily("adamw", "AdamW"),
        OptimizerFamily("rmsprop", "RMSprop"),
        OptimizerFamily("adagrad", "Adagrad"),
    )
}

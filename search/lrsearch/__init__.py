"""lrsearch: find the learning-rate strategy that makes a PyTorch model train well.

The public types an objective needs are importable from here; torch is loaded only when one of them is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrsearch.errors import ConfigError, DataError, LRSearchError, ObjectiveError, StorageError

if TYPE_CHECKING:
    from lrsearch.strategy.strategy import LRStrategy
    from lrsearch.train.objective import Objective, TrainingData

__all__ = [
    "ConfigError",
    "DataError",
    "LRSearchError",
    "LRStrategy",
    "Objective",
    "ObjectiveError",
    "StorageError",
    "TrainingData",
]

_LAZY = {
    "Objective": "lrsearch.train.objective",
    "TrainingData": "lrsearch.train.objective",
    "LRStrategy": "lrsearch.strategy.strategy",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lrsearch' has no attribute {name!r}")

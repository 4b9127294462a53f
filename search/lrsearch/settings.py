"""The environment variables lrsearch reads, each read when it is used (never at import) and checked.

A value that cannot be used (`20s`, `-1`, `abc`) is a ConfigError that names the variable, its value and what
is accepted. An unset or empty variable means its default. `check_all()` reads them all, so that a command
that runs trials refuses a bad one before it touches the database.

    LRSEARCH_HEARTBEAT_INTERVAL     seconds between a running trial's heartbeats        20, whole number >= 1
    LRSEARCH_HEARTBEAT_GRACE        seconds without a heartbeat before a trial is dead  120, whole number >= 1
    LRSEARCH_STORAGE_RETRY_SECONDS  how long a worker retries an unreachable database   300, number >= 0
    LRSEARCH_PROGRESS_INTERVAL      seconds between progress lines off a terminal       30, number >= 0
    LRSEARCH_TORCH_THREADS          torch CPU threads of a worker                       torch's own, whole >= 1
    LRSEARCH_ARTIFACT_DIR           folder of per-trial curve files, or `off`           beside a SQLite file

(LRSEARCH_STORAGE, LRSEARCH_DATA_DIR, LRSEARCH_WORKERS are the command-line options' own variables; click
reads and checks them with their options.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from lrsearch.errors import ConfigError

T = TypeVar("T", int, float)


@dataclass(frozen=True)
class NumberSetting(Generic[T]):
    """A number read from the environment variable `name`: `default` when unset or empty, else at least
    `minimum`."""

    name: str
    kind: Callable[[str], T]
    default: T | None
    minimum: T

    def accepted(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        default = "" if self.default is None else f", default {self.default}"
        return f"{what} of {self.minimum} or more{default}"

    def get(self) -> T | None:
        text = os.environ.get(self.name, "").strip()
        if not text:
            return self.default
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value < self.minimum:  # value != value: NaN
            raise ConfigError(f"environment variable {self.name}={text!r}: give {self.accepted()}")
        return value

    def value(self) -> T:
        """The value, for a setting with a default."""
        value = self.get()
        assert value is not None, f"{self.name} has no default"
        return value


HEARTBEAT_INTERVAL = NumberSetting("LRSEARCH_HEARTBEAT_INTERVAL", int, 20, 1)
HEARTBEAT_GRACE = NumberSetting("LRSEARCH_HEARTBEAT_GRACE", int, 120, 1)
STORAGE_RETRY_SECONDS = NumberSetting("LRSEARCH_STORAGE_RETRY_SECONDS", float, 300.0, 0.0)
PROGRESS_INTERVAL = NumberSetting("LRSEARCH_PROGRESS_INTERVAL", float, 30.0, 0.0)
TORCH_THREADS = NumberSetting("LRSEARCH_TORCH_THREADS", int, None, 1)
ARTIFACT_DIR = "LRSEARCH_ARTIFACT_DIR"  # any text: a folder, or `off`


def heartbeat_interval() -> int:
    """Seconds between the heartbeats of a running trial."""
    return HEARTBEAT_INTERVAL.value()


def heartbeat_grace() -> int:
    """Seconds without a heartbeat after which a trial's worker is taken for dead."""
    return HEARTBEAT_GRACE.value()


def storage_retry_seconds() -> float:
    """How long a worker retries a database call that fails for a transient reason."""
    return STORAGE_RETRY_SECONDS.value()


def progress_interval() -> float:
    """Seconds between two progress lines when stderr is not a terminal (0: a line per trial)."""
    return PROGRESS_INTERVAL.value()


def torch_threads() -> int | None:
    """torch CPU threads of a worker; None leaves torch's own choice."""
    return TORCH_THREADS.get()


def artifact_dir() -> str:
    """The artifact folder given in the environment ('' when unset; `off` turns artifacts off)."""
    return os.environ.get(ARTIFACT_DIR, "")


NUMBER_SETTINGS: tuple[NumberSetting[int] | NumberSetting[float], ...] = (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_GRACE,
    STORAGE_RETRY_SECONDS,
    PROGRESS_INTERVAL,
    TORCH_THREADS,
)


def check_all() -> None:
    """Read every setting: a bad one is a ConfigError now rather than in the middle of a run."""
    for setting in NUMBER_SETTINGS:
        setting.get()


__all__ = [
    "NumberSetting",
    "check_all",
    "heartbeat_interval",
    "heartbeat_grace",
    "storage_retry_seconds",
    "progress_interval",
    "torch_threads",
    "artifact_dir",
]

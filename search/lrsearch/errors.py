"""The errors lrsearch raises on purpose: each says what was wrong and what to do about it."""

from __future__ import annotations


class LRSearchError(Exception):
    """Base of every error lrsearch raises for a problem the user can fix."""

    exit_code = 1  # of the `lrsearch` command that stops with it (ConfigError: 2, bad input)


class ConfigError(LRSearchError):
    """A study file, a command-line option or a stored study definition is not valid."""


class DataError(LRSearchError):
    """An objective's data cannot be read."""


class ObjectiveError(LRSearchError):
    """An objective cannot be found, imported or used."""


class StorageError(LRSearchError):
    """The study database cannot be reached, or holds something unexpected."""


class DatabaseUnreachableError(StorageError):
    """A worker's database stayed unreachable for LRSEARCH_STORAGE_RETRY_SECONDS: the worker stops."""

    exit_code = 4


class TrialsFailingError(ObjectiveError):
    """Trial after trial raised in a worker (a bug in the objective, a model too big for the device): it stops."""

    exit_code = 3

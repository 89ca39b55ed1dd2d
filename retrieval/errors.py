"""Exceptions raised by densezip.

Every error subclasses the matching builtin, so ``except ValueError`` keeps working::

    RetrievalError
    ├── ConfigError(ValueError)            bad option or argument value
    ├── ShapeError(ValueError)             array shape / dtype / dimension mismatch, NaN or inf
    ├── DataError(ValueError)              malformed or missing data set files (BEIR loader)
    ├── IndexFormatError(ValueError)       unreadable, corrupt or too-new saved index
    ├── LockTimeoutError(TimeoutError)     another process kept updating a collection past the wait
    ├── NotTrainedError(RuntimeError)      add() / search() before train()
    ├── MissingDependencyError(ImportError) optional package or device not available
    ├── ShardError(RuntimeError)           a shard of a ShardedIndex failed (which one: .failures)
    └── UnknownIdError(KeyError)           delete() or a filter names an id not in the index

Messages say what was expected, what arrived and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "IndexFormatError",
    "LockTimeoutError",
    "MissingDependencyError",
    "NotTrainedError",
    "RetrievalError",
    "ShapeError",
    "ShardError",
    "UnknownIdError",
]


class RetrievalError(Exception):
    """Base class of every densezip error."""


class ConfigError(RetrievalError, ValueError):
    """An option or argument has a value the library cannot use."""


class ShapeError(RetrievalError, ValueError):
    """An array has the wrong shape, dtype, dimension, or non-finite values."""


class DataError(RetrievalError, ValueError):
    """A data set directory or file is missing or malformed."""


class IndexFormatError(RetrievalError, ValueError):
    """A saved index directory is missing, corrupt, or written by a newer format."""


class LockTimeoutError(RetrievalError, TimeoutError):
    """Another process held the update lock of a collection longer than the caller would wait."""


class NotTrainedError(RetrievalError, RuntimeError):
    """An index or compressor was used before it was trained."""


class MissingDependencyError(RetrievalError, ImportError):
    """An optional dependency or a device needed by a feature is not available."""


class UnknownIdError(RetrievalError, KeyError):
    """A document id passed to delete() or a filter is not in the index."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ShardError(RetrievalError, RuntimeError):
    """One or more shards of a ``ShardedIndex`` failed (a dead actor, an unreadable file, ...).

    Attributes
    ----------
    failures : dict of int to BaseException
        Shard number -> the exception it raised.
    """

    def __init__(self, message: str, *, failures: dict[int, BaseException] | None = None) -> None:
        super().__init__(message)
        self.failures: dict[int, BaseException] = dict(failures or {})

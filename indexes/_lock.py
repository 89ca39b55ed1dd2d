"""The readers-writer lock that makes every index safe to share between threads.

Discipline (the same for every index kind):

- ``search``, ``rerank``, ``score``, ``save`` and the read-only properties take the *read*
  side: any number run at once. FAISS releases the GIL while it searches, so concurrent
  searches really run in parallel.
- ``train``, ``add``, ``delete`` and setters such as ``nprobe`` take the *write* side: one at
  a time, with no search in flight. A search therefore sees the index either entirely before
  or entirely after a write, never a half-applied one: once ``delete(ids)`` has returned, no
  search started afterwards returns those ids.
- Writers are preferred: a waiting writer blocks new readers, so a stream of searches cannot
  starve it. Both sides are reentrant within one thread (a write may call a search, e.g.
  ``MultiVectorIndex.add`` calls ``train``), but a thread holding the read side cannot take
  the write side (that upgrade would deadlock; it raises ``RuntimeError`` instead).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Mutex", "RWLock", "reads", "writes"]

F = TypeVar("F", bound=Callable[..., Any])


class RWLock:
    """A writer-preferring, per-thread reentrant readers-writer lock (see the module docstring)."""

    def __init__(self) -> None:
        # One plain mutex guards the counters. The read side's common case (no writer active
        # or waiting) takes only that mutex; the condition built on it is waited on and
        # notified only when a writer is involved, so an uncontended search pays about 1 us.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._waiting_writers = 0
        self._local = threading.local()

    def __reduce__(self) -> tuple[type[RWLock], tuple[()]]:
        return (RWLock, ())  # copies and pickles of an index get a fresh, unlocked lock

    def acquire_read(self) -> None:
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth or self._writer == threading.get_ident():
            local.depth = depth + 1
            return
        with self._mutex:
            if self._writer is None and not self._waiting_writers:
                self._readers += 1
                local.depth = 1
                return
        with self._cond:
            while self._writer is not None or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        local.depth = 1

    def release_read(self) -> None:
        local = self._local
        local.depth -= 1
        if local.depth or self._writer == threading.get_ident():
            return
        with self._mutex:
            self._readers -= 1
            if self._readers == 0 and self._waiting_writers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        me = threading.get_ident()
        if self._writer == me:
            self._writer_depth += 1
            return
        if getattr(self._local, "depth", 0):
            raise RuntimeError(
                "this thread is inside a search (read lock) and tried to modify the index; "
                "finish the search before calling add / delete / train."
            )
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            except BaseException:
                self._waiting_writers -= 1
                self._cond.notify_all()  # readers held back for this writer may go on
                raise
            self._waiting_writers -= 1
            self._writer = me
            self._writer_depth = 1

    def release_write(self) -> None:
        self._writer_depth -= 1
        if self._writer_depth:
            return
        with self._cond:
            self._writer = None
            self._cond.notify_all()


class Mutex:
    """A plain mutex that copies and pickles as a fresh one (``threading.Lock`` cannot be copied)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[Mutex], tuple[()]]:
        return (Mutex, ())

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def reads(method: F) -> F:
    """Run ``method`` under ``self._lock``'s read side."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self._lock
        lock.acquire_read()
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release_read()

    return wrapper  # type: ignore[return-value]


def writes(method: F) -> F:
    """Run ``method`` under ``self._lock``'s write side."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self._lock
        lock.acquire_write()
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release_write()

    return wrapper  # type: ignore[return-value]

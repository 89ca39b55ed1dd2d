"""An inter-process lock around read-modify-write updates of a saved directory.

An update of a page collection reads the collection, changes it and saves the result with
:func:`indexes._io.atomic_directory`, which swaps a new directory into place. Two processes
updating the same collection at once would each read the same old version, and the swap
published last would silently drop the other's changes. :func:`update_lock` serialises
them: the whole read-modify-write runs while an exclusive ``fcntl.flock`` is held.

The lock file is a sibling of the directory, ``<parent>/.<name>.lock``, never a file inside
it: the directory itself is replaced by every save, so a lock inside it would be swapped out
(and a second process would lock the new directory's file while the first still holds the
old one's). A symbolic link is resolved first, so two paths naming the same collection share
one lock. The lock file is left in place after use (removing it would let two processes hold
locks on two different inodes of the same name); it is empty apart from the holder's pid.

``flock`` locks are released by the kernel when the holder exits or is killed, so a crashed
update never leaves the collection locked. Locks on NFS depend on the server; on a platform
without ``fcntl`` (Windows) no lock is taken and a warning is logged once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrieval.errors import ConfigError, LockTimeoutError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DEFAULT_LOCK_TIMEOUT", "lock_path", "update_lock"]

logger = logging.getLogger(__name__)

#: Seconds an update waits for another process's update of the same directory to finish.
DEFAULT_LOCK_TIMEOUT = 600.0
_POLL = 0.05
_warned = False


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of directory ``path``: ``.<name>.lock`` beside it (after resolving links)."""
    target = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    return target.parent / f".{target.name}.lock"


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < float("inf"):
        raise ConfigError(f"lock_timeout must be a finite number of seconds >= 0 or None (wait forever); "
                          f"got {timeout!r}.")
    return float(timeout)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


@contextmanager
def update_lock(path: str | os.PathLike[str], *, timeout: float | None = DEFAULT_LOCK_TIMEOUT,
                what: str = "directory") -> Iterator[Path]:
    """Hold the exclusive update lock of directory ``path`` for the duration of the block.

    Parameters
    ----------
    path : path-like
        The directory being updated (it need not exist yet; its parent is created).
    timeout : float or None, default :data:`DEFAULT_LOCK_TIMEOUT`
        Seconds to wait while another process holds the lock; 0 fails at once, None waits
        for as long as it takes.
    what : str
        What ``path`` is (``"page collection"``), named in the error.

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    LockTimeoutError
        If the lock is still held by another process after ``timeout`` seconds; nothing
        was read or changed.
    ConfigError
        For a bad ``timeout``, or a lock file that cannot be opened (read-only folder, a
        symbolic link in its place).
    """
    wait = _check_timeout(timeout)
    file = lock_path(path)
    if fcntl is None:  # pragma: no cover - Windows
        global _warned
        if not _warned:
            logger.warning("no fcntl on this platform: concurrent updates of %s are not serialised", path)
            _warned = True
        yield file
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:  # a read-only folder, or a symbolic link planted as the lock file (O_NOFOLLOW)
        raise ConfigError(
            f"cannot open the update lock {file} of the {what} {path} ({type(exc).__name__}: {exc}). Updating "
            f"needs a writable folder; if {file.name} is a symbolic link, remove it."
        ) from exc
    try:
        deadline = None if wait is None else time.monotonic() + wait
        logged = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"another process{_holder(fd)} is updating the {what} {path} and still held its lock "
                        f"{file} after {wait:g}s; nothing was changed. Run the update again when it has finished, "
                        "or allow a longer wait (lock_timeout=..., CLI: --lock-timeout SECONDS)."
                    ) from None
                if not logged:
                    logger.info("waiting for another process%s to finish updating %s", _holder(fd), path)
                    logged = True
                time.sleep(_POLL)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
            yield file
        finally:
            try:
                os.ftruncate(fd, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""Reading a saved directory safely: names that stay inside it, regular files only, one generation.

Everything a load reads is named by a manifest, and a manifest is data: whoever can write an
index directory chooses those names. :func:`member` accepts a name only when it is a plain
file name (no ``/``, ``..``, absolute path or NUL) whose entry, after resolving symlinks,
stays inside the directory and is a regular file; FIFOs, device files, sockets and links
leading outside are refused with :class:`~retrieval.errors.IndexFormatError` before anything
is opened, so a load or ``densezip check`` can neither hang on a FIFO nor read ``/dev/zero``
or a file elsewhere. :func:`open_member` opens the checked file with ``O_NONBLOCK`` and checks
the opened descriptor again, closing the window in which the entry could be swapped.

:func:`load_pinned` makes a load see exactly one save: it opens the index directory once
and hands the loader ``/proc/self/fd/<fd>`` (Linux), so every file is looked up in the
directory that was opened, even if a concurrent ``save(overwrite=True)`` swaps a new one into
its place meanwhile. A published directory is never modified (saves build a new one and
exchange it), so the files read belong to one save; when the old directory is deleted
under the load (a file vanishes), the load is retried on the new one.
"""

from __future__ import annotations

import logging
import os
import random
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from retrieval.errors import IndexFormatError

__all__ = ["check_name", "load_pinned", "member", "member_dir", "open_member", "stable_path"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_PROC_FD: bool | None = None  # whether /proc/self/fd/<n> reopens a descriptor (Linux)

#: How many times a load that raced a save replacing the directory is tried in all. Each retry
#: waits a random moment first (up to 2 ms times the attempt number), so that a reader falls
#: between the saves of writers that replace the index back to back.
LOAD_ATTEMPTS = 32


def _proc_fd() -> bool:
    global _PROC_FD
    if _PROC_FD is None:
        _PROC_FD = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")
    return _PROC_FD


def file_kind(mode: int) -> str:
    """What a ``st_mode`` names, for messages: "a FIFO", "a character device", "a directory", ..."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def check_name(directory: Path, name: Any, *, what: str) -> str:
    """``name`` if it is a plain file name inside ``directory``; IndexFormatError otherwise.

    ``what`` says where the name came from (e.g. ``"files"``, ``"params.shards[0].dir"``).
    """
    plain = (
        isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
        and "/" not in name and "\\" not in name and not os.path.isabs(name) and Path(name).name == name
    )
    if not plain:
        shown = repr(name)[:80]
        raise IndexFormatError(
            f"{directory / 'manifest.json'}: {what} names {shown}, which is not a plain file name inside the "
            "index directory (no '/', '..', absolute path or NUL). The manifest is damaged or hostile; "
            "nothing was read from that path. Rebuild or restore the index."
        )
    return name


def _inside(directory: Path, path: Path) -> bool:
    base = os.path.realpath(directory)
    real = os.path.realpath(path)
    return os.path.commonpath([base, real]) == base and real != base


def _entry(directory: Path, name: Any, *, what: str, want_dir: bool) -> Path:
    path = directory / check_name(directory, name, what=what)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise IndexFormatError(
            f"{path} is missing; the index directory is incomplete. Rebuild or restore it."
        ) from None
    if stat.S_ISLNK(st.st_mode):
        if not _inside(directory, path):
            raise IndexFormatError(
                f"{path} is a symbolic link that leads outside {directory}; refusing to read it (nothing was "
                "read). An index directory holds its own files: replace the link by the file."
            )
        try:
            st = os.stat(path)
        except OSError:
            raise IndexFormatError(f"{path} is a broken symbolic link; the index directory is incomplete.") from None
    ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    if not ok:
        expected = "a directory" if want_dir else "a regular file"
        raise IndexFormatError(
            f"{path} is {file_kind(st.st_mode)}, not {expected}; refusing to read it (nothing was read). "
            "The index directory is damaged or hostile; rebuild or restore it."
        )
    return path


def member(directory: Path, name: Any, *, what: str = "files") -> Path:
    """``directory / name`` after checking that it is a regular file inside ``directory``.

    Raises
    ------
    IndexFormatError
        If ``name`` is not a plain file name, the entry is missing, is a symlink leading
        outside the directory, or is not a regular file (FIFO, device, socket, directory).
    """
    return _entry(directory, name, what=what, want_dir=False)


def member_dir(directory: Path, name: Any, *, what: str) -> Path:
    """``directory / name`` after checking that it is a sub-directory inside ``directory``."""
    return _entry(directory, name, what=what, want_dir=True)


@contextmanager
def open_member(path: Path) -> Iterator[IO[bytes]]:
    """Open a file :func:`member` accepted, without blocking, and check the opened descriptor.

    ``O_NONBLOCK`` keeps a FIFO swapped in after the check from blocking the open; the
    ``fstat`` of the descriptor then refuses anything but a regular file.
    """
    try:
        f = open_regular(
            path, refuse=lambda mode: IndexFormatError(
                f"{path} is {file_kind(mode)}, not a regular file; refusing to read it.")
        )
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is missing; the index directory is incomplete. Rebuild or restore it.") from None
    with f:
        yield f


def open_regular(path: Path, *, refuse: Callable[[int], Exception], follow_symlinks: bool = True) -> IO[bytes]:
    """``path`` opened for binary reading, checked on the opened descriptor to be a regular file.

    ``O_NONBLOCK`` keeps a FIFO swapped in after any earlier check from blocking the open;
    ``follow_symlinks=False`` adds ``O_NOFOLLOW``. If ``fstat`` of the descriptor says anything
    but a regular file, the descriptor is closed and ``refuse(st_mode)`` is raised. OSError
    from the open itself (missing file, a link with ``follow_symlinks=False``) propagates.
    """
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC | (0 if follow_symlinks else _NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def stable_path(f: IO[bytes], path: Path) -> Path:
    """A path naming the very file ``f`` has open (``/proc/self/fd/<n>`` on Linux), for readers that
    take a path (memory maps, FAISS): they read what was checked, not what the name means now."""
    return Path(f"/proc/self/fd/{f.fileno()}") if _proc_fd() else path


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _replaced(path: Path, fd: int) -> bool:
    """True when ``path`` no longer names the directory open as ``fd`` (a save replaced it)."""
    try:
        return _identity(os.stat(path)) != _identity(os.fstat(fd))
    except OSError:
        return True


def _rename_in(exc: BaseException, pinned: Path, real: Path) -> None:
    """Say ``real`` instead of ``/proc/self/fd/<n>`` in an error's message (in place)."""
    if exc.args and isinstance(exc.args[0], str) and str(pinned) in exc.args[0]:
        text = re.sub(re.escape(str(pinned)) + r"(?![0-9])", str(real).replace("\\", "\\\\"), exc.args[0])
        exc.args = (text, *exc.args[1:])


def load_pinned(path: str | os.PathLike[str], load: Callable[[Path], T], *, attempts: int = LOAD_ATTEMPTS) -> T:
    """Run ``load(directory)`` on one generation of the directory ``path``.

    On Linux ``directory`` is ``/proc/self/fd/<n>`` for a descriptor of ``path`` opened once,
    so every file the loader opens comes from the same directory, whatever saves replace
    ``path`` meanwhile. When the load fails and ``path`` no longer names the directory it
    read (a concurrent ``save(overwrite=True)`` replaced it and deleted the old one under
    the load), it is retried on the new directory, up to ``attempts`` times in all; a failure
    on a directory still in place is real damage and is raised, naming ``path``. When every
    attempt raced a save, the IndexFormatError says so (the index is not damaged).
    Elsewhere (no ``/proc``) the loader reads ``path`` itself and only the retry applies.
    """
    real = Path(path)
    for attempt in range(attempts):
        try:
            fd = os.open(real, os.O_RDONLY | _DIRECTORY | _CLOEXEC | _NONBLOCK)
        except OSError:
            return load(real)  # missing / not a directory: the loader reports it as usual
        pinned = Path(f"/proc/self/fd/{fd}") if _proc_fd() else real
        try:
            return load(pinned)
        except Exception as exc:
            raced = _replaced(real, fd)
            if raced and attempt + 1 < attempts:
                logger.debug("the load of %s raced a save that replaced it (%s); retrying", real, type(exc).__name__)
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            _rename_in(exc, pinned, real)
            if raced:
                raise IndexFormatError(
                    f"{real} was replaced by concurrent saves during each of {attempts} load attempts, so no "
                    f"attempt could finish reading one save (the last failed with {type(exc).__name__}: {exc}). "
                    "The index is not damaged: load it again when the saves pause."
                ) from exc
            raise
        finally:
            os.close(fd)
    raise AssertionError("unreachable")  # pragma: no cover

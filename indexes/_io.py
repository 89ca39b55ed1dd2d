"""Atomic directory writes, checksummed files, validated array loads."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import ConfigError, IndexFormatError

__all__ = [
    "atomic_directory",
    "file_sha256",
    "file_table",
    "leftover_paths",
    "load_array",
    "read_lines",
    "recover_interrupted_save",
    "save_array",
    "verify_checksums",
    "write_lines",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_table(directory: Path, *, exclude: str = "manifest.json") -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex}}`` for every plain file directly in ``directory``.

    The ``files`` table of a manifest, which :func:`verify_checksums` checks on load. Sub-
    directories (the shards of a sharded index) are skipped, as is ``exclude``: the manifest
    itself, which is written after the table is built.
    """
    return {
        child.name: {"bytes": child.stat().st_size, "sha256": file_sha256(child)}
        for child in sorted(directory.iterdir())
        if child.is_file() and child.name != exclude
    }


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry itself is flushed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


_RENAME_EXCHANGE = 2  # linux/fs.h
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the platform or file system cannot (the caller then falls back to
    two renames and :func:`recover_interrupted_save`).
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = _libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - glibc < 2.28 or a libc without it
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # pragma: no cover - e.g. some network file systems
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE) failed: {os.strerror(err)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def leftover_paths(path: str | os.PathLike[str]) -> list[Path]:
    """Temporary and backup siblings that interrupted saves of ``path`` left behind.

    Saving ``runs/ix`` writes ``runs/.ix.tmp-<pid>-<random>`` and, on the fallback path
    without an atomic exchange, moves the old index to ``runs/.ix.old-<pid>``. A process
    killed mid-save can leave either behind; neither is ever read as the index.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes))


def _owner_pid(leftover: Path) -> int | None:
    match = re.match(r".*\.(?:tmp|old)-(\d+)", leftover.name)
    return int(match.group(1)) if match else None


def recover_interrupted_save(path: str | os.PathLike[str]) -> bool:
    """Restore ``path`` from the backup an interrupted save left, if ``path`` is missing.

    Only the two-rename fallback of :func:`atomic_directory` (platforms without an atomic
    directory exchange) has a moment where ``path`` does not exist: after the old index was
    renamed to ``.<name>.old-<pid>`` and before the new one was renamed into place. A kill
    there leaves a complete old index in the backup; this renames it back.

    Returns
    -------
    bool
        True when a backup was restored.
    """
    target = Path(path)
    if target.exists():
        return False
    backups = [p for p in leftover_paths(target) if ".old-" in p.name and (p / "manifest.json").is_file()]
    for backup in sorted(backups, key=lambda p: p.stat().st_mtime, reverse=True):
        pid = _owner_pid(backup)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue  # another process is in the middle of its own swap
        os.replace(backup, target)
        _fsync_dir(target.parent)
        logger.warning("%s was missing after an interrupted save; restored the previous index from %s",
                       target, backup.name)
        return True
    return False


def _remove_stale(target: Path) -> None:
    """Delete leftovers of saves whose process is gone (a kill mid-save leaves them)."""
    for leftover in leftover_paths(target):
        pid = _owner_pid(leftover)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if ".old-" in leftover.name and not target.exists():
            continue  # the only copy of the index: recover_interrupted_save() restores it
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds.

    The caller writes every file into the yielded directory, the manifest last. On
    success the files are fsynced and the directory takes the place of ``path``; if the
    block raises, the temporary directory is removed and ``path`` is untouched.

    Crash safety: at every instant ``path`` is either the complete old directory or the
    complete new one. On Linux an existing directory is replaced by one atomic
    ``renameat2(RENAME_EXCHANGE)``. Elsewhere it takes two renames (old -> backup, new ->
    path); a kill between them leaves no ``path`` but a complete backup beside it, which
    :func:`recover_interrupted_save` (called by every load) renames back. Leftovers of
    killed saves are removed by the next save of the same path.
    """
    target = Path(path)
    recover_interrupted_save(target)
    if target.exists() and not overwrite:
        raise ConfigError(
            f"{target} already exists. Pass overwrite=True (CLI: --overwrite) to replace it, "
            "or choose another directory."
        )
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a directory; refusing to replace it.")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=parent))
    try:
        yield tmp
        for child in tmp.iterdir():
            # Sub-directories (e.g. a RAG collection's index/ and passages/) were saved atomically themselves.
            if child.is_dir():
                _fsync_dir(child)
            else:
                _fsync_file(child)
        _fsync_dir(tmp)
        if target.exists():
            if _exchange(tmp, target):
                _fsync_dir(parent)
                shutil.rmtree(tmp, ignore_errors=True)  # now holds the old index
                return
            backup = parent / f".{target.name}.old-{os.getpid()}"
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
            os.replace(tmp, target)
            _fsync_dir(parent)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
            _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_array(directory: Path, name: str, array: np.ndarray) -> dict[str, Any]:
    """Write ``array`` as ``<name>.npy`` and return its manifest entry."""
    file = f"{name}.npy"
    np.save(directory / file, np.ascontiguousarray(array), allow_pickle=False)
    return {"file": file, "dtype": str(array.dtype), "shape": list(array.shape)}


def _valid_array_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    file, dtype, shape = entry.get("file"), entry.get("dtype"), entry.get("shape")
    return (
        isinstance(file, str) and file != "" and Path(file).name == file
        and isinstance(dtype, str)
        and isinstance(shape, list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    )


# np.load parses the .npy header with ast.literal_eval. On CPython 3.11 the AST builder's
# recursion counter is shared by all threads, so two headers parsed at once (the shards of a
# ShardedIndex load in parallel) can fail with "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905), which would report a sound file as corrupt. Loads of
# .npy files therefore take turns; FAISS files and memory maps are unaffected.
_NPY_LOAD_LOCK = threading.Lock()


def load_array(directory: Path, entry: Any, *, name: str, mmap: bool = False) -> np.ndarray:
    """Load an array described by a manifest entry and check its dtype and shape."""
    if not _valid_array_entry(entry):
        raise IndexFormatError(
            f"{directory / 'manifest.json'}: arrays.{name} must be an object with 'file' (a plain file name), "
            f"'dtype' (a string) and 'shape' (a list of integers >= 0); got {entry!r:.200}. The manifest is "
            "damaged; rebuild or restore the index."
        )
    path = directory / str(entry["file"])
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; the index directory is incomplete. Rebuild or restore it.")
    try:
        with _NPY_LOAD_LOCK:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # a damaged header fails in many ways (ValueError, SyntaxError, TokenError, ...)
        raise IndexFormatError(
            f"{path} cannot be read as a .npy array ({exc}). The file is truncated or corrupt; "
            "rebuild or restore the index."
        ) from exc
    if str(array.dtype) != entry["dtype"] or list(array.shape) != list(entry["shape"]):
        raise IndexFormatError(
            f"{path} holds dtype {array.dtype} shape {tuple(array.shape)}, but the manifest expects "
            f"dtype {entry['dtype']} shape {tuple(entry['shape'])}. The file does not belong to this index."
        )
    return array


def write_lines(path: Path, lines: list[str]) -> None:
    """Write one string per line, UTF-8, newline-terminated."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def read_lines(path: Path, *, expected: int) -> list[str]:
    """Read a file written by :func:`write_lines` and check the line count."""
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; the index directory is incomplete. Rebuild or restore it.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{path} is not valid UTF-8 ({exc}); the file is corrupt.") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != expected:
        raise IndexFormatError(
            f"{path} holds {len(lines)} ids, but the manifest says the index has {expected}. "
            "The file is truncated or does not belong to this index."
        )
    return lines


def verify_checksums(directory: Path, files: dict[str, Any], *, hashes: bool = True) -> None:
    """Check that every file listed in the manifest exists with its recorded size and sha256.

    Sizes are always checked (cheap); ``hashes=False`` skips reading the files.
    """
    for name, info in files.items():
        if not isinstance(info, dict) or Path(name).name != name:
            raise IndexFormatError(
                f"{directory / 'manifest.json'}: files.{name} must be a plain file name mapped to "
                f"{{'bytes', 'sha256'}}; got {info!r}. The manifest is damaged."
            )
        path = directory / name
        if not path.is_file():
            raise IndexFormatError(f"{path} is missing; the index directory is incomplete. Rebuild or restore it.")
        size = path.stat().st_size
        if size != info.get("bytes"):
            raise IndexFormatError(
                f"{path} has {size} bytes, but the manifest recorded {info.get('bytes')}. "
                "The file is truncated or was modified; rebuild or restore the index."
            )
        if hashes and file_sha256(path) != info.get("sha256"):
            raise IndexFormatError(
                f"{path} fails its sha256 check; the file is corrupt. Rebuild or restore the index."
            )

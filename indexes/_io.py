"""Atomic directory writes, checksummed files, validated array loads."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
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

from indexes._paths import check_name, member, open_member, stable_path
from retrieval.errors import ConfigError, IndexFormatError

__all__ = [
    "atomic_directory",
    "file_sha256",
    "file_table",
    "is_replaceable",
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


def file_sha256(path: Path, *, limit: int | None = None) -> str:
    """Return the hex sha256 of a regular file, read in 1 MiB chunks.

    The file is opened without blocking and must be a regular file (a FIFO or device is
    refused with IndexFormatError); with ``limit`` at most ``limit + 1`` bytes are read, so a
    file that grew past its recorded size cannot keep the reader busy.
    """
    h = hashlib.sha256()
    left = limit + 1 if limit is not None else None
    with open_member(path) as f:
        while left is None or left > 0:
            block = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
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


_RENAME_NOREPLACE = 1  # linux/fs.h
_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the platform or file system cannot (the caller then falls back to
    two renames and :func:`recover_interrupted_save`).
    """
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """``renameat2(a, b, flags)``: True when done, False when unsupported here; OSError otherwise."""
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
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # pragma: no cover - e.g. some network file systems
        return False
    raise OSError(err, f"renameat2({a}, {b}, flags={flags}) failed: {os.strerror(err)}", str(b))


def _publish_new(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target`` only if ``target`` does not exist, in one atomic step.

    Linux: ``renameat2(RENAME_NOREPLACE)``. Elsewhere ``os.mkdir(target)`` is the atomic
    claim (exactly one of two racing processes creates it) and ``tmp`` is then renamed onto
    the empty directory the claim made. Raises FileExistsError when ``target`` exists.
    """
    if _renameat2(tmp, target, _RENAME_NOREPLACE):
        return
    os.mkdir(target)  # pragma: no cover - the claim; FileExistsError for the loser
    try:  # pragma: no cover
        os.replace(tmp, target)  # POSIX renames a directory onto an empty one atomically
    except OSError:  # pragma: no cover - platforms that cannot: release the claim, then rename
        os.rmdir(target)
        os.rename(tmp, target)


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


#: Manifest formats of directories densezip wrote (an index, a passage store) and so may replace.
_OWN_FORMATS = ("densezip-index", "densezip-passages", "densezip-pages")
#: Entries of a RAG collection / JPQ export (no top manifest): ``index/`` plus these.
_LAYOUT_PARTS = frozenset({"index", "passages", "pages", "query_encoder", "jpq.json"})
_MANIFEST_LIMIT = 64 << 20  # bytes read of a manifest when deciding whether a directory is densezip's


def _densezip_manifest(directory: Path) -> bool:
    """True when ``directory/manifest.json`` is a regular file whose ``format`` is densezip's."""
    try:
        file = member(directory, "manifest.json")
        with open_member(file) as f:
            data = f.read(_MANIFEST_LIMIT + 1)
        if len(data) > _MANIFEST_LIMIT:
            return False
        raw = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, IndexFormatError):
        return False
    return isinstance(raw, dict) and raw.get("format") in _OWN_FORMATS


def is_replaceable(path: str | os.PathLike[str]) -> bool:
    """True when ``save(path, overwrite=True)`` may replace the directory ``path``.

    That is an empty directory, or one densezip wrote: its ``manifest.json`` says format
    ``densezip-index`` / ``densezip-passages`` / ``densezip-pages``, or it is a RAG collection,
    page collection or JPQ export (``index/`` whose manifest is densezip's, plus only
    ``passages/`` or ``pages/`` (densezip's too),
    ``query_encoder/`` and ``jpq.json``). A directory with a damaged manifest is not replaced.
    """
    directory = Path(path)
    if directory.is_symlink() or not directory.is_dir():
        return False
    entries = set(os.listdir(directory))
    if not entries:
        return True
    if "manifest.json" in entries:
        return _densezip_manifest(directory)
    if "index" not in entries or not entries <= _LAYOUT_PARTS:
        return False
    return _densezip_manifest(directory / "index") and (
        "passages" not in entries or _densezip_manifest(directory / "passages")) and (
        "pages" not in entries or _densezip_manifest(directory / "pages"))


def _refuse_foreign(target: Path, shown: Path) -> None:
    if not is_replaceable(target):
        raise ConfigError(
            f"{shown} exists and is not a densezip index, collection or JPQ export (no manifest.json saying "
            "format 'densezip-index'), nor an empty directory; refusing to replace it, and nothing in it was "
            "touched. Choose another output path, or move that directory away yourself."
        )


def _exists_error(target: Path, *, raced: bool = False) -> ConfigError:
    when = " (another process created it while this save was being written; this save was discarded)" if raced else ""
    return ConfigError(
        f"{target} already exists{when}. Pass overwrite=True (CLI: --overwrite) to replace it, "
        "or choose another directory."
    )


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not os.listdir(path)


def _resolve_link(target: Path, overwrite: bool) -> Path:
    """The path a save replaces: a symlink's target (resolved once) when overwriting, else ``target``."""
    if overwrite and target.is_symlink():
        resolved = Path(os.path.realpath(target))
        logger.info("%s is a symbolic link; replacing the directory it points to, %s", target, resolved)
        return resolved
    return target


@contextmanager
def atomic_directory(
    path: str | os.PathLike[str], *, overwrite: bool, replace_empty: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds.

    The caller writes every file into the yielded directory, the manifest last. On
    success the files are fsynced and the directory takes the place of ``path``; if the
    block raises, the temporary directory is removed and ``path`` is untouched.

    What may be replaced: with ``overwrite=True`` only a directory densezip wrote (see
    :func:`is_replaceable`) or an empty one; anything else raises ConfigError and is left
    untouched, checked before the block runs and again just before the swap. Without
    ``overwrite`` an existing ``path`` is an error (``replace_empty=True``: except an empty
    directory). Creating a new ``path`` is one atomic step (Linux ``renameat2(RENAME_NOREPLACE)``,
    elsewhere ``mkdir`` as the claim), so of two processes creating the same path exactly one
    succeeds and the other gets the "already exists" error. A symlink ``path`` with
    ``overwrite=True`` is resolved once and the directory it points to is replaced (the link
    stays a link); the temporary and the old directory live beside that directory.

    Crash safety: at every instant ``path`` is either the complete old directory or the
    complete new one. On Linux an existing directory is replaced by one atomic
    ``renameat2(RENAME_EXCHANGE)``. Elsewhere it takes two renames (old -> backup, new ->
    path); a kill between them leaves no ``path`` but a complete backup beside it, which
    :func:`recover_interrupted_save` (called by every load) renames back. Leftovers of
    killed saves are removed by the next save of the same path.
    """
    shown = Path(path)
    target = _resolve_link(shown, overwrite)
    recover_interrupted_save(target)
    exists = os.path.lexists(target)
    if exists and not overwrite and not (replace_empty and _empty_dir(target)):
        raise _exists_error(shown)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{shown} exists and is not a directory; refusing to replace it, and nothing was touched.")
    if exists and overwrite:
        _refuse_foreign(target, shown)
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
        _publish(tmp, target, shown, overwrite=overwrite, replace_empty=replace_empty)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, target: Path, shown: Path, *, overwrite: bool, replace_empty: bool) -> None:
    """Move the finished ``tmp`` to ``target``: create it atomically, or swap out a replaceable directory."""
    parent = target.parent
    if not os.path.lexists(target):
        try:
            _publish_new(tmp, target)
            _fsync_dir(parent)
            return
        except FileExistsError:
            if not overwrite:
                raise _exists_error(shown, raced=True) from None
            # another process created it meanwhile: replace it like any existing index
    if overwrite:
        _refuse_foreign(target, shown)
    elif not (replace_empty and _empty_dir(target)):
        raise _exists_error(shown, raced=True)
    if _exchange(tmp, target):
        _fsync_dir(parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old index
        return
    backup = parent / f".{target.name}.old-{os.getpid()}"  # pragma: no cover - platforms without the exchange
    if backup.exists():  # pragma: no cover
        shutil.rmtree(backup)
    os.replace(target, backup)  # pragma: no cover
    os.replace(tmp, target)  # pragma: no cover
    _fsync_dir(parent)  # pragma: no cover
    shutil.rmtree(backup, ignore_errors=True)  # pragma: no cover


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
    path = member(directory, entry["file"], what=f"arrays.{name}.file")
    try:
        with open_member(path) as f, _NPY_LOAD_LOCK:
            if mmap:  # a memory map needs a path: the one naming the file just checked and opened
                array = np.load(stable_path(f, path), mmap_mode="r", allow_pickle=False)
            else:
                array = np.load(f, allow_pickle=False)
    except (MemoryError, IndexFormatError):
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
    path = member(path.parent, path.name)
    try:
        with open_member(path) as f:
            text = f.read().decode("utf-8")
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
        check_name(directory, name, what="files")
        if not isinstance(info, dict):
            raise IndexFormatError(
                f"{directory / 'manifest.json'}: files.{name} must be a plain file name mapped to "
                f"{{'bytes', 'sha256'}}; got {info!r:.200}. The manifest is damaged."
            )
        path = member(directory, name)
        size = path.stat().st_size
        if size != info.get("bytes"):
            raise IndexFormatError(
                f"{path} has {size} bytes, but the manifest recorded {info.get('bytes')}. "
                "The file is truncated or was modified; rebuild or restore the index."
            )
        if hashes and file_sha256(path, limit=size) != info.get("sha256"):
            raise IndexFormatError(
                f"{path} fails its sha256 check; the file is corrupt. Rebuild or restore the index."
            )

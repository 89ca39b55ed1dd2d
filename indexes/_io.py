"""Atomic directory writes, checksummed files, validated array loads."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import ConfigError, IndexFormatError

__all__ = [
    "atomic_directory",
    "file_sha256",
    "load_array",
    "read_lines",
    "save_array",
    "verify_checksums",
    "write_lines",
]

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


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


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds.

    The caller writes every file into the yielded directory, the manifest last. On
    success the files are fsynced and the directory is renamed onto ``path``; if the
    block raises, the temporary directory is removed and ``path`` is untouched.

    Replacing an existing directory takes two renames (old -> backup, new -> path); a
    crash between them leaves the backup beside ``path`` (``.<name>.old-<pid>``), never a
    half-written index at ``path``.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigError(
            f"{target} already exists. Pass overwrite=True (CLI: --overwrite) to replace it, "
            "or choose another directory."
        )
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a directory; refusing to replace it.")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
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
            backup = parent / f".{target.name}.old-{os.getpid()}"
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
            os.replace(tmp, target)
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


def load_array(directory: Path, entry: Any, *, name: str, mmap: bool = False) -> np.ndarray:
    """Load an array described by a manifest entry and check its dtype and shape."""
    if not isinstance(entry, dict) or not {"file", "dtype", "shape"} <= entry.keys():
        raise IndexFormatError(
            f"{directory / 'manifest.json'}: arrays.{name} must be an object with 'file', 'dtype' "
            f"and 'shape'; got {entry!r}. The manifest is damaged; rebuild or restore the index."
        )
    path = directory / str(entry["file"])
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; the index directory is incomplete. Rebuild or restore it.")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
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

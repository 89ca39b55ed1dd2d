"""The ``manifest.json`` of a saved index: format version, migrations, validated reads.

A saved index is a directory; ``manifest.json`` is written last, so its presence means the
directory is complete. Peek at it with :func:`read_manifest` without loading the index.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexes._io import recover_interrupted_save
from indexes._paths import member, open_member
from retrieval._version import __version__
from retrieval.errors import IndexFormatError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "files_read",
    "parse_json",
    "read_json",
    "read_manifest",
    "unlisted_files",
    "write_json",
    "write_manifest",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "densezip-index"
#: 2: the ids are arrays (``id_*.npy``, see :mod:`indexes._ids`) instead of ``doc_ids.txt``.
#: 3: string ids may be fixed-width rows (``id_block.npy`` + ``id_perm.npy``), and the tombstones
#: are bits (``deleted_bits.npy``, written once a row is deleted) instead of ``deleted.npy``.
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
#: Versions this densezip reads as they are, without a migration: versions 1, 2 and 3 differ only
#: in how the ids and tombstones are stored, and :meth:`indexes._ids.IdTable.read` reads all three.
READABLE_VERSIONS = (1, 2, 3)

# format_version N -> function upgrading a manifest dict from N to N + 1 (for a version outside
# READABLE_VERSIONS that a migration can bring into it).
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "library_version": str,
    "index_type": str,
    "dim": int,
    "metric": str,
    "count": int,
    "arrays": dict,
    "files": dict,
    "params": dict,
    "metadata": dict,
}


@dataclass
class Manifest:
    """Everything needed to check and rebuild a saved index.

    Attributes
    ----------
    index_type : str
        Registered class name, e.g. ``"FaissIndex"``; :func:`indexes.load_index` dispatches on it.
    dim, metric, count :
        Vector dimension, ``"ip"`` or ``"l2"``, number of stored rows (deleted ones included).
    arrays : dict
        ``name -> {"file", "dtype", "shape"}`` for every ``.npy`` file.
    files : dict
        ``file name -> {"bytes", "sha256"}`` for every file except the manifest.
    params : dict
        Index-specific settings (factory string, nprobe, ...).
    metadata : dict
        Free-form JSON, e.g. the encoder description under ``"encoder"``.
    """

    index_type: str
    dim: int
    metric: str
    count: int
    arrays: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    library_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "library_version": self.library_version,
            "index_type": self.index_type,
            "dim": self.dim,
            "metric": self.metric,
            "count": self.count,
            "arrays": self.arrays,
            "files": self.files,
            "params": self.params,
            "metadata": self.metadata,
        }


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write a manifest-style JSON file: keys sorted, indented by 2, strict JSON (no NaN), newline-terminated."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON (densezip never writes NaN or infinities)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} overflows a float (densezip never writes it)")
    return value


def parse_json(text: str) -> Any:
    """Parse JSON as densezip writes it: strict (no NaN / Infinity, no number that overflows a float).

    Raises
    ------
    ValueError
        With the reason, for malformed JSON, NaN / Infinity, an overflowing number, an integer
        of more digits than Python converts, or nesting deeper than the parser's recursion limit.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nesting too deep (densezip writes at most a few levels)") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's guard against huge int literals
            raise ValueError("an integer of thousands of digits (densezip never writes one)") from None
        raise


#: The largest manifest read (bytes); a manifest is a few kB, even for thousands of shards.
MANIFEST_LIMIT = 64 << 20


def read_json(file: Path, *, what: str) -> Any:
    """Parse the JSON file ``file``; damage raises IndexFormatError saying that ``what`` is corrupt.

    ``file`` must be a regular file inside its directory (see :func:`indexes._paths.member`)
    of at most :data:`MANIFEST_LIMIT` bytes.
    """
    path = member(file.parent, file.name)
    with open_member(path) as f:
        data = f.read(MANIFEST_LIMIT + 1)
    if len(data) > MANIFEST_LIMIT:
        raise IndexFormatError(f"{file} is larger than {MANIFEST_LIMIT >> 20} MiB; {what} is damaged or not densezip's.")
    try:
        return parse_json(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise IndexFormatError(f"{file} is not valid JSON ({str(exc)[:200]}); {what} is corrupt.") from exc


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` into ``directory`` (call this last)."""
    write_json(directory / MANIFEST_NAME, manifest.to_dict())


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest of a saved index directory without loading the index.

    Raises
    ------
    IndexFormatError
        If the directory or manifest is missing, the JSON is malformed, a key is missing or
        has the wrong type, or the format version is newer than this library understands.
    """
    directory = Path(path)
    if not directory.exists():
        recover_interrupted_save(directory)
    if not directory.is_dir():
        raise IndexFormatError(
            f"{directory} is not an index directory (it does not exist or is a file). "
            "Build one with `densezip index` or VectorIndex.save()."
        )
    file = directory / MANIFEST_NAME
    if not os.path.lexists(file):
        raise IndexFormatError(
            f"{file} is missing: {directory} is not a complete saved index (an interrupted save "
            "leaves no manifest). Rebuild the index."
        )
    raw = read_json(file, what="the manifest")
    if not isinstance(raw, dict):
        raise IndexFormatError(f"{file} must hold a JSON object; got {type(raw).__name__}.")
    if raw.get("format") != FORMAT_NAME:
        raise IndexFormatError(
            f"{file} has format {raw.get('format')!r}; expected {FORMAT_NAME!r}. "
            "This directory was not written by densezip."
        )
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise IndexFormatError(f"{file}: format_version must be a positive integer; got {version!r}.")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{file} uses index format version {version}, but this densezip {__version__} reads "
            f"versions up to {FORMAT_VERSION}. Upgrade with:  pip install -U densezip"
        )
    while raw["format_version"] not in READABLE_VERSIONS:  # pragma: no cover - no migrations yet
        raw = MIGRATIONS[raw["format_version"]](raw)
    for key, typ in _REQUIRED.items():
        if key not in raw:
            raise IndexFormatError(f"{file} lacks the key {key!r}; the manifest is damaged.")
        value = raw[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise IndexFormatError(
                f"{file}: {key!r} must be {getattr(typ, '__name__', typ)}; got {type(value).__name__} {value!r}."
            )
    if raw["metric"] not in ("ip", "l2"):
        raise IndexFormatError(f"{file}: metric must be 'ip' or 'l2'; got {raw['metric']!r:.80}.")
    if raw["dim"] <= 0 or raw["count"] < 0:
        raise IndexFormatError(f"{file}: dim must be > 0 and count >= 0; got dim={raw['dim']}, count={raw['count']}.")
    if raw["library_version"] != __version__:
        logger.info("%s was written by densezip %s; this is %s", file, raw["library_version"], __version__)
    return Manifest(**{k: raw[k] for k in _REQUIRED})


#: Files a load reads besides ``arrays``, per index kind.
_KIND_FILES = {
    "FaissIndex": ("faiss.index",),
}
#: Kinds whose format version 1 kept their ids in ``doc_ids.txt`` (version 2: arrays).
_LEGACY_ID_KINDS = ("FlatIndex", "FaissIndex", "MultiVectorIndex")


def files_read(raw: dict[str, Any]) -> list[str]:
    """The files in the index directory that loading the manifest ``raw`` (a dict as parsed) reads.

    Each must be listed in ``raw["files"]``, so that its size and sha256 are checked before it
    is read: a manifest whose file table dropped one is damaged, never a silent load of an
    unchecked file. Shard directories are not listed here: each is a whole index with its own
    manifest, whose sha256 the sharded manifest records.

    Examples
    --------
    >>> files_read({"index_type": "FaissIndex", "format_version": 2, "arrays": {"id_keys": {"file": "id_keys.npy"}}})
    ['faiss.index', 'id_keys.npy']
    >>> files_read({"index_type": "FaissIndex", "format_version": 1, "arrays": {"deleted": {"file": "deleted.npy"}}})
    ['deleted.npy', 'doc_ids.txt', 'faiss.index']
    """
    names = set(_KIND_FILES.get(str(raw.get("index_type")), ()))
    if raw.get("index_type") in _LEGACY_ID_KINDS and raw.get("format_version") == 1:
        names.add("doc_ids.txt")
    arrays = raw.get("arrays")
    if raw.get("index_type") == "MultiVectorEmbeddings" and not (
            isinstance(arrays, dict) and ("ids_utf8" in arrays or "ids_int64" in arrays)):
        names.add("doc_ids.txt")  # saved before its ids were arrays
    if isinstance(arrays, dict):
        names.update(e["file"] for e in arrays.values() if isinstance(e, dict) and isinstance(e.get("file"), str))
    params = raw.get("params")
    if raw.get("index_type") == "ShardedIndex" and isinstance(params, dict) and isinstance(params.get("trained_file"), str):
        names.add(params["trained_file"])
    return sorted(names)


def unlisted_files(raw: dict[str, Any]) -> list[str]:
    """The files of :func:`files_read` that ``raw["files"]`` does not list (the manifest is damaged if any)."""
    files = raw.get("files")
    listed = files if isinstance(files, dict) else {}
    return [name for name in files_read(raw) if name not in listed]

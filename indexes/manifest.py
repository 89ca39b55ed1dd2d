"""The ``manifest.json`` of a saved index: format version, migrations, validated reads.

A saved index is a directory; ``manifest.json`` is written last, so its presence means the
directory is complete. Peek at it with :func:`read_manifest` without loading the index.
"""

from __future__ import annotations

import json
import logging
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
    "read_json",
    "read_manifest",
    "write_json",
    "write_manifest",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "densezip-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# format_version N -> function upgrading a manifest dict from N to N + 1.
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
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise IndexFormatError(f"{file} is not valid JSON ({exc}); {what} is corrupt.") from exc


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
    while raw["format_version"] < FORMAT_VERSION:  # pragma: no cover - no migrations yet
        raw = MIGRATIONS[raw["format_version"]](raw)
    for key, typ in _REQUIRED.items():
        if key not in raw:
            raise IndexFormatError(f"{file} lacks the key {key!r}; the manifest is damaged.")
        value = raw[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise IndexFormatError(
                f"{file}: {key!r} must be {getattr(typ, '__name__', typ)}; got {type(value).__name__} {value!r}."
            )
    if raw["dim"] <= 0 or raw["count"] < 0:
        raise IndexFormatError(f"{file}: dim must be > 0 and count >= 0; got dim={raw['dim']}, count={raw['count']}.")
    if raw["library_version"] != __version__:
        logger.info("%s was written by densezip %s; this is %s", file, raw["library_version"], __version__)
    return Manifest(**{k: raw[k] for k in _REQUIRED})

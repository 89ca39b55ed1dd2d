"""The on-disk document-embedding cache: one ``<cache_dir>/<key>.npy`` file per encoded corpus.

The key is a SHA-256 over a JSON header (the cache format, the settings that change the
vectors, the number of texts) and the exact texts, in order. The encoder decides which
settings go into the header; see :class:`~retrieval.encode.dense.DenseEncoder`.

Reading never fails: a missing, unreadable or implausible file (wrong shape or dtype,
NaN, rows not unit length under ``normalize``) is a cache miss, logged at WARNING when the
file exists. Writing never fails either: files are written atomically (temp file in the
same directory, fsync, rename), and an I/O error only warns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["CACHE_FORMAT", "cache_path", "default_cache_dir", "load_vectors", "store_vectors"]

logger = logging.getLogger(__name__)

#: Bump when the cache key or file layout changes, so old files are simply never hit.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """Return the default document-embedding cache directory.

    ``$DENSEZIP_CACHE/embeddings`` when the ``DENSEZIP_CACHE`` environment variable is
    set (it names the root of all densezip caches), else ``~/.cache/densezip/embeddings``.
    Read at :class:`~retrieval.encode.dense.DenseEncoder` construction time.
    """
    root = os.environ.get("DENSEZIP_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "densezip"
    return base / "embeddings"


def cache_path(cache_dir: Path, settings: Mapping[str, Any], texts: Sequence[str]) -> Path:
    """The cache file of ``texts`` encoded under ``settings``.

    Parameters
    ----------
    cache_dir : Path
        The cache directory.
    settings : mapping
        JSON-serialisable values that change the vectors (model fingerprint, prompts, ...).
    texts : sequence of str
        The documents, in order; order matters.

    Returns
    -------
    Path
        ``cache_dir / "<64 hex digits>.npy"``; the file may not exist.
    """
    header = json.dumps({"cache_format": CACHE_FORMAT, **settings, "count": len(texts)}, sort_keys=True)
    digest = hashlib.sha256(header.encode() + b"\0")
    for text in texts:
        # Length-prefixed, so ["ab", "c"] and ["a", "bc"] hash differently.
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return cache_dir / f"{digest.hexdigest()}.npy"


def load_vectors(path: Path, n: int, *, dim: int | None, normalize: bool) -> NDArray[np.float32] | None:
    """Return the validated vectors cached at ``path``, or ``None`` (missing or unusable: recompute).

    Parameters
    ----------
    path : Path
        From :func:`cache_path`.
    n : int
        Expected number of rows (one per text).
    dim : int, optional
        Expected width; ``None`` accepts any positive width.
    normalize : bool
        Whether the rows must have unit L2 norm (zero rows are accepted too).

    Returns
    -------
    np.ndarray, shape (n, dim), dtype float32, or None
    """
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # any unreadable file is a cache miss, never a crash
        logger.warning(
            "Ignoring unreadable embedding cache file %s (%s: %s); recomputing.", path, type(exc).__name__, exc
        )
        return None
    problem = None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        problem = f"expected a 2-D array, got {getattr(arr, 'shape', type(arr).__name__)}"
    elif arr.dtype != np.float32:
        problem = f"expected dtype float32, got {arr.dtype}"
    elif arr.shape[0] != n or arr.shape[1] < 1 or (dim is not None and arr.shape[1] != dim):
        problem = f"expected shape ({n}, {dim if dim is not None else 'dim'}), got {arr.shape}"
    elif not np.isfinite(arr).all():
        problem = "it contains NaN or inf values"
    elif normalize:
        norms = np.linalg.norm(arr, axis=1)
        # Zero rows stay zero under normalisation; anything else must be unit length.
        if not np.all((np.abs(norms - 1.0) < 1e-3) | (norms < 1e-6)):
            problem = "its rows are not L2-normalised although normalize=True"
    if problem is not None:
        logger.warning("Ignoring invalid embedding cache file %s: %s; recomputing.", path, problem)
        return None
    return np.ascontiguousarray(arr)


def store_vectors(path: Path, vectors: NDArray[np.float32]) -> None:
    """Write ``vectors`` to ``path`` atomically (temp file in the same directory, fsync, rename); never raise on I/O."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.warning("Could not write embedding cache file %s (%s); continuing without it.", path, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

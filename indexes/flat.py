"""Exact search in pure NumPy: the always-available oracle for tests and tiny corpora."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexes._io import load_array, save_array
from indexes._lock import Mutex
from indexes.base import Metric, VectorIndex, register_index
from indexes.manifest import Manifest
from retrieval.errors import IndexFormatError

__all__ = ["FlatIndex", "topk"]

# Score blocks of at most this many float32 entries (64 MiB) to bound memory on big batches.
_BLOCK = 16 * 1024 * 1024


def topk(scores: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Top-``k`` columns of each row, best first.

    Equal scores inside the top ``k`` are ordered by column index; which of several equal
    scores straddling the k-th place is kept is unspecified (as in faiss).

    Examples
    --------
    >>> s, i = topk(np.array([[0.1, 0.9, 0.5, 0.8]], dtype=np.float32), 3)
    >>> i.tolist(), s.astype(np.float64).round(2).tolist()
    ([[1, 3, 2]], [[0.9, 0.8, 0.5]])
    """
    n = scores.shape[1]
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return np.take_along_axis(scores, idx, axis=1), idx


@register_index
class FlatIndex(VectorIndex):
    """Exact (brute-force) search over float32 vectors held in a NumPy array.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"ip", "l2"}
        Inner product, or squared L2 (scores are negative distances).

    Examples
    --------
    >>> index = FlatIndex(2).add(np.array([[1, 0], [0, 1]], dtype=np.float32), ids=["a", "b"])
    >>> index.search(np.array([[0.9, 0.1]], dtype=np.float32), k=1).doc_ids
    [['a']]
    """

    def __init__(self, dim: int, *, metric: Metric = "ip") -> None:
        super().__init__(dim, metric=metric)
        self._vectors: NDArray[np.float32] = np.zeros((0, self.dim), dtype=np.float32)
        self._pending: list[NDArray[np.float32]] = []
        self._sqnorms: NDArray[np.float32] | None = None
        # Concurrent searches (read lock) may both find pending rows; one merges them.
        self._merge_lock = Mutex()

    @property
    def vectors(self) -> NDArray[np.float32]:
        """All stored rows, shape (ntotal, dim), deleted rows included."""
        if self._pending:
            with self._merge_lock:
                if self._pending:
                    self._sqnorms = None
                    self._vectors = np.concatenate([np.asarray(self._vectors), *self._pending])
                    self._pending = []
        return self._vectors

    def memory_bytes(self) -> int:
        """Bytes in memory: the float32 vectors (deleted rows included) plus the ids
        (:meth:`ids_memory_bytes`: the id store's arrays, the tombstone mask) and the attributes."""
        return int(self.vectors.nbytes) + self._table.memory_bytes() + self._attrs.memory_bytes()

    def _add_vectors(self, vectors: NDArray[np.float32], start: int) -> None:
        self._pending.append(vectors.copy())

    def _search_rows(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_] | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        base = self.vectors
        rows: NDArray[np.int64] | None = None
        if allowed is not None and allowed.mean() < 0.5:
            # Few rows allowed: score only those instead of masking most of the matrix.
            rows = np.flatnonzero(allowed)
            base = base[rows]
            allowed = None
        if self.metric == "l2":
            if rows is None:
                if self._sqnorms is None:
                    self._sqnorms = np.einsum("ij,ij->i", base, base)
                sqnorms = self._sqnorms
            else:
                sqnorms = np.einsum("ij,ij->i", base, base)
        step = max(1, _BLOCK // max(base.shape[0], 1))
        out_s = np.empty((queries.shape[0], k), dtype=np.float32)
        out_i = np.empty((queries.shape[0], k), dtype=np.int64)
        for lo in range(0, queries.shape[0], step):
            q = queries[lo : lo + step]
            with np.errstate(over="ignore", invalid="ignore"):  # huge inputs overflow; search() reports it
                scores = q @ base.T
                if self.metric == "l2":
                    scores = 2.0 * scores - sqnorms[None, :] - np.einsum("ij,ij->i", q, q)[:, None]
            if allowed is not None:
                scores[:, ~allowed] = -np.inf
            s, i = topk(scores.astype(np.float32, copy=False), k)
            out_s[lo : lo + step] = s
            out_i[lo : lo + step] = i if rows is None else rows[i]
        return out_s, out_i

    def _write_payload(self, directory: Path, arrays: dict[str, Any]) -> dict[str, Any]:
        arrays["vectors"] = save_array(directory, "vectors", self.vectors)
        return {}

    @classmethod
    def _from_manifest(cls, manifest: Manifest, directory: Path) -> FlatIndex:
        return cls(manifest.dim, metric=manifest.metric)  # type: ignore[arg-type]

    def _read_payload(self, directory: Path, manifest: Manifest, *, mmap: bool) -> None:
        vectors = load_array(directory, manifest.arrays.get("vectors"), name="vectors", mmap=mmap)
        if vectors.dtype != np.float32 or vectors.shape != (manifest.count, manifest.dim):
            raise IndexFormatError(
                f"{directory / 'vectors.npy'} must be float32 of shape ({manifest.count}, {manifest.dim}); "
                f"got {vectors.dtype} {vectors.shape}."
            )
        self._vectors = vectors

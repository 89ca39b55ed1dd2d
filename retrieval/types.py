"""Plain data types passed between encoders, indexes and the retriever."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval.errors import ShapeError

__all__ = ["Embeddings", "Hit", "SearchResult", "as_float32_matrix"]


def as_float32_matrix(x: Any, *, name: str, dim: int | None = None) -> NDArray[np.float32]:
    """Validate ``x`` as a finite 2-D float matrix and return it as C-contiguous float32.

    Accepts float16/float32/float64 arrays (and torch tensors via ``np.asarray``). A 1-D
    vector is rejected rather than silently reshaped, because ``(d,)`` vs ``(1, d)`` is a
    common source of wrong results.

    Raises
    ------
    ShapeError
        If ``x`` is not 2-D, has a non-float dtype, the wrong width, or NaN / inf values.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        hint = " Wrap a single vector as x[None, :]." if arr.ndim == 1 else ""
        raise ShapeError(
            f"{name} must be a 2-D array of shape (n, {dim if dim is not None else 'd'}); "
            f"got shape {arr.shape}.{hint}"
        )
    if arr.dtype.kind != "f":
        raise ShapeError(
            f"{name} must have a floating dtype (float16, float32 or float64); got {arr.dtype}. "
            "Convert with x.astype(np.float32)."
        )
    if dim is not None and arr.shape[1] != dim:
        raise ShapeError(
            f"{name} must have shape (n, {dim}) to match the index; got {arr.shape}. "
            "Was the index built with a different encoder?"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    # One reduction instead of a full boolean mask on the hot search path; a non-finite sum
    # (a NaN / inf, or an overflow of huge finite values) triggers the exact check.
    if not np.isfinite(out.sum(dtype=np.float64)) and not np.isfinite(out).all():
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        raise ShapeError(
            f"{name} contains NaN or inf values in {bad.size} row(s) (first: row {int(bad[0])}). "
            "Check the encoder output or the input data."
        )
    return out


@dataclass(frozen=True)
class Embeddings:
    """Dense vectors with their string ids.

    Attributes
    ----------
    vectors : np.ndarray, shape (n, d), dtype float32
    ids : list of str, length n
    """

    vectors: NDArray[np.float32]
    ids: list[str]

    def __post_init__(self) -> None:
        vectors = as_float32_matrix(self.vectors, name="vectors")
        object.__setattr__(self, "vectors", vectors)
        ids = [str(i) for i in self.ids]
        if len(ids) != vectors.shape[0]:
            raise ShapeError(
                f"Embeddings needs one id per vector; got {len(ids)} ids for {vectors.shape[0]} vectors."
            )
        object.__setattr__(self, "ids", ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class Hit:
    """One retrieved document."""

    doc_id: str
    score: float


@dataclass
class SearchResult:
    """Top-k results for a batch of queries.

    Attributes
    ----------
    doc_ids : list of list of str, shape (nq, <=k)
        Document ids per query, best first. A query with fewer than k hits has a shorter list.
    scores : np.ndarray, shape (nq, k), dtype float32
        Higher is better (inner product, or negative squared L2 distance for ``metric="l2"``);
        ``-inf`` pads the missing hits.
    labels : np.ndarray, shape (nq, k), dtype int64
        Internal row numbers in the index; ``-1`` pads the missing hits (as in faiss).
    query_ids : list of str or None
        Optional query ids, used by :meth:`to_trec_dict`.
    """

    doc_ids: list[list[str]]
    scores: NDArray[np.float32]
    labels: NDArray[np.int64]
    query_ids: list[str] | None = field(default=None)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def to_list(self) -> list[list[Hit]]:
        """Hits per query, best first, padding dropped."""
        return [
            [Hit(doc_id, float(score)) for doc_id, score in zip(ids, row, strict=False)]  # ids is shorter than a padded row
            for ids, row in zip(self.doc_ids, self.scores, strict=True)
        ]

    def to_trec_dict(self, query_ids: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Return the BEIR / pytrec_eval run format ``{query_id: {doc_id: score}}``."""
        qids = list(query_ids) if query_ids is not None else self.query_ids
        if qids is None:
            qids = [str(i) for i in range(len(self.doc_ids))]
        if len(qids) != len(self.doc_ids):
            raise ShapeError(f"to_trec_dict needs one query id per query; got {len(qids)} ids for {len(self.doc_ids)} queries.")
        return {
            str(qid): {doc_id: float(score) for doc_id, score in zip(ids, row, strict=False)}  # padding dropped
            for qid, ids, row in zip(qids, self.doc_ids, self.scores, strict=True)
        }

    def recall_at(self, gt: Sequence[Sequence[str]], k: int | None = None) -> float:
        """Mean share of each query's ground-truth ids found in its top ``k`` (all hits when None)."""
        if len(gt) != len(self.doc_ids):
            raise ShapeError(f"recall_at needs one ground-truth list per query; got {len(gt)} for {len(self.doc_ids)} queries.")
        total = 0.0
        for found, truth in zip(self.doc_ids, gt, strict=True):
            truth_set = set(truth)
            if truth_set:
                total += len(truth_set.intersection(found[:k] if k else found)) / len(truth_set)
        return total / max(len(gt), 1)

"""Score kernels shared by every layer that ranks: MaxSim (late interaction) and top-k selection.

``MaxSim(q, d) = sum over query vectors i of max over document vectors j of <q_i, d_j>``.
A document with no vectors cannot match and scores ``-inf``; a query with no vectors
scores 0 against every document.

These are pure NumPy functions of arrays: the multi-vector index (first stages and exact
scoring) and the reranker both call them, and neither is imported from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval.errors import ShapeError
from retrieval.types import MultiVectorEmbeddings

__all__ = ["maxsim", "maxsim_csr", "maxsim_scores", "top_k"]

# Elements of the (rows x query tokens) similarity block computed at once (64 MiB float32), and
# a cap on the rows per block: decoded blocks that stay in cache are much faster than huge ones.
_BLOCK = 1 << 24
_MAX_ROWS = 32768


def maxsim(
    queries: Any, documents: Any, query_mask: Any = None, document_mask: Any = None
) -> NDArray[np.float32]:
    """MaxSim of every padded query against every padded document.

    Parameters
    ----------
    queries : array, shape (nq, Lq, d)
    documents : array, shape (nd, Ld, d)
    query_mask : bool array, shape (nq, Lq), optional
        True for real query vectors; padding contributes nothing.
    document_mask : bool array, shape (nd, Ld), optional
        True for real document vectors; padding is never the max.

    Returns
    -------
    np.ndarray, shape (nq, nd), float32

    Examples
    --------
    Two query tokens against two documents (legend: q = [[1,0],[0,1]];
    d0 = [[1,0],[0,1]] matches both exactly, d1 = [[1,0],[pad]] matches only the first):

    >>> import numpy as np
    >>> q = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    >>> d = np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 9.0]]])
    >>> maxsim(q, d, document_mask=np.array([[True, True], [True, False]])).tolist()
    [[2.0, 1.0]]
    """
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(documents, dtype=np.float32)
    if q.ndim != 3 or d.ndim != 3 or q.shape[2] != d.shape[2]:
        raise ShapeError(
            f"maxsim expects queries (nq, Lq, d) and documents (nd, Ld, d) with the same d; got {q.shape} and {d.shape}."
        )
    qm = np.ones(q.shape[:2], bool) if query_mask is None else np.asarray(query_mask, dtype=bool)
    dm = np.ones(d.shape[:2], bool) if document_mask is None else np.asarray(document_mask, dtype=bool)
    if qm.shape != q.shape[:2] or dm.shape != d.shape[:2]:
        raise ShapeError(f"masks must have shapes {q.shape[:2]} and {d.shape[:2]}; got {qm.shape} and {dm.shape}.")
    out = np.empty((q.shape[0], d.shape[0]), dtype=np.float32)
    per_doc = max(1, q.shape[0] * q.shape[1] * d.shape[1])
    step = max(1, _BLOCK // per_doc)
    for s in range(0, d.shape[0], step):
        sims = np.einsum("aid,bjd->abij", q, d[s : s + step], optimize=True)  # (nq, nd_c, Lq, Ld)
        sims = np.where(dm[None, s : s + step, None, :], sims, -np.inf)
        best = sims.max(axis=3, initial=-np.inf)
        out[:, s : s + step] = np.where(qm[:, None, :], best, 0.0).sum(axis=2)
    return out


def maxsim_scores(
    row_scores: Callable[[int, int, NDArray[np.float32]], NDArray[np.float32]],
    offsets: NDArray[np.int64],
    queries: MultiVectorEmbeddings,
) -> NDArray[np.float32]:
    """MaxSim of each query against CSR documents whose rows are scored by ``row_scores``.

    ``row_scores(start, end, Q)`` returns the ``(end - start, T_q)`` similarities between
    stored rows ``start:end`` and the concatenated query vectors ``Q`` (``T_q`` rows): a plain
    matrix product for float storage, a decode-then-multiply for compressed codes, or a
    lookup table for centroid ids. Documents are processed in blocks of whole documents.

    Returns
    -------
    np.ndarray, shape (nq, n), float32
    """
    qv = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    n = offsets.shape[0] - 1
    nq = len(queries)
    out = np.zeros((nq, n), dtype=np.float32)
    if n == 0 or nq == 0:
        return out
    doc_len = np.diff(offsets)
    out[:, doc_len == 0] = -np.inf
    q_len = queries.lengths
    q_live = np.flatnonzero(q_len > 0)
    if qv.shape[0] == 0:
        return out
    q_starts = queries.offsets[:-1][q_live]
    rows_per_block = max(1, min(_MAX_ROWS, _BLOCK // qv.shape[0]))
    doc = 0
    while doc < n:
        # Take whole documents until the block holds about rows_per_block rows.
        end_doc = int(np.searchsorted(offsets, offsets[doc] + rows_per_block, side="right")) - 1
        end_doc = min(max(end_doc, doc + 1), n)
        lo, hi = int(offsets[doc]), int(offsets[end_doc])
        if hi > lo:
            sims = row_scores(lo, hi, qv)
            live = np.flatnonzero(doc_len[doc:end_doc] > 0)
            # Empty documents own no rows, so the live documents' segments tile [lo, hi).
            best = np.maximum.reduceat(sims, offsets[doc:end_doc][live] - lo, axis=0)  # (live, T_q)
            summed = np.add.reduceat(best, q_starts, axis=1)  # (live, live queries)
            out[np.ix_(q_live, doc + live)] = summed.T
        doc = end_doc
    return out


def maxsim_csr(queries: MultiVectorEmbeddings, documents: MultiVectorEmbeddings) -> NDArray[np.float32]:
    """MaxSim of every query against every document, both in CSR layout.

    Returns
    -------
    np.ndarray, shape (len(queries), len(documents)), float32

    Examples
    --------
    >>> import numpy as np
    >>> q = MultiVectorEmbeddings.from_list([np.array([[1.0, 0.0], [0.0, 1.0]])])
    >>> d = MultiVectorEmbeddings.from_list([np.array([[1.0, 0.0]]), np.zeros((0, 2)), np.array([[0.5, 0.75]])])
    >>> maxsim_csr(q, d).tolist()
    [[1.0, -inf, 1.25]]
    """
    if queries.dim != documents.dim:
        raise ShapeError(f"queries have d={queries.dim} but documents have d={documents.dim}.")
    vectors = documents.vectors

    def row_scores(lo: int, hi: int, qv: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(vectors[lo:hi], dtype=np.float32) @ qv.T

    return maxsim_scores(row_scores, documents.offsets, queries)


def top_k(scores: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Best ``k`` columns of each row, sorted, ties by column; ``-1`` / ``-inf`` pad missing hits."""
    nq, n = scores.shape
    kk = min(k, n)
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_l = np.full((nq, k), -1, dtype=np.int64)
    if kk == 0:
        return out_s, out_l
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (nq, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # score desc, then column for stable ties
    labels = np.take_along_axis(part, order, axis=1)
    best = np.take_along_axis(part_scores, order, axis=1)
    valid = best > -np.inf  # -inf marks a document that cannot match (no vectors): not a hit
    out_s[:, :kk] = np.where(valid, best, -np.inf)
    out_l[:, :kk] = np.where(valid, labels, -1)
    return out_s, out_l

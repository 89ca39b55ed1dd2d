"""Filtered search over a :class:`~indexes.faiss_index.FaissIndex`: ``min(k, allowed rows)`` hits per query.

A search restricted to a row mask (a ``subset``, a ``where`` predicate, the tombstones) picks one
of three plans by the kind of FAISS index and by how many rows are allowed:

* **exact scan of the allowed rows** when few are allowed (:func:`exact_is_cheaper`): the
  allowed rows' codes are scored exhaustively, so the result is the exact top-``k`` under
  the index's own (quantised) distances and is never short. For IVF kinds this is the
  selector search with ``nprobe = nlist`` (every list visited, only allowed rows scored); for
  HNSW and flat PQ kinds the allowed rows are decoded and scored by NumPy.
* **FAISS pre-filter** (``IDSelectorBitmap``) where the kind takes one (IVF, HNSW, Flat, SQ);
  rows the approximate search leaves short (an IVF ``nprobe`` or an HNSW walk that reaches too
  few allowed rows) are searched again with the exact plan.
* **over-fetch** for kinds without a selector (flat ``IndexPQ``, GPU indexes), and for exact
  ``IndexFlat`` (whose unfiltered search is one BLAS product), when many rows are allowed:
  an unfiltered search for ``3 k / share`` hits, filtered; the rows still short are searched
  again with the depth doubled until they hold ``k`` allowed hits (at worst every stored row).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from indexes.faiss_index import FaissIndex

__all__ = ["EXACT_MIN_ROWS", "EXACT_SHARE", "exact_is_cheaper", "search_filtered"]

#: Scan the allowed rows exactly when at most this many are allowed ...
EXACT_MIN_ROWS = 4096
#: ... or at most this share of the stored rows (a graph walk or a few IVF lists would then
#: meet too few allowed rows to be reliable, and the scan costs little).
EXACT_SHARE = 1 / 64
_DECODE_BLOCK = 65536  # rows decoded at once by the exact scan (bounds its memory)

Result = tuple[NDArray[np.float32], NDArray[np.int64]]


def exact_is_cheaper(n_allowed: int, ntotal: int) -> bool:
    """The cost switch: True when scanning the allowed rows beats a filtered approximate search.

    Examples
    --------
    >>> exact_is_cheaper(1_000, 1_000_000), exact_is_cheaper(100_000, 1_000_000)
    (True, False)
    """
    return n_allowed <= max(EXACT_MIN_ROWS, int(ntotal * EXACT_SHARE))


def search_filtered(index: FaissIndex, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_]) -> Result:
    """FAISS-convention ``(distances, labels)`` of the ``k`` best allowed rows (``k`` <= allowed rows)."""
    faiss = _faiss()
    n_allowed = int(np.count_nonzero(allowed))
    exact = exact_is_cheaper(n_allowed, int(index.faiss_index.ntotal))
    ivf, hnsw = index._ivf, index._hnsw  # pylint: disable=protected-access
    if index._on_gpu:  # pylint: disable=protected-access
        return _overfetch(index, queries, k, allowed, n_allowed)
    if ivf is not None:
        d, lab = index._search_with_selector(queries, k, allowed, nprobe=ivf.nlist if exact else None)
        short = (lab < 0).any(axis=1)
        if short.any():
            d[short], lab[short] = index._search_with_selector(queries[short], k, allowed, nprobe=ivf.nlist)
        return d, lab
    if hnsw is not None and not index._wrapped:  # pylint: disable=protected-access
        storage = faiss.downcast_index(hnsw.storage)
        if exact:
            return scan_rows(storage, queries, k, allowed, index.metric)
        d, lab = index._search_with_selector(queries, k, allowed)
        short = (lab < 0).any(axis=1)
        if short.any():
            d[short], lab[short] = scan_rows(storage, queries[short], k, allowed, index.metric)
        return d, lab
    if not exact and isinstance(faiss.downcast_index(index.faiss_index), faiss.IndexFlat):
        # Many rows allowed: FAISS's selector path scores row by row, its unfiltered search runs
        # one BLAS product; the exhaustive search over-fetched by 1 / share is as exact and faster.
        return _overfetch(index, queries, k, allowed, n_allowed)
    if index._takes_selector:  # Flat, SQ (exhaustive already), wrapped HNSW  # pylint: disable=protected-access
        d, lab = index._search_with_selector(queries, k, allowed)
        short = (lab < 0).any(axis=1)
        if short.any():
            d[short], lab[short] = scan_rows(index.faiss_index, queries[short], k, allowed, index.metric)
        return d, lab
    if exact:
        return scan_rows(index.faiss_index, queries, k, allowed, index.metric)
    return _overfetch(index, queries, k, allowed, n_allowed)


def scan_rows(
    storage: Any, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_], metric: str
) -> Result:
    """Exhaustive search of ``storage`` restricted to ``allowed`` rows (FAISS convention: l2 distances).

    The allowed rows are decoded in blocks (``reconstruct_batch``: a copy for Flat storage; for
    PQ / SQ codes the vector whose distance the index's own search computes) and scored by one
    matrix product per block, so the cost follows the allowed rows, not the stored ones (a
    FAISS ``IDSelectorBitmap`` search of flat storage tests every stored row's bit per query).
    """
    from indexes.flat import topk  # pylint: disable=import-outside-toplevel

    rows = np.flatnonzero(allowed)
    nq = queries.shape[0]
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((nq, 0), dtype=np.int64)
    qn = np.einsum("ij,ij->i", queries, queries)[:, None] if metric == "l2" else None
    for lo in range(0, rows.size, _DECODE_BLOCK):
        block = rows[lo : lo + _DECODE_BLOCK]
        vecs = storage.reconstruct_batch(block)
        with np.errstate(over="ignore", invalid="ignore"):
            s = queries @ vecs.T
            if qn is not None:
                s = 2.0 * s - np.einsum("ij,ij->i", vecs, vecs)[None, :] - qn
        s = s.astype(np.float32, copy=False)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_r = np.concatenate([best_r, np.broadcast_to(block, s.shape)], axis=1)
        top_s, pos = topk(cand_s, min(k, cand_s.shape[1]))
        best_s, best_r = top_s, np.take_along_axis(cand_r, pos, axis=1)
    out_d = np.full((nq, k), -np.inf if metric == "ip" else np.inf, dtype=np.float32)
    out_l = np.full((nq, k), -1, dtype=np.int64)
    out_d[:, : best_s.shape[1]] = best_s if metric == "ip" else -best_s
    out_l[:, : best_s.shape[1]] = best_r
    return out_d, out_l


def _overfetch(index: FaissIndex, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_],
               n_allowed: int) -> Result:
    """Unfiltered searches for ``3 k / share`` hits, filtered; rows still short of ``k`` allowed hits are
    searched again (only they) with the depth doubled, at worst up to every stored row."""
    total = int(index.faiss_index.ntotal)
    share = max(n_allowed, 1) / max(total, 1)
    fetch = min(total, max(2 * k, math.ceil(3 * k / share) + k))
    worst = np.inf if index.metric == "l2" else -np.inf
    out_d = np.full((queries.shape[0], k), worst, dtype=np.float32)
    out_l = np.full((queries.shape[0], k), -1, dtype=np.int64)
    todo = np.arange(queries.shape[0])
    while todo.size:
        distances, labels = index.faiss_index.search(queries[todo], fetch)
        ok = (labels >= 0) & allowed[np.clip(labels, 0, None)]
        done = (ok.sum(axis=1) >= k) | (fetch >= total)
        for i in np.flatnonzero(done).tolist():
            keep = np.flatnonzero(ok[i])[:k]
            out_d[todo[i], : keep.size] = distances[i, keep]
            out_l[todo[i], : keep.size] = labels[i, keep]
        todo = todo[~done]
        fetch = min(total, fetch * 2)
    return out_d, out_l


def _faiss() -> Any:
    import faiss  # pylint: disable=import-outside-toplevel

    return faiss

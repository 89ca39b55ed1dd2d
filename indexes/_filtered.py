"""Filtered search over a :class:`~indexes.faiss_index.FaissIndex`: ``min(k, allowed rows)`` hits per query.

A search restricted to a row mask (a ``subset``, a ``where`` predicate, the tombstones) picks one
of three plans by the kind of FAISS index and by how many rows are allowed
(:func:`exact_is_cheaper`, whose thresholds come from a measured crossover):

* **exact scan of the allowed rows**: their codes are scored exhaustively, so the result is the
  exact top-``k`` under the index's own (quantised) distances and is never short. For HNSW and
  flat kinds (Flat, SQ, PQ) the allowed rows are decoded and scored by NumPy, at a cost that
  follows the allowed rows. IVF kinds with Flat, PQ or SQ codes (OPQ included) decode the
  allowed rows through FAISS's direct map (:mod:`indexes._ivf_rows`) and score them against the
  pre-transformed query, so their cost follows the allowed rows too; other IVF kinds
  (fast-scan codes, a refine stage) run the selector search with ``nprobe = nlist``.
* **FAISS pre-filter** (``IDSelectorBitmap``) where the kind takes one (IVF, HNSW, SQ); rows the
  approximate search leaves short (an IVF ``nprobe`` or an HNSW walk that reaches too few
  allowed rows) are searched again with the exact plan.
* **over-fetch** for flat kinds without a selector (``IndexPQ``, GPU indexes), and for
  ``IndexFlat`` (whose unfiltered search is one BLAS product), when many rows are allowed:
  an unfiltered search for ``3 k / share`` hits, filtered; the rows still short are searched
  again with the depth doubled until they hold ``k`` allowed hits (at worst every stored row).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from indexes._ivf_rows import transform_queries

if TYPE_CHECKING:
    from indexes.faiss_index import FaissIndex

__all__ = ["exact_is_cheaper", "search_filtered"]

# The plan switch, from ``bench_filters.py --crossover`` (docs/BENCHMARKS.md section 9, 64-d,
# 100k and 400k rows, one thread): where the exact scan of the allowed rows stops being the
# cheaper plan. Both plans' cost grows with the dimension, so the thresholds count rows.
#: HNSW: scan exactly up to max(this, HNSW_EXACT_SQRT * sqrt(stored rows)) allowed rows (measured
#: crossover: ~6,800 rows at 100k, ~10,000 at 400k; a filtered walk slows as the share falls) ...
HNSW_EXACT_MIN_ROWS = 4096
HNSW_EXACT_SQRT = 16.0
#: IVF (Flat, PQ, SQ codes, OPQ included): decode and score the allowed rows (indexes/_ivf_rows.py)
#: up to max(IVF_EXACT_MIN_ROWS, IVF_EXACT_PROBED_ROWS * the rows the probed lists hold,
#: IVF_EXACT_MET_PER_HIT * k / probed share) allowed rows. Measured (IVF1024 nprobe 16, 100 queries):
#: the exact plan takes 0.04-0.6 of the nprobe plan's time at 1,000 allowed rows, 1.4-7.7 times it
#: at 3,000 (100k rows: probed lists hold ~1,560; 400k: ~6,250); under the last bound most queries
#: come up short of k allowed rows in the probed lists and are searched again exactly anyway.
IVF_EXACT_MIN_ROWS = 1000
IVF_EXACT_PROBED_ROWS = 0.5
IVF_EXACT_MET_PER_HIT = 1.0
#: IVF kinds that cannot decode (fast-scan codes, a refine stage): visit every list with the bitmap
#: when n_allowed * nprobe / nlist <= IVF_EXACT_MET_PER_HIT * k (measured: 5-15 allowed rows met for k = 10).
#: Flat codes (Flat, SQ, PQ, ...): decode and score the allowed rows up to this share of the stored
#: rows; above it the over-fetched (or bitmap) search of every row is cheaper (measured: 25-30%).
FLAT_EXACT_SHARE = 0.25
_DECODE_BLOCK = 65536  # rows decoded at once by the exact scan (bounds its memory)

Result = tuple[NDArray[np.float32], NDArray[np.int64]]


def exact_is_cheaper(plan: str, n_allowed: int, ntotal: int, *, k: int = 10, probed: float = 1.0) -> bool:
    """The cost switch: True when scanning the allowed rows beats the filtered approximate search.

    ``plan`` is ``"hnsw"``, ``"ivf"`` (``probed`` = nprobe / nlist; the exact plan decodes the allowed
    rows), ``"ivf-lists"`` (an IVF kind that cannot decode: the exact plan visits every list) or
    ``"flat"`` (any index that scores every stored code: Flat, SQ, PQ).

    Examples
    --------
    >>> exact_is_cheaper("hnsw", 10_000, 1_000_000), exact_is_cheaper("hnsw", 100_000, 1_000_000)
    (True, False)
    >>> exact_is_cheaper("ivf", 1000, 1_000_000, probed=16 / 1024)  # 0.1%: 15,625 rows in the probed lists
    True
    >>> exact_is_cheaper("ivf", 10_000, 1_000_000, probed=16 / 1024), exact_is_cheaper("ivf-lists", 300, 100_000)
    (False, False)
    >>> exact_is_cheaper("flat", 200_000, 1_000_000), exact_is_cheaper("flat", 500_000, 1_000_000)
    (True, False)
    """
    if plan == "hnsw":
        return n_allowed <= max(HNSW_EXACT_MIN_ROWS, HNSW_EXACT_SQRT * math.sqrt(ntotal))
    if plan == "ivf":
        return n_allowed <= max(IVF_EXACT_MIN_ROWS, IVF_EXACT_PROBED_ROWS * probed * ntotal,
                                IVF_EXACT_MET_PER_HIT * k / max(probed, 1e-12))
    if plan == "ivf-lists":
        return n_allowed * probed <= IVF_EXACT_MET_PER_HIT * k
    return n_allowed <= FLAT_EXACT_SHARE * ntotal


def search_filtered(index: FaissIndex, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_]) -> Result:
    """FAISS-convention ``(distances, labels)`` of the ``k`` best allowed rows (``k`` <= allowed rows)."""
    faiss = _faiss()
    n_allowed = int(np.count_nonzero(allowed))
    ntotal = int(index.faiss_index.ntotal)
    ivf, hnsw = index._ivf, index._hnsw  # pylint: disable=protected-access
    if index._on_gpu:  # pylint: disable=protected-access
        return _overfetch(index, queries, k, allowed, n_allowed)
    if ivf is not None:
        return _search_ivf(index, ivf, queries, k, allowed, n_allowed)
    if hnsw is not None and not index._wrapped:  # pylint: disable=protected-access
        storage = faiss.downcast_index(hnsw.storage)
        if exact_is_cheaper("hnsw", n_allowed, ntotal, k=k):
            return scan_rows(storage, queries, k, allowed, index.metric)
        d, lab = index._search_with_selector(queries, k, allowed)
        short = (lab < 0).any(axis=1)
        if short.any():
            d[short], lab[short] = scan_rows(storage, queries[short], k, allowed, index.metric)
        return d, lab
    if hnsw is None and exact_is_cheaper("flat", n_allowed, ntotal, k=k):
        return scan_rows(index.faiss_index, queries, k, allowed, index.metric)
    takes_selector = index._takes_selector  # pylint: disable=protected-access
    if takes_selector and not isinstance(faiss.downcast_index(index.faiss_index), faiss.IndexFlat):
        # SQ (exhaustive already) with many rows allowed, and HNSW behind a transform (OPQ, PCA)
        d, lab = index._search_with_selector(queries, k, allowed)
        short = (lab < 0).any(axis=1)
        if short.any():
            d[short], lab[short] = scan_rows(index.faiss_index, queries[short], k, allowed, index.metric)
        return d, lab
    # Many rows allowed of flat codes without a selector (PQ), or of IndexFlat (FAISS's selector path
    # scores row by row, its unfiltered search is one BLAS product): over-fetch, as exact and faster.
    return _overfetch(index, queries, k, allowed, n_allowed)


def _search_ivf(index: FaissIndex, ivf: Any, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_],
                n_allowed: int) -> Result:
    """IVF kinds: the allowed rows decoded and scored, or the ``nprobe`` selector search with its short
    rows searched again exactly (by decoding, or for kinds that cannot decode, with every list visited)."""
    ntotal, probed = int(ivf.ntotal), ivf.nprobe / max(ivf.nlist, 1)
    rows = index._ivf_rows  # pylint: disable=protected-access
    if rows is None:  # fast-scan codes, a refine stage: every list visited with the bitmap
        exact = exact_is_cheaper("ivf-lists", n_allowed, ntotal, k=k, probed=probed)
        d, lab = index._search_with_selector(queries, k, allowed, nprobe=ivf.nlist if exact else None)
        short = (lab < 0).any(axis=1)
        if short.any():
            d[short], lab[short] = index._search_with_selector(queries[short], k, allowed, nprobe=ivf.nlist)
        return d, lab
    if exact_is_cheaper("ivf", n_allowed, ntotal, k=k, probed=probed):
        return scan_rows(rows, transform_queries(index.faiss_index, queries), k, allowed, index.metric)
    d, lab = index._search_with_selector(queries, k, allowed)
    short = (lab < 0).any(axis=1)
    if short.any():
        d[short], lab[short] = scan_rows(rows, transform_queries(index.faiss_index, queries[short]), k, allowed,
                                         index.metric)
    return d, lab


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

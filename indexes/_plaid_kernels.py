"""Numba kernels of the PLAID engine (:mod:`indexes.plaid`): list building, probing, candidate sets,
centroid interaction, top-``ndocs`` selection and residual decoding.

Every kernel takes and returns plain NumPy arrays in CSR layout (an ``offsets`` array of
``n + 1`` int64 and a flat value array); none of them loops in Python. They are compiled on first
use and cached on disk (``cache=True``), so only the first process on a machine pays the compile.
Loops marked ``prange`` run on Numba's thread pool (``numba.set_num_threads`` sets its size).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from indexes._binary_kernels import pair_owners
from indexes._plaid_simd import centroid_rows, table_rows

__all__ = [
    "build_lists", "centroid_interaction", "decode_docs", "doc_candidates", "inverse_lengths", "lut_exact_maxsim",
    "probe_keep", "select_top",
]

_jit = numba.njit(cache=True, nogil=True)
_pjit = numba.njit(cache=True, nogil=True, parallel=True)
_fjit = numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)


@_jit
def build_lists(cids: Any, offsets: Any, k: int) -> tuple[Any, Any, Any, Any]:  # pragma: no cover - compiled
    """Per-document unique centroid ids and the inverted lists centroid -> documents.

    Parameters: ``cids`` (T,) centroid id of every stored vector, ``offsets`` (n + 1,) the
    documents' vector ranges, ``k`` the number of centroids. Returns ``doc_offsets`` (n + 1,)
    int64 and ``doc_cents`` (U,) uint16 (each document's distinct centroids, in first-seen
    order), then ``list_offsets`` (k + 1,) int64 and ``list_docs`` (U,) int32 (each centroid's
    documents, ascending). One pass over the vectors plus a counting sort: O(T + k).
    """
    n = offsets.shape[0] - 1
    seen = np.full(k, -1, np.int64)  # last document that held each centroid
    doc_offsets = np.zeros(n + 1, np.int64)
    doc_cents = np.empty(cids.shape[0], np.uint16)
    counts = np.zeros(k + 1, np.int64)
    u = 0
    for d in range(n):
        for t in range(offsets[d], offsets[d + 1]):
            c = cids[t]
            if seen[c] != d:
                seen[c] = d
                doc_cents[u] = c
                counts[c + 1] += 1
                u += 1
        doc_offsets[d + 1] = u
    list_offsets = np.cumsum(counts)
    fill = list_offsets[:-1].copy()
    list_docs = np.empty(u, np.int32)
    for d in range(n):
        for j in range(doc_offsets[d], doc_offsets[d + 1]):
            c = doc_cents[j]
            list_docs[fill[c]] = d
            fill[c] += 1
    return doc_offsets, doc_cents[:u].copy(), list_offsets, list_docs


@_pjit
def probe_keep(st: Any, q_offsets: Any, nprobe: int, threshold: float, prune: bool) -> tuple[Any, Any]:  # pragma: no cover
    """Each query vector's best centroids and centroid pruning in one pass over ``st`` (k, Tq), query by query.

    Returns ``probed`` (Tq, nprobe) int64, each query vector's best centroids, best first, and
    ``keep`` (nq, k) bool: with ``prune``, True where the centroid's best score over the query's
    vectors is at least ``threshold`` (an empty query keeps none); without, all True. Queries
    run in parallel; each walks every centroid row once.
    """
    k, tq = st.shape
    nq = q_offsets.shape[0] - 1
    probed = np.zeros((tq, nprobe), np.int64)
    keep = np.empty((nq, k), np.bool_)
    for q in numba.prange(nq):
        q0, q1 = q_offsets[q], q_offsets[q + 1]
        vals = np.full((q1 - q0, nprobe), -np.inf, np.float32)
        ids = np.zeros((q1 - q0, nprobe), np.int64)
        for c in range(k):
            m = -np.inf
            for i in range(q0, q1):
                v = st[c, i]
                m = max(m, v)
                r = i - q0
                if v > vals[r, nprobe - 1]:
                    j = nprobe - 1
                    while j > 0 and vals[r, j - 1] < v:
                        vals[r, j] = vals[r, j - 1]
                        ids[r, j] = ids[r, j - 1]
                        j -= 1
                    vals[r, j] = v
                    ids[r, j] = c
            keep[q, c] = m >= threshold if prune else True
        probed[q0:q1] = ids
    return probed, keep


@_jit
def _mark_lists(marks: Any, probed: Any, t0: int, t1: int, list_offsets: Any, list_docs: Any, allowed: Any,
                out: Any) -> int:  # pragma: no cover - compiled
    """Mark the documents of the lists probed by query vectors ``t0:t1``; write each new one to
    ``out`` when it is not empty; return how many there were. ``marks`` must be all zero."""
    filtered = allowed.shape[0] > 0
    count = 0
    for t in range(t0, t1):
        for p in range(probed.shape[1]):
            c = probed[t, p]
            for j in range(list_offsets[c], list_offsets[c + 1]):
                d = list_docs[j]
                if marks[d] == 0 and (not filtered or allowed[d]):
                    marks[d] = 1
                    if out.shape[0]:
                        out[count] = d
                    count += 1
    return count


@_pjit
def doc_candidates(
    probed: Any, q_offsets: Any, list_offsets: Any, list_docs: Any, allowed: Any, n_docs: int,
) -> tuple[Any, Any]:  # pragma: no cover - compiled
    """Union of the inverted lists each query probes, as CSR (``cand_offsets`` (nq + 1,), ``cand_docs``).

    ``probed`` (Tq, nprobe) centroid ids of the queries' vectors (query q owns rows
    ``q_offsets[q]:q_offsets[q + 1]``); ``allowed`` is a (n_docs,) bool mask or an empty array
    for "every document". Each query's candidates come out ascending, without duplicates. Two
    passes (count, then fill), each with a scratch mask of ``n_docs`` bytes per running query,
    so memory stays ``threads x n_docs`` bytes plus the candidates, whatever the batch size.
    """
    nq = q_offsets.shape[0] - 1
    counts = np.zeros(nq + 1, np.int64)
    none = np.empty(0, np.int32)
    for q in numba.prange(nq):
        counts[q + 1] = _mark_lists(np.zeros(n_docs, np.uint8), probed, q_offsets[q], q_offsets[q + 1], list_offsets,
                                    list_docs, allowed, none)
    cand_offsets = np.cumsum(counts)
    cand_docs = np.empty(cand_offsets[nq], np.int32)
    for q in numba.prange(nq):
        a, b = cand_offsets[q], cand_offsets[q + 1]
        _mark_lists(np.zeros(n_docs, np.uint8), probed, q_offsets[q], q_offsets[q + 1], list_offsets, list_docs,
                    allowed, cand_docs[a:b])
        cand_docs[a:b] = np.sort(cand_docs[a:b])
    return cand_offsets, cand_docs


@_fjit
def centroid_interaction(
    scores: Any, tq: int, w: int, q_offsets: Any, cand_offsets: Any, cand_docs: Any, doc_offsets: Any,
    doc_cents: Any, keep: Any,
) -> Any:  # pragma: no cover - compiled
    """Approximate MaxSim of every (query, candidate) pair from centroid scores alone.

    ``scores`` is the flat (K, ``tq``) centroid scores of the batch with ``w`` (the batch's lane
    width) floats of padding after them; query q owns columns ``q_offsets[q]:q_offsets[q + 1]``.
    For query q and document d: the sum over q's vectors of the best score among d's distinct
    centroids ``c`` whose ``keep[q * K + c]`` is True (centroid pruning; ``keep`` is the flat
    (nq, K) mask). A pair with no kept centroid scores -inf. Returns one float32 per entry of
    ``cand_docs``; pairs run in parallel.
    """
    nq = q_offsets.shape[0] - 1
    k = keep.shape[0] // max(nq, 1)
    out = np.empty(cand_docs.shape[0], np.float32)
    owner = pair_owners(cand_offsets)
    for p in numba.prange(cand_docs.shape[0]):
        q = owner[p]
        q0 = q_offsets[q]
        best = np.full(w, -np.inf, np.float32)
        d = cand_docs[p]
        kept = centroid_rows(best, scores, tq, q0, doc_cents, doc_offsets[d], doc_offsets[d + 1], keep, q * k, w)
        total = np.float32(0.0)
        for i in range(q_offsets[q + 1] - q0):
            total += best[i]
        out[p] = total if kept else -np.inf
    return out


@_pjit
def select_top(cand_offsets: Any, cand_docs: Any, approx: Any, ndocs: int) -> tuple[Any, Any]:  # pragma: no cover
    """Each query's best ``ndocs`` candidates by ``approx`` (ties: lower document first), ascending by id.

    Returns CSR (``sel_offsets`` (nq + 1,), ``sel_docs`` int32).
    """
    nq = cand_offsets.shape[0] - 1
    counts = np.zeros(nq + 1, np.int64)
    for q in range(nq):
        counts[q + 1] = min(ndocs, cand_offsets[q + 1] - cand_offsets[q])
    sel_offsets = np.cumsum(counts)
    sel_docs = np.empty(sel_offsets[nq], np.int32)
    for q in numba.prange(nq):
        a, b = cand_offsets[q], cand_offsets[q + 1]
        m = sel_offsets[q + 1] - sel_offsets[q]
        if b - a <= m:
            sel_docs[sel_offsets[q] : sel_offsets[q + 1]] = cand_docs[a:b]
            continue
        order = np.argsort(-approx[a:b], kind="mergesort")[:m]  # stable: ties keep document order
        sel_docs[sel_offsets[q] : sel_offsets[q + 1]] = np.sort(cand_docs[a:b][order])
    return sel_offsets, sel_docs


@_pjit
def decode_docs(
    codes: Any, offsets: Any, docs: Any, centroids: Any, table: Any, id_bytes: int, scales: Any,
) -> tuple[Any, Any]:  # pragma: no cover - compiled
    """Decode the vectors of documents ``docs``: centroid plus residual, through a per-byte table.

    ``codes`` (T, code_size) uint8, ``offsets`` the documents' vector ranges, ``centroids``
    (k, d), ``table`` (residual_bytes, 256, dims per byte) float32 (residual_bytes 0 when the
    codes hold no residual; dimensions past d in the last byte are padding and skipped).
    ``scales`` (T,) multiplies each decoded vector (empty: none). Returns the decoded
    (sum of lengths, d) float32 vectors, documents back to back, and their offsets. Documents
    run in parallel.
    """
    m = docs.shape[0]
    dim = centroids.shape[1]
    out_offsets = np.zeros(m + 1, np.int64)
    for i in range(m):
        out_offsets[i + 1] = out_offsets[i] + offsets[docs[i] + 1] - offsets[docs[i]]
    out = np.empty((out_offsets[m], dim), np.float32)
    n_bytes, per_byte = table.shape[0], table.shape[2]
    full = min(n_bytes, dim // per_byte)  # bytes whose dimensions are all real
    for i in numba.prange(m):
        w = out_offsets[i]
        for t in range(offsets[docs[i]], offsets[docs[i] + 1]):
            c = np.int64(codes[t, 0])
            if id_bytes == 2:
                c += np.int64(codes[t, 1]) << 8
            for j in range(dim):
                out[w, j] = centroids[c, j]
            for b in range(full):
                v = codes[t, id_bytes + b]
                for j in range(per_byte):
                    out[w, b * per_byte + j] += table[b, v, j]
            for b in range(full, n_bytes):
                v = codes[t, id_bytes + b]
                for j in range(min(per_byte, dim - b * per_byte)):
                    out[w, b * per_byte + j] += table[b, v, j]
            if scales.shape[0]:
                for j in range(dim):
                    out[w, j] *= scales[t]
            w += 1
    return out, out_offsets


@_pjit
def inverse_lengths(codes: Any, centroids: Any, table: Any, id_bytes: int) -> Any:  # pragma: no cover - compiled
    """``1 / |decoded vector|`` of every code (1 for a zero vector), without decoding into memory.

    ``|c + r|^2 = |c|^2 + sum_j r_j (2 c_j + r_j)`` accumulated over the residual bytes through
    ``table`` (residual bytes, 256, dims per byte); dimensions past ``d`` in the last byte are
    padding and skipped. Vectors run in parallel.
    """
    t_count = codes.shape[0]
    k, dim = centroids.shape
    n_bytes, per_byte = table.shape[0], table.shape[2]
    sq = np.empty(k, np.float64)
    for c in range(k):
        sq[c] = np.sum(centroids[c].astype(np.float64) ** 2)
    out = np.empty(t_count, np.float32)
    for t in numba.prange(t_count):
        c = np.int64(codes[t, 0])
        if id_bytes == 2:
            c += np.int64(codes[t, 1]) << 8
        total = sq[c]
        for b in range(n_bytes):
            v = codes[t, id_bytes + b]
            for j in range(min(per_byte, dim - b * per_byte)):
                r = np.float64(table[b, v, j])
                total += r * (2.0 * centroids[c, b * per_byte + j] + r)
        out[t] = 1.0 / np.sqrt(total) if total > 0 else 1.0
    return out


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def lut_exact_maxsim(
    tables: Any, w: int, scores: Any, tq: int, r_base: Any, q_offsets: Any, cand_offsets: Any, cand_docs: Any,
    codes: Any, code_size: int, offsets: Any, id_bytes: int, nibbles: bool, scales: Any,
) -> Any:  # pragma: no cover - compiled
    """Exact MaxSim of every (query, candidate) pair from tables, without decoding a vector.

    A stored vector is centroid ``c`` plus a residual whose byte ``b`` holds value ``v``, so its
    inner product with query vector ``i`` is ``st[c, i] + sum_b R[b, v, i]``, ``st`` (K, ``tq``)
    the stage 1 centroid scores of the batch, given flat as ``scores`` with at least ``w`` floats
    after its end (a vector's ``w`` lanes are read from its centroid's row: lanes past the query's
    length run into the next columns and are never summed). ``tables`` is flat float32: each
    query's ``R`` at ``r_base[q]``, laid out (residual bytes, 256, ``w``) or, with ``nibbles``,
    (2 x residual bytes, 16, ``w``): each byte read as two half-bytes, high half first, twice the
    rows per vector but a 16th of the table, which then stays in the core's L2 cache (393 KB for
    384-d, 2 bits, 32 query vectors, against 3 MB for whole bytes). ``codes`` is the flat
    (T x ``code_size``) uint8 codes; ``scales`` (T,) multiplies each stored vector's inner
    products (its inverse decoded length, for codecs that decode to unit length) or is empty
    for none. The running maximum is kept per query vector. Pairs run in parallel.
    """
    n_res = code_size - id_bytes
    out = np.empty(cand_docs.shape[0], np.float32)
    owner = pair_owners(cand_offsets)
    for p in numba.prange(cand_docs.shape[0]):
        q = owner[p]
        q0 = q_offsets[q]
        lq = q_offsets[q + 1] - q0
        d = cand_docs[p]
        if offsets[d + 1] == offsets[d] or lq == 0:
            out[p] = -np.inf
            continue
        best = np.full(w, -np.inf, np.float32)
        base = r_base[q]
        for t in range(offsets[d], offsets[d + 1]):
            row = t * code_size
            c = np.int64(codes[row])
            if id_bytes == 2:
                c += np.int64(codes[row + 1]) << 8
            scale = scales[t] if scales.shape[0] else np.float32(1.0)
            table_rows(tables, codes, row + id_bytes, n_res, base, w, scores, c * tq + q0, scale, best, nibbles)
        total = np.float32(0.0)
        for i in range(lq):
            total += best[i]
        out[p] = total
    return out

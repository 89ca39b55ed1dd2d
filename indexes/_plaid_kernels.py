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

from indexes._binary_kernels import LANES, _rows_max

__all__ = [
    "build_lists", "centroid_interaction", "decode_docs", "doc_candidates", "lut_exact_maxsim", "probe",
    "select_top",
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
def probe(st: Any, nprobe: int) -> Any:  # pragma: no cover - compiled
    """The ``nprobe`` best centroids of every query vector: ``st`` is (k, Tq) scores, centroid-major.

    Returns (Tq, nprobe) int64, best first. Query vectors are split across threads; each
    thread walks every centroid row (contiguous) and keeps a small sorted buffer per vector.
    """
    k, tq = st.shape
    out = np.empty((tq, nprobe), np.int64)
    chunk = 16
    for block in numba.prange((tq + chunk - 1) // chunk):
        lo = block * chunk
        hi = min(lo + chunk, tq)
        vals = np.full((hi - lo, nprobe), -np.inf, np.float32)
        ids = np.zeros((hi - lo, nprobe), np.int64)
        for c in range(k):
            for i in range(lo, hi):
                v = st[c, i]
                r = i - lo
                if v > vals[r, nprobe - 1]:
                    j = nprobe - 1
                    while j > 0 and vals[r, j - 1] < v:
                        vals[r, j] = vals[r, j - 1]
                        ids[r, j] = ids[r, j - 1]
                        j -= 1
                    vals[r, j] = v
                    ids[r, j] = c
        out[lo:hi] = ids
    return out


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
    st: Any, q_offsets: Any, cand_offsets: Any, cand_docs: Any, doc_offsets: Any, doc_cents: Any, keep: Any,
) -> Any:  # pragma: no cover - compiled
    """Approximate MaxSim of every (query, candidate) pair from centroid scores alone.

    For query q (columns ``q_offsets[q]:q_offsets[q + 1]`` of ``st``, the (k, Tq) centroid
    scores) and document d: the sum over q's vectors of the best score among d's distinct
    centroids whose ``keep[q, c]`` is True (centroid pruning). A pair with no kept centroid
    scores -inf. Returns one float32 per entry of ``cand_docs``; pairs run in parallel.
    """
    nq = q_offsets.shape[0] - 1
    out = np.empty(cand_docs.shape[0], np.float32)
    owner = np.empty(cand_docs.shape[0], np.int64)
    for q in range(nq):
        owner[cand_offsets[q] : cand_offsets[q + 1]] = q
    width = 0
    for q in range(nq):
        width = max(width, q_offsets[q + 1] - q_offsets[q])
    for p in numba.prange(cand_docs.shape[0]):
        q = owner[p]
        q0 = q_offsets[q]
        lq = q_offsets[q + 1] - q0
        best = np.full(width, -np.inf, np.float32)
        d = cand_docs[p]
        hit = False
        for j in range(doc_offsets[d], doc_offsets[d + 1]):
            c = doc_cents[j]
            if keep[q, c]:
                hit = True
                for i in range(lq):
                    best[i] = max(best[i], st[c, q0 + i])
        total = np.float32(0.0)
        for i in range(lq):
            total += best[i]
        out[p] = total if hit else -np.inf
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
    codes: Any, offsets: Any, docs: Any, centroids: Any, table: Any, id_bytes: int,
) -> tuple[Any, Any]:  # pragma: no cover - compiled
    """Decode the vectors of documents ``docs``: centroid plus residual, through a per-byte table.

    ``codes`` (T, code_size) uint8, ``offsets`` the documents' vector ranges, ``centroids``
    (k, d), ``table`` (residual_bytes, 256, dims per byte) float32 (residual_bytes 0 when the
    codes hold no residual; dimensions past d in the last byte are padding and skipped).
    Returns the decoded (sum of lengths, d) float32 vectors, documents back to back, and
    their offsets. Documents run in parallel.
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
            w += 1
    return out, out_offsets


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def lut_exact_maxsim(
    tables: Any, w: int, st: Any, r_base: Any, scratch: int, q_offsets: Any, cand_offsets: Any, cand_docs: Any,
    codes: Any, offsets: Any, id_bytes: int,
) -> Any:  # pragma: no cover - compiled
    """Exact MaxSim of every (query, candidate) pair from tables, without decoding a vector.

    A stored vector is centroid ``c`` plus a residual whose byte ``b`` holds value ``v``, so its
    inner product with query vector ``i`` is ``st[c, i] + sum_b R[b, v, i]``, ``st`` (K, T_q) the
    stage 1 centroid scores of the batch. ``tables`` is flat float32: each query's ``R`` at
    ``r_base[q]``, laid out (residual bytes, 256, ``w``), then from ``scratch`` one row of ``w``
    floats per pair, where the vector's centroid scores are copied so that its ``1 + residual
    bytes`` rows are added as 16-float vectors; the running maximum is kept per query vector and
    lanes past the query's length are never summed.
    """
    nq = q_offsets.shape[0] - 1
    n_res = codes.shape[1] - id_bytes
    out = np.empty(cand_docs.shape[0], np.float32)
    owner = np.empty(cand_docs.shape[0], np.int64)
    for q in range(nq):
        owner[cand_offsets[q] : cand_offsets[q + 1]] = q
    for p in numba.prange(cand_docs.shape[0]):
        q = owner[p]
        q0 = q_offsets[q]
        lq = q_offsets[q + 1] - q0
        d = cand_docs[p]
        if offsets[d + 1] == offsets[d] or lq == 0:
            out[p] = -np.inf
            continue
        best = np.full(w, -np.inf, np.float32)
        rows = np.empty(1 + n_res, np.int64)
        row0 = scratch + p * w
        rows[0] = row0
        for t in range(offsets[d], offsets[d + 1]):
            c = np.int64(codes[t, 0])
            if id_bytes == 2:
                c += np.int64(codes[t, 1]) << 8
            for i in range(lq):
                tables[row0 + i] = st[c, q0 + i]
            for b in range(n_res):
                rows[1 + b] = r_base[q] + (b * 256 + np.int64(codes[t, id_bytes + b])) * w
            for c0 in range(0, w, LANES):
                _rows_max(tables, rows, 1 + n_res, best, c0)  # type: ignore[call-arg]  # typingctx is Numba's
        total = np.float32(0.0)
        for i in range(lq):
            total += best[i]
        out[p] = total
    return out

"""Numba kernel of the binary engine (:mod:`indexes.binary_ann`): asymmetric MaxSim through byte tables.

A document vector is stored as sign bits; a query vector stays float. For query vector ``i`` the
score of a bit code is ``const[i] + sum_b table[b, code[b], i]``: one table row per byte position
and byte value holds the query's contribution of those 8 bits (see
:func:`indexes.binary_ann.lookup_tables`). Each query has its own block of tables with its vectors innermost, so one document vector
adds ``code_size`` contiguous rows of the query's width (a block is ``code_size x 256 x Lq``
floats, 512 KB for 16 bytes and 32 query vectors: it stays in cache while the query's
candidates are scored); no bit is unpacked and nothing is decoded to floats. Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

__all__ = ["lut_maxsim"]


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def lut_maxsim(
    tables: Any, const: Any, q_offsets: Any, cand_offsets: Any, cand_docs: Any, codes: Any, offsets: Any,
) -> Any:  # pragma: no cover - compiled
    """MaxSim of every (query, candidate) pair from the byte tables, one float32 per ``cand_docs`` entry.

    ``tables`` is flat: query q's block starts at ``code_size * 256 * q_offsets[q]`` and is laid out
    (code_size, 256, Lq), so one (byte position, byte value) row holds that query's Lq floats
    side by side (:func:`indexes.binary_ann.per_query_tables`). ``const`` (Tq,) is added per query
    vector; ``cand_offsets`` / ``cand_docs`` are the CSR candidates of each query; ``codes``
    (T, code_size) uint8 and ``offsets`` (n + 1,) the stored documents. A document without vectors
    scores -inf. Pairs run in parallel.
    """
    nq = q_offsets.shape[0] - 1
    n_bytes = codes.shape[1]
    out = np.empty(cand_docs.shape[0], np.float32)
    owner = np.empty(cand_docs.shape[0], np.int64)
    width = 1
    for q in range(nq):
        owner[cand_offsets[q] : cand_offsets[q + 1]] = q
        width = max(width, q_offsets[q + 1] - q_offsets[q])
    for p in numba.prange(cand_docs.shape[0]):
        q = owner[p]
        q0 = q_offsets[q]
        lq = q_offsets[q + 1] - q0
        base = n_bytes * 256 * q0
        best = np.full(width, -np.inf, np.float32)
        acc = np.empty(width, np.float32)
        d = cand_docs[p]
        for t in range(offsets[d], offsets[d + 1]):
            row = base + codes[t, 0] * lq
            for i in range(lq):
                acc[i] = tables[row + i]
            for b in range(1, n_bytes):
                row = base + (b * 256 + codes[t, b]) * lq
                for i in range(lq):
                    acc[i] += tables[row + i]
            for i in range(lq):
                best[i] = max(best[i], acc[i])
        if offsets[d + 1] == offsets[d]:
            out[p] = -np.inf
            continue
        total = np.float32(0.0)
        for i in range(lq):
            total += best[i] + const[q0 + i]
        out[p] = total
    return out

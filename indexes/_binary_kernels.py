"""Numba kernel of the binary engine (:mod:`indexes.binary_ann`): asymmetric MaxSim through byte tables.

A document vector is stored as sign bits; a query vector stays float. For query vector ``i`` the
score of a bit code is ``const[i] + sum_b table[b, code[b], i]``: one table row per byte position
and byte value holds the query's contribution of those 8 bits (see
:func:`indexes.binary_ann.lookup_tables`). Each query has its own block of tables laid out
``(code_size, 256, W)``, its vectors innermost and padded with zeros to ``W``, a multiple of
:data:`LANES` (a block is ``code_size x 256 x W`` floats, 512 KB for 16 bytes and 32 query
vectors: it stays in cache while the query's candidates are scored). One document vector adds
``code_size`` rows of ``W`` floats and keeps the running maximum per query vector; no bit is
unpacked and nothing is decoded to floats.

Why a hand-written 16-float step (:func:`_rows_max`): written as a plain loop over the query
vectors, LLVM either unrolls a 16-trip loop into scalar additions (Numba leaves the SLP
vectorizer off) or wraps a runtime-trip loop in alias checks and remainder loops that cost more
than its two vector additions; both ran at about a tenth of the arithmetic rate (docs/
BENCHMARKS.md section 4). The step adds the rows as 16-float vectors, which LLVM lowers to the
widest registers the CPU has (one AVX-512 register, two AVX ones, four SSE ones). The rows are
summed in byte order, as the plain loop did, so the scores do not change.

Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["LANES", "lut_maxsim", "pair_owners", "table_width"]

#: Query vectors handled by one vector step; a query's table width is padded to a multiple of it.
LANES = 16


def table_width(q_offsets: Any) -> int:
    """The table width ``W`` of a query batch (CSR offsets): its longest query's vector count
    rounded up to a multiple of :data:`LANES`, at least one step."""
    longest = int(np.diff(q_offsets).max(initial=0))
    return -(-max(longest, 1) // LANES) * LANES


@intrinsic
def _rows_max(typingctx: Any, tables: Any, rows: Any, n_rows: Any, best: Any, at: Any) -> Any:  # pragma: no cover
    """``best[at:at + 16] = max(best[at:at + 16], sum_r tables[rows[r] + at : rows[r] + at + 16])``.

    ``tables`` and ``best`` are C-contiguous float32 arrays, ``rows`` (``n_rows`` >= 1) int64 row
    starts; the 16 floats of each row are added as one vector, rows in order.
    """
    f32 = types.Array(types.float32, 1, "C")
    if tables != f32 or best != f32 or rows != types.Array(types.int64, 1, "C"):
        return None  # not a signature this step is written for: Numba reports a typing error
    sig = types.void(tables, rows, types.intp, best, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        tab = context.make_array(signature.args[0])(context, builder, args[0])
        starts = context.make_array(signature.args[1])(context, builder, args[1])
        dst_array = context.make_array(signature.args[3])(context, builder, args[3])
        vector = ir.VectorType(ir.FloatType(), LANES)

        def row(r: Any) -> Any:
            start = builder.add(builder.load(builder.gep(starts.data, [r])), args[4])
            return builder.load(builder.bitcast(builder.gep(tab.data, [start]), vector.as_pointer()), align=4)

        acc = cgutils.alloca_once(builder, vector)  # promoted to a register by LLVM
        builder.store(row(ir.Constant(args[2].type, 0)), acc)
        one = ir.Constant(args[2].type, 1)
        with cgutils.for_range_slice(builder, one, args[2], one, inc=True) as (r, _):
            builder.store(builder.fadd(builder.load(acc), row(r)), acc)
        dst = builder.bitcast(builder.gep(dst_array.data, [args[4]]), vector.as_pointer())
        old, new = builder.load(dst, align=4), builder.load(acc)
        builder.store(builder.select(builder.fcmp_ordered(">", new, old), new, old), dst, align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def pair_owners(cand_offsets: Any) -> Any:  # pragma: no cover - compiled
    """The query of every (query, candidate) pair of a CSR candidate list: (pairs,) int64, so that
    kernels can run over the pairs in parallel whatever the queries' candidate counts."""
    nq = cand_offsets.shape[0] - 1
    owner = np.empty(cand_offsets[nq], np.int64)
    for q in range(nq):
        owner[cand_offsets[q] : cand_offsets[q + 1]] = q
    return owner


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def lut_maxsim(
    tables: Any, const: Any, q_offsets: Any, cand_offsets: Any, cand_docs: Any, codes: Any, offsets: Any,
) -> Any:  # pragma: no cover - compiled
    """MaxSim of every (query, candidate) pair from the byte tables, one float32 per ``cand_docs`` entry.

    ``tables`` is flat, C-contiguous float32: query q's block starts at ``code_size * 256 * W * q``
    and is laid out (code_size, 256, W), ``W`` the batch's longest query rounded up to a multiple
    of :data:`LANES`, columns past the query's own length zero
    (:func:`indexes.binary_ann.per_query_tables`). ``const`` (Tq,) is added per query vector;
    ``cand_offsets`` / ``cand_docs`` are the CSR candidates of each query; ``codes`` (T, code_size)
    uint8 and ``offsets`` (n + 1,) the stored documents. A document without vectors scores -inf.
    Pairs run in parallel.
    """
    nq = q_offsets.shape[0] - 1
    n_bytes = codes.shape[1]
    out = np.empty(cand_docs.shape[0], np.float32)
    owner = pair_owners(cand_offsets)
    width = 1
    for q in range(nq):
        width = max(width, q_offsets[q + 1] - q_offsets[q])
    w = (width + LANES - 1) // LANES * LANES
    for p in numba.prange(cand_docs.shape[0]):
        q = owner[p]
        q0 = q_offsets[q]
        lq = q_offsets[q + 1] - q0
        base = n_bytes * 256 * w * q
        best = np.full(w, -np.inf, np.float32)
        rows = np.empty(n_bytes, np.int64)
        d = cand_docs[p]
        if offsets[d + 1] == offsets[d] or n_bytes == 0:
            out[p] = -np.inf
            continue
        for t in range(offsets[d], offsets[d + 1]):
            for b in range(n_bytes):
                rows[b] = base + (b * 256 + codes[t, b]) * w
            for c in range(0, w, LANES):
                _rows_max(tables, rows, n_bytes, best, c)  # type: ignore[call-arg]  # typingctx is Numba's
        total = np.float32(0.0)
        for i in range(lq):
            total += best[i] + const[q0 + i]
        out[p] = total
    return out

"""Vector steps of the PLAID kernels (:mod:`indexes._plaid_kernels`), written as Numba intrinsics.

Both inner loops of the engine walk one query's lanes (its vectors, padded to a width ``w``, a
multiple of :data:`LANES`) for many stored rows: stage 2 and 3 take the running maximum of
centroid score rows, stage 4 sums table rows. Written as plain Numba loops over the lanes, LLVM
leaves them scalar or wraps them in alias checks (see :mod:`indexes._binary_kernels`), so each
step here is a few lines of LLVM IR that work on ``LANES``-float vectors, with the row offsets
computed in registers. Each step takes a number of vector groups (1-4: up to 32 lanes per call)
and holds one branch of code per count, so that every running sum stays in a register;
:func:`table_rows` and :func:`centroid_rows` cover any width with them.

Rows are read ``w`` floats at a time from their start, so the arrays they are read from must
hold ``w`` readable floats after their last row start (the engine pads the centroid scores).
Lanes past a query's length hold values that are never summed.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["LANES", "centroid_rows", "centroid_scores", "table_rows", "width"]

#: Floats per vector step: 8 (one AVX register); a query's lanes are padded to a multiple of it.
LANES = 8
_GROUPS = 4  # vector groups per call at most: 32 lanes


def width(q_offsets: Any) -> int:
    """The lane width ``w`` of a query batch (CSR offsets): its longest query's vector count
    rounded up to a multiple of :data:`LANES`, at least one step."""
    longest = int(np.diff(q_offsets).max(initial=0))
    return -(-max(longest, 1) // LANES) * LANES


def _flat(a: Any, dtype: Any) -> bool:
    """A 1-d C-ordered array of ``dtype`` (read-only, memory-mapped arrays included)."""
    return isinstance(a, types.Array) and a.dtype == dtype and a.ndim == 1 and a.layout == "C"


class _IR:
    """Small helpers over one codegen call's builder."""

    def __init__(self, builder: Any, index: Any) -> None:
        self.b, self.index = builder, index
        self.vector = ir.VectorType(ir.FloatType(), LANES)

    def const(self, v: int) -> Any:
        return ir.Constant(self.index, v)

    def add(self, *xs: Any) -> Any:
        out = xs[0]
        for x in xs[1:]:
            out = self.b.add(out, x)
        return out

    def vptr(self, data: Any, offset: Any) -> Any:
        return self.b.bitcast(self.b.gep(data, [offset]), self.vector.as_pointer())

    def vload(self, data: Any, offset: Any) -> Any:
        return self.b.load(self.vptr(data, offset), align=4)

    def vmax(self, a: Any, b: Any) -> Any:
        return self.b.select(self.b.fcmp_ordered(">", a, b), a, b)

    def splat(self, value: Any) -> Any:
        """A vector of ``LANES`` copies of the float ``value``."""
        one = self.b.insert_element(ir.Constant(self.vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return self.b.shuffle_vector(one, ir.Constant(self.vector, ir.Undefined), mask)

    def load_int(self, data: Any, offset: Any) -> Any:
        return self.b.zext(self.b.load(self.b.gep(data, [offset])), self.index)


def _cases(builder: Any, value: Any, bodies: dict[int, Any]) -> None:
    """``switch (value)``: one block per ``bodies`` key running that body's code, then on."""
    end = builder.append_basic_block("cases.end")
    switch = builder.switch(value, end)
    for key, body in bodies.items():
        block = builder.append_basic_block(f"case.{key}")
        switch.add_case(ir.Constant(value.type, key), block)
        builder.position_at_end(block)
        body()
        builder.branch(end)
    builder.position_at_end(end)


@intrinsic
def _table_step(typingctx: Any, tables: Any, codes: Any, first: Any, n_res: Any, base: Any, w: Any, init: Any,
                init_at: Any, scale: Any, best: Any, at: Any, groups: Any, nibbles: Any) -> Any:  # pragma: no cover
    """``(tables, codes, first, n_res, base, w, init, init_at, scale, best, at, groups, nibbles)``:
    for lanes ``at : at + LANES * groups`` (``groups`` 1-4), ``best = max(best, scale *
    (init[init_at + at :] + sum of the rows))``.

    The stored vector's residual bytes are ``codes[first : first + n_res]``; byte ``b`` of value
    ``v`` selects row ``base + (256 b + v) w`` of ``tables`` or, with ``nibbles``, the rows
    ``base + (32 b + (v >> 4)) w`` and ``base + (32 b + 16 + (v & 15)) w``. Each group keeps
    two running sums (high and low half-byte rows, or even and odd bytes), so that consecutive
    additions do not wait on each other. The code has one branch per (groups, nibbles), each
    with its sums in registers.
    """
    if not (_flat(tables, types.float32) and _flat(init, types.float32) and _flat(best, types.float32)
            and _flat(codes, types.uint8)):
        return None
    sig = types.void(tables, codes, types.intp, types.intp, types.intp, types.intp, init, types.intp,
                     types.float32, best, types.intp, types.intp, types.boolean)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        tab, code, start, dst = (context.make_array(signature.args[i])(context, builder, args[i]).data
                                 for i in (0, 1, 6, 9))
        _, _, first_, n_res_, base_, w_, _, init_at_, scale_, _, at_, groups_, nibbles_ = args
        x = _IR(builder, first_.type)

        def body(groups: int, nibbles: bool) -> None:
            zero = ir.Constant(x.vector, [0.0] * LANES)
            accs = [[cgutils.alloca_once_value(builder, x.vload(start, x.add(init_at_, at_, x.const(LANES * g)))),
                     cgutils.alloca_once_value(builder, zero)] for g in range(groups)]

            def add_row(chain: int, table_row: Any) -> None:
                offset = x.add(base_, builder.mul(table_row, w_), at_)
                for g in range(groups):
                    acc = accs[g][chain]
                    row = x.vload(tab, builder.add(offset, x.const(LANES * g)))
                    builder.store(builder.fadd(builder.load(acc), row), acc)

            def byte_row(b: Any) -> Any:
                return builder.add(builder.mul(b, x.const(256)), x.load_int(code, builder.add(first_, b)))

            if nibbles:
                with cgutils.for_range_slice(builder, x.const(0), n_res_, x.const(1), inc=True) as (b, _):
                    v, b32 = x.load_int(code, builder.add(first_, b)), builder.mul(b, x.const(32))
                    add_row(0, builder.add(b32, builder.lshr(v, x.const(4))))
                    add_row(1, x.add(b32, x.const(16), builder.and_(v, x.const(15))))
            else:
                pairs = builder.and_(n_res_, x.const(-2))
                with cgutils.for_range_slice(builder, x.const(0), pairs, x.const(2), inc=True) as (b, _):
                    add_row(0, byte_row(b))
                    add_row(1, byte_row(builder.add(b, x.const(1))))
                with cgutils.for_range_slice(builder, pairs, n_res_, x.const(1), inc=True) as (b, _):
                    add_row(0, byte_row(b))
            scales = x.splat(scale_)
            for g in range(groups):
                total = builder.fmul(builder.fadd(builder.load(accs[g][0]), builder.load(accs[g][1])), scales)
                ptr = x.vptr(dst, builder.add(at_, x.const(LANES * g)))
                builder.store(x.vmax(total, builder.load(ptr, align=4)), ptr, align=4)

        variant = builder.add(builder.mul(groups_, x.const(2)), builder.zext(nibbles_, groups_.type))
        _cases(builder, variant, {2 * g + n: (lambda g=g, n=n: body(g, bool(n)))
                                  for g in range(1, _GROUPS + 1) for n in (0, 1)})
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _max_step(typingctx: Any, best: Any, scores: Any, tq: Any, q0: Any, cents: Any, j0: Any, j1: Any, keep: Any,
              keep_at: Any, at: Any, groups: Any) -> Any:  # pragma: no cover - compiled
    """``(best, scores, tq, q0, cents, j0, j1, keep, keep_at, at, groups) -> kept``: for lanes
    ``at : at + LANES * groups`` (``groups`` 1-4), ``best = max(best, scores[c * tq + q0 + at :])``
    over the centroids ``c`` of ``cents[j0:j1]`` whose ``keep[keep_at + c]`` is True; returns how
    many were."""
    if not (_flat(best, types.float32) and _flat(scores, types.float32) and _flat(cents, types.uint16)
            and _flat(keep, types.boolean)):
        return None
    sig = types.intp(best, scores, types.intp, types.intp, cents, types.intp, types.intp, keep, types.intp,
                     types.intp, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        dst, src, cent, kept = (context.make_array(signature.args[i])(context, builder, args[i]).data
                                for i in (0, 1, 4, 7))
        _, _, tq_, q0_, _, j0_, j1_, _, keep_at_, at_, groups_ = args
        x = _IR(builder, tq_.type)
        count = cgutils.alloca_once_value(builder, x.const(0))

        def body(groups: int) -> None:
            accs = [cgutils.alloca_once_value(builder, x.vload(dst, builder.add(at_, x.const(LANES * g))))
                    for g in range(groups)]
            with cgutils.for_range_slice(builder, j0_, j1_, x.const(1), inc=True) as (j, _):
                c = x.load_int(cent, j)
                flag = builder.load(builder.gep(kept, [builder.add(keep_at_, c)]))
                with builder.if_then(builder.icmp_unsigned("!=", flag, ir.Constant(flag.type, 0))):
                    builder.store(builder.add(builder.load(count), x.const(1)), count)
                    row = x.add(builder.mul(c, tq_), q0_, at_)
                    for g in range(groups):
                        new = x.vload(src, builder.add(row, x.const(LANES * g)))
                        builder.store(x.vmax(new, builder.load(accs[g])), accs[g])
            for g in range(groups):
                builder.store(builder.load(accs[g]), x.vptr(dst, builder.add(at_, x.const(LANES * g))), align=4)

        _cases(builder, groups_, {g: (lambda g=g: body(g)) for g in range(1, _GROUPS + 1)})
        return builder.load(count)

    return sig, codegen


#: Centroids per step of the stage-1 product (the last ones of a matrix go one at a time).
_BLOCK = 8


@intrinsic
def _dot_step(typingctx: Any, cents: Any, c_at: Any, d: Any, qt: Any, ldq: Any, out: Any, out_at: Any, ldo: Any,
              at: Any, groups: Any, block: Any) -> Any:  # pragma: no cover - compiled
    """``(cents, c_at, d, qt, ldq, out, out_at, ldo, at, groups, block)``: for :data:`_BLOCK`
    centroids (``block``) or one, ``d`` floats each from ``cents[c_at]``, and lanes ``at : at +
    LANES * groups`` (``groups`` 1-4) of the (d, ``ldq``) transposed queries ``qt``,
    ``out[out_at + r * ldo + at :] = centroid r . qt[:, lanes]``. Every one of the ``rows x
    groups`` sums is its own register (one fused multiply-add per dimension each), so the
    centroid floats are read once per call and the query lanes once per dimension."""
    if not (_flat(cents, types.float32) and _flat(qt, types.float32) and _flat(out, types.float32)):
        return None
    sig = types.void(cents, types.intp, types.intp, qt, types.intp, out, types.intp, types.intp, types.intp,
                     types.intp, types.boolean)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        cen, q, dst = (context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 5))
        _, c_at_, d_, _, ldq_, _, out_at_, ldo_, at_, groups_, block_ = args
        x = _IR(builder, d_.type)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(x.vector, [x.vector] * 3),
                                             f"llvm.fma.v{LANES}f32")

        def body(rows: int, groups: int) -> None:
            zero = ir.Constant(x.vector, [0.0] * LANES)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(groups)] for _ in range(rows)]
            with cgutils.for_range_slice(builder, x.const(0), d_, x.const(1), inc=True) as (j, _):
                qrow = x.add(builder.mul(j, ldq_), at_)
                lanes = [x.vload(q, builder.add(qrow, x.const(LANES * g))) for g in range(groups)]
                for r in range(rows):
                    wide = x.splat(builder.load(builder.gep(cen, [x.add(c_at_, builder.mul(x.const(r), d_), j)])))
                    for g in range(groups):
                        builder.store(builder.call(fma, [wide, lanes[g], builder.load(accs[r][g])]), accs[r][g])
            for r in range(rows):
                row = x.add(out_at_, builder.mul(x.const(r), ldo_), at_)
                for g in range(groups):
                    builder.store(builder.load(accs[r][g]), x.vptr(dst, builder.add(row, x.const(LANES * g))), align=4)

        variant = builder.add(builder.mul(groups_, x.const(2)), builder.zext(block_, groups_.type))
        _cases(builder, variant, {2 * g + b: (lambda g=g, b=b: body(_BLOCK if b else 1, g))
                                  for g in range(1, _GROUPS + 1) for b in (0, 1)})
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def table_rows(tables: Any, codes: Any, first: int, n_res: int, base: int, w: int, init: Any, init_at: int,
               scale: float, best: Any, nibbles: bool) -> None:  # pragma: no cover - compiled
    """One stored vector's table step (see :func:`_table_step`) over all ``w`` lanes."""
    at = 0
    while at < w:
        groups = min(_GROUPS, (w - at) // LANES)
        _table_step(tables, codes, first, n_res, base, w, init, init_at, scale, best, at, groups, nibbles)
        at += groups * LANES


@numba.njit(cache=True, nogil=True, inline="always")
def centroid_rows(best: Any, scores: Any, tq: int, q0: int, cents: Any, j0: int, j1: int, keep: Any, keep_at: int,
                  w: int) -> int:  # pragma: no cover - compiled
    """The running maximum of a document's kept centroid score rows (see :func:`_max_step`) over
    all ``w`` lanes; returns how many centroids were kept."""
    at = 0
    kept = 0
    while at < w:
        groups = min(_GROUPS, (w - at) // LANES)
        kept = _max_step(best, scores, tq, q0, cents, j0, j1, keep, keep_at, at, groups)
        at += groups * LANES
    return kept


@numba.njit(cache=True, nogil=True, parallel=True)
def centroid_scores(cents: Any, d: int, qt: Any, ldo: int, out: Any) -> None:  # pragma: no cover - compiled
    """``out[c * ldo + i] = centroid c . query vector i``: stage 1's matmul on Numba's threads.

    ``cents`` is the flat (K, ``d``) centroids, ``qt`` the flat (``d``, ``ldo``) transposed query
    vectors, zero past the last one (``ldo`` a multiple of :data:`LANES`), ``out`` flat with at
    least ``K * ldo`` floats. Blocks of centroids run in parallel. Computing it here rather than
    with BLAS keeps the whole search on one thread pool (see docs/BENCHMARKS.md section 4: two
    pools, each spinning after its work, slow each other down on a machine with few cores).
    """
    k = cents.shape[0] // d
    n_blocks = (k + _BLOCK - 1) // _BLOCK
    for blk in numba.prange(n_blocks):
        c0 = blk * _BLOCK
        full = c0 + _BLOCK <= k
        for c in range(c0, c0 + 1 if full else k):  # a whole block in one step, the last rows one by one
            at = 0
            while at < ldo:
                groups = min(_GROUPS, (ldo - at) // LANES)
                _dot_step(cents, c * d, d, qt, ldo, out, c * ldo, ldo, at, groups, full)
                at += groups * LANES

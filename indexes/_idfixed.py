"""The fixed-width layout of string ids (:class:`FixedStore`) and the choice between it and
:class:`indexes._idstore.StrStore`.

When every id's UTF-8 fits in ``W`` bytes, the ids are one ``(rows, W)`` uint8 block in row
order, each padded with NUL bytes, plus the permutation (uint32 below 2**32 rows) that sorts
the rows by their bytes: ``W + 4`` bytes a row, no offsets, no hashes. No id may hold a NUL
byte then, so a row's bytes up to its first NUL are its id, the padded rows sort as the ids'
bytes do (a prefix first), and NumPy's ``S{W}`` comparisons are exact byte comparisons.

The variable layout costs ``len + 16`` bytes a row (offsets 4, FNV-1a hash 8, permutation 4),
so the fixed one is smaller exactly when the mean padding ``W - mean len`` is under 12 bytes:
:func:`fits` (ties go to the fixed layout, whose lookups compare bytes with no hash to
compute). Ids such as ``doc-0001234`` or UUIDs pay 15 bytes a row instead of 27 or 52.

Lookups are a binary search along the permutation, vectorised over the queries
(:func:`search`): ``np.searchsorted(..., sorter=perm)`` would convert the whole permutation
to intp at every call (an O(rows) copy) and compares strings through a slower generic path.
Equal ids sort by row (stable sorts, insertions after their equals), as in the other layouts,
so :func:`indexes._idstore._walk_run` finds the live row of an id deleted and added again.

Appending merges the new ids' sorted keys into the permutation in O(rows). A longer id widens
the block (the padding changes no order, so the permutation stays) while the layout still
:func:`fits`; an id holding a NUL byte, or one that makes padding costlier than the variable
layout, converts the store to a :class:`StrStore`. Files: ``id_block.npy`` (uint8, 2-d) and
``id_perm.npy`` (format version 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexes._idstore import Mask, StrStore, _index_dtype, _perm_problems, _walk_run, dead_rows, encode, is_dead

__all__ = ["FIXED_ARRAYS", "FixedStore", "FixedView", "build_strings", "fits", "fixed_problems", "refit"]

#: Array names (``<name>.npy``) of the fixed layout.
FIXED_ARRAYS = ("id_block", "id_perm")
#: Bytes a row the fixed layout saves over the variable one before padding: offsets 4 + hash 8.
_SAVED_PER_ROW = 12
#: Rows padded per step when a buffer becomes a block (bounds the int64 index temporaries).
_PAD_ROWS = 1 << 20
#: Above this many queries a search sorts them first (neighbouring queries share cache lines and pages).
_SORT_QUERIES = 256
#: The stride of the sorted sample a batched search narrows its queries with first.
_FENCE = 256


def fits(rows: int, width: int, raw_bytes: int) -> bool:
    """Whether ``rows`` ids of ``raw_bytes`` UTF-8 bytes padded to ``width`` cost no more than the
    variable layout: ``rows * (width + 4) <= raw_bytes + rows * 16``."""
    return rows * width <= raw_bytes + _SAVED_PER_ROW * rows


def _pad(buf: NDArray[np.uint8], offsets: NDArray[np.integer[Any]], width: int) -> NDArray[np.uint8]:
    """The strings ``buf[offsets[i]:offsets[i + 1]]`` (each at most ``width`` bytes) as NUL-padded rows."""
    offsets = offsets.astype(np.int64, copy=False)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    if n and len(buf) == n * width and (lengths == width).all():
        return buf.reshape(n, width)  # all of one length: the buffer is the block
    block = np.zeros((n, width), dtype=np.uint8)
    flat = block.reshape(-1)
    for a in range(0, n, _PAD_ROWS):
        b = min(n, a + _PAD_ROWS)
        lens, start = lengths[a:b], int(offsets[a])
        shift = np.arange(a, b, dtype=np.int64) * width - (offsets[a:b] - start)
        flat[np.arange(int(offsets[b]) - start, dtype=np.int64) + np.repeat(shift, lens)] = buf[start:offsets[b]]
    return block


def _keys(block: NDArray[np.uint8]) -> NDArray[np.bytes_]:
    """The rows of a C-contiguous block as a 1-d ``S{W}`` array (a view)."""
    return block.view(f"S{block.shape[1]}").reshape(-1)


def search(keys: NDArray[np.bytes_], perm: NDArray[Any], queries: NDArray[np.bytes_], *,
           right: bool = False, fence: NDArray[np.bytes_] | None = None) -> NDArray[np.int64]:
    """``np.searchsorted(keys, queries, side, sorter=perm)``: a binary search of every query at
    once along the permutation (the queries sorted first when there are many).

    With ``fence`` (:meth:`FixedStore.fence`), or for many queries, every ``_FENCE``-th key in
    sorted order (gathered here if not given: ``n / _FENCE`` reads) narrows each query to
    ``_FENCE`` positions with one ``np.searchsorted`` (a C loop): 8 vectorised halvings remain
    instead of ``log2(rows)``.
    """
    m, n = len(queries), len(perm)
    order = np.argsort(queries) if m >= _SORT_QUERIES else None
    q = queries if order is None else queries[order]
    lo, hi = np.zeros(m, dtype=np.int64), np.full(m, n, dtype=np.int64)
    if fence is None and m >= _SORT_QUERIES and n >= 4 * _FENCE:
        fence = keys[perm[_FENCE - 1::_FENCE]]  # the keys at sorted positions F-1, 2F-1, ...
    if fence is not None:
        j = np.searchsorted(fence, q, side="right" if right else "left").astype(np.int64)
        lo, hi = j * _FENCE, np.where(j < len(fence), (j + 1) * _FENCE - 1, n)
    for _ in range(int((hi - lo).max(initial=0)).bit_length()):
        active = lo < hi
        mid = (lo + hi) >> 1
        probe = keys[perm[np.minimum(mid, n - 1)]]
        below = (probe <= q) if right else (probe < q)
        below &= active
        lo = np.where(below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    if order is None:
        return lo
    out = np.empty(m, dtype=np.int64)
    out[order] = lo
    return out


def _decode(block: NDArray[np.uint8], rows: NDArray[np.int64]) -> list[str]:
    items = _keys(block)[rows].tolist()  # bytes, the padding stripped
    return [b.decode("utf-8") for b in items]


class FixedView:
    """The label -> id table of a :class:`FixedStore` for a search result (a snapshot: the block
    is never changed in place)."""

    __slots__ = ("_block",)

    def __init__(self, block: NDArray[np.uint8]) -> None:
        self._block = block

    def __len__(self) -> int:
        return len(self._block)

    def __getitem__(self, labels: NDArray[np.int64]) -> NDArray[np.object_]:
        labels = np.asarray(labels, dtype=np.int64)
        out = np.empty(labels.shape, dtype=object)
        out.reshape(-1)[:] = _decode(self._block, labels.reshape(-1))
        return out


def _as_block(buf: NDArray[np.uint8], offsets: NDArray[np.integer[Any]], width: int) -> NDArray[np.uint8] | None:
    """``buf`` / ``offsets`` padded to ``width`` if that layout :func:`fits` and no string holds a NUL, else None."""
    n = len(offsets) - 1
    if not fits(n, width, len(buf)) or not buf.all():
        return None
    return _pad(buf, offsets, width)


def _width(offsets: NDArray[np.integer[Any]]) -> int:
    return max(int(np.diff(offsets.astype(np.int64)).max()), 1) if len(offsets) > 1 else 1


def build_strings(buf: NDArray[np.uint8], offsets: NDArray[np.integer[Any]]) -> FixedStore | StrStore:
    """The smaller layout for these ids (``buf`` / ``offsets`` as :func:`indexes._idstore.encode`
    gives them): a :class:`FixedStore` where it :func:`fits`, else a :class:`StrStore`."""
    block = _as_block(buf, offsets, _width(offsets)) if len(offsets) > 1 else None
    if block is None:
        return StrStore.build(buf, offsets)
    perm = np.argsort(_keys(block), kind="stable")
    return FixedStore(block, perm.astype(_index_dtype(len(perm)), copy=False))


def refit(store: StrStore) -> FixedStore | StrStore:
    """``store`` in the fixed layout where that now fits (an index saved in format version 2, or
    one whose long ids were deleted), else ``store`` itself (nothing hashed or sorted then)."""
    if not store.rows or not fits(store.rows, _width(store.offsets), len(store.buf)) or not store.buf.all():
        return store
    return build_strings(store.buf, store.offsets)


class FixedStore:
    """String ids as NUL-padded rows of one width, and the permutation that sorts them.

    The store never changes its arrays in place (changes return a new store). After the first
    large batch or single lookup it keeps every ``_FENCE``-th key in sorted order
    (:meth:`fence`, ``W / 256`` bytes a row, not counted by :meth:`nbytes`), so each lookup
    starts with one ``np.searchsorted`` on that sample instead of ``log2(rows)`` halvings.
    """

    __slots__ = ("_fence", "block", "perm")

    def __init__(self, block: NDArray[np.uint8], perm: NDArray[Any]) -> None:
        self.block, self.perm = block, perm
        self._fence: NDArray[np.bytes_] | None = None

    def __getstate__(self) -> tuple[NDArray[np.uint8], NDArray[Any]]:
        return self.block, self.perm

    def __setstate__(self, state: tuple[NDArray[np.uint8], NDArray[Any]]) -> None:
        self.__init__(*state)  # type: ignore[misc]

    def fence(self) -> NDArray[np.bytes_] | None:
        """The keys at sorted positions ``F - 1, 2F - 1, ...`` (cached), or None below ``4F`` rows."""
        if self._fence is None and self.rows >= 4 * _FENCE:
            self._fence = self.keys()[self.perm[_FENCE - 1::_FENCE]]
        return self._fence

    @property
    def rows(self) -> int:
        return len(self.block)

    @property
    def width(self) -> int:
        return int(self.block.shape[1])

    def keys(self) -> NDArray[np.bytes_]:
        return _keys(self.block)

    def nbytes(self) -> int:
        return int(self.block.nbytes + self.perm.nbytes)

    def buffer(self) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        """The ids as a UTF-8 buffer and offsets (the variable layout's form)."""
        used = self.block != 0
        offsets = np.zeros(self.rows + 1, dtype=np.int64)
        np.cumsum(used.sum(axis=1), out=offsets[1:])
        return self.block[used], offsets

    def extend(self, ids: list[str]) -> FixedStore | StrStore:
        """A new store with ``ids`` appended, their sorted keys merged into the permutation in
        O(rows); a :class:`StrStore` when the ids no longer fit this layout (see the module)."""
        buf, offsets = encode(ids)
        width = max(self.width, _width(offsets))
        raw = int(np.count_nonzero(self.block)) + len(buf)
        if not buf.all() or not fits(self.rows + len(ids), width, raw):
            old_buf, old_offsets = self.buffer()
            return StrStore.build(np.concatenate([old_buf, buf]),
                                  np.concatenate([old_offsets, offsets[1:] + old_offsets[-1]]))
        block = self.block if width == self.width else np.pad(self.block, ((0, 0), (0, width - self.width)))
        new = _pad(buf, offsets, width)
        new_keys = _keys(new)
        order = np.argsort(new_keys, kind="stable")
        pos = search(_keys(block), self.perm, new_keys[order], right=True)
        dtype = _index_dtype(self.rows + len(ids))
        perm = np.insert(self.perm.astype(dtype, copy=False), pos, (order + self.rows).astype(dtype))
        return FixedStore(np.concatenate([block, new]), perm)

    def keep(self, keep: NDArray[np.bool_]) -> FixedStore:
        """A new store of the rows where ``keep`` is True, in order: the permutation is filtered
        and renumbered (no sort), and the width shrinks to the longest id kept."""
        new_row = np.cumsum(keep, dtype=np.int64) - 1
        kept = self.perm[keep[self.perm]]
        block = self.block[keep]
        width = int((block != 0).sum(axis=1).max()) if len(block) else 1
        if 0 < width < self.width:
            block = np.ascontiguousarray(block[:, :width])
        return FixedStore(block, new_row[kept].astype(_index_dtype(len(block)), copy=False))

    def ids(self) -> list[str]:
        return _decode(self.block, np.arange(self.rows, dtype=np.int64))

    def view(self) -> FixedView:
        return FixedView(self.block)

    def arrays(self) -> dict[str, NDArray[Any]]:
        return dict(zip(FIXED_ARRAYS, (self.block, self.perm), strict=True))

    def _walk(self, dead: Mask, pos: int) -> int:
        keys, perm = self.keys(), self.perm
        return _walk_run(lambda p: keys[perm[p]], perm, dead, pos, lambda row: True)

    def contains(self, doc_id: str, dead: Mask) -> bool:
        target = doc_id.encode("utf-8", "surrogatepass")
        width = self.width
        if not self.rows or len(target) > width or b"\0" in target:
            return False
        # One query in Python: bytes slices of the block and ints from the permutation through
        # memoryviews (2-3x faster per step than NumPy scalars), the target padded like the rows.
        target = target.ljust(width, b"\0")
        block, perm = memoryview(self.block).cast("B"), memoryview(self.perm)
        lo, hi, fence = 0, self.rows, self.fence()
        if fence is not None:
            j = int(fence.searchsorted(target))
            lo, hi = j * _FENCE, (j + 1) * _FENCE - 1 if j < len(fence) else self.rows
        while lo < hi:
            mid = (lo + hi) >> 1
            row = perm[mid]
            if block[row * width:(row + 1) * width].tobytes() < target:
                lo = mid + 1
            else:
                hi = mid
        if lo == self.rows or block[perm[lo] * width:(perm[lo] + 1) * width] != target:
            return False
        return not is_dead(dead, perm[lo]) or self._walk(dead, lo) >= 0

    def find(self, ids: list[str], dead: Mask, rows: NDArray[np.int64]) -> None:
        """Set ``rows[i]`` to the live row of ``ids[i]`` where it is stored here (others keep their value)."""
        if not self.rows:
            return
        qbuf, qoff = encode(ids)
        lengths = np.diff(qoff)
        valid = lengths <= self.width
        if not qbuf.all():  # an id holding a NUL byte is never stored here
            valid[np.unique(np.searchsorted(qoff, np.flatnonzero(qbuf == 0), side="right") - 1)] = False
        which = np.flatnonzero(valid)
        if not which.size:
            return
        sub = np.zeros(len(which) + 1, dtype=np.int64)
        np.cumsum(lengths[which], out=sub[1:])
        picked = qbuf if which.size == len(ids) else qbuf[np.repeat(valid, lengths)]
        queries = _keys(_pad(picked, sub, self.width))
        keys, perm = self.keys(), self.perm
        pos = search(keys, perm, queries, fence=self.fence() if len(queries) >= _SORT_QUERIES else self._fence)
        cand = perm[np.minimum(pos, self.rows - 1)].astype(np.int64)
        same = keys[cand] == queries
        ok = same & ~dead_rows(dead, cand)
        rows[which[ok]] = cand[ok]
        for q in np.flatnonzero(same & ~ok).tolist():  # a deleted row first: walk to a live twin
            if rows[which[q]] < 0:
                rows[which[q]] = self._walk(dead, int(pos[q]))

    def duplicate_live(self, dead: Mask) -> bool:
        """True when two live rows hold the same id (a damaged file)."""
        ordered = self.keys()[self.perm]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if not same.size:
            return False
        rows = np.unique(self.perm[np.concatenate([same, same + 1])].astype(np.int64))
        live = rows[~dead_rows(dead, rows)]
        return len(np.unique(self.keys()[live])) != len(live)


def fixed_problems(store: FixedStore, *, full: bool) -> list[str]:
    """What is wrong with a fixed-layout store read from disk (empty when nothing is).

    Always (O(1)): ``id_block`` is 2-d uint8 with a width of at least 1, ``id_perm`` 1-d of
    integers with one entry per row. With ``full`` (O(rows x width)): ``id_perm`` is a
    permutation, no id holds a NUL byte before its padding, the bytes are valid UTF-8, and
    the rows are sorted along the permutation.
    """
    block, perm = store.block, store.perm
    if block.ndim != 2 or block.dtype != np.uint8 or block.shape[1] < 1:
        return [f"id_block must be a 2-d uint8 array at least 1 byte wide; got {block.dtype} {block.shape}"]
    if perm.ndim != 1 or perm.dtype.kind not in "iu" or len(perm) != len(block):
        return [f"id_perm must be 1-d integers, one per row of id_block ({len(block)}); got {perm.dtype} {perm.shape}"]
    if not full:
        return []
    problems = _perm_problems(perm, len(block))
    if problems:
        return problems
    block = np.ascontiguousarray(block)
    if ((block[:, 1:] != 0) & (block[:, :-1] == 0)).any():
        return ["an id in id_block holds a NUL byte before its end"]
    try:
        if len(block) and int(block.max()) >= 0x80:  # ASCII (the usual case) is valid UTF-8 as it is
            block[block != 0].tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"id_block is not valid UTF-8 ({exc})"]
    ordered = _keys(block)[perm]
    return ["id_block is not sorted along id_perm"] if (ordered[1:] < ordered[:-1]).any() else []

"""Decode chosen rows of a FAISS IVF index, for the exact plan of a filtered search.

An IVF index stores a row's code in one inverted list, at an offset that FAISS does not index
by label (its own ``DirectMap`` is off by default: an ``Array`` map refuses ``add_with_ids``
and ``remove_ids``, which :class:`~indexes.faiss_index.FaissIndex` uses, and a ``Hashtable``
map costs a hash node per row). :class:`IVFRows` keeps its own map instead: one ``int64`` per
row (``list << 32 | offset``, -1 for a row not stored), **8 bytes a row**, built lazily by the
first search that needs it (one pass over the lists' ids) and dropped by every add and
delete (:meth:`IVFRows.invalidate`; ``remove_ids`` moves codes within a list).

:meth:`IVFRows.decode` gathers the allowed rows' codes list by list, prefixes each with its
list number (FAISS's standalone code layout) and decodes them with the index's own
``sa_decode`` (centroid plus residual for ``by_residual`` codes), so scoring the decoded rows
against the (pre-transformed) query gives the distances an IVF search computes for them, up
to float rounding. The cost follows the allowed rows (and the lists they fall in), not the
stored ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["IVFRows", "transform_queries"]

#: IVF kinds whose inverted lists hold one plain code per row that ``sa_decode`` reads (the
#: fast-scan kinds pack codes in blocks of 32 rows and are left to the selector search).
DECODABLE = ("IndexIVFFlat", "IndexIVFPQ", "IndexIVFScalarQuantizer")
_OFFSET_BITS = 32


class IVFRows:
    """Row -> (list, offset) map of one FAISS IVF index, and the decoding of chosen rows.

    ``ivf`` is the (downcast) IVF stage whose labels are row numbers.
    """

    def __init__(self, ivf: Any) -> None:
        self._ivf = ivf
        self._where: NDArray[np.int64] | None = None

    @staticmethod
    def supports(ivf: Any) -> bool:
        """True for the IVF kinds :meth:`decode` reads (IVF Flat, PQ and SQ codes)."""
        return type(ivf).__name__ in DECODABLE

    def invalidate(self) -> None:
        """Forget the map (an add or delete moved codes); the next :meth:`decode` rebuilds it."""
        self._where = None

    def memory_bytes(self) -> int:
        """Bytes the map holds now (8 per row once built, 0 before the first exact search)."""
        where = self._where
        return 0 if where is None else int(where.nbytes)

    def _build(self, n_rows: int) -> NDArray[np.int64]:
        faiss = _faiss()
        invlists = self._ivf.invlists
        where = np.full(n_rows, -1, dtype=np.int64)
        for list_no in range(int(self._ivf.nlist)):
            size = int(invlists.list_size(list_no))
            if size:
                ptr = invlists.get_ids(list_no)
                try:
                    where[faiss.rev_swig_ptr(ptr, size)] = (list_no << _OFFSET_BITS) | np.arange(size, dtype=np.int64)
                finally:
                    invlists.release_ids(list_no, ptr)
        self._where = where  # one assignment: a concurrent search sees the old map or the whole new one
        return where

    def reader(self, n_rows: int) -> _Reader:
        """An object whose ``reconstruct_batch(rows)`` decodes rows of an index of ``n_rows`` rows
        (the interface :func:`indexes._filtered.scan_rows` reads FAISS storage through)."""
        return _Reader(self, n_rows)

    def decode(self, rows: NDArray[np.int64], n_rows: int) -> NDArray[np.float32]:
        """The vectors the index's distances see for ``rows`` (all stored), in the IVF stage's space."""
        where = self._where
        if where is None or where.shape[0] != n_rows:
            where = self._build(n_rows)
        codes = self._gather(where[rows], rows)
        if codes is None:  # the lists changed behind our back (the FAISS index edited directly)
            codes = self._gather(self._build(n_rows)[rows], rows)
            if codes is None:
                raise RuntimeError("the IVF inverted lists do not hold the rows their ids say")
        return self._ivf.sa_decode(codes)

    def _gather(self, where: NDArray[np.int64], rows: NDArray[np.int64]) -> NDArray[np.uint8] | None:
        """Standalone codes (list number, then the list's code) of the rows at ``where``; None on a mismatch."""
        faiss = _faiss()
        if (where < 0).any():
            return None
        invlists, code_size = self._ivf.invlists, int(self._ivf.code_size)
        coarse = int(self._ivf.coarse_code_size())
        lists = where >> _OFFSET_BITS
        offsets = where & ((1 << _OFFSET_BITS) - 1)
        out = np.empty((rows.size, coarse + code_size), dtype=np.uint8)
        out[:, :coarse] = lists.astype("<i8").view(np.uint8).reshape(-1, 8)[:, :coarse]
        order = np.argsort(lists, kind="stable")
        bounds = np.flatnonzero(np.diff(lists[order])) + 1
        for group in np.split(order, bounds):
            list_no = int(lists[group[0]])
            size = int(invlists.list_size(list_no))
            pos = offsets[group]
            if int(pos.max()) >= size:
                return None
            ptr = invlists.get_ids(list_no)
            try:
                if not np.array_equal(faiss.rev_swig_ptr(ptr, size)[pos], rows[group]):
                    return None
            finally:
                invlists.release_ids(list_no, ptr)
            codes = invlists.get_codes(list_no)
            try:
                out[group, coarse:] = faiss.rev_swig_ptr(codes, size * code_size).reshape(size, code_size)[pos]
            finally:
                invlists.release_codes(list_no, codes)
        return out


class _Reader:  # pylint: disable=too-few-public-methods
    def __init__(self, rows: IVFRows, n_rows: int) -> None:
        self._rows, self._n_rows = rows, n_rows

    def reconstruct_batch(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        return self._rows.decode(np.asarray(rows, dtype=np.int64), self._n_rows)


def transform_queries(index: Any, queries: NDArray[np.float32]) -> NDArray[np.float32]:
    """``queries`` as the IVF stage sees them: through every ``IndexPreTransform`` (OPQ, PCA, ...)."""
    faiss = _faiss()
    wrapper = faiss.downcast_index(index)
    while isinstance(wrapper, faiss.IndexPreTransform):
        for i in range(wrapper.chain.size()):
            queries = wrapper.chain.at(i).apply(queries)
        wrapper = faiss.downcast_index(wrapper.index)
    return np.ascontiguousarray(queries, dtype=np.float32)


def _faiss() -> Any:
    import faiss  # pylint: disable=import-outside-toplevel

    return faiss

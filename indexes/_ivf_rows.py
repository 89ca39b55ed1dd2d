"""Decode chosen rows of a FAISS IVF index, for the exact plan of a filtered search.

An IVF index stores a row's code in one inverted list, at an offset it does not index by
label unless its ``DirectMap`` is on. :class:`IVFRows` turns on the ``Hashtable`` kind of it
(the ``Array`` kind refuses the ``add_with_ids`` and ``remove_ids`` that
:class:`~indexes.faiss_index.FaissIndex` uses) **lazily**, in the first search that takes
the exact plan; FAISS keeps it up to date on every add and delete (so nothing is
invalidated) and ``write_index`` saves it with the index. Its cost, measured on 1M rows:
**about 22 bytes a row in memory** (a hash node per row) and 16 bytes a row in the saved
file. A row -> (list, offset) map of our own would take 8 bytes a row, but gathering the
codes list by list from Python cost ~16 ms per 1,000 rows (one pass per list touched)
against 0.2 ms for FAISS's ``reconstruct_batch`` through the hash (400k rows, IVF1024,PQ16x8,
one thread; docs/BENCHMARKS.md section 9b).

:meth:`IVFRows.decode` returns what ``reconstruct`` gives (centroid plus decoded residual for
``by_residual`` codes), so scoring it against the (pre-transformed) query gives the distance
an IVF search computes for that row, up to float rounding. The cost follows the allowed rows,
not the stored ones.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["IVFRows", "transform_queries"]

#: IVF kinds whose codes decode to the vector their search scores (the fast-scan kinds score
#: with 8-bit look-up tables, so a decoded row's distance is not theirs: they keep the selector search).
DECODABLE = ("IndexIVFFlat", "IndexIVFPQ", "IndexIVFScalarQuantizer")


class IVFRows:
    """Label -> vector decoding of one FAISS IVF stage (``ivf``, downcast) whose labels are row numbers."""

    def __init__(self, ivf: Any) -> None:
        self._ivf = ivf
        # One build, even when concurrent searches (readers) all want it; FAISS marks the map's type
        # before it fills the hash, so readers wait for this flag, set once the build is done.
        self._lock = threading.Lock()
        self._ready = False

    @staticmethod
    def supports(ivf: Any) -> bool:
        """True for the IVF kinds :meth:`decode` reads (IVF Flat, PQ and SQ codes)."""
        return type(ivf).__name__ in DECODABLE

    @property
    def mapped(self) -> bool:
        """True once the direct map is on (after the first exact search, or loaded with the index)."""
        return int(self._ivf.direct_map.type) != int(_faiss().DirectMap.NoMap)

    def selector(self, rows: NDArray[np.int64]) -> Any:
        """An ``IDSelector`` for ``remove_ids`` of ``rows``: FAISS's hash map removes only an ``IDSelectorArray``
        (whose membership test is a linear scan, so without the map the hashed ``IDSelectorBatch``)."""
        faiss = _faiss()
        return faiss.IDSelectorArray(rows) if self.mapped else faiss.IDSelectorBatch(rows)

    def decode(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """The vectors the index's distances see for ``rows`` (all stored), in the IVF stage's space."""
        if not self._ready:
            with self._lock:
                if not self.mapped:
                    self._ivf.set_direct_map_type(_faiss().DirectMap.Hashtable)
                self._ready = True
        return self._ivf.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))

    def reconstruct_batch(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """:meth:`decode` under the name :func:`indexes._filtered.scan_rows` reads FAISS storage by."""
        return self.decode(rows)


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

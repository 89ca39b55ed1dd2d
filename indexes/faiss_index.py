"""FAISS indexes built from a factory string, with string ids, deletes, filters and persistence."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from indexes._filtered import scan_rows, search_filtered
from indexes._ivf_rows import IVFRows
from indexes._lock import reads, writes
from indexes._paths import member, open_member, stable_path
from indexes.base import Metric, VectorIndex, register_index
from indexes.manifest import Manifest
from retrieval._native_log import native_stderr_to_log
from retrieval._optional import require
from retrieval.errors import ConfigError, IndexFormatError, MissingDependencyError, NotTrainedError
from retrieval.types import Embeddings, as_float32_matrix

if TYPE_CHECKING:
    import faiss

__all__ = ["FaissIndex"]

logger = logging.getLogger(__name__)

_INDEX_FILE = "faiss.index"


def _faiss() -> Any:
    return require("faiss", extra="cpu", feature="FaissIndex")


@functools.cache
def _swig_ptr_fn() -> Any:
    return _faiss().swig_ptr


def _swig_ptr(array: NDArray[Any]) -> Any:
    """A SWIG pointer to ``array``'s data, for FAISS's C-level ``*_c`` methods."""
    return _swig_ptr_fn()(array)


def _reason(exc: RuntimeError) -> str:
    """The last line of a FAISS C++ exception: the message without its source location."""
    return str(exc).strip().splitlines()[-1]


#: FAISS keeps nprobe / efSearch in C ints: larger values overflow in the SWIG layer.
MAX_SEARCH_PARAM = 2**31 - 1


def _check_search_param(name: str, value: Any) -> None:
    """Refuse an ``nprobe`` / ``ef_search`` that is not an int in [1, 2**31 - 1] with a clear ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_SEARCH_PARAM:
        raise ConfigError(f"{name} must be an integer from 1 to {MAX_SEARCH_PARAM} (a C int in FAISS); got {value!r:.40}.")


def _unwrap(index: Any) -> Any:
    """The innermost index under any IndexPreTransform (OPQ, PCA, ...) wrappers, downcast."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


@register_index
class FaissIndex(VectorIndex):
    """A FAISS index described by an ``index_factory`` string.

    Parameters
    ----------
    dim : int
        Vector dimension.
    spec : str
        FAISS factory string, e.g. ``"Flat"``, ``"HNSW32"``, ``"IVF256,PQ48x8"``,
        ``"OPQ48,IVF1,PQ48x8"``, ``"SQ8"``. Binary indexes are not handled here.
    metric : {"ip", "l2"}
        Inner product or squared L2; scores are "higher is better" (negative distance for L2).
    nprobe : int, optional
        IVF lists visited per query (FAISS ``nprobe``); only for specs with an IVF stage.
    ef_search : int, optional
        HNSW search beam width (FAISS ``efSearch``); only for specs with an HNSW stage. A
        search with a larger ``k`` widens the beam to ``k`` for that call, as FAISS users
        expect, so it returns as many hits as a filtered search does.

    Notes
    -----
    Row ``i`` of the index is FAISS label ``i``. Deleting from an IVF index removes the
    vectors (``remove_ids``); other kinds, HNSW among them, cannot remove, so deleted rows
    become tombstones that searches skip through an ``IDSelector`` (or, for kinds that
    take no selector such as ``IndexPQ`` and GPU indexes, by an exact scan or an over-fetch:
    see :mod:`indexes._filtered`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((100, 8)).astype(np.float32)
    >>> index = FaissIndex(8, spec="HNSW16", metric="l2").add(x, ids=[f"d{i}" for i in range(100)])
    >>> index.search(x[:2], k=1).doc_ids
    [['d0'], ['d1']]
    """

    _owner: Any = None  # from_faiss: the caller's owning FAISS object, kept alive with this index

    def __init__(
        self,
        dim: int,
        *,
        spec: str = "Flat",
        metric: Metric = "ip",
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        super().__init__(dim, metric=metric)
        faiss = _faiss()
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"spec must be a FAISS factory string such as 'HNSW32' or 'IVF256,PQ48x8'; got {spec!r}.")
        if spec.strip().upper().startswith("B"):
            raise ConfigError(f"spec {spec!r} looks like a binary index; FaissIndex holds float vectors only.")
        metric_type = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(self.dim, spec, metric_type)
        except RuntimeError as exc:
            raise ConfigError(
                f"spec {spec!r} is not a valid FAISS factory string for dim={self.dim} ({_reason(exc)}). "
                "See https://github.com/facebookresearch/faiss/wiki/The-index-factory"
            ) from exc
        self.spec = spec
        # index_factory turns on polysemous training for PQ codes; it only serves polysemous
        # (Hamming-filtered) search, which FaissIndex does not use, and it costs minutes: on
        # 5k x 384-d vectors, PQ48x8 trains in ~7 s without it and ~130 s with it.
        for sub in (_unwrap(index), faiss.try_extract_index_ivf(index)):
            if sub is not None and hasattr(sub, "do_polysemous_training"):
                sub.do_polysemous_training = False
        self._set_backend(index)
        if nprobe is not None:
            self.nprobe = nprobe
        if ef_search is not None:
            self.ef_search = ef_search

    def _set_backend(self, index: Any, *, on_gpu: bool = False) -> None:
        faiss = _faiss()
        self._index = index
        self._on_gpu = on_gpu
        self._gpu_resources: Any = None  # faiss.StandardGpuResources backing a GPU index
        core = index if on_gpu else _unwrap(index)
        self._ivf = None if on_gpu else faiss.try_extract_index_ivf(index)
        self._hnsw = core if isinstance(core, faiss.IndexHNSW) else None
        self._wrapped = isinstance(faiss.downcast_index(index), faiss.IndexPreTransform)
        self._removes_deleted = self._ivf is not None or (on_gpu and "IVF" in type(core).__name__)
        # The exact plan of a filtered search decodes the allowed rows of a bare IVF stage (under
        # pre-transforms only: behind a refine stage its distances are not the index's).
        self._ivf_rows = IVFRows(core) if self._ivf is not None and IVFRows.supports(core) else None
        # Kinds whose search() honours SearchParameters.sel; everything else over-fetches.
        self._takes_selector = not on_gpu and (
            self._ivf is not None
            or self._hnsw is not None
            or isinstance(core, (faiss.IndexFlat, faiss.IndexScalarQuantizer))
        )

    @classmethod
    def _bare(cls, dim: int, metric: Metric, spec: str) -> FaissIndex:
        """An instance with no FAISS backend yet, for the alternative constructors below."""
        clone = object.__new__(cls)
        VectorIndex.__init__(clone, dim, metric=metric)
        clone.spec = spec
        return clone

    @classmethod
    def from_faiss(cls, index: Any, ids: list[str], *, spec: str, metric: Metric = "ip") -> FaissIndex:
        """Wrap an already trained and filled FAISS index whose label ``i`` is document ``ids[i]``.

        Used by trainers that build the FAISS index themselves (e.g. JPQ writes trained PQ
        centroids into an ``OPQ,PQ`` index). ``spec`` is recorded for the manifest.
        """
        faiss = _faiss()
        owner = index
        index = faiss.downcast_index(index)
        if index.ntotal != len(ids):
            raise ConfigError(f"the FAISS index holds {index.ntotal} vectors but {len(ids)} ids were given.")
        expected = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        if index.metric_type != expected:
            raise ConfigError(f"the FAISS index uses metric type {index.metric_type}, not {metric!r}.")
        clone = cls._bare(index.d, metric, spec)
        clone._set_backend(index)
        # downcast_index returns a proxy that does not own the C++ index: without a reference to
        # the caller's (owning) object, the index is freed when the caller drops it, e.g. when a
        # JPQTrainer goes out of scope, and later searches read freed memory.
        clone._owner = owner
        clone._check_new_ids(list(ids))
        clone._table.append(list(ids))
        return clone

    # ------------------------------------------------------------------ parameters
    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index (labels are row numbers)."""
        return self._index

    @property
    def nprobe(self) -> int:
        if self._ivf is None:
            raise ConfigError(f"nprobe applies to IVF indexes; spec {self.spec!r} has no IVF stage.")
        return int(self._ivf.nprobe)

    @nprobe.setter
    @writes
    def nprobe(self, value: int) -> None:
        if self._ivf is None:
            raise ConfigError(f"nprobe applies to IVF indexes; spec {self.spec!r} has no IVF stage.")
        _check_search_param("nprobe", value)
        self._ivf.nprobe = int(value)

    @property
    def ef_search(self) -> int:
        if self._hnsw is None:
            raise ConfigError(f"ef_search applies to HNSW indexes; spec {self.spec!r} has no HNSW stage.")
        return int(self._hnsw.hnsw.efSearch)

    @ef_search.setter
    @writes
    def ef_search(self, value: int) -> None:
        if self._hnsw is None:
            raise ConfigError(f"ef_search applies to HNSW indexes; spec {self.spec!r} has no HNSW stage.")
        _check_search_param("ef_search", value)
        self._hnsw.hnsw.efSearch = int(value)

    def params(self) -> dict[str, Any]:
        """The settings a saved index records in its manifest: ``spec``, plus ``nprobe`` (IVF)
        and ``ef_search`` (HNSW)."""
        params: dict[str, Any] = {"spec": self.spec}
        if self._ivf is not None:
            params["nprobe"] = self.nprobe
        if self._hnsw is not None:
            params["ef_search"] = self.ef_search
        return params

    def _describe(self) -> str:
        extra = "".join(f"{k}={v!r}, " for k, v in self.params().items())
        return extra + ("device='gpu', " if self._on_gpu else "")

    def memory_bytes(self) -> int:
        """Bytes in memory: the FAISS index as ``faiss.serialize_index`` writes it (the same arrays
        it keeps in memory: codes, centroids, graph links; a GPU index is measured by its CPU
        copy) plus the ids (:meth:`ids_memory_bytes`: the id store's arrays and the tombstone
        mask) and the attributes; an IVF index's direct map, once a filtered search turned it on,
        is part of the FAISS index (:mod:`indexes._ivf_rows`)."""
        faiss = _faiss()
        cpu_index = faiss.index_gpu_to_cpu(self._index) if self._on_gpu else self._index
        return int(faiss.serialize_index(cpu_index).nbytes) + self._table.memory_bytes() + self._attrs.memory_bytes()

    # ------------------------------------------------------------------ train / add / delete
    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @writes
    def train(self, data: Embeddings | NDArray[np.floating]) -> FaissIndex:
        """Train the FAISS index (k-means for IVF / PQ, ...); a no-op when none is needed."""
        if self.is_trained:
            return self
        vectors = data.vectors if isinstance(data, Embeddings) else data
        vectors = as_float32_matrix(vectors, name="training vectors", dim=self.dim)
        try:
            with native_stderr_to_log(logger):  # FAISS k-means warnings: shown with -v, not printed
                self._index.train(vectors)
        except RuntimeError as exc:
            raise ConfigError(
                f"training {self.spec!r} on {vectors.shape[0]} vectors failed ({_reason(exc)}). IVF needs at "
                "least as many training vectors as lists, PQ/SQ need enough to fit their codebooks."
            ) from exc
        return self

    def _add_vectors(self, vectors: NDArray[np.float32], start: int) -> None:
        if not self.is_trained:
            raise NotTrainedError(
                f"FaissIndex {self.spec!r} must be trained before add(); call index.train(vectors) first."
            )
        if self._ivf is not None or (self._on_gpu and self._removes_deleted):
            self._index.add_with_ids(vectors, np.arange(start, start + vectors.shape[0], dtype=np.int64))
        else:
            if self._index.ntotal != start:  # pragma: no cover - guards the row == label invariant
                raise IndexFormatError(f"FAISS holds {self._index.ntotal} rows but densezip expects {start}.")
            self._index.add(vectors)

    def _delete_rows(self, rows: NDArray[np.int64]) -> None:
        if self._removes_deleted:
            rows_map = self._ivf_rows
            self._index.remove_ids(_faiss().IDSelectorBatch(rows) if rows_map is None else rows_map.selector(rows))

    # ------------------------------------------------------------------ search
    def _search_rows(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_] | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        if allowed is None and self._hnsw is not None and k > self._hnsw.hnsw.efSearch and not self._on_gpu:
            distances, labels = self._search_wide_hnsw(queries, k)
        elif allowed is None and not self._on_gpu:
            # FAISS's own Python wrapper would re-validate what VectorIndex.search checked
            # already (C-contiguous float32 of width dim, k >= 1) and allocate the same outputs.
            n = queries.shape[0]
            distances = np.empty((n, k), dtype=np.float32)
            labels = np.empty((n, k), dtype=np.int64)
            self._index.search_c(n, _swig_ptr(queries), k, _swig_ptr(distances), _swig_ptr(labels))
            if self.metric == "l2":
                np.negative(distances, out=distances)
            return distances, labels
        elif allowed is None:
            distances, labels = self._index.search(queries, k)
        else:  # a mask: pre-filter, exact scan or over-fetch by kind and selectivity (indexes/_filtered.py)
            distances, labels = search_filtered(self, queries, k, allowed)
        scores = -distances if self.metric == "l2" else distances
        return scores.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)

    def hnsw_search_parameters(self, k: int) -> Any:
        """The per-call FAISS parameters a search for ``k`` hits uses: ``efSearch`` raised to ``k``.

        A beam narrower than ``k`` leaves rows short, so a search widens it for that call only
        (``SearchParametersHNSW``: the shared index is not modified, so concurrent searches are
        safe). Returns None for indexes without an HNSW stage or when the beam is wide enough.
        """
        if self._hnsw is None or k <= self._hnsw.hnsw.efSearch:
            return None
        faiss = _faiss()
        params = faiss.SearchParametersHNSW(efSearch=k)
        wrapper = faiss.downcast_index(self._index)
        while isinstance(wrapper, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
            wrapper = faiss.downcast_index(wrapper.index)
        return params

    def _search_wide_hnsw(self, queries: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """An unfiltered HNSW search with ``efSearch`` raised to ``k``; rows the graph walk still leaves
        short are filled by the filtered path's exact scan, so both paths return as many hits."""
        distances, labels = self._index.search(queries, k, params=self.hnsw_search_parameters(k))
        short = (labels < 0).any(axis=1)
        if short.any() and not self._wrapped:
            storage = _faiss().downcast_index(self._hnsw.storage)
            allowed = np.ones(int(self._index.ntotal), dtype=bool)
            distances[short], labels[short] = scan_rows(storage, queries[short], k, allowed, self.metric)
        return distances, labels

    def _search_with_selector(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_], *, nprobe: int | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        faiss = _faiss()
        bitmap = np.packbits(allowed, bitorder="little")  # must outlive the search call
        selector = faiss.IDSelectorBitmap(bitmap)
        if self._ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe or self._ivf.nprobe)
        elif self._hnsw is not None:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self._hnsw.hnsw.efSearch, k))
        else:
            params = faiss.SearchParameters(sel=selector)
        wrapper = faiss.downcast_index(self._index)
        while isinstance(wrapper, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
            wrapper = faiss.downcast_index(wrapper.index)
        distances, labels = self._index.search(queries, k, params=params)
        del bitmap
        return distances, labels

    # ------------------------------------------------------------------ GPU placement
    @reads
    def to_gpu(self, device: int = 0) -> FaissIndex:
        """Return a copy of this index placed on CUDA device ``device`` (needs faiss-gpu).

        Raises
        ------
        MissingDependencyError
            If faiss is a CPU build or no CUDA device is visible.
        """
        faiss = require("faiss", extra="gpu", feature="FaissIndex.to_gpu()")
        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if not hasattr(faiss, "StandardGpuResources") or n_gpus == 0:
            raise MissingDependencyError(
                f"FaissIndex.to_gpu() needs a GPU build of faiss and a visible CUDA device; found faiss "
                f"{faiss.__version__} with {n_gpus} GPU(s). Install 'densezip[gpu]' on a CUDA machine, or "
                "keep the index on the CPU."
            )
        if not 0 <= device < n_gpus:
            raise ConfigError(f"device must be in [0, {n_gpus}); got {device}.")
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, device, self._index)
        clone = self._clone_ids()
        clone._set_backend(gpu_index, on_gpu=True)
        clone._gpu_resources = resources  # keep alive as long as the index
        return clone

    @reads
    def to_cpu(self) -> FaissIndex:
        """Return a CPU copy (the index itself when it is already on the CPU)."""
        if not self._on_gpu:
            return self
        clone = self._clone_ids()
        clone._set_backend(_faiss().index_gpu_to_cpu(self._index))
        return clone

    def _clone_ids(self) -> FaissIndex:
        clone = self._bare(self.dim, self.metric, self.spec)
        clone.metadata = dict(self.metadata)
        clone._table = self._table.copy()
        clone._attrs = self._attrs.copy()
        return clone

    # ------------------------------------------------------------------ persistence
    def _write_payload(self, directory: Path, arrays: dict[str, Any]) -> dict[str, Any]:
        faiss = _faiss()
        cpu_index = faiss.index_gpu_to_cpu(self._index) if self._on_gpu else self._index
        faiss.write_index(cpu_index, str(directory / _INDEX_FILE))
        return self.params()

    @classmethod
    def _from_manifest(cls, manifest: Manifest, directory: Path) -> FaissIndex:
        spec = manifest.params.get("spec")
        if not isinstance(spec, str):
            raise IndexFormatError(f"FaissIndex manifest needs params.spec (a string); got {spec!r}.")
        return cls._bare(manifest.dim, manifest.metric, spec)  # type: ignore[arg-type]

    def _read_payload(self, directory: Path, manifest: Manifest, *, mmap: bool) -> None:
        faiss = _faiss()
        path = member(directory, _INDEX_FILE)  # a regular file inside the directory, never a FIFO / device
        try:
            with open_member(path) as f:
                index = faiss.read_index(str(stable_path(f, path)), faiss.IO_FLAG_MMAP if mmap else 0)
        except RuntimeError as exc:
            raise IndexFormatError(f"{path} cannot be read by faiss ({_reason(exc)}).") from exc
        if index.d != manifest.dim:
            raise IndexFormatError(f"{path} has dimension {index.d}, but the manifest says {manifest.dim}.")
        self._set_backend(index)
        expected = len(self) if self._removes_deleted else manifest.count
        if index.ntotal != expected:
            raise IndexFormatError(f"{path} holds {index.ntotal} vectors, but the manifest and doc_ids say {expected}.")

"""The :class:`VectorIndex` base class: document ids (str or int), deletes, filters, checks, save / load.

:class:`StoredIndex` is what every index kind that holds its own documents shares (the
single-vector kinds here and :class:`~indexes.multivector.MultiVectorIndex`): the id
bookkeeping (:class:`~indexes._ids.IdTable`), the atomic save with manifest and checksums,
and the verified load. :class:`VectorIndex` adds the single-vector API; its subclasses
store vectors and implement the hooks ``_add_vectors``, ``_search_rows``,
``_write_payload``, ``_from_manifest``, ``_read_payload`` and ``memory_bytes``. The base
classes own everything users see the same way for every index kind: id bookkeeping, input
validation, result padding, the on-disk manifest and checksums.
"""

from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from indexes._attributes import AttributeTable
from indexes._checks import _plain_scores, check_k
from indexes._ids import IdTable, check_new_ids
from indexes._io import atomic_directory, file_table, verify_checksums
from indexes._lock import RWLock, reads, writes
from indexes._paths import load_pinned
from indexes._predicates import evaluate
from indexes.manifest import MANIFEST_NAME, Manifest, read_manifest, unlisted_files, write_manifest
from retrieval.errors import ConfigError, IndexFormatError, RetrievalError, ShapeError
from retrieval.types import Embeddings, SearchResult, as_float32_matrix, check_finite

if TYPE_CHECKING:
    from indexes.multivector import MultiVectorIndex

__all__ = ["Index", "Metric", "StoredIndex", "VectorIndex", "check_new_ids", "load_index", "register_index"]

logger = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
_METRICS = ("ip", "l2")

T = TypeVar("T", bound="VectorIndex")
S = TypeVar("S", bound="StoredIndex")

_REGISTRY: dict[str, Any] = {}  # class name -> class with a ``load(path, verify=, mmap=)`` classmethod
# Index kinds whose module imports optional packages: imported only when a saved index needs them.
_LAZY_MODULES = {
    "FaissIndex": "indexes.faiss_index",
    "MultiVectorIndex": "indexes.multivector",
    "ShardedIndex": "indexes.sharded",
    "ShardedMultiVectorIndex": "indexes.sharded_multivector",
}


C = TypeVar("C", bound=type)


def register_index(cls: C) -> C:
    """Class decorator: make ``cls`` loadable by :func:`load_index` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def load_index(
    path: str | os.PathLike[str], *, verify: bool = True, mmap: bool = False
) -> VectorIndex | MultiVectorIndex:
    """Load any saved index, dispatching on ``manifest.index_type``.

    Parameters
    ----------
    path : path-like
        Directory written by :meth:`VectorIndex.save`.
    verify : bool
        Check every file's sha256 against the manifest first (default). Pass False to
        skip hashing on very large trusted indexes; file sizes, dtypes and shapes are
        still checked.
    mmap : bool
        Memory-map plain arrays (``FlatIndex`` vectors) instead of reading them into RAM.
        The id arrays are memory-mapped in any case (opening an index does not decode,
        hash or sort its ids; see :mod:`indexes._ids`).

    Notes
    -----
    A load reads one save: the directory is opened once and every file is read from it
    (:func:`indexes._paths.load_pinned`), so a concurrent ``save(path, overwrite=True)`` in
    another process cannot pair the ids of one save with the vectors of another; a load that
    raced such a save is retried instead of reporting the index as damaged. Every file name
    the manifest holds must be a regular file inside the directory (no ``..``, absolute
    paths, symlinks leading out, FIFOs or devices), else IndexFormatError.
    """
    with format_errors(path):
        return load_pinned(path, lambda d: _dispatch(d, verify=verify, mmap=mmap))


def _dispatch(path: Path, *, verify: bool, mmap: bool) -> VectorIndex | MultiVectorIndex:
    manifest = read_manifest(path)
    if manifest.index_type not in _REGISTRY and manifest.index_type in _LAZY_MODULES:
        importlib.import_module(_LAZY_MODULES[manifest.index_type])
    cls = _REGISTRY.get(manifest.index_type)
    if cls is None:
        raise IndexFormatError(
            f"{Path(path) / 'manifest.json'}: unknown index_type {manifest.index_type!r}; this densezip "
            f"knows {sorted(_REGISTRY)}. Upgrade densezip or check the directory."
        )
    return cls.load(path, verify=verify, mmap=mmap)  # type: ignore[no-any-return]


@contextmanager
def format_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn any unexpected failure while reading a saved index into an :class:`IndexFormatError`.

    The loaders check every field they know of; this is the safety net for combinations of
    damage they do not anticipate, so a damaged directory never surfaces as a bare
    ``KeyError`` / ``TypeError`` from deep inside a loader.
    """
    try:
        yield
    except RetrievalError:
        raise
    except OSError as exc:  # a name from the manifest the file system refuses (too long, not a file, ...)
        raise IndexFormatError(
            f"{path}: a file named by the manifest cannot be read ({type(exc).__name__}: {str(exc)[:200]}). "
            "Run `densezip check` on it, then rebuild or restore it."
        ) from exc
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        raise IndexFormatError(
            f"{path}: the saved index is inconsistent ({type(exc).__name__}: {exc}). "
            "Run `densezip check` on it, then rebuild or restore it."
        ) from exc


@runtime_checkable
class Index(Protocol):
    """What every index kind offers, whatever its vectors and wherever its shards live.

    :class:`VectorIndex` (FlatIndex, FaissIndex), :class:`~indexes.MultiVectorIndex`,
    :class:`~indexes.ShardedIndex` and :class:`~indexes.ShardedMultiVectorIndex` all satisfy
    it: code that only searches, deletes, sizes or saves an index (the pipeline, the RAG
    component, the benchmark) can type against it. What the queries are differs by kind: a
    ``(nq, dim)`` float matrix for single-vector indexes, ``MultiVectorEmbeddings`` for
    multi-vector ones. ``add`` and ``train`` are left out for the same reason.
    """

    dim: int

    @property
    def ntotal(self) -> int:
        """Stored rows, deleted ones included where the kind keeps tombstones."""
        ...

    @property
    def doc_ids(self) -> list[str]:
        """Live document ids."""
        ...

    def __len__(self) -> int:
        """Live documents."""
        ...

    def __contains__(self, doc_id: object) -> bool:
        """True when ``doc_id`` is a live document."""
        ...

    def search(
        self, queries: Any, k: int, *, subset: Iterable[str] | None = None, query_ids: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
    ) -> SearchResult:
        """The ``k`` best documents of each query (see the kind's own docstring for ``queries``)."""
        ...

    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents; returns how many were removed."""
        ...

    def memory_bytes(self) -> int:
        """In-memory size, ids and bookkeeping included."""
        ...

    def ids_memory_bytes(self) -> int:
        """The share of :meth:`memory_bytes` held by the document ids."""
        ...

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save atomically into directory ``path``."""
        ...


class StoredIndex(ABC):
    """What every index kind that stores its own documents shares (all kinds but the sharded ones).

    Ids: an :class:`~indexes._ids.IdTable` maps rows to document ids (str or int) and back, with
    tombstones for deleted rows when :attr:`_tombstones` is True. Persistence: :meth:`save`
    writes the ids, the kind's payload (:meth:`_write_payload`) and the manifest with every
    file's checksum, last, into a directory that replaces ``path`` atomically; :meth:`load`
    checks the manifest, the checksums and the ids, then reads the payload back
    (:meth:`_from_manifest`, :meth:`_read_payload`). Subclasses set ``dim`` and ``metric``.
    """

    #: True when a deleted document's row stays (marked deleted) instead of being dropped.
    _tombstones: ClassVar[bool] = True
    dim: int
    metric: Metric

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}
        self._table = IdTable(tombstones=self._tombstones)
        self._attrs = AttributeTable()  # per-row attribute columns for where= (indexes/_attributes.py)
        self._lock = RWLock()  # readers-writer discipline: see indexes/_lock.py

    # ------------------------------------------------------------------ ids
    def __len__(self) -> int:
        """Number of live (not deleted) documents."""
        return len(self._table)

    @property
    def ntotal(self) -> int:
        """Number of stored rows, deleted ones included."""
        return self._table.ntotal

    @property
    @reads
    def doc_ids(self) -> list[str]:
        """Live document ids in insertion order."""
        return self._table.live_ids()

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._table

    def _check_new_ids(self, new_ids: Any) -> Any:
        """Check new ids (all str or all int, of the index's type; see :meth:`IdTable.check_new`);
        returns them as the id table takes them."""
        return self._table.check_new(new_ids)

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the index holds in memory: its payload plus the ids (:meth:`ids_memory_bytes`)."""

    def ids_memory_bytes(self) -> int:
        """The share of :meth:`memory_bytes` held by the document ids: the id store's arrays and
        the tombstone mask (:meth:`indexes._ids.IdTable.memory_bytes`)."""
        return self._table.memory_bytes()

    # ------------------------------------------------------------------ persistence
    @reads
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save atomically into directory ``path``; the manifest is written last.

        Refuses to replace an existing directory unless ``overwrite=True``, and even then
        replaces only an empty directory or one densezip wrote (ConfigError otherwise, with
        nothing touched). A symlink ``path`` is resolved once and its target replaced. Of
        two processes creating the same new ``path``, exactly one succeeds. See
        :func:`indexes._io.atomic_directory`.
        """
        target = Path(path)
        with atomic_directory(target, overwrite=overwrite) as tmp:
            arrays: dict[str, Any] = {}
            self._table.write(tmp, arrays)
            params = self._write_payload(tmp, arrays)
            if self._attrs:
                params = {**params, "attributes": self._attrs.write(tmp, arrays)}
            manifest = Manifest(
                index_type=type(self).__name__, dim=self.dim, metric=self.metric, count=self.ntotal,
                arrays=arrays, files=file_table(tmp), params=params, metadata=self.metadata,
            )
            write_manifest(tmp, manifest)
        logger.info("saved %r to %s", self, target)
        return target

    @classmethod
    def load(cls: type[S], path: str | os.PathLike[str], *, verify: bool = True, mmap: bool = False) -> S:
        """Load an index saved by :meth:`save`, checking the manifest, files and shapes.

        ``verify=False`` skips hashing the files (sizes, dtypes and shapes are still checked);
        ``mmap=True`` memory-maps the large arrays instead of reading them into RAM.
        """
        with format_errors(path):
            return load_pinned(path, lambda d: cls._load(d, verify=verify, mmap=mmap))

    @classmethod
    def _load(cls: type[S], directory: Path, *, verify: bool, mmap: bool) -> S:
        manifest = open_manifest(directory, cls.__name__, verify=verify)
        if manifest.metric not in _METRICS:
            raise IndexFormatError(f"{directory / MANIFEST_NAME}: unknown metric {manifest.metric!r}.")
        index = cls._from_manifest(manifest, directory)
        index.metadata = manifest.metadata
        index._table = IdTable.read(directory, manifest, tombstones=cls._tombstones, verify=verify)
        index._read_payload(directory, manifest, mmap=mmap)
        index._attrs = AttributeTable.read(directory, manifest.params.get("attributes"), manifest.arrays, manifest.count)
        return index

    @property
    def attribute_schema(self) -> dict[str, str]:
        """``field -> kind`` of the attributes stored for ``where=`` (see :mod:`indexes._attributes`)."""
        return self._attrs.schema

    def _allowed(self, subset: Iterable[Any] | None, where: Any) -> NDArray[np.bool_]:
        """The live rows a search may return: those of ``subset`` (if given) matching ``where`` (if given)."""
        mask = self._table.subset_mask(subset) if subset is not None else None
        if where is not None:
            matching = evaluate(where, self._attrs)
            if self._tombstones:
                matching &= self._table.live_mask()
            mask = matching if mask is None else mask & matching
        return mask if mask is not None else np.ones(self.ntotal, dtype=bool)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _write_payload(self, directory: Path, arrays: dict[str, Any]) -> dict[str, Any]:
        """Write backend files into ``directory``, add array entries, return manifest params."""

    @classmethod
    @abstractmethod
    def _from_manifest(cls: type[S], manifest: Manifest, directory: Path) -> S:
        """Construct an empty index with the settings saved in ``directory``'s manifest."""

    @abstractmethod
    def _read_payload(self, directory: Path, manifest: Manifest, *, mmap: bool) -> None:
        """Read backend files written by :meth:`_write_payload` (the ids are read already)."""


def open_manifest(directory: Path, index_type: str, *, verify: bool, other: str | None = None) -> Manifest:
    """The manifest of the saved ``index_type`` in ``directory``, after checking every file it lists.

    ``other`` ends the message when the directory holds another kind (by default: use
    :func:`load_index`).

    Raises
    ------
    IndexFormatError
        If the directory holds another kind, or a file is missing, resized or (with
        ``verify``) fails its sha256.
    """
    manifest = read_manifest(directory)
    if manifest.index_type != index_type:
        other = other or f"not a {index_type}; use indexes.load_index()"
        raise IndexFormatError(f"{directory} holds a {manifest.index_type}, {other}.")
    verify_checksums(directory, manifest.files, hashes=verify)
    check_file_table(directory, manifest)
    return manifest


def check_file_table(directory: Path, manifest: Manifest) -> None:
    """Refuse a manifest whose ``files`` table does not list every file the load reads.

    A file the load reads must have its size and sha256 checked first; a table that lost an
    entry (a hand-edited or forged manifest) would otherwise load that file unchecked.
    """
    missing = unlisted_files(manifest.to_dict())
    if missing:
        raise IndexFormatError(
            f"{directory / MANIFEST_NAME}: the file table does not list {[n[:80] for n in missing[:3]]}, which the "
            "load reads; "
            "the manifest is damaged. Run `densezip check` on it, then rebuild or restore the index."
        )


class VectorIndex(StoredIndex):
    """Base class of single-vector indexes with document ids (str, or int: see :meth:`add`).

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"ip", "l2"}
        Inner product (use normalised vectors for cosine) or squared L2 distance.
        Scores are always "higher is better": for ``"l2"`` a score is the negative
        squared distance.

    Notes
    -----
    Thread safety: searches (and ``save``) run concurrently with each other; ``train``,
    ``add`` and ``delete`` are exclusive, so a search sees the index wholly before or wholly
    after each write (a readers-writer lock, see :mod:`indexes._lock`).
    """

    #: True when deleted rows are physically removed from the backend, so searches need
    #: no tombstone filter.
    _removes_deleted: bool = False

    def __init__(self, dim: int, *, metric: Metric = "ip") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ConfigError(f"dim must be a positive integer; got {dim!r}.")
        if metric not in _METRICS:
            raise ConfigError(
                f"metric must be one of {_METRICS}; got {metric!r}. For cosine, use metric='ip' "
                "with normalised vectors."
            )
        super().__init__()
        self.dim = int(dim)
        self.metric: Metric = metric

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}, {self._describe()}count={len(self)})"

    def _describe(self) -> str:
        return ""

    # ------------------------------------------------------------------ train / add / delete
    @property
    def is_trained(self) -> bool:
        return True

    @writes
    def train(self: T, data: Embeddings | NDArray[np.floating]) -> T:
        """Train the index on representative vectors (no-op for indexes that need none)."""
        return self

    @writes
    def add(self: T, data: Embeddings | NDArray[np.floating], ids: Sequence[str] | NDArray[np.integer] | None = None,
            *, attributes: Any = None) -> T:
        """Add vectors with their document ids; returns ``self`` for chaining.

        Parameters
        ----------
        data : Embeddings or np.ndarray, shape (n, dim)
            Vectors; with an array, ``ids`` is required.
        ids : sequence of str, or of int (e.g. an int64 array), length n
            Unique document ids (str: non-empty, no newlines), not already live in the index.
            Integer ids are kept as one int64 array (no string table, like FAISS's
            ``IndexIDMap``) and come back as ``int`` in ``SearchResult.doc_ids``. The first
            ``add`` fixes the type: one index never mixes str and int ids (ConfigError).
        attributes : dict of field -> n values, or a list of n dicts, optional
            Typed values to filter on with ``search(where=...)`` (see :mod:`indexes._attributes`).
        """
        vectors, new_ids = self._split(data, ids)
        new_ids = self._check_new_ids(new_ids)
        prepared = self._attrs.prepare(attributes, vectors.shape[0])
        if vectors.shape[0] == 0:
            return self
        self._add_vectors(vectors, self._table.ntotal)
        self._table.append(new_ids)
        self._attrs.commit(prepared)
        return self

    @writes
    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; all ids are checked before anything is removed.

        Returns
        -------
        int
            Number of documents deleted.

        Raises
        ------
        UnknownIdError
            If any id is not live in the index (nothing is deleted then).
        """
        ids, rows = self._table.rows_to_delete(ids)
        if rows.size == 0:
            return 0
        self._delete_rows(rows)
        self._table.remove(ids, rows)
        return int(rows.size)

    # ------------------------------------------------------------------ search
    @reads
    def search(
        self,
        queries: NDArray[np.floating],
        k: int = 10,
        *,
        subset: Iterable[str] | None = None,
        query_ids: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
    ) -> SearchResult:
        """Return the top-``k`` documents for each query.

        Parameters
        ----------
        queries : np.ndarray, shape (nq, dim), float
            Query vectors; NaN / inf rows are rejected.
        k : int
            Number of hits per query (>= 1). The result has ``min(k, len(index))`` columns
            (so an absurd ``k`` allocates nothing more); rows with fewer hits than that (a
            ``subset``, an IVF ``nprobe`` that reaches too few lists) are padded with label
            ``-1`` and score ``-inf``.
        subset : iterable of str, optional
            Restrict the search to these document ids (unknown ids raise UnknownIdError).
        where : dict, optional
            A predicate over the stored attributes (:mod:`indexes._predicates`). With ``subset``
            or ``where``, a row holds ``min(k, matching live documents)`` hits, however few match.
        query_ids : sequence of str, optional
            Stored on the result for :meth:`SearchResult.to_trec_dict`.

        Returns
        -------
        SearchResult
        """
        # The hot path of every search: keep the number of NumPy calls after the backend's
        # search small (see docs/BENCHMARKS.md, "wrapper overhead").
        if type(k) is not int or k <= 0:
            k = check_k(k)
        table = self._table
        k = min(k, len(table))  # never allocate by an absurd k: a result has at most one column per document
        q = as_float32_matrix(queries, name="queries", dim=self.dim, finite=False)  # checked below
        nq = q.shape[0]
        if query_ids is not None and len(query_ids) != nq:
            raise ShapeError(f"query_ids must have one id per query; got {len(query_ids)} for {nq} queries.")
        allowed: NDArray[np.bool_] | None = None
        n_allowed = len(table)
        if subset is not None or where is not None:
            allowed = self._allowed(subset, where)
            n_allowed = int(np.count_nonzero(allowed))
        elif n_allowed != table.ntotal and not self._removes_deleted:
            # Some row is deleted (live ids < rows): an O(1) test instead of a scan of the mask.
            allowed = table.live_mask()
        if 0 < k <= n_allowed and nq:
            scores, labels = self._search_rows(q, k, allowed)
        else:
            k_eff = min(k, n_allowed)
            scores = np.full((nq, k), -np.inf, dtype=np.float32)
            labels = np.full((nq, k), -1, dtype=np.int64)
            if k_eff > 0 and nq:
                scores[:, :k_eff], labels[:, :k_eff] = self._search_rows(q, k_eff, allowed)
        if not (nq and _plain_scores(scores)):
            self._check_results(q, scores, labels)
        return SearchResult(scores=scores, labels=labels, id_table=table.id_array(),
                            query_ids=list(query_ids) if query_ids is not None else None)

    @staticmethod
    def _check_results(q: NDArray[np.float32], scores: NDArray[np.float32], labels: NDArray[np.int64]) -> None:
        """The exact checks behind :meth:`search`'s fast test: reject non-finite queries and
        overflowed scores, and set the score of every padded hit to ``-inf``."""
        check_finite(q, name="queries")
        # Backends pad with label -1 only at the end of a row (e.g. IVF with a small nprobe).
        full = labels.size == 0 or labels[:, -1].min() >= 0
        if not (np.isfinite(scores).all() if full else np.isfinite(scores[labels >= 0]).all()):
            raise ShapeError(
                "scores overflowed float32 (inf / NaN): the queries hold values too large for this index "
                f"(largest |value| {float(np.abs(q).max()):.3g}). Normalise the query vectors."
            )
        if not full:
            scores[labels < 0] = -np.inf

    # ------------------------------------------------------------------ helpers
    def _split(self, data: Any, ids: Any) -> tuple[NDArray[np.float32], Any]:
        if isinstance(data, Embeddings):
            if ids is not None:
                raise ConfigError("pass ids either inside Embeddings or as `ids`, not both.")
            vectors, new_ids = data.vectors, data.ids
        else:
            if ids is None:
                raise ConfigError("add(vectors) needs `ids`: one string document id per row (or pass Embeddings).")
            if isinstance(ids, str):
                raise ConfigError("ids must be a sequence of strings, not a single string.")
            new_ids = ids if isinstance(ids, np.ndarray) and ids.ndim == 1 else list(ids)
            vectors = data
        vectors = as_float32_matrix(vectors, name="vectors", dim=self.dim)
        if len(new_ids) != vectors.shape[0]:
            raise ShapeError(f"add() needs one id per vector; got {len(new_ids)} ids for {vectors.shape[0]} vectors.")
        return vectors, new_ids

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _add_vectors(self, vectors: NDArray[np.float32], start: int) -> None:
        """Store ``vectors`` as rows ``start ... start + n - 1``."""

    @abstractmethod
    def _search_rows(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_] | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-``k`` rows, best first; ``allowed`` masks rows.

        ``queries`` is what :meth:`search` validated: C-contiguous float32 of width ``dim``
        (backends may hand its buffer to C code as is), not yet checked for NaN / inf.

        Scores are higher-better. A missing hit is label ``-1`` at the end of its row, with
        score ``-inf`` or at most ``-FLT_MAX`` (FAISS's sentinel), so that :meth:`search`
        can tell a full, finite result from one reduction over the scores.
        """

    def _delete_rows(self, rows: NDArray[np.int64]) -> None:
        """Physically remove rows where the backend can; the default keeps tombstones."""

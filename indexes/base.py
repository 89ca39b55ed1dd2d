"""The :class:`VectorIndex` base class: string ids, deletes, filters, checks, save / load.

Subclasses store vectors and implement four hooks: ``_add_vectors``, ``_search_rows``,
``_write_payload`` and ``_read_payload``. The base class owns everything users see the
same way for every index kind: id bookkeeping, input validation, result padding, the
on-disk manifest and checksums.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from indexes._io import atomic_directory, file_sha256, load_array, read_lines, save_array, verify_checksums, write_lines
from indexes._lock import RWLock, reads, writes
from indexes.manifest import Manifest, read_manifest, write_manifest
from retrieval.errors import ConfigError, IndexFormatError, RetrievalError, ShapeError, UnknownIdError
from retrieval.types import Embeddings, SearchResult, as_float32_matrix, check_finite

if TYPE_CHECKING:
    from indexes.multivector import MultiVectorIndex

__all__ = ["Metric", "VectorIndex", "load_index", "register_index"]

logger = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
_METRICS = ("ip", "l2")
_BAD_ID = re.compile(r"[\n\r]")
_PAD_SCORE = -float(np.finfo(np.float32).max)  # FAISS's score for a missing hit (label -1)

T = TypeVar("T", bound="VectorIndex")

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
    """
    manifest = read_manifest(path)
    if manifest.index_type not in _REGISTRY and manifest.index_type in _LAZY_MODULES:
        importlib.import_module(_LAZY_MODULES[manifest.index_type])
    cls = _REGISTRY.get(manifest.index_type)
    if cls is None:
        raise IndexFormatError(
            f"{Path(path) / 'manifest.json'}: unknown index_type {manifest.index_type!r}; this densezip "
            f"knows {sorted(_REGISTRY)}. Upgrade densezip or check the directory."
        )
    with format_errors(path):
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
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        raise IndexFormatError(
            f"{path}: the saved index is inconsistent ({type(exc).__name__}: {exc}). "
            "Run `densezip check` on it, then rebuild or restore it."
        ) from exc


def check_new_ids(new_ids: list[str], live: Container[str]) -> None:
    """Reject ids that are not str, empty, hold a newline, repeat in the batch, or are already ``live``."""
    for i in new_ids:
        if not isinstance(i, str):
            raise ConfigError(f"document ids must be str; got {type(i).__name__} {i!r}. Convert with str().")
        if _BAD_ID.search(i) or i == "":
            raise ConfigError(f"document ids must be non-empty and contain no newline; got {i!r}.")
    if len(set(new_ids)) != len(new_ids):
        seen: set[str] = set()
        dup = next(i for i in new_ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ConfigError(f"duplicate document id {dup!r} in the batch; ids must be unique.")
    clash = [i for i in new_ids if i in live]
    if clash:
        raise ConfigError(
            f"{len(clash)} id(s) are already in the index, e.g. {clash[:3]}; delete them first to replace them."
        )


def _plain_scores(scores: NDArray[np.float32]) -> bool:
    """True in the common case of a search: every score finite and above the padding sentinel.

    FAISS pads a missing hit with label -1 and score -FLT_MAX, densezip with -inf, so such a
    result has no padded row and no overflow; and its queries were finite, since a NaN / inf
    query makes every score of its row NaN / inf or leaves the row padded. Anything else goes
    to :meth:`VectorIndex._check_results`. A small result is tested in plain Python: right
    after a FAISS call the CPU caches are cold, and there NumPy's reduction machinery costs
    several µs per call, which matters against a 20 µs search at batch 1.

    Examples
    --------
    >>> _plain_scores(np.array([[0.9, 0.1]], dtype=np.float32))
    True
    >>> _plain_scores(np.array([[0.9, -np.finfo(np.float32).max]], dtype=np.float32))
    False
    >>> _plain_scores(np.array([[np.inf, 0.1]], dtype=np.float32)), _plain_scores(np.array([[0.1, np.nan]]))
    (False, False)
    """
    if scores.size <= 64:
        values = scores.ravel().tolist()
        # A float64 sum of float32 values cannot overflow: it is finite iff every value is.
        return math.isfinite(sum(values)) and min(values) > _PAD_SCORE
    # Rows are sorted best first, so an overflow to +inf shows in column 0; min() sees NaN.
    return bool(scores.min() > _PAD_SCORE and scores[:, 0].max() < np.inf)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k must be a positive integer; got {k!r} ({type(k).__name__}).")
    if k <= 0:
        raise ConfigError(f"k must be a positive integer; got {k}. Use k >= 1.")
    return int(k)


class VectorIndex(ABC):
    """Base class of single-vector indexes with string document ids.

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
        self.dim = int(dim)
        self.metric: Metric = metric
        self.metadata: dict[str, Any] = {}
        self._ids: list[str] = []  # row -> doc id (deleted rows keep their old id)
        self._row_of: dict[str, int] = {}  # live doc id -> row
        self._deleted = np.zeros(0, dtype=bool)
        self._ids_array: NDArray[np.object_] | None = None  # cache for fast label -> id lookup
        self._lock = RWLock()  # readers-writer discipline: see indexes/_lock.py

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Number of live (not deleted) documents."""
        return len(self._row_of)

    @property
    def ntotal(self) -> int:
        """Number of stored rows, deleted ones included."""
        return len(self._ids)

    @property
    @reads
    def doc_ids(self) -> list[str]:
        """Live document ids in insertion order."""
        return [doc_id for row, doc_id in enumerate(self._ids) if not self._deleted[row]]

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row_of

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
    def add(self: T, data: Embeddings | NDArray[np.floating], ids: Sequence[str] | None = None) -> T:
        """Add vectors with their document ids; returns ``self`` for chaining.

        Parameters
        ----------
        data : Embeddings or np.ndarray, shape (n, dim)
            Vectors; with an array, ``ids`` is required.
        ids : sequence of str, length n
            Unique document ids (no newlines), not already live in the index.
        """
        vectors, new_ids = self._split(data, ids)
        self._check_new_ids(new_ids)
        if vectors.shape[0] == 0:
            return self
        start = len(self._ids)
        self._add_vectors(vectors, start)
        self._ids.extend(new_ids)
        self._row_of.update((doc_id, start + i) for i, doc_id in enumerate(new_ids))
        self._deleted = np.concatenate([self._deleted, np.zeros(len(new_ids), dtype=bool)])
        self._ids_array = None
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
        ids = [ids] if isinstance(ids, str) else list(ids)
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise UnknownIdError(
                f"cannot delete {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}; "
                "nothing was deleted. Check `doc_id in index` first."
            )
        rows = np.array(sorted({self._row_of[i] for i in ids}), dtype=np.int64)
        if rows.size == 0:
            return 0
        self._delete_rows(rows)
        for i in set(ids):
            del self._row_of[i]
        self._deleted[rows] = True
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
    ) -> SearchResult:
        """Return the top-``k`` documents for each query.

        Parameters
        ----------
        queries : np.ndarray, shape (nq, dim), float
            Query vectors; NaN / inf rows are rejected.
        k : int
            Number of hits per query (>= 1). When fewer documents are live (or allowed by
            ``subset``), the rows are padded with label ``-1`` and score ``-inf``.
        subset : iterable of str, optional
            Restrict the search to these document ids (unknown ids raise UnknownIdError).
        query_ids : sequence of str, optional
            Stored on the result for :meth:`SearchResult.to_trec_dict`.

        Returns
        -------
        SearchResult
        """
        # The hot path of every search: keep the number of NumPy calls after the backend's
        # search small (see docs/BENCHMARKS.md, "wrapper overhead").
        if type(k) is not int or k <= 0:
            k = _check_k(k)
        q = as_float32_matrix(queries, name="queries", dim=self.dim, finite=False)  # checked below
        nq = q.shape[0]
        if query_ids is not None and len(query_ids) != nq:
            raise ShapeError(f"query_ids must have one id per query; got {len(query_ids)} for {nq} queries.")
        allowed: NDArray[np.bool_] | None = None
        n_allowed = len(self._row_of)
        if subset is not None:
            subset_ids = [subset] if isinstance(subset, str) else list(subset)
            missing = [i for i in subset_ids if i not in self._row_of]
            if missing:
                raise UnknownIdError(
                    f"subset holds {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}."
                )
            allowed = np.zeros(self.ntotal, dtype=bool)
            allowed[[self._row_of[i] for i in subset_ids]] = True
            n_allowed = int(allowed.sum())
        elif n_allowed != len(self._ids) and not self._removes_deleted:
            # Some row is deleted (live ids < rows): an O(1) test instead of a scan of the mask.
            allowed = ~self._deleted
        if k <= n_allowed and nq:
            scores, labels = self._search_rows(q, k, allowed)
        else:
            k_eff = min(k, n_allowed)
            scores = np.full((nq, k), -np.inf, dtype=np.float32)
            labels = np.full((nq, k), -1, dtype=np.int64)
            if k_eff > 0 and nq:
                scores[:, :k_eff], labels[:, :k_eff] = self._search_rows(q, k_eff, allowed)
        if not (nq and _plain_scores(scores)):
            self._check_results(q, scores, labels)
        table = self._ids_array
        if table is None:  # rebuilt after an add; results already returned keep the old one
            table = self._ids_array = np.array(self._ids, dtype=object)
        return SearchResult(scores=scores, labels=labels, id_table=table,
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

    # ------------------------------------------------------------------ persistence
    @reads
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save atomically into directory ``path``; the manifest is written last.

        Refuses to replace an existing directory unless ``overwrite=True``.
        """
        target = Path(path)
        with atomic_directory(target, overwrite=overwrite) as tmp:
            arrays: dict[str, Any] = {"deleted": save_array(tmp, "deleted", self._deleted)}
            write_lines(tmp / "doc_ids.txt", self._ids)
            params = self._write_payload(tmp, arrays)
            files = {
                child.name: {"bytes": child.stat().st_size, "sha256": file_sha256(child)}
                for child in sorted(tmp.iterdir())
            }
            manifest = Manifest(
                index_type=type(self).__name__, dim=self.dim, metric=self.metric, count=self.ntotal,
                arrays=arrays, files=files, params=params, metadata=self.metadata,
            )
            write_manifest(tmp, manifest)
        logger.info("saved %r to %s", self, target)
        return target

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str], *, verify: bool = True, mmap: bool = False) -> T:
        """Load an index saved by :meth:`save`, checking the manifest, files and shapes."""
        with format_errors(path):
            return cls._load(Path(path), verify=verify, mmap=mmap)

    @classmethod
    def _load(cls: type[T], directory: Path, *, verify: bool, mmap: bool) -> T:
        manifest = read_manifest(directory)
        if manifest.index_type != cls.__name__:
            raise IndexFormatError(
                f"{directory} holds a {manifest.index_type}, not a {cls.__name__}; use indexes.load_index()."
            )
        verify_checksums(directory, manifest.files, hashes=verify)
        if manifest.metric not in _METRICS:
            raise IndexFormatError(f"{directory / 'manifest.json'}: unknown metric {manifest.metric!r}.")
        index = cls._from_manifest(manifest)
        index.metadata = manifest.metadata
        deleted = load_array(directory, manifest.arrays.get("deleted"), name="deleted")
        if deleted.dtype != np.bool_ or deleted.shape != (manifest.count,):
            raise IndexFormatError(
                f"{directory / 'deleted.npy'} must be bool of shape ({manifest.count},); got {deleted.dtype} {deleted.shape}."
            )
        ids = read_lines(directory / "doc_ids.txt", expected=manifest.count)
        index._ids = ids
        index._deleted = np.array(deleted, dtype=bool)
        index._row_of = {doc_id: row for row, doc_id in enumerate(ids) if not deleted[row]}
        if len(index._row_of) != int((~index._deleted).sum()):
            raise IndexFormatError(f"{directory / 'doc_ids.txt'} holds duplicate live ids; the file is corrupt.")
        index._read_payload(directory, manifest, mmap=mmap)
        return index

    # ------------------------------------------------------------------ helpers
    def _split(self, data: Any, ids: Sequence[str] | None) -> tuple[NDArray[np.float32], list[str]]:
        if isinstance(data, Embeddings):
            if ids is not None:
                raise ConfigError("pass ids either inside Embeddings or as `ids`, not both.")
            vectors, new_ids = data.vectors, data.ids
        else:
            if ids is None:
                raise ConfigError("add(vectors) needs `ids`: one string document id per row (or pass Embeddings).")
            if isinstance(ids, str):
                raise ConfigError("ids must be a sequence of strings, not a single string.")
            new_ids = list(ids)
            vectors = data
        vectors = as_float32_matrix(vectors, name="vectors", dim=self.dim)
        if len(new_ids) != vectors.shape[0]:
            raise ShapeError(f"add() needs one id per vector; got {len(new_ids)} ids for {vectors.shape[0]} vectors.")
        return vectors, new_ids

    def _check_new_ids(self, new_ids: list[str]) -> None:
        check_new_ids(new_ids, self._row_of)

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

    def _delete_rows(self, rows: NDArray[np.int64]) -> None:  # noqa: B027 - optional hook
        """Physically remove rows where the backend can; the default keeps tombstones."""

    @abstractmethod
    def _write_payload(self, directory: Path, arrays: dict[str, Any]) -> dict[str, Any]:
        """Write backend files into ``directory``, add array entries, return manifest params."""

    @classmethod
    @abstractmethod
    def _from_manifest(cls: type[T], manifest: Manifest) -> T:
        """Construct an empty index with the saved settings."""

    @abstractmethod
    def _read_payload(self, directory: Path, manifest: Manifest, *, mmap: bool) -> None:
        """Read backend files written by :meth:`_write_payload`."""

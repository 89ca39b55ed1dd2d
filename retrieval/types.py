"""Plain data types passed between encoders, indexes and the retriever."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from retrieval.errors import ShapeError

__all__ = ["Embeddings", "Hit", "LabelTable", "MultiVectorEmbeddings", "SearchResult", "as_float32_matrix", "check_finite"]


_SMALL = 1 << 16  # elements (256 KB of float32): below this a boolean finiteness mask is cheap


def as_float32_matrix(x: Any, *, name: str, dim: int | None = None, finite: bool = True) -> NDArray[np.float32]:
    """Validate ``x`` as a finite 2-D float matrix and return it as C-contiguous float32.

    Accepts float16/float32/float64 arrays (and torch tensors via ``np.asarray``). A 1-D
    vector is rejected rather than silently reshaped, because ``(d,)`` vs ``(1, d)`` is a
    common source of wrong results. A float32 C-contiguous array is returned as is (no copy).

    ``finite=False`` skips the NaN / inf check, for a caller that runs
    :func:`check_finite` itself later (``VectorIndex.search`` does, only when the search
    results show that something is off, which every non-finite query makes them).

    Raises
    ------
    ShapeError
        If ``x`` is not 2-D, has a non-float dtype, the wrong width, or NaN / inf values.
    """
    arr = x if type(x) is np.ndarray else np.asarray(x)
    if arr.ndim != 2:
        hint = " Wrap a single vector as x[None, :]." if arr.ndim == 1 else ""
        raise ShapeError(
            f"{name} must be a 2-D array of shape (n, {dim if dim is not None else 'd'}); "
            f"got shape {arr.shape}.{hint}"
        )
    if arr.dtype.kind != "f":
        raise ShapeError(
            f"{name} must have a floating dtype (float16, float32 or float64); got {arr.dtype}. "
            "Convert with x.astype(np.float32)."
        )
    if dim is not None and arr.shape[1] != dim:
        raise ShapeError(
            f"{name} must have shape (n, {dim}) to match the index; got {arr.shape}. "
            "Was the index built with a different encoder?"
        )
    out = arr if arr.dtype == np.float32 and arr.flags.c_contiguous else np.ascontiguousarray(arr, dtype=np.float32)
    if finite:
        check_finite(out, name=name)
    return out


def check_finite(x: NDArray[np.floating], *, name: str) -> None:
    """Raise :class:`ShapeError` naming the first row of the 2-D array ``x`` that holds a NaN or inf.

    Examples
    --------
    >>> check_finite(np.array([[1.0, 2.0], [np.nan, 0.0]]), name="queries")
    Traceback (most recent call last):
    ...
    retrieval.errors.ShapeError: queries contains NaN or inf values in 1 row(s) (first: row 1). Check the encoder output or the input data.
    """
    if x.size <= _SMALL:
        # A search-sized batch: one boolean pass is cheaper than entering np.errstate.
        finite = bool(np.isfinite(x).all())
    else:
        # A large matrix: one reduction instead of a full boolean mask; a non-finite sum (a NaN /
        # inf, or an overflow of huge finite values) triggers the exact check.
        with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN: the check still sees it
            total = x.sum(dtype=np.float64)
        finite = bool(np.isfinite(total)) or bool(np.isfinite(x).all())
    if not finite:
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ShapeError(
            f"{name} contains NaN or inf values in {bad.size} row(s) (first: row {int(bad[0])}). "
            "Check the encoder output or the input data."
        )


def as_id_list(ids: Any) -> Any:
    """Document ids as the embedding types keep them: a 1-d NumPy integer array as int64 (integer
    ids), anything else as a list of ``str``.

    >>> as_id_list([1, "b"]), as_id_list(np.array([3, 4], dtype=np.int32)).dtype
    (['1', 'b'], dtype('int64'))
    """
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu" and ids.ndim == 1:
        if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
            raise ShapeError(f"integer ids must fit in int64; got {int(ids.max())}.")
        return ids.astype(np.int64, copy=False)
    return [str(i) for i in ids]


def _take(ids: Any, rows: Any) -> Any:
    return ids[np.asarray(rows, dtype=np.int64)] if isinstance(ids, np.ndarray) else [ids[r] for r in rows]


@dataclass(frozen=True)
class Embeddings:
    """Dense vectors with their ids.

    Attributes
    ----------
    vectors : np.ndarray, shape (n, d), dtype float32
    ids : list of str, or int64 array, length n
        Any sequence is stored as a list of ``str`` (``str(i)`` of each item); a NumPy integer
        array stays an int64 array: integer document ids (see ``VectorIndex.add``).
    """

    vectors: NDArray[np.float32]
    ids: list[str]

    def __post_init__(self) -> None:
        vectors = as_float32_matrix(self.vectors, name="vectors")
        object.__setattr__(self, "vectors", vectors)
        ids = as_id_list(self.ids)
        if len(ids) != vectors.shape[0]:
            raise ShapeError(
                f"Embeddings needs one id per vector; got {len(ids)} ids for {vectors.shape[0]} vectors."
            )
        object.__setattr__(self, "ids", ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class Hit:
    """One retrieved document."""

    doc_id: str | int
    score: float


class LabelTable(Protocol):
    """A label -> document id table: indexing it with an int64 array of labels (all >= 0)
    returns an array of the ids of the same shape: ``str`` objects (``np.ndarray`` of ``str``
    objects does), or int64 for an index with integer ids."""

    def __getitem__(self, labels: NDArray[np.int64], /) -> NDArray[Any]: ...


class SearchResult:
    """Top-k results for a batch of queries.

    Attributes
    ----------
    doc_ids : list of list of str (or int), shape (nq, <=k)
        Document ids per query, best first. A query with fewer than k hits has a shorter list.
        An index with integer ids gives ``int``.
        Indexes hand over their label-to-id table instead of a list (``id_table``: an object
        array, or any :class:`LabelTable` such as the index's compact id store): the
        Python lists are then built on first access and kept, so a caller that only reads
        ``labels`` and ``scores`` never pays for them.
    scores : np.ndarray, shape (nq, k), dtype float32
        Higher is better (inner product, or negative squared L2 distance for ``metric="l2"``);
        ``-inf`` pads the missing hits.
    labels : np.ndarray, shape (nq, k), dtype int64
        Internal row numbers in the index; ``-1`` pads the missing hits (as in faiss).
    query_ids : list of str or None
        Optional query ids, used by :meth:`to_trec_dict`.

    Examples
    --------
    >>> r = SearchResult(scores=np.array([[0.9, -np.inf]], dtype=np.float32),
    ...                  labels=np.array([[1, -1]]), id_table=np.array(["a", "b"], dtype=object))
    >>> r.doc_ids
    [['b']]
    """

    __slots__ = ("_doc_ids", "_id_table", "labels", "query_ids", "scores")

    def __init__(
        self,
        doc_ids: list[list[str]] | None = None,
        scores: NDArray[np.float32] | None = None,
        labels: NDArray[np.int64] | None = None,
        query_ids: list[str] | None = None,
        *,
        id_table: LabelTable | None = None,
    ) -> None:
        if scores is None or labels is None:
            raise TypeError("SearchResult needs scores and labels.")
        if (doc_ids is None) == (id_table is None):
            raise TypeError("SearchResult needs exactly one of doc_ids (lists of ids) or id_table (label -> id).")
        self._doc_ids = doc_ids
        self._id_table = id_table  # never mutated in place by an index, so a result is a snapshot
        self.scores = scores
        self.labels = labels
        self.query_ids = query_ids

    @property
    def doc_ids(self) -> list[list[str]]:
        if self._doc_ids is None:
            labels, table = self.labels, self._id_table
            assert table is not None
            if labels.size == 0 or labels[:, -1].min() >= 0:
                self._doc_ids = table[labels].tolist()  # every row full: one gather
            else:  # padding (-1) sits at the end of short rows
                self._doc_ids = [table[row[row >= 0]].tolist() for row in labels]
        return self._doc_ids

    @doc_ids.setter
    def doc_ids(self, value: list[list[str]]) -> None:
        self._doc_ids = value

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(doc_ids={self.doc_ids!r}, scores={self.scores!r}, labels={self.labels!r}, "
                f"query_ids={self.query_ids!r})")

    def __len__(self) -> int:
        return len(self.doc_ids)

    def to_list(self) -> list[list[Hit]]:
        """Hits per query, best first, padding dropped."""
        return [
            [Hit(doc_id, float(score)) for doc_id, score in zip(ids, row, strict=False)]  # ids is shorter than a padded row
            for ids, row in zip(self.doc_ids, self.scores, strict=True)
        ]

    def to_trec_dict(self, query_ids: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Return the BEIR / pytrec_eval run format ``{query_id: {doc_id: score}}``."""
        qids = list(query_ids) if query_ids is not None else self.query_ids
        if qids is None:
            qids = [str(i) for i in range(len(self.doc_ids))]
        if len(qids) != len(self.doc_ids):
            raise ShapeError(f"to_trec_dict needs one query id per query; got {len(qids)} ids for {len(self.doc_ids)} queries.")
        return {
            str(qid): {doc_id: float(score) for doc_id, score in zip(ids, row, strict=False)}  # padding dropped
            for qid, ids, row in zip(qids, self.doc_ids, self.scores, strict=True)
        }

    def recall_at(self, gt: Sequence[Sequence[str]], k: int | None = None) -> float:
        """Mean share of each query's ground-truth ids found in its top ``k`` (all hits when None)."""
        if len(gt) != len(self.doc_ids):
            raise ShapeError(f"recall_at needs one ground-truth list per query; got {len(gt)} for {len(self.doc_ids)} queries.")
        total = 0.0
        for found, truth in zip(self.doc_ids, gt, strict=True):
            truth_set = set(truth)
            if truth_set:
                total += len(truth_set.intersection(found[:k] if k else found)) / len(truth_set)
        return total / max(len(gt), 1)


@dataclass(frozen=True)
class MultiVectorEmbeddings:
    """Several vectors per text (tokens or image patches) in a CSR layout.

    Document ``i`` owns rows ``offsets[i]:offsets[i + 1]`` of ``vectors``: the same layout as
    faiss's ``lims`` for range search, so the whole collection is two flat arrays that can be
    memory-mapped (:meth:`save` / :meth:`load`).

    Attributes
    ----------
    vectors : np.ndarray, shape (T, d), dtype float32 or float16
        All token / patch vectors, document after document.
    offsets : np.ndarray, shape (n + 1,), dtype int64
        ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == T``. A document may hold no vector.
    ids : list of str, or int64 array, length n
        As for :class:`Embeddings`: a NumPy integer array stays int64 (integer document ids).
    saliency : np.ndarray, shape (T,), dtype float32, optional
        One importance score per vector (for example the attention it receives); used by
        attention-guided pruning.

    Examples
    --------
    >>> import numpy as np
    >>> mv = MultiVectorEmbeddings.from_list([np.ones((2, 3)), np.zeros((1, 3))], ids=["a", "b"])
    >>> len(mv), mv.num_vectors, mv.lengths.tolist(), mv.offsets.tolist()
    (2, 3, [2, 1], [0, 2, 3])
    >>> mv.doc(1).tolist()
    [[0.0, 0.0, 0.0]]
    """

    vectors: NDArray[np.floating]
    offsets: NDArray[np.int64]
    ids: list[str]
    saliency: NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors)
        if vectors.ndim != 2 or vectors.dtype.kind != "f":
            raise ShapeError(
                f"MultiVectorEmbeddings.vectors must be a 2-D float array (T, d); got {vectors.dtype} "
                f"shape {vectors.shape}."
            )
        if vectors.dtype not in (np.float16, np.float32):
            vectors = vectors.astype(np.float32)
        offsets = np.asarray(self.offsets)
        if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
            raise ShapeError(f"offsets must be a 1-D integer array (n + 1,); got {offsets.dtype} shape {offsets.shape}.")
        offsets = offsets.astype(np.int64, copy=False)
        ids = as_id_list(self.ids)
        if offsets.shape[0] != len(ids) + 1:
            raise ShapeError(f"offsets must have n + 1 = {len(ids) + 1} entries for {len(ids)} ids; got {offsets.shape[0]}.")
        if offsets[0] != 0 or offsets[-1] != vectors.shape[0] or (np.diff(offsets) < 0).any():
            raise ShapeError(
                f"offsets must start at 0, never decrease and end at the number of vectors "
                f"({vectors.shape[0]}); got first {int(offsets[0])}, last {int(offsets[-1])}."
            )
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "ids", ids)
        if self.saliency is not None:
            saliency = np.asarray(self.saliency, dtype=np.float32)  # no copy for float32 (a memory map stays one)
            if saliency.shape != (vectors.shape[0],):
                raise ShapeError(f"saliency must have one score per vector, shape ({vectors.shape[0]},); got {saliency.shape}.")
            object.__setattr__(self, "saliency", saliency)

    @classmethod
    def from_list(
        cls,
        arrays: Sequence[Any],
        ids: Sequence[str] | None = None,
        saliency: Sequence[Any] | None = None,
        *,
        dtype: Any = np.float32,
    ) -> MultiVectorEmbeddings:
        """Build from one ``(L_i, d)`` array per text (ids default to ``"0", "1", ...``)."""
        if ids is None:
            ids = [str(i) for i in range(len(arrays))]
        if len(ids) != len(arrays):
            raise ShapeError(f"from_list needs one id per array; got {len(ids)} ids for {len(arrays)} arrays.")
        mats = [np.asarray(a) for a in arrays]
        dims = {m.shape[1] for m in mats if m.ndim == 2}
        if any(m.ndim != 2 for m in mats) or len(dims) > 1:
            raise ShapeError(f"from_list needs 2-D arrays (L_i, d) with one shared d; got shapes {[m.shape for m in mats][:5]}.")
        dim = dims.pop() if dims else 0
        offsets = offsets_from_lengths([m.shape[0] for m in mats])
        vectors = np.concatenate(mats).astype(dtype) if mats else np.zeros((0, dim), dtype=dtype)
        sal = None
        if saliency is not None:
            if len(saliency) != len(arrays):
                raise ShapeError(f"from_list needs one saliency array per text; got {len(saliency)} for {len(arrays)}.")
            sal = np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1) for s in saliency]) if mats else np.zeros(0, np.float32)
        return cls(vectors=vectors, offsets=offsets, ids=ids if isinstance(ids, np.ndarray) else list(ids), saliency=sal)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_vectors(self) -> int:
        """Total number of vectors T."""
        return int(self.vectors.shape[0])

    @property
    def lengths(self) -> NDArray[np.int64]:
        """Number of vectors of each text, shape (n,)."""
        return np.diff(self.offsets)

    def doc(self, i: int) -> NDArray[np.floating]:
        """The ``(L_i, d)`` vectors of text ``i`` (a view, no copy)."""
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    def select(self, rows: Sequence[int] | NDArray[np.integer]) -> MultiVectorEmbeddings:
        """A new collection holding texts ``rows`` in that order (vectors copied)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ShapeError(f"select: rows must lie in [0, {len(self)}); got min {rows.min()} max {rows.max()}.")
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        take = _ranges(starts, ends)
        return MultiVectorEmbeddings(
            vectors=self.vectors[take], offsets=offsets_from_lengths(ends - starts), ids=_take(self.ids, rows),
            saliency=None if self.saliency is None else self.saliency[take],
        )

    def padded(self, dtype: Any = np.float32) -> tuple[NDArray[np.floating], NDArray[np.bool_]]:
        """Dense ``(n, L_max, d)`` tensor with a ``(n, L_max)`` mask (True = real vector)."""
        lengths = self.lengths
        width = int(lengths.max()) if lengths.size else 0
        out = np.zeros((len(self), width, self.dim), dtype=dtype)
        mask = np.arange(width)[None, :] < lengths[:, None]
        out[mask] = self.vectors
        return out, mask


def offsets_from_lengths(lengths: Any) -> NDArray[np.int64]:
    """CSR offsets ``(n + 1,)`` (starting at 0) from per-text vector counts ``(n,)``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _ranges(starts: NDArray[np.int64], ends: NDArray[np.int64]) -> NDArray[np.int64]:
    """Concatenation of ``arange(s, e)`` for every pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Position within the output minus the output offset of its range, plus the range start.
    out_offsets = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(out_offsets - starts, lengths)

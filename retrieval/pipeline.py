"""The :class:`Retriever`: encoder -> index (-> reranker), from texts to ranked document ids."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from retrieval.errors import ConfigError, ShapeError
from retrieval.types import SearchResult

if TYPE_CHECKING:
    from indexes.base import VectorIndex
    from retrieval.encode.base import Encoder

__all__ = ["DEFAULT_CANDIDATES", "Reranker", "Retriever"]

logger = logging.getLogger(__name__)

#: First-stage depth before a reranker, unless ``candidates`` is given: ``max(DEFAULT_CANDIDATES, k)``.
#: Shared with :class:`~retrieval.rag.component.RetrievalComponent`, which searches through a Retriever.
DEFAULT_CANDIDATES = 100


@runtime_checkable
class Reranker(Protocol):
    """Re-scores a first-stage result (e.g. MaxSim late interaction)."""

    def rerank(self, queries: Sequence[str], result: SearchResult, k: int) -> SearchResult:
        """Return the best ``k`` of ``result``'s candidates for each query, re-scored."""
        ...


def _as_queries(queries: str | Sequence[str]) -> list[str]:
    items = [queries] if isinstance(queries, str) else list(queries)
    for i, q in enumerate(items):
        if not isinstance(q, str):
            raise ConfigError(f"queries must be strings; item {i} is {type(q).__name__} {q!r}.")
    return items


class Retriever:
    """Search documents by text: encode queries, search the index, optionally rerank.

    Parameters
    ----------
    encoder : Encoder
        Encodes queries (and documents for :meth:`index_documents`).
    index : VectorIndex
        Any index from :mod:`indexes`; its ``dim`` must equal ``encoder.dim``.
    reranker : Reranker, optional
        Re-scores the first stage's candidates.
    candidates : int, optional
        First-stage depth when a reranker is set (default ``max(DEFAULT_CANDIDATES, k)``,
        that is ``max(100, k)``).

    Examples
    --------
    >>> import retrieval as rt                                   # doctest: +SKIP
    >>> from indexes import FaissIndex                            # doctest: +SKIP
    >>> enc = rt.DenseEncoder()                                   # doctest: +SKIP
    >>> r = rt.Retriever(enc, FaissIndex(enc.dim, spec="HNSW32")) # doctest: +SKIP
    >>> r.index_documents(["a passage", "another"], ids=["d1", "d2"]).search("passage", k=1).doc_ids  # doctest: +SKIP
    [['d1']]
    """

    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        *,
        reranker: Reranker | None = None,
        candidates: int | None = None,
    ) -> None:
        if encoder.dim != index.dim:
            raise ShapeError(
                f"encoder {encoder.name!r} returns {encoder.dim}-d vectors but the index holds {index.dim}-d vectors. "
                "Use the encoder the index was built with."
            )
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1):
            raise ConfigError(f"candidates must be a positive integer; got {candidates!r}.")
        self.encoder = encoder
        self.index = index
        self.reranker = reranker
        self.candidates = candidates

    def __repr__(self) -> str:
        return f"Retriever(encoder={self.encoder.name!r}, index={self.index!r}, reranker={self.reranker!r})"

    def index_documents(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str],
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> Retriever:
        """Encode documents, train the index if it needs training, and add them."""
        started = time.perf_counter()
        docs = self.encoder.encode_documents(texts, ids=ids, batch_size=batch_size, show_progress=show_progress)
        encoded = time.perf_counter()
        if not self.index.is_trained:
            self.index.train(docs)
        self.index.add(docs)
        logger.info(
            "indexed %d documents: encode %.1fs, train+add %.1fs",
            len(docs), encoded - started, time.perf_counter() - encoded,
        )
        return self

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        *,
        subset: Iterable[str] | None = None,
        query_ids: Sequence[str] | None = None,
        batch_size: int | None = None,
        where: dict[str, Any] | None = None,
    ) -> SearchResult:
        """Top-``k`` documents for each query text (a single string counts as one query).

        Parameters
        ----------
        queries : str or sequence of str
            Query texts.
        k : int
            Hits per query; rows are padded with ``-1`` / ``-inf`` when fewer documents qualify.
        subset : iterable of str, optional
            Only these document ids may be returned.
        query_ids : sequence of str, optional
            Ids of the queries, kept in the result.
        batch_size : int, optional
            Passed to ``encoder.encode_queries`` when given (encoders without the option,
            such as MultiVectorEncoder, are then called without it).
        where : dict, optional
            A predicate over the index's stored attributes, e.g. ``{"year": {"$gte": 2024}}``
            (:mod:`indexes._predicates`); a row then holds ``min(k, matching documents)`` hits.
        """
        texts = _as_queries(queries)
        filters: dict[str, Any] = {} if where is None else {"where": where}
        _check_where(self.index, where)  # a bad predicate fails before encoding
        options = {} if batch_size is None else {"batch_size": batch_size}
        vectors = self.encoder.encode_queries(texts, **options)
        if self.reranker is None:
            return self.index.search(vectors, k, subset=subset, query_ids=query_ids, **filters)
        depth = self.candidates or max(DEFAULT_CANDIDATES, k)
        first = self.index.search(vectors, depth, subset=subset, query_ids=query_ids, **filters)
        return self.reranker.rerank(texts, first, k)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save the index with the encoder's description in its manifest (``metadata.encoder``)."""
        describe = getattr(self.encoder, "describe", None)
        if describe is not None:
            self.index.metadata["encoder"] = describe()
        return self.index.save(path, overwrite=overwrite)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        device: str = "auto",
        verify: bool = True,
        where: Mapping[str, Any] | None = None,
    ) -> Retriever:
        """Open a saved index and re-create the encoder recorded in its manifest.

        The encoder is re-created by :func:`~retrieval.encode.registry.encoder_from_description`
        from ``metadata["encoder"]``; a model recorded relative to the index (``"../query_encoder"``
        in a JPQ export) is found beside it. Pass ``encoder`` to use another (compatible) encoder
        instead, e.g. for an encoder kind the registry does not know. ``where``, a predicate the
        caller is about to search with, is checked against the index's attribute columns before
        the encoder is built, so an unknown field or a wrong type fails without loading a model.
        """
        from indexes import VectorIndex, load_index

        index = load_index(path, verify=verify)
        if not isinstance(index, VectorIndex):
            raise ConfigError(
                f"{path} holds a {type(index).__name__}; Retriever serves single-vector indexes. Search a "
                "MultiVectorIndex with MultiVectorEncoder queries, or use it through MaxSimReranker."
            )
        _check_where(index, where)
        if encoder is None:
            description = index.metadata.get("encoder")
            if not isinstance(description, dict):
                raise ConfigError(
                    f"{path} records no encoder (metadata.encoder is missing); pass encoder=... to Retriever.load()."
                )
            from retrieval.encode.registry import encoder_from_description

            encoder = encoder_from_description(description, device=device, base_dir=path)
        return cls(encoder, index)


def _check_where(index: Any, where: Mapping[str, Any] | None) -> None:
    """Raise the predicate's own error if ``where`` cannot apply to ``index``'s attribute columns."""
    if where is None or not hasattr(index, "attribute_schema"):
        return
    from indexes._attributes import AttributeTable
    from indexes._predicates import evaluate

    evaluate(where, AttributeTable.like(index.attribute_schema))

"""The :class:`MaxSimReranker`: rerank any first stage by MaxSim over stored token / patch vectors.

The MaxSim kernels themselves live in :mod:`retrieval.scores` (re-exported here) so that the
multi-vector index can use them without importing the reranker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from retrieval.errors import ConfigError, ShapeError, UnknownIdError
from retrieval.scores import maxsim, maxsim_csr, maxsim_scores, top_k
from retrieval.types import MultiVectorEmbeddings, SearchResult

if TYPE_CHECKING:
    from indexes.multivector import MultiVectorIndex
    from retrieval.encode.multivector import MultiVectorEncoder

__all__ = ["MaxSimReranker", "maxsim", "maxsim_csr", "maxsim_scores", "top_k"]  # kernels re-exported from retrieval.scores

class MaxSimReranker:
    """Rerank any first stage's candidates by MaxSim over stored multi-vector documents.

    Implements the :class:`~retrieval.pipeline.Reranker` protocol, so it plugs into a
    :class:`~retrieval.pipeline.Retriever` over, for example, a single-vector FAISS index.

    Parameters
    ----------
    encoder : MultiVectorEncoder
        Encodes the query texts into token vectors.
    store : MultiVectorIndex or MultiVectorEmbeddings
        The documents' vectors (compressed or not), looked up by document id.
    query_pruner : callable, optional
        Applied to the encoded queries, e.g. ``AttentionPruner(0.8)``.

    Examples
    --------
    >>> rr = MaxSimReranker(mv_encoder, mv_index)                  # doctest: +SKIP
    >>> rt.Retriever(dense_encoder, faiss_index, reranker=rr).search(["query"], k=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        encoder: MultiVectorEncoder,
        store: MultiVectorIndex | MultiVectorEmbeddings,
        *,
        query_pruner: Callable[[MultiVectorEmbeddings], MultiVectorEmbeddings] | None = None,
    ) -> None:
        if not hasattr(encoder, "encode_queries"):
            raise ConfigError(f"encoder must have encode_queries(texts); got {type(encoder).__name__}.")
        self.encoder = encoder
        self.store = store
        self.query_pruner = query_pruner
        self._row_of: dict[str, int] | None = None

    def __repr__(self) -> str:
        return f"MaxSimReranker(encoder={self.encoder!r}, store={type(self.store).__name__}, docs={len(self.store)})"

    def rerank(self, queries: Sequence[str], result: SearchResult, k: int) -> SearchResult:
        """Re-score each query's candidates in ``result`` by MaxSim and keep the best ``k``."""
        mv = self.encoder.encode_queries(list(queries))
        if self.query_pruner is not None:
            mv = self.query_pruner(mv)
        return self.rerank_vectors(mv, result.doc_ids, k, query_ids=result.query_ids)

    def rerank_vectors(
        self, queries: MultiVectorEmbeddings, candidates: Sequence[Sequence[str]], k: int,
        *, query_ids: Sequence[str] | None = None,
    ) -> SearchResult:
        """Like :meth:`rerank`, from already-encoded queries and candidate id lists."""
        if len(candidates) != len(queries):
            raise ShapeError(f"need one candidate list per query; got {len(candidates)} for {len(queries)} queries.")
        store = self.store
        if isinstance(store, MultiVectorEmbeddings):
            return _rerank_embeddings(store, self._rows(store), queries, candidates, k, query_ids)
        return store.rerank(queries, candidates, k, query_ids=query_ids)

    def _rows(self, store: MultiVectorEmbeddings) -> dict[str, int]:
        if self._row_of is None:
            self._row_of = {doc_id: i for i, doc_id in enumerate(store.ids)}
        return self._row_of


def _rerank_embeddings(
    store: MultiVectorEmbeddings, row_of: dict[str, int], queries: MultiVectorEmbeddings,
    candidates: Sequence[Sequence[str]], k: int, query_ids: Sequence[str] | None,
) -> SearchResult:
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    labels = np.full((len(queries), k), -1, dtype=np.int64)
    doc_ids: list[list[str]] = []
    for qi, cands in enumerate(candidates):
        missing = [c for c in cands if c not in row_of]
        if missing:
            raise UnknownIdError(f"{len(missing)} candidate id(s) have no stored vectors, e.g. {missing[:3]}.")
        rows = np.array([row_of[c] for c in cands], dtype=np.int64)
        s = maxsim_csr(queries.select([qi]), store.select(rows)) if rows.size else np.zeros((1, 0), np.float32)
        best_s, best = top_k(s, k)
        keep = best[0] >= 0
        labels[qi, : keep.sum()] = rows[best[0][keep]]
        scores[qi] = best_s[0]
        doc_ids.append([store.ids[r] for r in rows[best[0][keep]]])
    return SearchResult(doc_ids=doc_ids, scores=scores, labels=labels,
                        query_ids=list(query_ids) if query_ids is not None else None)

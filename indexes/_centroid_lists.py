"""The centroid-list first stage of :class:`~indexes.multivector.MultiVectorIndex`
(``first_stage="centroid"``, the k-means default before the PLAID engine): inverted lists
centroid -> documents, each query vector's ``nprobe`` best centroids nominate candidates, and
with residual codes the candidates are ranked by centroid-only MaxSim first. Also the exact
scorer over stored codes every first stage ends with (:func:`row_scorer`): codes without residuals
through a centroid lookup table, others decoded."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval.compress.base import Codec
from retrieval.compress.kmeans import PatchKMeans
from retrieval.scores import maxsim_scores
from retrieval.types import MultiVectorEmbeddings, _ranges, offsets_from_lengths

__all__ = ["candidates", "centroid_scores", "inverted_lists", "row_scorer"]


def inverted_lists(codec: PatchKMeans, codes: NDArray[np.uint8],
                   lengths: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(starts, docs): CSR over the K centroids of the documents holding them, each once, ascending."""
    n = max(len(lengths), 1)
    doc_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    pairs = np.unique(codec.ids(codes) * n + doc_of)  # sorted by centroid, then document
    cent, docs = pairs // n, pairs % n
    starts = np.searchsorted(cent, np.arange(codec.k + 1))
    return starts.astype(np.int64), docs.astype(np.int64)


def candidates(codec: PatchKMeans, lists: tuple[Any, Any], q: MultiVectorEmbeddings, nprobe: int) -> NDArray[np.int64]:
    """Rows of the documents in the lists of each query vector's ``nprobe`` best centroids."""
    assert codec.centroids is not None
    if q.num_vectors == 0:
        return np.zeros(0, np.int64)
    starts, docs = lists
    sims = np.asarray(q.vectors, np.float32) @ codec.centroids.T  # (Lq, K)
    probe = min(nprobe, codec.k)
    best = np.unique(np.argpartition(-sims, probe - 1, axis=1)[:, :probe])
    return np.unique(docs[_ranges(starts[best], starts[best + 1])])


def centroid_scores(codec: PatchKMeans, codes: NDArray[np.uint8], offsets: NDArray[np.int64],
                    lengths: NDArray[np.int64], q: MultiVectorEmbeddings, rows: NDArray[np.int64]) -> NDArray[np.float32]:
    """Centroid-only MaxSim of query ``q`` against the documents at ``rows``."""
    assert codec.centroids is not None
    ids = codec.ids(codes[_ranges(offsets[rows], offsets[rows + 1])])
    table = codec.centroids @ np.asarray(q.vectors, np.float32).T
    return maxsim_scores(lambda lo, hi, qv: table[ids[lo:hi]], offsets_from_lengths(lengths[rows]), q)[0]


def row_scorer(codec: Codec, codes: NDArray[np.uint8]) -> Any:
    """The block scorer :func:`~retrieval.scores.maxsim_scores` takes, over ``codes`` of ``codec``."""
    if isinstance(codec, PatchKMeans) and codec.residual_bits == 0:
        ids = codec.ids(codes)  # decoded vectors are centroids: score through a lookup table
        assert codec.centroids is not None
        centroids = codec.centroids
        table: list[NDArray[np.float32]] = []  # built on the first block: one scorer serves one query batch

        def lookup(lo: int, hi: int, qv: NDArray[np.float32]) -> NDArray[np.float32]:
            if not table:
                table.append(centroids @ qv.T)  # (K, T_q)
            return table[0][ids[lo:hi]]

        return lookup

    def decode(lo: int, hi: int, qv: NDArray[np.float32]) -> NDArray[np.float32]:
        return codec.decode(np.asarray(codes[lo:hi])) @ qv.T

    return decode

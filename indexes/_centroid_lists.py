"""The centroid-list first stage of :class:`~indexes.multivector.MultiVectorIndex`
(``first_stage="centroid"``, the k-means default before the PLAID engine): inverted lists
centroid -> documents, each query vector's ``nprobe`` best centroids nominate candidates, and
with residual codes the candidates are ranked by centroid-only MaxSim first."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval.compress.kmeans import PatchKMeans
from retrieval.scores import maxsim_scores
from retrieval.types import MultiVectorEmbeddings, _ranges, offsets_from_lengths

__all__ = ["candidates", "centroid_scores", "inverted_lists"]


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

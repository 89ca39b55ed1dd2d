"""Attention-guided pruning: keep the most salient share of each text's vectors."""

from __future__ import annotations

import math

import numpy as np

from retrieval.errors import ConfigError
from retrieval.types import MultiVectorEmbeddings, offsets_from_lengths

__all__ = ["AttentionPruner"]


class AttentionPruner:
    """Keep the top ``keep`` share of each text's vectors by saliency, in their original order.

    A text with ``L`` vectors keeps ``max(min_keep, ceil(keep * L))`` of them (never more than
    ``L``), the ones with the highest ``saliency`` (ties broken by position). Pruning at
    indexing time shrinks storage and MaxSim compute in proportion; it can also be applied to
    queries.

    Parameters
    ----------
    keep : float
        Share ``p`` of vectors kept, in (0, 1]. The HPC-ColPali paper tries 0.4, 0.6, 0.8.
    min_keep : int
        Floor on the number kept per text (a text is never emptied).

    Examples
    --------
    >>> import numpy as np
    >>> mv = MultiVectorEmbeddings.from_list([np.eye(4)], ids=["d"], saliency=[[0.1, 0.9, 0.5, 0.2]])
    >>> AttentionPruner(0.5)(mv).vectors.argmax(axis=1).tolist()   # rows 1 and 2, in order
    [1, 2]
    """

    def __init__(self, keep: float, *, min_keep: int = 1) -> None:
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
            raise ConfigError(f"AttentionPruner keep must be a share in (0, 1], e.g. 0.6 for 60%; got {keep!r}.")
        if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
            raise ConfigError(f"min_keep must be a positive integer; got {min_keep!r}.")
        self.keep = float(keep)
        self.min_keep = min_keep

    @property
    def spec(self) -> str:
        return f"Prune{self.keep:g}"

    def __repr__(self) -> str:
        return f"AttentionPruner(keep={self.keep:g}, min_keep={self.min_keep})"

    def kept_rows(self, mv: MultiVectorEmbeddings) -> np.ndarray:
        """Indices into ``mv.vectors`` of the kept vectors, sorted, shape (T_kept,)."""
        if mv.saliency is None:
            raise ConfigError(
                "attention-guided pruning needs saliency scores, but these embeddings have none. "
                "Encode with saliency enabled (MultiVectorEncoder / ColPaliEncoder) or pass saliency=."
            )
        if self.keep >= 1.0:
            return np.arange(mv.num_vectors, dtype=np.int64)
        lengths = mv.lengths
        quota = np.minimum(lengths, np.maximum(self.min_keep, np.ceil(self.keep * lengths - 1e-9).astype(np.int64)))
        doc_of = np.repeat(np.arange(len(mv), dtype=np.int64), lengths)
        # Sort by (document, -saliency, position); the first quota[i] of each document win.
        order = np.lexsort((np.arange(mv.num_vectors), -mv.saliency, doc_of))
        rank = np.arange(mv.num_vectors, dtype=np.int64) - np.repeat(mv.offsets[:-1], lengths)
        keep_sorted = rank < quota[doc_of[order]]
        return np.sort(order[keep_sorted])

    def __call__(self, mv: MultiVectorEmbeddings) -> MultiVectorEmbeddings:
        """Return the pruned embeddings (the input is not modified)."""
        rows = self.kept_rows(mv)
        kept_per_doc = np.bincount(np.repeat(np.arange(len(mv)), mv.lengths)[rows], minlength=len(mv))
        assert mv.saliency is not None
        return MultiVectorEmbeddings(vectors=mv.vectors[rows], offsets=offsets_from_lengths(kept_per_doc),
                                     ids=list(mv.ids), saliency=mv.saliency[rows])

    @staticmethod
    def expected_share(keep: float, lengths: np.ndarray) -> float:
        """Share of vectors kept for texts of these lengths (for reports)."""
        lengths = np.asarray(lengths)
        kept = np.minimum(lengths, np.maximum(1, np.ceil(keep * lengths - 1e-9)))
        return float(kept.sum() / max(lengths.sum(), 1)) if lengths.size else math.nan

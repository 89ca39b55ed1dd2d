"""Small checks on the hot path of a search: the value of ``k`` and a finite, unpadded result."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval.errors import ConfigError

__all__ = ["check_k"]

_PAD_SCORE = -float(np.finfo(np.float32).max)  # FAISS's score for a missing hit (label -1)


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
        if not values:  # k = 0 columns (an empty index): search() still checks the queries
            return False
        # A float64 sum of float32 values cannot overflow: it is finite iff every value is.
        return math.isfinite(sum(values)) and min(values) > _PAD_SCORE
    # Rows are sorted best first, so an overflow to +inf shows in column 0; min() sees NaN.
    return bool(scores.min() > _PAD_SCORE and scores[:, 0].max() < np.inf)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k must be a positive integer; got {k!r} ({type(k).__name__}).")
    if k <= 0:
        raise ConfigError(f"k must be a positive integer; got {k}. Use k >= 1.")
    return int(k)

"""FaissIndex.from_faiss keeps the wrapped FAISS index alive after the caller drops its own reference."""

from __future__ import annotations

import gc

import numpy as np


def test_from_faiss_outlives_the_callers_index(rng: np.random.Generator) -> None:
    import faiss

    from indexes import FaissIndex

    x = rng.standard_normal((300, 16)).astype(np.float32)
    raw = faiss.index_factory(16, "OPQ4,PQ4x4", faiss.METRIC_INNER_PRODUCT)  # an IndexPreTransform, as JPQ builds
    raw.train(x)
    raw.add(x)
    expected = raw.search(x[:5], 3)[1]
    index = FaissIndex.from_faiss(raw, [f"d{i}" for i in range(300)], spec="OPQ4,PQ4x4")
    del raw
    gc.collect()
    assert index.faiss_index.d == 16 and index.faiss_index.ntotal == 300
    np.testing.assert_array_equal(index.search(x[:5], 3).labels, expected)

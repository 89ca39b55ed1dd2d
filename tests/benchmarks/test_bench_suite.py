"""pytest-benchmark suite: search speed of our FaissIndex against raw FAISS on the same index.

Not in the default run (marker ``benchmark``). Run:

    pytest tests/benchmarks/test_bench_suite.py -m benchmark [--benchmark-json out.json]

Data: Deep1B 10k from ``$DENSEZIP_BENCH_DATA/deep10k`` (the fvecs / ivecs layout of
``densezip bench``) when that variable is set, otherwise a synthetic stand-in of the same
shape (10,000 x 96 unit vectors in clusters, 1,000 queries). The full harness with sweeps,
tables and plots is ``densezip bench``; this suite gives pytest-benchmark's statistics for a
few fixed operating points and checks the 10% wrapper-overhead target at batch 64.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.benchmark

POINTS: list[tuple[str, dict[str, int]]] = [
    ("Flat", {}),
    ("HNSW32", {"ef_search": 64}),
    ("IVF64,PQ24x8", {"nprobe": 8}),
]


@pytest.fixture(scope="module")
def deep() -> tuple[np.ndarray, np.ndarray]:
    root = os.environ.get("DENSEZIP_BENCH_DATA")
    if root:
        from retrieval.app.bench.fvecs import read_fvecs

        d = Path(root) / "deep10k"
        return read_fvecs(d / "deep10k_base.fvecs"), read_fvecs(d / "deep10k_query.fvecs")[:1000]
    rng = np.random.default_rng(1338)
    centers = rng.standard_normal((64, 96)).astype(np.float32)
    base = centers[rng.integers(0, 64, 10_000)] + 0.5 * rng.standard_normal((10_000, 96)).astype(np.float32)
    queries = centers[rng.integers(0, 64, 1000)] + 0.5 * rng.standard_normal((1000, 96)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return base.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def indexes(deep: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    import faiss

    from indexes import FaissIndex

    faiss.omp_set_num_threads(2)
    base, _ = deep
    ids = [str(i) for i in range(len(base))]
    return {spec: FaissIndex(96, spec=spec, metric="l2", **params).train(base).add(base, ids=ids)
            for spec, params in POINTS}


def _run_all(search: Any, queries: np.ndarray, batch: int) -> None:
    for i in range(0, len(queries), batch):
        search(queries[i : i + batch])


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("impl", ["ours", "raw"])
@pytest.mark.parametrize("spec", [s for s, _ in POINTS])
def test_search_speed(benchmark: Any, indexes: dict[str, Any], deep: tuple[np.ndarray, np.ndarray],
                      spec: str, impl: str, batch: int) -> None:
    index = indexes[spec]
    search = functools.partial(index.search, k=10) if impl == "ours" else functools.partial(index.faiss_index.search, k=10)
    queries = deep[1] if batch > 1 else deep[1][:200]
    benchmark.extra_info.update({"spec": spec, "impl": impl, "batch": batch, "queries": len(queries)})
    benchmark.pedantic(_run_all, args=(search, queries, batch), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("spec", ["HNSW32", "IVF64,PQ24x8"])
def test_wrapper_within_10_percent_at_batch_64(indexes: dict[str, Any], deep: tuple[np.ndarray, np.ndarray],
                                                spec: str) -> None:
    from retrieval.app.bench.probe import paired_ratio, time_interleaved

    index = indexes[spec]
    t = time_interleaved({"ours": functools.partial(index.search, k=10),
                          "raw": functools.partial(index.faiss_index.search, k=10)},
                         deep[1], batch_size=64, repeats=9, warmup=1)
    ratio = paired_ratio(t["ours"], t["raw"])
    print(f"{spec}: queries/s ours / raw FAISS at batch 64 = {ratio:.3f}")  # shown with -s
    assert ratio >= 0.9, (spec, ratio, t["ours"].qps, t["raw"].qps)

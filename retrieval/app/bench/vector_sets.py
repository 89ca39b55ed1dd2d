"""Vector data sets with exact ground truth: recall@1 / recall@10 against the true
neighbours, parameter sweeps, and our :class:`~indexes.FaissIndex` timed against the raw
FAISS object it wraps, on the same index in the same run."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval.app.bench.config import BenchConfig, VectorDataset
from retrieval.app.bench.fvecs import read_fvecs, read_ivecs
from retrieval.app.bench.probe import extra_us_per_call, paired_ratio, time_interleaved
from retrieval.errors import DataError

__all__ = ["recall_at", "run_vector_dataset", "scan_bytes"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


def recall_at(labels: NDArray[np.int64], truth: NDArray[np.integer], k: int) -> float:
    """Mean share of each query's ``k`` true nearest neighbours found in its top ``k`` results.

    Parameters
    ----------
    labels : np.ndarray, shape (nq, >=k), int
        Row numbers returned by the index, best first; ``-1`` pads missing hits.
    truth : np.ndarray, shape (nq, >=k), int
        Exact neighbour row numbers, nearest first.
    k : int

    Examples
    --------
    >>> recall_at(np.array([[0, 1], [2, 9]]), np.array([[0, 1], [2, 3]]), 2)
    0.75
    >>> recall_at(np.array([[0, 1], [2, 9]]), np.array([[1, 0], [2, 3]]), 1)
    0.5
    """
    found = labels[:, :k]
    truth_k = truth[:, :k]
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth_k, strict=True))
    return hits / float(k * max(len(labels), 1))


def scan_bytes(faiss_index: Any) -> int | None:
    """Bytes an exhaustive scan reads per query (every stored code), or None for kinds that
    visit only part of the data (IVF lists, HNSW graphs)."""
    import faiss

    if faiss.try_extract_index_ivf(faiss_index) is not None:
        return None
    core = faiss.downcast_index(faiss_index)
    while isinstance(core, faiss.IndexPreTransform):
        core = faiss.downcast_index(core.index)
    if isinstance(core, faiss.IndexHNSW):
        return None
    return int(faiss_index.sa_code_size()) * int(faiss_index.ntotal)


def _load(ds: VectorDataset) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]:
    base, queries, truth = read_fvecs(ds.base), read_fvecs(ds.queries), read_ivecs(ds.groundtruth)
    if base.shape[1] != queries.shape[1]:
        raise DataError(f"{ds.name}: base vectors are {base.shape[1]}-d ({ds.base}) but queries are "
                        f"{queries.shape[1]}-d ({ds.queries}).")
    if truth.shape[0] != queries.shape[0]:
        raise DataError(f"{ds.name}: {ds.groundtruth} has {truth.shape[0]} rows for {queries.shape[0]} queries.")
    if truth.max() >= base.shape[0] or truth.min() < 0:
        raise DataError(f"{ds.name}: {ds.groundtruth} holds neighbour ids outside 0..{base.shape[0] - 1}.")
    return base, queries, truth


def run_vector_dataset(ds: VectorDataset, config: BenchConfig, *, progress: Progress) -> dict[str, Any]:
    """Build every index of ``ds``, sweep its parameters and measure recall and speed.

    For each build (one per build-time parameter set) the FAISS index is built once; for
    each search-time parameter set, recall is computed on all queries through our
    :class:`~indexes.FaissIndex`, then ours and the raw ``faiss_index.search`` on that very
    object are timed interleaved (see :func:`~retrieval.app.bench.probe.time_interleaved`) on
    the first ``timing_queries`` queries at every batch size. Both return the same labels
    (checked), so they are compared at equal recall by construction.
    """
    from indexes.faiss_index import FaissIndex
    from retrieval.app.measure import saved_bytes

    base, queries, truth = _load(ds)
    k = config.k
    if truth.shape[1] < k:
        raise DataError(f"{ds.name}: ground truth has {truth.shape[1]} neighbours per query; need k={k}.")
    timing_q = queries[: ds.timing_queries]
    ids = [str(i) for i in range(base.shape[0])]
    rows: list[dict[str, Any]] = []
    for family in ds.indexes:
        for build_params in family.build_points():
            spec = family.spec.format(**build_params)
            t0 = time.perf_counter()
            index = FaissIndex(base.shape[1], spec=spec, metric=ds.metric).train(base).add(base, ids=ids)
            build_s = time.perf_counter() - t0
            raw = index.faiss_index
            memory = index.memory_bytes()
            disk = saved_bytes(index)
            scanned = scan_bytes(raw)
            for search_params in family.search_points():
                for name, value in search_params.items():
                    setattr(index, name, value)
                result = index.search(queries, k)
                # The raw call gets the per-call parameters FaissIndex uses (efSearch widened to k).
                raw_search = functools.partial(raw.search, k=k, params=index.hnsw_search_parameters(k))
                _, raw_labels = raw_search(queries)
                row: dict[str, Any] = {
                    "dataset": ds.name, "family": family.name, "spec": spec, "build_params": build_params,
                    "search_params": search_params, "build_s": build_s,
                    "recall@1": recall_at(result.labels, truth, 1), "recall@10": recall_at(result.labels, truth, 10),
                    "same_results_as_raw": bool(np.array_equal(result.labels, raw_labels)),
                    "memory_bytes_per_vector": memory / len(index), "disk_bytes_per_vector": disk / len(index),
                    "scan_bytes_per_query": scanned, "timing": {},
                }
                searches: dict[str, Callable[[NDArray[np.float32]], object]] = {
                    "ours": functools.partial(index.search, k=k), "raw": raw_search}
                for batch in config.batch_sizes:
                    t = time_interleaved(
                        searches, timing_q, batch_size=batch, repeats=config.repeats, warmup=config.warmup,
                    )
                    row["timing"][str(batch)] = {
                        "ours": t["ours"].as_dict(), "raw": t["raw"].as_dict(),
                        "ratio": paired_ratio(t["ours"], t["raw"]),
                        "extra_us_per_call": extra_us_per_call(t["ours"], t["raw"]),
                    }
                rows.append(row)
                label = f"{spec} " + " ".join(f"{a}={b}" for a, b in search_params.items())
                progress(f"  {ds.name}: {label:<28} R@10 {row['recall@10']:.3f}  " + "  ".join(
                    f"b={b}: {row['timing'][str(b)]['ours']['qps']:.0f} q/s (ours/raw "
                    f"{row['timing'][str(b)]['ratio']:.2f})" for b in config.batch_sizes))
    return {
        "name": ds.name, "base": ds.base, "queries": ds.queries, "groundtruth": ds.groundtruth,
        "count": int(base.shape[0]), "dim": int(base.shape[1]), "num_queries": int(queries.shape[0]),
        "timing_queries": int(timing_q.shape[0]), "metric": ds.metric, "rows": rows,
    }

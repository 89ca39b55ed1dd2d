"""What each step of ``VectorIndex.search`` costs next to a raw FAISS call.

Each variant below runs one step of our search path, then the raw FAISS search, so the step
runs where it does in a real search: right after a FAISS call, with the CPU caches full of
FAISS's data. All variants and raw FAISS alone take turns batch by batch
(:func:`retrieval.app.bench.probe.time_interleaved`); a variant's cost is its median extra µs
per call over raw FAISS. The same step in a tight loop (``python -m timeit``) costs less
because its code and data stay in cache.

Run (on the reference machine, under the CPU lock):

    flock /tmp/densezip-cpu.lock .venv/bin/python tests/benchmarks/bench_search_path.py \\
        --data /path/to/deep10k --spec IVF64,PQ24x8 --nprobe 1 --batch 1

Without ``--data`` a synthetic stand-in of Deep1B 10k (10,000 x 96 clustered unit vectors)
is used.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from indexes import FaissIndex
from indexes._checks import _PAD_SCORE
from retrieval.app.bench.probe import extra_us_per_call, set_threads, time_interleaved
from retrieval.types import SearchResult, as_float32_matrix


def _data(root: str | None) -> tuple[np.ndarray, np.ndarray]:
    if root:
        from retrieval.app.bench.fvecs import read_fvecs

        d = Path(root)
        return read_fvecs(d / "deep10k_base.fvecs"), read_fvecs(d / "deep10k_query.fvecs")[:1000]
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((64, 96)).astype(np.float32)
    x = centers[rng.integers(0, 64, 11_000)] + 0.5 * rng.standard_normal((11_000, 96)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:10_000], x[10_000:]


class _NoLock:
    def acquire_read(self) -> None: ...
    def release_read(self) -> None: ...


def _unlocked(index: FaissIndex) -> FaissIndex:
    """A shallow copy of ``index`` (same FAISS object and ids) whose lock does nothing."""
    clone = copy.copy(index)
    clone._lock = _NoLock()  # type: ignore[assignment]
    return clone


def steps(index: FaissIndex, k: int) -> dict[str, Any]:
    """The search path's steps, each followed by the raw FAISS call it would precede or follow."""
    raw = index.faiss_index
    lock = index._lock
    table = np.array(index._table.ids, dtype=object)

    def lock_pair(q: np.ndarray) -> Any:
        lock.acquire_read()
        try:
            return raw.search(q, k)
        finally:
            lock.release_read()

    def score_test_numpy(q: np.ndarray) -> Any:
        s, labels = raw.search(q, k)
        return s.min() > _PAD_SCORE and s[:, 0].max() < np.inf, labels

    def score_test_python(q: np.ndarray) -> Any:
        s, labels = raw.search(q, k)
        v = s.ravel().tolist()
        return math.isfinite(sum(v)) and min(v) > _PAD_SCORE, labels

    def old_checks(q: np.ndarray) -> Any:  # the checks the path made before: padding test + finiteness
        s, labels = raw.search(q, k)
        return labels[:, -1].min() >= 0, np.isfinite(s).all()

    def result_object(q: np.ndarray) -> Any:
        s, labels = raw.search(q, k)
        return SearchResult(scores=s, labels=labels, id_table=table)

    def ids_now(q: np.ndarray) -> Any:  # what building the id lists eagerly would cost
        _, labels = raw.search(q, k)
        return table[labels].tolist()

    return {
        "raw FAISS": functools.partial(raw.search, k=k),
        "ours: VectorIndex.search": functools.partial(index.search, k=k),
        "ours, lock switched off": functools.partial(_unlocked(index).search, k=k),
        "read lock acquire + release": lock_pair,
        "as_float32_matrix, finite=False": lambda q: raw.search(as_float32_matrix(q, name="q", dim=index.dim,
                                                                                   finite=False), k),
        "np.isfinite(queries).all()": lambda q: (np.isfinite(q).all(), raw.search(q, k)),
        "score test, NumPy reductions": score_test_numpy,
        "score test, plain Python": score_test_python,
        "previous checks (padding + isfinite)": old_checks,
        "SearchResult with id table": result_object,
        "doc_ids built eagerly": ids_now,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="directory with deep10k_base.fvecs and deep10k_query.fvecs")
    parser.add_argument("--spec", default="IVF64,PQ24x8")
    parser.add_argument("--nprobe", type=int, default=None)
    parser.add_argument("--ef-search", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    base, queries = _data(args.data)
    index = FaissIndex(base.shape[1], spec=args.spec, metric="l2", nprobe=args.nprobe, ef_search=args.ef_search)
    index.train(base).add(base, ids=[str(i) for i in range(len(base))])
    variants = steps(index, args.k)
    t = time_interleaved(variants, queries, batch_size=args.batch, repeats=args.repeats, warmup=1)
    raw = t["raw FAISS"]
    rows = {name: round(extra_us_per_call(t[name], raw), 1) for name in variants if name != "raw FAISS"}
    params = {"nprobe": args.nprobe, "ef_search": args.ef_search}
    print(f"{args.spec} {params}, batch {args.batch}, k={args.k}, {args.threads} threads, {len(queries)} queries, "
          f"{args.repeats} rounds: raw FAISS {args.batch * 1e6 / raw.qps:.1f} µs per call")
    for name, extra in rows.items():
        print(f"  {name:<40} {extra:+8.1f} µs per call")
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": args.spec, **params, "batch": args.batch,
                                               "raw_us_per_call": args.batch * 1e6 / raw.qps,
                                               "extra_us_per_call": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Filtered search (``where=``) against post-filtering an over-fetched unfiltered search: docs/BENCHMARKS.md section 9.

Run (CPU; the figures in BENCHMARKS.md come from a 2-core machine shared with other jobs):

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_filters.py --n 200000 \\
        --spec Flat --spec HNSW32 --spec IVF1024,PQ16x8 --spec PQ16x8 [--json out.json]

runs both halves: the synthetic set, then SciFact (``--dataset synthetic`` or ``--dataset
scifact`` runs one of them). ``--crossover`` instead times the exact scan of the allowed rows
against the approximate plan over a grid of allowed counts (docs/BENCHMARKS.md section 9b; the
thresholds of ``indexes._filtered.exact_is_cheaper`` come from it).

Data: ``--n`` random 64-d float32 vectors (clustered, unit norm) with three attribute columns:
``tenant`` (int, uniform over 1,000 values), ``type`` (str, 100 categories) and ``ts`` (a
timestamp uniform over 1,000 days). Four predicates select about 0.1% (``tenant == 7``), 1%
(``type == "c3"``), 10% (``ts >= day 900``) and 50% (``tenant < 500 and type != "none"``).

For each spec and predicate, over ``--queries`` queries at k = 10:

* **filtered**: ``index.search(q, 10, where=...)``; recall@10 against the exact filtered
  top-10 (NumPy over the matching rows' float vectors), hits per query (min and mean; the
  target is min(10, matches) always) and queries per second;
* **post-filter**: an unfiltered ``index.search(q, 10 * overfetch)`` whose hits are then kept
  if they match, the first 10 of them; the same three figures.

The two are timed alternately (``--repeat`` rounds, best round kept), so a change in the
machine's load touches both.

SciFact: the 5,183 corpus vectors of the default MiniLM encoder (384-d, from the densezip
embedding cache: encoded once, then reused) and the 300 test queries (encoded in a
subprocess, so torch's OpenMP runtime never shares this process with faiss'), with two
generated columns (seeded): ``bucket`` (int, uniform over 1,000 values) and ``topic`` (str,
100 categories). Predicates: 0.1% ``bucket == 7``, 1% ``bucket < 10``, 10% ``topic in
(t0..t9)``, 50% ``bucket < 250 or bucket >= 750``. Specs: ``--scifact-spec`` (default Flat,
HNSW32, IVF64,PQ48x8, PQ48x8), metric ip, ``nprobe`` 4 for its IVF.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from indexes import FaissIndex  # noqa: E402

DIM, K = 64, 10
DAY0 = dt.datetime(2020, 1, 1)
PREDICATES = {
    "0.1%": {"tenant": 7},
    "1%": {"type": "c3"},
    "10%": {"ts": {"$gte": (DAY0 + dt.timedelta(days=900)).isoformat()}},
    "50%": {"$and": [{"tenant": {"$lt": 500}}, {"type": {"$ne": "none"}}]},
}


SCIFACT_PREDICATES = {
    "0.1%": {"bucket": 7},
    "1%": {"bucket": {"$lt": 10}},
    "10%": {"topic": {"$in": [f"t{i}" for i in range(10)]}},
    "50%": {"$or": [{"bucket": {"$lt": 250}}, {"bucket": {"$gte": 750}}]},
}


def data(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((256, DIM)).astype(np.float32)
    x = centers[rng.integers(0, 256, n)] + 0.7 * rng.standard_normal((n, DIM)).astype(np.float32)
    q = centers[rng.integers(0, 256, nq)] + 0.7 * rng.standard_normal((nq, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    days = rng.integers(0, 1000, n)
    attrs = {
        "tenant": rng.integers(0, 1000, n),
        "type": np.array([f"c{i}" for i in range(100)])[rng.integers(0, 100, n)],
        "ts": np.datetime64(DAY0, "ns") + days.astype("timedelta64[D]"),
    }
    return x, q, attrs


def scifact_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """SciFact's corpus and test-query vectors (encoded in a subprocess) and two seeded generated columns."""
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as work:
        npz = Path(work) / "scifact.npz"
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONPATH": str(ROOT)}
        # bench_sharded.py --encode-scifact writes the same .npz (cached corpus vectors, test queries)
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_sharded.py")), "--encode-scifact", str(npz)],
                       check=True, env=env)
        with np.load(npz) as z:
            x, q = z["docs"].astype(np.float32), z["queries"].astype(np.float32)
    rng = np.random.default_rng(seed)
    attrs = {"bucket": rng.integers(0, 1000, len(x)),
             "topic": np.array([f"t{i}" for i in range(100)])[rng.integers(0, 100, len(x))]}
    return x, q, attrs


def matching(attrs: dict[str, Any], name: str) -> np.ndarray:
    """The rows each predicate selects, computed here by hand (independently of indexes._predicates)."""
    if "bucket" in attrs:  # SciFact's generated columns
        return {
            "0.1%": attrs["bucket"] == 7,
            "1%": attrs["bucket"] < 10,
            "10%": np.isin(attrs["topic"], [f"t{i}" for i in range(10)]),
            "50%": (attrs["bucket"] < 250) | (attrs["bucket"] >= 750),
        }[name]
    return {
        "0.1%": attrs["tenant"] == 7,
        "1%": attrs["type"] == "c3",
        "10%": attrs["ts"] >= np.datetime64(DAY0 + dt.timedelta(days=900), "ns"),
        "50%": (attrs["tenant"] < 500) & (attrs["type"] != "none"),
    }[name]


def exact_top(x: np.ndarray, q: np.ndarray, rows: np.ndarray) -> list[set[int]]:
    scores = q @ x[rows].T
    top = np.argsort(-scores, axis=1)[:, :K]
    return [set(rows[t].tolist()) for t in top]


def recall(labels: list[list[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(set(r[:K]) & t) / max(min(K, len(t)), 1) for r, t in zip(labels, truth, strict=True)]))


def run(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    if dataset == "scifact":
        x, q, attrs = scifact_data()
        specs, predicates, nprobe = args.scifact_spec, SCIFACT_PREDICATES, args.scifact_nprobe
    else:
        x, q, attrs = data(args.n, args.queries)
        specs, predicates, nprobe = args.spec, PREDICATES, args.nprobe
    n, dim = x.shape
    out: dict[str, Any] = {"n": n, "dim": dim, "queries": len(q), "k": K, "overfetch": args.overfetch,
                           "specs": {}}
    print(f"\n## {dataset}: {n} x {dim}, {len(q)} queries", flush=True)
    for spec in specs:
        t0 = time.perf_counter()
        index = FaissIndex(dim, spec=spec, metric="ip")
        if not index.is_trained:
            index.train(x[: min(n, args.train)])
        index.add(x, ids=np.arange(n), attributes=attrs)
        if "IVF" in spec:
            index.nprobe = nprobe
        if "HNSW" in spec:
            index.ef_search = args.ef_search
        build_s = time.perf_counter() - t0
        rows_out = {}
        for name, pred in predicates.items():
            rows = np.flatnonzero(matching(attrs, name))
            truth = exact_top(x, q, rows)
            best = {"filtered": np.inf, "post-filter": np.inf}
            for _ in range(args.repeat):
                t = time.perf_counter()
                res = index.search(q, K, where=pred)
                best["filtered"] = min(best["filtered"], time.perf_counter() - t)
                t = time.perf_counter()
                raw = index.search(q, K * args.overfetch)
                ok = matching(attrs, name)
                post = [[int(lab) for lab in row if lab >= 0 and ok[lab]][:K] for row in raw.labels]
                best["post-filter"] = min(best["post-filter"], time.perf_counter() - t)
            ours = [[int(lab) for lab in row if lab >= 0] for row in res.labels]
            rows_out[name] = {
                "matches": int(rows.size),
                "filtered": {"recall@10": recall(ours, truth), "hits_min": min(map(len, ours)),
                             "hits_mean": float(np.mean([len(r) for r in ours])), "qps": len(q) / best["filtered"]},
                "post-filter": {"recall@10": recall(post, truth), "hits_min": min(map(len, post)),
                                "hits_mean": float(np.mean([len(r) for r in post])),
                                "qps": len(q) / best["post-filter"]},
            }
            assert rows_out[name]["filtered"]["hits_min"] == min(K, rows.size), (spec, name)
        out["specs"][spec] = {"build_s": build_s, "rows": rows_out}
        print(table(spec, build_s, rows_out), flush=True)
    return out


def crossover(args: argparse.Namespace) -> dict[str, Any]:
    """Exact scan of the allowed rows against the approximate plan, forced, over a grid of allowed counts.

    For each ``--spec`` and ``--crossover-n``: ``indexes._filtered.search_filtered`` on a random
    row mask of ``m`` allowed rows (no predicate: the plans' own cost), once with the exact plan
    forced and once with the approximate one (bitmap pre-filter or over-fetch), alternately,
    best of ``--repeat``; recall@10 against the exact top-10 of the float vectors. FAISS and BLAS
    run ``--threads`` threads (default 1, the steadiest timing on a shared machine).
    """
    import faiss  # pylint: disable=import-outside-toplevel
    from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel

    from indexes import _filtered  # pylint: disable=import-outside-toplevel

    chosen = _filtered.exact_is_cheaper
    out: dict[str, Any] = {}
    faiss.omp_set_num_threads(args.threads)  # one thread by default: a small block's matrix product
    threadpool_limits(args.threads)  # then runs inline instead of waking BLAS threads on a loaded machine
    try:
        for n in args.crossover_n:
            x, q, _ = data(n, args.queries)
            for spec in args.spec:
                index = FaissIndex(DIM, spec=spec, metric="ip")
                if not index.is_trained:
                    index.train(x[: min(n, args.train)])
                index.add(x, ids=np.arange(n))
                if "IVF" in spec:
                    index.nprobe = args.nprobe
                if "HNSW" in spec:
                    index.ef_search = args.ef_search
                print(f"\n{spec}, n = {n}\n| allowed | share | exact QPS | exact recall@10 | approx QPS | "
                      "approx recall@10 | exact / approx time |\n|---:|---:|---:|---:|---:|---:|---:|", flush=True)
                rng = np.random.default_rng(1)
                for m in (m for m in args.crossover_m if m <= n // 2):
                    mask = np.zeros(n, dtype=bool)
                    mask[rng.choice(n, m, replace=False)] = True
                    truth = exact_top(x, q, np.flatnonzero(mask))
                    best = {True: np.inf, False: np.inf}
                    found = {}
                    for _ in range(args.repeat):
                        for plan in (True, False):
                            _filtered.exact_is_cheaper = lambda *_, plan=plan, **__: plan
                            t = time.perf_counter()
                            _, lab = _filtered.search_filtered(index, q, K, mask)
                            best[plan] = min(best[plan], time.perf_counter() - t)
                            found[plan] = [[int(v) for v in row if v >= 0] for row in lab]
                    row = {"allowed": m, "share": m / n, "exact_qps": len(q) / best[True],
                           "exact_recall": recall(found[True], truth), "approx_qps": len(q) / best[False],
                           "approx_recall": recall(found[False], truth), "ratio": best[True] / best[False]}
                    out.setdefault(spec, {}).setdefault(str(n), []).append(row)
                    print(f"| {m} | {m / n:.3%} | {row['exact_qps']:.0f} | {row['exact_recall']:.3f} | "
                          f"{row['approx_qps']:.0f} | {row['approx_recall']:.3f} | {row['ratio']:.2f} |", flush=True)
    finally:
        _filtered.exact_is_cheaper = chosen
    return out


def table(spec: str, build_s: float, rows: dict[str, Any]) -> str:
    lines = [f"\n{spec} (built in {build_s:.0f} s)",
             "| selectivity | matches | filtered recall@10 | hits min / mean | QPS | post-filter recall@10 | "
             "hits min / mean | QPS |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        f, p = r["filtered"], r["post-filter"]
        lines.append(f"| {name} | {r['matches']} | {f['recall@10']:.3f} | {f['hits_min']} / {f['hits_mean']:.1f} | "
                     f"{f['qps']:.0f} | {p['recall@10']:.3f} | {p['hits_min']} / {p['hits_mean']:.1f} | {p['qps']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--spec", action="append", default=None)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--overfetch", type=int, default=10, help="post-filter baseline fetches k * this (default 10)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dataset", action="append", choices=["synthetic", "scifact"], default=None,
                        help="run this half only (repeatable; default both)")
    parser.add_argument("--scifact-spec", action="append", default=None)
    parser.add_argument("--scifact-nprobe", type=int, default=4)
    parser.add_argument("--crossover", action="store_true",
                        help="measure the exact-scan / approximate-plan crossover instead (indexes/_filtered.py)")
    parser.add_argument("--threads", type=int, default=1, help="--crossover: FAISS and BLAS threads (default 1)")
    parser.add_argument("--crossover-n", type=int, action="append", default=None)
    parser.add_argument("--crossover-m", type=int, action="append", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.spec = args.spec or ["Flat", "HNSW32", "IVF1024,PQ16x8", "PQ16x8"]
    args.scifact_spec = args.scifact_spec or ["Flat", "HNSW32", "IVF64,PQ48x8", "PQ48x8"]
    if args.crossover:
        args.crossover_n = args.crossover_n or [100_000, 400_000]
        args.crossover_m = args.crossover_m or [100, 300, 1000, 3000, 10_000, 30_000, 100_000]
        out = crossover(args)
    else:
        out = {dataset: run(args, dataset) for dataset in args.dataset or ["synthetic", "scifact"]}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

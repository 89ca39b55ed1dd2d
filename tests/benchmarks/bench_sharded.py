"""Sharded build and search, 1 / 2 / 4 shards, Ray actors against local threads.

Run (from the repository root; hold the CPU lock on a shared machine):

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_sharded.py --dataset scifact --json scifact.json
    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_sharded.py --dataset synthetic --json synth.json

``scifact``: the 5,183 cached MiniLM document vectors (384-d) and the 300 test queries
(encoded in a subprocess, so torch's OpenMP runtime never shares this process with faiss').
``synthetic``: 1,000,000 96-d vectors, Deep1B 10k (``--deep10k``) replicated 100 times with
Gaussian noise, generated batch-wise; queries are Deep1B queries. For each index spec and
shard count the script reports: train and shard-build time (threads and Ray tasks), search
QPS and latency through ``ShardedIndex`` with threads and with Ray actors (median of
``--repeats`` warmed-up passes), nDCG@10 (SciFact) or recall@10 against the exact search
(synthetic), and memory per shard (saved bytes, and the RSS of each Ray actor process).
Threads per shard: ``max(1, cores // shards)`` for FAISS / BLAS in both backends.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CORES = os.cpu_count() or 1


def _fvecs(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.int32)
    d = int(raw[0])
    return raw.reshape(-1, d + 1)[:, 1:].view(np.float32).copy()


def _encode_scifact(out: str) -> None:
    """Subprocess: cached document vectors and encoded test queries into one .npz."""
    import retrieval as rt

    data = rt.load_beir("scifact", split="test")
    enc = rt.DenseEncoder(device="cpu")
    docs = enc.encode_documents(data.doc_texts(), ids=data.doc_ids())
    queries = enc.encode_queries(data.query_texts())
    np.savez(out, docs=docs.vectors, queries=queries, doc_ids=np.array(docs.ids), query_ids=np.array(data.query_ids()))


def _synthetic(deep10k: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    base = _fvecs(deep10k / "deep10k_base.fvecs")
    queries = _fvecs(deep10k / "deep10k_query.fvecs")
    rng = np.random.default_rng(seed)
    sigma = 0.3 * float(base.std())  # per-coordinate noise: copies stay near their source, not on it
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    step = 100_000
    for lo in range(0, n, step):
        rows = np.arange(lo, min(n, lo + step)) % base.shape[0]
        out[lo : lo + rows.size] = base[rows] + sigma * rng.standard_normal((rows.size, base.shape[1]), dtype=np.float32)
    return out, queries


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _timing(index: Any, queries: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    from retrieval.app.measure import time_search

    t = time_search(lambda q: index.search(q, 10), queries, batch_size=batch, repeats=repeats)
    return {"batch": batch, "qps": t.qps, "qps_min": t.qps_min, "qps_max": t.qps_max, "p50_ms": t.p50_ms, "p95_ms": t.p95_ms}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import faiss
    import ray
    from threadpoolctl import threadpool_limits

    from indexes import ShardedIndex
    from retrieval.distributed import build_sharded
    from retrieval.types import Embeddings

    work = Path(tempfile.mkdtemp(prefix="bench-sharded-", dir=args.workdir))
    qrels = None
    if args.dataset == "scifact":
        npz = work / "scifact.npz"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
        subprocess.run([sys.executable, __file__, "--encode-scifact", str(npz)], check=True, env=env)
        z = np.load(npz)
        docs = Embeddings(z["docs"], [str(i) for i in z["doc_ids"]])
        queries, qids = z["queries"], [str(i) for i in z["query_ids"]]
        import retrieval as rt

        qrels = rt.load_beir("scifact", split="test").qrels
        specs = [("exact", {}), ("PQ48x8", {})]
        batches = [1, 64]
    else:
        t0 = time.perf_counter()
        x, queries = _synthetic(Path(args.deep10k), args.n, args.seed)
        queries = queries[: args.queries]
        docs = Embeddings(x, [f"v{i}" for i in range(len(x))])
        qids = [str(i) for i in range(len(queries))]
        print(f"generated {len(x)} x {x.shape[1]} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        specs = [("exact", {}), ("IVF1024,PQ24x8", {"nprobe": 16})]
        batches = [64]
    metric = "ip" if args.dataset == "scifact" else "l2"
    truth = None
    if qrels is None:  # exact top-10 by brute force (NumPy), the reference for recall@10
        from indexes import FlatIndex

        faiss.omp_set_num_threads(CORES)
        truth = FlatIndex(docs.dim, metric="l2").add(docs).search(queries, 10).doc_ids
    ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    try:
        for spec, params in specs:
            if args.spec and spec not in args.spec:
                continue
            for n in args.shards:
                threads = max(1, CORES // n)
                faiss.omp_set_num_threads(threads)
                row: dict[str, Any] = {"spec": spec, **params, "shards": n, "threads_per_shard": threads}
                builds = {}
                with threadpool_limits(limits=threads):
                    for backend in ("threads", "ray"):
                        out = work / f"{spec}-{n}-{backend}".replace(",", "_")
                        gc.collect()
                        t = time.perf_counter()
                        report = build_sharded(docs, out, n_shards=n, spec=spec, metric=metric, train_size=args.train_size,
                                               use_ray=backend == "ray", **params,
                                               task_options={"runtime_env": {"env_vars": _env(threads)}})
                        builds[backend] = {"train_s": report.train_s, "build_s": report.build_s,
                                           "total_s": time.perf_counter() - t}
                    row["build"] = builds
                    row["shard_sizes"] = report.shard_sizes
                    row["shard_bytes"] = [_dir_bytes(p) for p in sorted(out.glob("shard-*"))]
                    path = out
                    before = _rss()
                    local = ShardedIndex.load(path, backend="threads", verify=False)
                    row["threads_rss_delta_bytes"] = _rss() - before
                    result = local.search(queries, 100 if qrels else 10, query_ids=qids)
                    if qrels is not None:
                        row["quality"] = rt.evaluate(result.to_trec_dict(), qrels, ["nDCG@10", "Recall@100"])
                    else:
                        row["recall@10_vs_exact"] = result.recall_at(truth, 10)
                    row["search_threads"] = {b: _timing(local, queries, b, args.repeats) for b in batches}
                    local.close()
                    del local
                    gc.collect()
                    remote = ShardedIndex.load(path, backend="ray", verify=False,
                                               actor_options={"num_cpus": 0, "runtime_env": {"env_vars": _env(threads)}})
                    row["actor_rss_bytes"] = remote.memory()
                    row["search_ray"] = {b: _timing(remote, queries, b, args.repeats) for b in batches}
                    remote.close()
                rows.append(row)
                print(json.dumps(_brief(row)), file=sys.stderr, flush=True)
                for p in work.glob(f"{spec}-{n}-*".replace(",", "_")):
                    shutil.rmtree(p)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "dataset": args.dataset, "documents": len(docs), "dim": docs.dim, "queries": len(queries), "k": 10,
        "machine": f"{platform.processor() or platform.machine()}, {CORES} cores, no GPU",
        "faiss": faiss.__version__, "ray": ray.__version__, "repeats": args.repeats, "rows": rows,
    }


def _env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": row["spec"], "shards": row["shards"],
        "build_threads_s": round(row["build"]["threads"]["total_s"], 2), "build_ray_s": round(row["build"]["ray"]["total_s"], 2),
        **{f"qps_threads_b{b}": round(t["qps"], 1) for b, t in row["search_threads"].items()},
        **{f"qps_ray_b{b}": round(t["qps"], 1) for b, t in row["search_ray"].items()},
        "shard_MB": [round(b / 1e6, 1) for b in row["shard_bytes"]],
        "actor_rss_MB": [round(b / 1e6) for b in row["actor_rss_bytes"]],
        "quality": row.get("quality", row.get("recall@10_vs_exact")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["scifact", "synthetic"], default="scifact")
    parser.add_argument("--spec", action="append", default=None, help="only these specs (repeatable)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    parser.add_argument("--queries", type=int, default=256, help="synthetic queries")
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--deep10k", default="/work/shared/data/deep10k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--encode-scifact", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encode_scifact:
        _encode_scifact(args.encode_scifact)
        return
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

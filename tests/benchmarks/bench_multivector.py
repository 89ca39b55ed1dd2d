"""Late interaction on SciFact: MaxSim over all-MiniLM-L6-v2 token vectors, compressed and pruned.

Run:  .venv/bin/python tests/benchmarks/bench_multivector.py [--keep 1 0.8 0.6 0.4] [--json out.json]

Documents: the 5,183 SciFact abstracts, 256 tokens at most, special tokens dropped, one
L2-normalised 384-d vector per token, saliency = last-layer attention received. The token
vectors are cached (about 2 GB, float32) under $DENSEZIP_CACHE or ~/.cache/densezip; the first
run spends about 5 minutes encoding. Queries: the 300 test claims, 32 tokens at most.

For each pruning level p (the share of each document's tokens kept, by saliency) and each
method, the script prints nDCG@10, MRR@10, Recall@100 (ir-measures, k=100), bytes per
document of the saved index (codes, offsets, ids, codec, manifest), queries per second at
batch 32 (median of 3 passes over 64 queries after a warm-up batch), and p50/p95 latency at
batch 1 (30 queries). MaxSim-only time (exhaustive float32 scoring) is reported separately so the
compute saved by pruning is measured directly. Threads: ``--threads`` (default 2; torch / BLAS /
FAISS, and Numba with ``--plaid``).

``--plaid SPEC ...`` (e.g. ``KMeansr2``: K sized to the corpus) measures only the PLAID engine, the
default first stage of k-means codes, at its default settings (``--sweep``: a grid of nprobe x
centroid_score_threshold x ndocs) for each ``--keep``: nDCG@10 / MRR@10 from the timed top-10
search, Recall@100 from a top-100 search, QPS at batch 1 (30 queries back to back) and at batch
32. Built indexes are cached beside the token vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("MaxSim exhaustive, float32", "Flat", {}),
    ("K-means 1 byte (K=256)", "KMeans256", {"first_stage": "exhaustive"}),
    ("K-means K=256 + 1-bit residual", "KMeans256r1", {"first_stage": "exhaustive"}),
    ("K-means K=256 + 2-bit residual", "KMeans256r2", {"first_stage": "exhaustive"}),
    ("K-means K=256 + 2-bit residual, PLAID engine (default)", "KMeans256r2", {}),
    ("K-means + 2-bit residual, centroid lists", "KMeans256r2", {"first_stage": "centroid", "nprobe": 8,
                                                                  "n_candidates": 200}),
    ("binary ITQ first stage + MaxSim (binary)", "BinaryITQ", {"first_stage": "binary", "token_k": 64}),
    ("dense top-100 + MaxSim rerank, float32", "Flat", {"rerank": True}),
    ("dense top-100 + MaxSim rerank, KMeans256r2", "KMeans256r2", {"rerank": True}),
]


def _cached_documents(data: Any, cache: Path) -> Any:
    from indexes.multivector import load_embeddings, save_embeddings
    from retrieval.encode.multivector import MultiVectorEncoder

    if (cache / "manifest.json").is_file():
        return load_embeddings(cache, verify=False)
    encoder = MultiVectorEncoder(device="cpu", document_length=256, batch_size=16, show_progress=True)
    t0 = time.perf_counter()
    docs = encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
    print(f"encoded {len(docs)} documents into {docs.num_vectors} token vectors in {time.perf_counter() - t0:.0f} s",
          flush=True)
    save_embeddings(docs, cache, overwrite=True)
    return load_embeddings(cache, verify=False)


def _timings(search: Any, queries: Any, *, batch: int = 32, n_qps: int = 64, n_lat: int = 30) -> dict[str, float]:
    sub = queries.select(np.arange(min(n_qps, len(queries))))
    search(sub.select(np.arange(min(batch, len(sub)))))  # warm-up
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for s in range(0, len(sub), batch):
            search(sub.select(np.arange(s, min(s + batch, len(sub)))))
        rates.append(len(sub) / (time.perf_counter() - t0))
    lat = []
    for i in range(min(n_lat, len(queries))):
        one = queries.select([i])
        t0 = time.perf_counter()
        search(one)
        lat.append((time.perf_counter() - t0) * 1000)
    return {"qps_batch32": float(np.median(rates)), "qps_batch1": 1000 * len(lat) / float(np.sum(lat)),
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95))}


def _pruning_compute(docs: Any, queries: Any, keeps: list[float], out: str | None) -> None:
    """Exhaustive float32 MaxSim time per pruning level: in-memory copies, passes interleaved."""
    from retrieval.compress import AttentionPruner
    from retrieval.rerank import maxsim_csr

    sets = {keep: AttentionPruner(keep)(docs) if keep < 1 else docs.select(np.arange(len(docs))) for keep in keeps}
    n = min(96, len(queries))  # the first 96 test queries: 3 batches of 32 per pass keep the run to minutes
    batches = [queries.select(np.arange(s, min(s + 32, n))) for s in range(0, n, 32)]
    for mv in sets.values():  # warm-up: touch every vector once
        maxsim_csr(batches[0], mv)
    seconds: dict[float, list[float]] = {keep: [] for keep in keeps}
    for _ in range(3):
        for keep, mv in sets.items():
            t0 = time.perf_counter()
            for b in batches:
                maxsim_csr(b, mv)
            seconds[keep].append(time.perf_counter() - t0)
    base = float(np.median(seconds[keeps[0]]))
    rows = []
    for keep in keeps:
        med = float(np.median(seconds[keep]))
        rows.append({"keep": keep, "vectors": sets[keep].num_vectors, "maxsim_s": med, "runs": seconds[keep],
                     "time_vs_first": med / base})
        print(f"p={keep:.1f}: {sets[keep].num_vectors} vectors, exhaustive float32 MaxSim over {n} queries "
              f"(batch 32) {med:.1f} s (median of 3), {100 * med / base:.0f}% of p={keeps[0]:.1f}", flush=True)
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))


def _plaid_index(spec: str, pruned: Any, keep: float, cache: Path) -> tuple[Any, float | None]:
    """The ``spec`` index over ``pruned``, built once and cached beside the token vectors."""
    from indexes import MultiVectorIndex

    path = cache.parent / f"{cache.name}-index-{spec}-p{keep:.1f}"
    if (path / "manifest.json").is_file():
        return MultiVectorIndex.load(path), None
    t0 = time.perf_counter()
    index = MultiVectorIndex(pruned.dim, spec=spec).add(pruned)
    build_s = time.perf_counter() - t0
    index.save(path, overwrite=True)
    return index, build_s


def _plaid_rows(data: Any, docs: Any, queries: Any, args: Any) -> None:
    """The PLAID engine (the k-means default) on SciFact: nDCG@10 and speed per setting and pruning level.

    nDCG@10 / MRR@10 come from the same top-10 search that is timed; Recall@100 from a top-100 search.
    """
    import retrieval as rt
    from retrieval.compress import AttentionPruner

    grid = [{}] if not args.sweep else [
        {"nprobe": nprobe, "centroid_score_threshold": t, "ndocs": nd}
        for nprobe in (1, 2) for t in (0.3, 0.5) for nd in (64, 128, 256, 512)]
    rows: list[dict[str, Any]] = []
    for keep in args.keep:
        pruned = AttentionPruner(keep)(docs) if keep < 1 else docs
        for spec in args.plaid:
            index, build_s = _plaid_index(spec, pruned, keep, args.cache)
            for params, stage4 in [(p, s) for p in grid for s in args.stage4]:
                index.plaid_engine().exact_stage = stage4

                def timed(q: Any, index: Any = index, params: Any = params) -> Any:
                    return index.search(q, 10, params=params or None)
                top10 = timed(queries)
                top100 = index.search(queries, 100, params=params or None)
                m10 = rt.evaluate(top10.to_trec_dict(queries.ids), data.qrels)
                m100 = rt.evaluate(top100.to_trec_dict(queries.ids), data.qrels)
                lat = _timings(timed, queries, n_lat=args.latency_queries)
                row = {"keep": keep, "spec": index.spec, "params": params or "defaults", "stage4": stage4,
                       "threads": args.threads, "build_s": build_s,
                       "nDCG@10": m10["nDCG@10"], "MRR@10": m10["MRR@10"], "Recall@100": m100["Recall@100"],
                       "vectors": index.num_vectors, "memory_bytes_per_doc": index.memory_bytes() / len(index), **lat}
                rows.append(row)
                print(f"p={keep:.1f} {index.spec} {params or 'defaults'} stage 4 {stage4}: nDCG@10 {row['nDCG@10']:.4f} "
                      f"MRR@10 {row['MRR@10']:.4f} R@100 {row['Recall@100']:.3f} QPS@1 {row['qps_batch1']:.1f} "
                      f"p50 {row['p50_ms']:.1f} ms p95 {row['p95_ms']:.1f} ms QPS@32 {row['qps_batch32']:.1f}",
                      flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4])
    parser.add_argument("--methods", type=int, nargs="*", default=None, help="indices into METHODS (default all)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--encode-only", action="store_true")
    parser.add_argument("--plaid", nargs="+", default=None, metavar="SPEC",
                        help="only the PLAID engine (the k-means default) with these specs, e.g. KMeansr2 KMeansr4")
    parser.add_argument("--sweep", action="store_true", help="with --plaid: sweep nprobe x threshold x ndocs")
    parser.add_argument("--stage4", nargs="+", default=["tables"], choices=("tables", "decode"),
                        help="with --plaid: how stage 4 scores (each setting runs once per choice, in turn)")
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="FAISS / torch / Numba threads (default 2)")
    parser.add_argument("--pruning-compute", action="store_true",
                        help="only time exhaustive float32 MaxSim at each --keep, interleaved (the compute pruning saves)")
    args = parser.parse_args()

    import faiss
    import torch

    import retrieval as rt
    from indexes import FaissIndex, MultiVectorIndex
    from retrieval.app._platform import keep_freed_memory
    from retrieval.app.measure import saved_bytes
    from retrieval.compress import AttentionPruner
    from retrieval.encode.dense import default_cache_dir
    from retrieval.encode.multivector import MultiVectorEncoder
    from retrieval.rerank import MaxSimReranker

    keep_freed_memory()  # as the CLI does: freed blocks are reused instead of unmapped and faulted in again
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    if args.plaid:
        import numba

        numba.set_num_threads(args.threads)
    data = rt.load_beir("scifact", split="test")
    cache = Path(os.environ.get("DENSEZIP_MV_CACHE", default_cache_dir() / "multivector-scifact-minilm-256"))
    docs = _cached_documents(data, cache)
    if args.encode_only:
        return
    args.cache = cache
    if args.plaid:
        queries = MultiVectorEncoder(device="cpu", query_length=32).encode_queries(data.query_texts(),
                                                                                   ids=data.query_ids())
        _plaid_rows(data, docs, queries, args)
        return
    q_encoder = MultiVectorEncoder(device="cpu", query_length=32)
    queries = q_encoder.encode_queries(data.query_texts(), ids=data.query_ids())
    dense = rt.DenseEncoder(device="cpu")
    dense_index = FaissIndex(dense.dim, spec="Flat").add(dense.encode_documents(data.doc_texts(), ids=data.doc_ids()))
    dense_queries = dense.encode_queries(data.query_texts())
    print(f"{len(docs)} documents, {docs.num_vectors} token vectors ({docs.num_vectors / len(docs):.0f} per document); "
          f"{len(queries)} queries, {queries.num_vectors / len(queries):.1f} tokens each", flush=True)

    candidates = dense_index.search(dense_queries, 100).doc_ids  # single-vector first stage, exact
    row_of = {qid: i for i, qid in enumerate(queries.ids)}
    if args.pruning_compute:
        _pruning_compute(docs, queries, args.keep, args.json)
        return
    rows: list[dict[str, Any]] = []
    chosen = [METHODS[i] for i in args.methods] if args.methods else METHODS
    for keep in args.keep:
        pruned = AttentionPruner(keep)(docs) if keep < 1 else docs
        for name, spec, opts in chosen:
            opts = dict(opts)
            rerank = opts.pop("rerank", False)
            t0 = time.perf_counter()
            index = MultiVectorIndex(docs.dim, spec=spec, **opts).add(pruned)
            build_s = time.perf_counter() - t0
            if rerank:
                def search(q: Any, k: int = 100, index: Any = index) -> Any:
                    cands = [candidates[row_of[qid]] for qid in q.ids]
                    return MaxSimReranker(q_encoder, index).rerank_vectors(q, cands, k)

                def timed(q: Any, index: Any = index) -> Any:
                    dq = dense_queries[[row_of[qid] for qid in q.ids]]
                    cands = dense_index.search(dq, 100).doc_ids  # the first stage is part of the timing
                    return MaxSimReranker(q_encoder, index).rerank_vectors(q, cands, 10)
            else:
                def search(q: Any, k: int = 100, index: Any = index) -> Any:
                    return index.search(q, k)

                def timed(q: Any, index: Any = index) -> Any:
                    return index.search(q, 10)
            t1 = time.perf_counter()
            result = search(queries)
            full_pass_s = time.perf_counter() - t1
            metrics = rt.evaluate(result.to_trec_dict(queries.ids), data.qrels)
            row = {
                "method": name, "spec": spec, "keep": keep, **{k: v for k, v in opts.items()},
                "rerank": rerank, **metrics, "bytes_per_doc": saved_bytes(index) / len(index),
                "vectors_per_doc": index.num_vectors / len(index), "build_s": build_s,
                "full_pass_s": full_pass_s, **_timings(timed, queries),
            }
            rows.append(row)
            print(f"p={keep:.1f} {name:<44} nDCG@10 {row['nDCG@10']:.4f} MRR@10 {row['MRR@10']:.4f} "
                  f"R@100 {row['Recall@100']:.3f} {row['bytes_per_doc']:9.0f} B/doc QPS@32 {row['qps_batch32']:7.1f} "
                  f"p50 {row['p50_ms']:7.1f} ms p95 {row['p95_ms']:7.1f} ms build {build_s:.0f}s", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""SciFact benchmark for the foundation: quality, size, build time and speed of each index kind,
with our search path timed against calling FAISS directly on the same index in the same run.

Run:  .venv/bin/python tests/benchmarks/bench_scifact.py [--json out.json]

Uses the cached document embeddings when present (the demo fills the cache), so only the
first run pays the ~5 minutes of encoding. Quality: ir-measures on the 300 test claims.
Speed: k=10, 2 FAISS threads, each figure the median of 7 warmed-up passes over the 300
queries (min and max in the JSON), ours and raw FAISS interleaved pass by pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

SPECS: list[tuple[str, dict[str, int]]] = [
    ("exact", {}),
    ("Flat", {}),
    ("HNSW32", {"ef_search": 128}),
    ("HNSW32", {"ef_search": 32}),
    ("IVF64,Flat", {"nprobe": 16}),
    ("IVF64,PQ48x8", {"nprobe": 16}),
    ("IVF64,PQ24x8", {"nprobe": 16}),
    ("OPQ48,PQ48x8", {}),
]


def _interleaved(ours: Any, raw: Any, queries: Any, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    import numpy as np

    batches = [queries[i : i + batch] for i in range(0, len(queries), batch)]
    rates: dict[str, list[float]] = {"ours": [], "raw": []}
    lat: dict[str, list[float]] = {"ours": [], "raw": []}
    for rep in range(repeats + 1):  # pass 0 warms up
        for name, fn in (("ours", ours), ("raw", raw)) if rep % 2 else (("raw", raw), ("ours", ours)):
            start = time.perf_counter()
            for b in batches:
                t0 = time.perf_counter()
                fn(b)
                if rep:
                    lat[name].append(time.perf_counter() - t0)
            if rep:
                rates[name].append(len(queries) / (time.perf_counter() - start))
    out = {}
    for name in rates:
        ms = np.array(lat[name]) * 1000
        out[name] = {
            "qps": float(np.median(rates[name])), "qps_min": float(min(rates[name])), "qps_max": float(max(rates[name])),
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
        }
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import faiss
    import numpy as np

    import retrieval as rt
    from retrieval.cli import build_index
    from retrieval.measure import saved_bytes, time_search

    faiss.omp_set_num_threads(2)
    data = rt.load_beir("scifact", split="test")
    encoder = rt.DenseEncoder(device="cpu")
    docs = encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
    queries = encoder.encode_queries(data.query_texts())
    qids = data.query_ids()

    rows = []
    for spec, params in SPECS:
        t0 = time.perf_counter()
        index = build_index(docs, spec, nprobe=params.get("nprobe"), ef_search=params.get("ef_search"))
        build_s = time.perf_counter() - t0
        metrics = rt.evaluate(index.search(queries, 100, query_ids=qids).to_trec_dict(), data.qrels)
        row: dict[str, Any] = {"spec": spec, "params": params, **metrics, "build_s": build_s,
                               "bytes_per_doc": saved_bytes(index) / len(index)}
        if spec != "exact":  # the numpy FlatIndex has no FAISS twin to compare with
            for batch in (1, 64):
                timing = _interleaved(lambda q, ix=index: ix.search(q, 10),
                                      lambda q, fi=index.faiss_index: fi.search(q, 10), queries, batch, args.repeats)
                row[f"batch{batch}"] = timing
                row[f"overhead_batch{batch}"] = timing["raw"]["qps"] / timing["ours"]["qps"] - 1.0
        else:
            for batch in (1, 64):
                t = time_search(lambda q, ix=index: ix.search(q, 10), queries, batch_size=batch, repeats=args.repeats)
                row[f"batch{batch}"] = {"ours": {"qps": t.qps, "qps_min": t.qps_min, "qps_max": t.qps_max,
                                                 "p50_ms": t.p50_ms, "p95_ms": t.p95_ms}}
                row[f"overhead_batch{batch}"] = None
        rows.append(row)
        label = spec + "".join(f" {k}={v}" for k, v in params.items())
        print(f"{label:<28} nDCG@10 {metrics['nDCG@10']:.4f}  {row['bytes_per_doc']:7.0f} B/doc  "
              f"QPS@1 {row['batch1']['ours']['qps']:7.0f}  QPS@64 {row['batch64']['ours']['qps']:7.0f}  "
              f"overhead@64 {_pct(row['overhead_batch64'])}", flush=True)

    print()
    print("| index | params | nDCG@10 | MRR@10 | R@100 | bytes/doc | build s | QPS b=1 (raw) | p50/p95 ms b=1 | "
          "QPS b=64 (raw) | overhead b=1 | overhead b=64 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b1, b64 = r["batch1"], r["batch64"]
        raw1, raw64 = (f" ({b['raw']['qps']:.0f})" if "raw" in b else " (-)" for b in (b1, b64))
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        print(f"| {r['spec']} | {params} | {r['nDCG@10']:.4f} | {r['MRR@10']:.4f} | {r['Recall@100']:.3f} | "
              f"{r['bytes_per_doc']:.0f} | {r['build_s']:.2f} | {b1['ours']['qps']:.0f}{raw1} | "
              f"{b1['ours']['p50_ms']:.2f}/{b1['ours']['p95_ms']:.2f} | {b64['ours']['qps']:.0f}{raw64} | "
              f"{_pct(r['overhead_batch1'])} | {_pct(r['overhead_batch64'])} |")
    meta = {
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "faiss": faiss.__version__, "numpy": np.__version__, "densezip": rt.__version__, "threads": 2,
        "documents": len(docs), "queries": len(qids), "repeats": args.repeats, "k": 10,
    }
    print(f"\n{json.dumps(meta)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

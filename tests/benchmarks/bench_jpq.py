"""JPQ against FAISS PQ and OPQ+PQ at the same bytes per document, on a BEIR data set.

Run:  .venv/bin/python tests/benchmarks/bench_jpq.py --data scifact --m 48 24 16 8 [--json out.json]

Reports the test split only: nDCG@10, MRR@10, Recall@100 (ir-measures), bytes per document of
the saved index, queries per second at batch 64 and 1 (`--threads`, default 2), and training time.

Training data (``--labels``):

* ``judged`` (default): the train split's judged queries, 10% held out as dev. ``--distill`` adds
  the exact-search teacher and ``--pseudo-queries`` unjudged pseudo-queries cut from the corpus.
* ``none``: no judgment is read at all. Training queries are ``--pseudo-queries`` spans cut from
  the corpus; JPQ distils from exact search; model selection uses agreement with the teacher
  on held-out pseudo-queries.

Given several ``--lr-centroids``, JPQ is trained once per rate and the run with the best
selection score (dev nDCG@10 with judgments, teacher-nDCG@10 without) is marked ``selected``;
the test split never takes part in the choice. ``--ablation`` then trains centroids only and
encoder only at the selected rate. ``--set KEY=VALUE`` overrides any JPQTrainingArgs field.

``--fast-scan-bytes 24 48`` compares layouts at equal bytes per document instead: 8-bit codes
with M = bytes against 4-bit fast-scan codes with M = 2 x bytes, both trained the same way.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from typing import Any

import numpy as np


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="scifact")
    parser.add_argument("--m", type=int, nargs="+", default=[48, 24, 16, 8])
    parser.add_argument("--nbits", type=int, default=8)
    parser.add_argument("--labels", choices=("judged", "none"), default="judged")
    parser.add_argument("--distill", action="store_true", help="with judgments, add the exact-search teacher")
    parser.add_argument("--pseudo-queries", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr-encoder", type=float, default=2e-5)
    parser.add_argument("--lr-centroids", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loss", default="pairwise")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ablation", action="store_true", help="also train centroids only and encoder only")
    parser.add_argument("--fast-scan-bytes", type=int, nargs="*", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train JPQ once per seed (its own OPQ fit each time) and report each run paired with "
                             "the OPQ+PQ fit it started from, and the mean over seeds")
    parser.add_argument("--threads", type=int, default=2, help="FAISS and torch threads (training and QPS)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import faiss
    import torch

    import retrieval as rt
    from indexes import FaissIndex
    from retrieval.app.measure import saved_bytes, time_search
    from training.jpq import JPQTrainer, JPQTrainingArgs
    from training.queries import pseudo_queries

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    test = rt.load_beir(args.data, split="test")
    encoder = rt.DenseEncoder(device="cpu")
    docs = encoder.encode_documents(test.doc_texts(), ids=test.doc_ids())
    test_q = encoder.encode_queries(test.query_texts())
    qids = test.query_ids()
    judged = args.labels == "judged"
    teacher = "exact" if (args.distill or not judged) else "none"
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    if judged:
        train = rt.load_beir(args.data, split="train")
        # Only the judged train queries: queries.jsonl also holds the test claims, which must not
        # reach training even as unjudged distillation queries.
        queries, qrels = {q: t for q, t in train.queries.items() if q in train.qrels}, train.qrels
    if teacher == "exact" and args.pseudo_queries:
        queries.update(pseudo_queries(test.doc_texts(), args.pseudo_queries, seed=0))
    overrides = _parse_set(args.set)
    shared_vectors: dict[str, Any] = {}
    if teacher == "exact":
        # The teacher's query vectors through the embedding cache (same model, queries cut at 32
        # tokens as in training), so repeated runs do not encode thousands of queries again.
        query_encoder = rt.DenseEncoder(device="cpu", max_seq_length=overrides.get("max_query_length", 32))
        # Judged and pseudo-queries are cached apart, so the pseudo-queries' vectors are shared
        # with the label-free runs (the cache key is the whole list of texts).
        groups = ([q for q in queries if not q.startswith("pseudo-")], [q for q in queries if q.startswith("pseudo-")])
        for group in groups:
            if group:
                encoded = query_encoder.encode_documents([queries[q] for q in group], ids=group)
                shared_vectors.update(zip(encoded.ids, encoded.vectors, strict=True))

    def quality(index: Any, queries: Any) -> dict[str, float]:
        return rt.evaluate(index.search(queries, 100, query_ids=qids).to_trec_dict(), test.qrels)

    def measure(index: Any, queries: Any) -> dict[str, float]:
        metrics = quality(index, queries)
        qps64 = time_search(lambda q: index.search(q, 10), queries, batch_size=64, repeats=5).qps
        qps1 = time_search(lambda q: index.search(q, 10), queries[:100], batch_size=1, repeats=3).qps
        return {**metrics, "bytes_per_doc": saved_bytes(index) / len(index), "qps_batch64": qps64,
                "qps_batch1": qps1}

    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        sel = row.get("selected_state") or {}
        print(f"{row['method']:<22} {row.get('spec', '-'):<16} nDCG@10 {row['nDCG@10']:.4f}  MRR@10 "
              f"{row['MRR@10']:.4f}  R@100 {row['Recall@100']:.3f}  {row['bytes_per_doc']:6.0f} B/doc  "
              f"QPS@64 {row['qps_batch64']:7.0f}  QPS@1 {row['qps_batch1']:6.0f}"
              + (f"  train {row['train_s']:.0f}s  lr_c {row['lr_centroids']:g}  selected step {sel.get('step')} "
                 f"by {sel.get('by')}: " + " ".join(f"{k} {v:.4f}" for k, v in sel.items() if k not in ("by", "step"))
                 + ("  [chosen]" if row.get("selected") else "") if "train_s" in row else ""), flush=True)

    def served(trainer: Any, fast_scan: bool) -> tuple[Any, str, Any]:
        """The trainer's exported index, its factory string and the test queries through its encoder."""
        exported, spec = trainer.export_faiss(fast_scan=fast_scan)
        index = FaissIndex.from_faiss(exported, trainer.doc_ids, spec=spec)
        return index, spec, trainer.encode_queries(test.query_texts())

    def train_jpq(name: str, m: int, nbits: int, lr_c: float, enc_on: bool = True, cent_on: bool = True,
                  fast_scan: bool = False, seed: int = 0) -> dict[str, Any]:
        settings = {"m": m, "nbits": nbits, "epochs": args.epochs, "batch_size": args.batch_size,
                    "lr_encoder": args.lr_encoder, "lr_centroids": lr_c, "loss": args.loss, "teacher": teacher,
                    "train_encoder": enc_on, "train_centroids": cent_on, "seed": seed, **overrides}
        t0 = time.perf_counter()
        trainer = JPQTrainer(JPQTrainingArgs(**settings), doc_ids=docs.ids, doc_vectors=docs.vectors,
                             queries=queries, qrels=qrels, query_vectors=shared_vectors or None)
        start_s = time.perf_counter() - t0
        index, _, encoded = served(trainer, fast_scan)
        start = quality(index, encoded)  # the OPQ+PQ fit this run starts from (same seed), before training
        t0 = time.perf_counter()
        history = trainer.train()
        train_s = time.perf_counter() - t0 + start_s
        index, spec, encoded = served(trainer, fast_scan)
        score_key = "nDCG@10" if trainer.selection == "dev" else "teacher-nDCG@10"
        return {"method": name, "spec": spec, "m": m, **measure(index, encoded), "train_s": train_s,
                "dev": history.dev, "selected_state": history.selected, "lr_centroids": lr_c,
                "score": (history.selected or {}).get(score_key, 0.0), "settings": settings,
                "n_train_queries": len(trainer.train_qids), "seed": seed,
                "start": {k: start[k] for k in ("nDCG@10", "MRR@10", "Recall@100")}}

    exact = FaissIndex(docs.dim, spec="Flat").add(docs)
    report({"method": "exact", "m": "-", "spec": "Flat", **measure(exact, test_q)})

    def baseline(method: str, spec: str, m: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        index = FaissIndex(docs.dim, spec=spec).train(docs).add(docs)
        row = {"method": method, "spec": spec, "m": m, **measure(index, test_q), "build_s": time.perf_counter() - t0}
        report(row)
        return row

    if args.fast_scan_bytes:
        for nbytes in args.fast_scan_bytes:
            for m, nbits, fs in ((nbytes, 8, False), (2 * nbytes, 4, True)):
                suffix = "fs" if fs else ""
                baseline("OPQ+PQ", f"OPQ{m},PQ{m}x{nbits}{suffix}", m)
                run = train_jpq("JPQ", m, nbits, args.lr_centroids[0], fast_scan=fs)
                run["selected"] = True
                report(run)
    else:
        for m in args.m:
            baseline("PQ", f"PQ{m}x{args.nbits}", m)
            opq = baseline("OPQ+PQ", f"OPQ{m},PQ{m}x{args.nbits}", m)
            chosen = []
            for seed in args.seeds:
                runs = [train_jpq("JPQ", m, args.nbits, lr_c, seed=seed) for lr_c in args.lr_centroids]
                best = max(runs, key=lambda r: r["score"])
                for run in runs:
                    run["selected"] = run is best
                    report(run)
                chosen.append(best)
                gap = rows[0]["nDCG@10"] - best["start"]["nDCG@10"]
                print(f"M={m} seed {seed}: its own OPQ+PQ start {best['start']['nDCG@10']:.4f} -> JPQ "
                      f"{best['nDCG@10']:.4f}: recovers {(best['nDCG@10'] - best['start']['nDCG@10']) / gap:.0%} "
                      f"of that fit's loss", flush=True)
            start_mean = float(np.mean([r["start"]["nDCG@10"] for r in chosen]))
            jpq_mean = float(np.mean([r["nDCG@10"] for r in chosen]))
            gap = rows[0]["nDCG@10"] - start_mean
            summary = {"method": "summary", "m": m, "seeds": args.seeds, "opq_start_mean": start_mean,
                       "jpq_mean": jpq_mean, "faiss_opq": opq["nDCG@10"],
                       "recovered_paired": (jpq_mean - start_mean) / gap if gap > 0 else None}
            rows.append(summary)
            print(f"M={m}, {len(chosen)} seed(s): OPQ+PQ starts {start_mean:.4f} -> JPQ {jpq_mean:.4f} (mean nDCG@10); "
                  f"recovers {summary['recovered_paired']:.0%} of the OPQ+PQ loss (paired); the FAISS OPQ+PQ row "
                  f"above scored {opq['nDCG@10']:.4f}", flush=True)
            if args.ablation:
                report(train_jpq("JPQ centroids only", m, args.nbits, best["lr_centroids"], False, True))
                report(train_jpq("JPQ encoder only", m, args.nbits, best["lr_centroids"], True, False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

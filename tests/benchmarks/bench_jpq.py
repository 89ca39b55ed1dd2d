"""JPQ against FAISS PQ and OPQ+PQ at the same bytes per document, on a BEIR data set.

Run:  .venv/bin/python tests/benchmarks/bench_jpq.py --data scifact --m 48 24 16 8 [--json out.json]

Trains on the train split (10% of its queries held out as dev) and reports the test split:
nDCG@10, MRR@10, Recall@100 (ir-measures), bytes per document of the saved index, queries per
second at batch 64 (2 threads), and training time.

Given several ``--lr-centroids``, JPQ is trained once per rate and the run with the best *dev*
nDCG@10 (train-split queries held out from training) is the one marked ``selected``; the test
split never takes part in the choice. ``--ablation`` then trains centroids only and encoder only
at the selected rate.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="scifact")
    parser.add_argument("--m", type=int, nargs="+", default=[48, 24, 16, 8])
    parser.add_argument("--nbits", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr-encoder", type=float, default=2e-5)
    parser.add_argument("--lr-centroids", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loss", default="pairwise")
    parser.add_argument("--ablation", action="store_true", help="also train centroids only and encoder only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import faiss

    import retrieval as rt
    from indexes import FaissIndex
    from retrieval.app.measure import saved_bytes, time_search
    from training.jpq import JPQTrainer, JPQTrainingArgs

    faiss.omp_set_num_threads(2)
    train = rt.load_beir(args.data, split="train")
    test = rt.load_beir(args.data, split="test")
    encoder = rt.DenseEncoder(device="cpu")
    docs = encoder.encode_documents(test.doc_texts(), ids=test.doc_ids())
    test_q = encoder.encode_queries(test.query_texts())
    qids = test.query_ids()

    def measure(index: Any, queries: Any) -> dict[str, float]:
        metrics = rt.evaluate(index.search(queries, 100, query_ids=qids).to_trec_dict(), test.qrels)
        qps = time_search(lambda q: index.search(q, 10), queries, batch_size=64, repeats=5).qps
        return {**metrics, "bytes_per_doc": saved_bytes(index) / len(index), "qps_batch64": qps}

    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"{row['method']:<22} M={row['m']:<3} nDCG@10 {row['nDCG@10']:.4f}  MRR@10 {row['MRR@10']:.4f}  "
              f"R@100 {row['Recall@100']:.3f}  {row['bytes_per_doc']:6.0f} B/doc  QPS@64 {row['qps_batch64']:7.0f}"
              + (f"  train {row['train_s']:.0f}s  lr_c {row['lr_centroids']:g}  dev nDCG@10 "
                 f"{row['dev_nDCG@10']:.4f}" + ("  [selected on dev]" if row.get("selected") else "")
                 if "train_s" in row else ""), flush=True)

    exact = FaissIndex(docs.dim, spec="Flat").add(docs)
    report({"method": "exact", "m": "-", **measure(exact, test_q)})
    for m in args.m:
        for method, spec in (("PQ", f"PQ{m}x{args.nbits}"), ("OPQ+PQ", f"OPQ{m},PQ{m}x{args.nbits}")):
            t0 = time.perf_counter()
            index = FaissIndex(docs.dim, spec=spec).train(docs).add(docs)
            report({"method": method, "m": m, **measure(index, test_q), "build_s": time.perf_counter() - t0})

        def train_jpq(name: str, lr_c: float, enc_on: bool, cent_on: bool, m: int = m) -> dict[str, Any]:
            t0 = time.perf_counter()
            trainer = JPQTrainer(
                JPQTrainingArgs(m=m, nbits=args.nbits, epochs=args.epochs, batch_size=args.batch_size,
                                lr_encoder=args.lr_encoder, lr_centroids=lr_c, loss=args.loss,
                                train_encoder=enc_on, train_centroids=cent_on),
                doc_ids=docs.ids, doc_vectors=docs.vectors, queries=train.queries, qrels=train.qrels,
            )
            history = trainer.train()
            train_s = time.perf_counter() - t0
            index = FaissIndex.from_faiss(trainer.index, trainer.doc_ids, spec=trainer.args.spec)
            queries = trainer.encode_queries(test.query_texts())
            return {"method": name, "m": m, **measure(index, queries), "train_s": train_s, "dev": history.dev,
                    "dev_nDCG@10": history.dev[-1]["nDCG@10"], "lr_centroids": lr_c,
                    "lr_encoder": args.lr_encoder, "epochs": args.epochs}

        runs = [train_jpq("JPQ", lr_c, True, True) for lr_c in args.lr_centroids]
        best = max(runs, key=lambda r: r["dev_nDCG@10"])
        for run in runs:
            run["selected"] = run is best
            report(run)
        if args.ablation:
            report(train_jpq("JPQ centroids only", best["lr_centroids"], False, True))
            report(train_jpq("JPQ encoder only", best["lr_centroids"], True, False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

"""Train JPQ on SciFact (24 bytes per document) and compare it with FAISS OPQ+PQ at the same size.

Run:  .venv/bin/python examples/03_jpq.py
Trains on the SciFact train split for a few minutes on 2 CPU cores, then prints nDCG@10 on the
test split for exact search, OPQ24+PQ24x8 and JPQ24, and saves the JPQ index to runs/.
"""

from __future__ import annotations

from pathlib import Path

import retrieval as rt
import training
from indexes import FaissIndex
from training.jpq import JPQTrainer, JPQTrainingArgs, load_jpq

train = rt.load_beir("scifact", split="train")
test = rt.load_beir("scifact", split="test")
encoder = rt.DenseEncoder()
docs = encoder.encode_documents(test.doc_texts(), ids=test.doc_ids())
queries = encoder.encode_queries(test.query_texts())


def ndcg(index, q):
    return rt.evaluate(index.search(q, 100, query_ids=test.query_ids()).to_trec_dict(), test.qrels)["nDCG@10"]


print(f"exact        nDCG@10 {ndcg(FaissIndex(docs.dim).add(docs), queries):.4f}")
opq = FaissIndex(docs.dim, spec="OPQ24,PQ24x8").train(docs).add(docs)
print(f"OPQ24+PQ24x8 nDCG@10 {ndcg(opq, queries):.4f}")

args = JPQTrainingArgs.from_toml(Path(training.__file__).parent / "configs" / "jpq_scifact.toml")
trainer = JPQTrainer(args, doc_ids=docs.ids, doc_vectors=docs.vectors, queries=train.queries, qrels=train.qrels)
trainer.train(show_progress=True)
out = trainer.save("runs/scifact-jpq24", overwrite=True)
retriever = load_jpq(out)
result = retriever.search(test.query_texts(), 100, query_ids=test.query_ids())
print(f"JPQ24        nDCG@10 {rt.evaluate(result.to_trec_dict(), test.qrels)['nDCG@10']:.4f}  (saved to {out})")

"""Late interaction (ColBERT-style MaxSim) on a SciFact subset, compressed to 1 byte per token.

Run:  .venv/bin/python examples/04_late_interaction.py
Encodes 400 SciFact abstracts into all-MiniLM-L6-v2 token vectors (about a minute on 2 CPU
cores), then prints nDCG@10 on the test claims whose judged abstracts are in the subset for:
single-vector exact search, MaxSim over float32 token vectors, MaxSim over 1-byte K-means
codes with 60% of the tokens kept by attention, and the single-vector first stage reranked by
MaxSim. The compressed index is saved and loaded back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import retrieval as rt
from indexes import FaissIndex, MultiVectorIndex, load_index

data = rt.load_beir("scifact", split="test").subset(400, seed=0)
print(f"{len(data.corpus)} documents, {len(data.queries)} test queries")


def ndcg(result: rt.SearchResult) -> float:
    return rt.evaluate(result.to_trec_dict(data.query_ids()), data.qrels)["nDCG@10"]


dense = rt.DenseEncoder()
dense_index = FaissIndex(dense.dim, spec="Flat").add(dense.encode_documents(data.doc_texts(), ids=data.doc_ids()))
first_stage = dense_index.search(dense.encode_queries(data.query_texts()), 100)
print(f"single vector, exact             nDCG@10 {ndcg(first_stage):.4f}")

tokens = rt.MultiVectorEncoder(document_length=256)
docs = tokens.encode_documents(data.doc_texts(), ids=data.doc_ids())  # one vector + saliency per token
queries = tokens.encode_queries(data.query_texts(), ids=data.query_ids())

flat = MultiVectorIndex(docs.dim, spec="Flat").add(docs)
print(f"MaxSim, float32 tokens           nDCG@10 {ndcg(flat.search(queries, 100)):.4f}  "
      f"({flat.memory_bytes() / len(flat):,.0f} bytes/doc)")

small = MultiVectorIndex(docs.dim, spec="Prune0.6,KMeans256").add(docs)  # k-means fitted on the documents
print(f"MaxSim, 60% tokens, 1-byte codes nDCG@10 {ndcg(small.search(queries, 100)):.4f}  "
      f"({small.memory_bytes() / len(small):,.0f} bytes/doc)")

reranked = rt.MaxSimReranker(tokens, flat).rerank(data.query_texts(), first_stage, k=100)
print(f"single vector + MaxSim rerank    nDCG@10 {ndcg(reranked):.4f}")

with tempfile.TemporaryDirectory() as tmp:
    small.save(Path(tmp) / "mv")
    again = load_index(Path(tmp) / "mv")
    assert again.search(queries, 10).doc_ids == small.search(queries, 10).doc_ids
    print(f"saved and loaded back: {again!r}")

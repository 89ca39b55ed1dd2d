"""Compare FAISS index kinds on SciFact: quality, size and speed, next to exact search.

Run:  .venv/bin/python examples/02_faiss_indexes.py
Prints one line per index: nDCG@10, bytes per document (everything a saved index holds),
and queries per second at batch 64.
"""

from __future__ import annotations

import retrieval as rt
from indexes import FaissIndex
from retrieval.app.measure import saved_bytes, time_search

data = rt.load_beir("scifact", split="test")
encoder = rt.DenseEncoder()
docs = encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
queries = encoder.encode_queries(data.query_texts())

for spec, params in [("Flat", {}), ("HNSW32", {"ef_search": 128}), ("IVF64,Flat", {"nprobe": 16}),
                     ("IVF64,PQ48x8", {"nprobe": 16}), ("SQ8", {})]:
    index = FaissIndex(docs.dim, spec=spec, **params).train(docs).add(docs)
    ndcg = rt.evaluate(index.search(queries, 100, query_ids=data.query_ids()).to_trec_dict(), data.qrels)["nDCG@10"]
    qps = time_search(lambda q, ix=index: ix.search(q, 10), queries, batch_size=64).qps
    print(f"{spec:<14} nDCG@10 {ndcg:.4f}  {saved_bytes(index) / len(index):7.0f} bytes/doc  {qps:8.0f} QPS@64")

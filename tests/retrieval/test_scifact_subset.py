"""One real-model check on real data: all-MiniLM-L6-v2 on a SciFact test subset.

The full-corpus figure (nDCG@10 0.6451 on all 5,183 documents) is measured by the demo and
the benchmark script; here a 150-document subset keeps the default suite fast while still
exercising encoder, index, search and evaluation together on real text and real qrels.
"""

from __future__ import annotations

import pytest

from indexes import FaissIndex, FlatIndex
from retrieval.beir import load_beir
from retrieval.evaluate import evaluate
from retrieval.pipeline import Retriever


@pytest.fixture(scope="module")
def subset():
    return load_beir("scifact", split="test").subset(150, seed=0)


def test_minilm_on_scifact_subset(subset, minilm_encoder, fake_encoder):
    qids = subset.query_ids()
    docs = minilm_encoder.encode_documents(subset.doc_texts(), ids=subset.doc_ids())
    queries = minilm_encoder.encode_queries(subset.query_texts())
    exact = FlatIndex(docs.dim).add(docs).search(queries, 100, query_ids=qids)
    hnsw = FaissIndex(docs.dim, spec="HNSW16", ef_search=64).add(docs).search(queries, 100, query_ids=qids)
    real = evaluate(exact.to_trec_dict(), subset.qrels)
    # With ~150 candidates, a good encoder puts the relevant abstract near the top.
    assert real["nDCG@10"] > 0.75
    assert real["Recall@100"] > 0.95
    assert evaluate(hnsw.to_trec_dict(), subset.qrels)["nDCG@10"] == pytest.approx(real["nDCG@10"], abs=0.01)
    # The real model must beat a bag-of-words hashing baseline on the same data.
    fake = Retriever(fake_encoder, FlatIndex(fake_encoder.dim))
    fake.index_documents(subset.doc_texts(), ids=subset.doc_ids())
    baseline = evaluate(fake.search(subset.query_texts(), 100, query_ids=qids).to_trec_dict(), subset.qrels)
    assert real["nDCG@10"] > baseline["nDCG@10"] + 0.1

"""Retriever: encoder + index (+ reranker), persistence of the encoder description."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex
from retrieval.errors import ConfigError, ShapeError
from retrieval.pipeline import Reranker, Retriever
from retrieval.types import SearchResult

TEXTS = [
    "smoking causes lung cancer",
    "vitamin d and bone fractures",
    "exercise lowers blood pressure",
    "coffee consumption and heart disease",
    "lung cancer screening with ct scans",
]
IDS = [f"d{i}" for i in range(len(TEXTS))]


@pytest.fixture
def retriever(fake_encoder) -> Retriever:
    return Retriever(fake_encoder, FlatIndex(fake_encoder.dim)).index_documents(TEXTS, ids=IDS)


def test_search_ranks_by_shared_words(retriever):
    res = retriever.search(["lung cancer"], k=2)
    assert set(res.doc_ids[0]) == {"d0", "d4"}
    single = retriever.search("bone fractures", k=1)
    assert single.doc_ids == [["d1"]]


def test_index_documents_trains_an_untrained_index(fake_encoder):
    index = FaissIndex(fake_encoder.dim, spec="IVF2,Flat", nprobe=2)
    Retriever(fake_encoder, index).index_documents(TEXTS * 20, ids=[f"x{i}" for i in range(100)])
    assert index.is_trained and len(index) == 100


def test_subset_and_query_ids(retriever):
    res = retriever.search(["lung cancer", "heart"], k=5, subset=["d1", "d3"], query_ids=["q1", "q2"])
    assert all(set(r) <= {"d1", "d3"} for r in res.doc_ids)
    assert list(res.to_trec_dict()) == ["q1", "q2"]


def test_dimension_mismatch(fake_encoder):
    with pytest.raises(ShapeError, match="64-d vectors but the index holds 32-d"):
        Retriever(fake_encoder, FlatIndex(32))


def test_bad_queries(retriever):
    with pytest.raises(ConfigError, match="item 1 is int"):
        retriever.search(["ok", 3], k=1)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        retriever.search("ok", k=0)


def test_reranker_sees_candidates_and_decides_order(fake_encoder):
    class ReverseReranker:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def rerank(self, queries, result: SearchResult, k: int) -> SearchResult:
            self.seen.append(len(result.doc_ids[0]))
            ids = [row[::-1][:k] for row in result.doc_ids]
            scores = np.tile(np.arange(k, 0, -1, dtype=np.float32), (len(ids), 1))
            return SearchResult(doc_ids=ids, scores=scores, labels=np.zeros_like(scores, dtype=np.int64))

    reranker = ReverseReranker()
    assert isinstance(reranker, Reranker)
    r = Retriever(fake_encoder, FlatIndex(fake_encoder.dim), reranker=reranker, candidates=4)
    r.index_documents(TEXTS, ids=IDS)
    plain = Retriever(fake_encoder, r.index).search("lung cancer", k=4)
    out = r.search("lung cancer", k=2)
    assert reranker.seen == [4]
    assert out.doc_ids[0] == plain.doc_ids[0][::-1][:2]


def test_save_load_with_explicit_encoder(retriever, fake_encoder, tmp_path):
    retriever.save(tmp_path / "ix")
    with pytest.raises(ConfigError, match="FakeEncoder"):
        Retriever.load(tmp_path / "ix")  # only DenseEncoder descriptions are re-created automatically
    loaded = Retriever.load(tmp_path / "ix", encoder=fake_encoder)
    assert loaded.index.metadata["encoder"]["type"] == "FakeEncoder"
    assert loaded.search("lung cancer", k=2).doc_ids == retriever.search("lung cancer", k=2).doc_ids


def test_save_load_recreates_dense_encoder(minilm_encoder, tmp_path):
    r = Retriever(minilm_encoder, FaissIndex(minilm_encoder.dim, spec="Flat")).index_documents(TEXTS, ids=IDS)
    r.save(tmp_path / "ix")
    loaded = Retriever.load(tmp_path / "ix", device="cpu")
    assert loaded.encoder.describe() == minilm_encoder.describe()
    res = loaded.search("Does tobacco use lead to tumours in the lungs?", k=1)
    assert res.doc_ids == [["d0"]]

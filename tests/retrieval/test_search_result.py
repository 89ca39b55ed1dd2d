"""SearchResult: ids built from the index's label table on first access, as a snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import FlatIndex
from retrieval.types import SearchResult


def _index() -> FlatIndex:
    return FlatIndex(2).add(np.array([[1, 0], [0, 1], [0.7, 0.7]], dtype=np.float32), ids=["a", "b", "c"])


def test_ids_come_from_the_label_table_on_first_access():
    result = _index().search(np.array([[1, 0]], dtype=np.float32), k=2)
    assert result._doc_ids is None  # nothing built yet
    assert result.doc_ids == [["a", "c"]]
    assert result.doc_ids is result.doc_ids  # built once, then kept
    assert result.to_trec_dict(["q"]) == {"q": {"a": pytest.approx(1.0), "c": pytest.approx(0.7)}}


def test_padded_rows_are_shorter():
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    result = _index().search(queries, k=5)  # k above the 3 documents: 3 columns, no padding
    assert result.labels.shape == (2, 3) and result.doc_ids == [["a", "c", "b"], ["b", "c", "a"]]
    result = _index().search(queries, k=5, subset=["a", "b"])  # 2 allowed: padded within the 3 columns
    assert result.labels[:, -1].tolist() == [-1, -1] and np.isneginf(result.scores[:, 2:]).all()
    assert result.doc_ids == [["a", "b"], ["b", "a"]]


def test_a_result_keeps_the_ids_of_its_search_time():
    index = _index()
    before = index.search(np.array([[0, 1]], dtype=np.float32), k=3)
    index.add(np.array([[0, 1]], dtype=np.float32), ids=["d"])
    index.delete(["b"])
    assert before.doc_ids == [["b", "c", "a"]]  # read after the add and the delete
    assert index.search(np.array([[0, 1]], dtype=np.float32), k=1).doc_ids == [["d"]]


def test_constructor_needs_ids_or_a_table_not_both():
    scores, labels = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64)
    with pytest.raises(TypeError, match="exactly one of doc_ids"):
        SearchResult(scores=scores, labels=labels)
    with pytest.raises(TypeError, match="exactly one of doc_ids"):
        SearchResult(doc_ids=[["a"]], scores=scores, labels=labels, id_table=np.array(["a"], dtype=object))
    with pytest.raises(TypeError, match="needs scores and labels"):
        SearchResult(doc_ids=[["a"]])
    result = SearchResult([["a"]], scores, labels)
    result.doc_ids = [["z"]]
    assert "doc_ids=[['z']]" in repr(result) and len(result) == 1


# VectorIndex.search checks the queries for NaN / inf only when the results look wrong; every
# backend must make a non-finite query look wrong (NaN / inf scores or padded rows).
_SPECS = ["Flat", "HNSW8", "IVF4,Flat", "IVF4,PQ4x4", "PQ4x4", "SQ8", "OPQ4,PQ4x4", "IVF4,PQ4x4np"]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("spec", [None, *_SPECS])
def test_every_backend_rejects_non_finite_queries(spec, bad, metric):
    from indexes import FaissIndex
    from retrieval.errors import ShapeError

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    index = (FlatIndex(8, metric=metric) if spec is None
             else FaissIndex(8, spec=spec.removesuffix("np"), metric=metric).train(x))
    if spec is not None and spec.endswith("np"):
        index.nprobe = 4
    index.add(x, ids=[str(i) for i in range(300)])
    queries = x[:3].copy()
    queries[1, 5] = bad
    with pytest.raises(ShapeError, match=r"queries contains NaN or inf values in 1 row\(s\) \(first: row 1\)"):
        index.search(queries, k=5)
    assert [len(ids) for ids in index.search(x[:3], k=5).doc_ids] == [5, 5, 5]  # the index is unharmed


def test_faiss_padding_becomes_minus_inf():
    from indexes import FaissIndex

    x = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    index = FaissIndex(8, spec="IVF8,Flat", metric="l2").train(x).add(x, ids=[str(i) for i in range(200)])
    index.nprobe = 1
    result = index.search(x[:4], k=150)  # one list of ~25 vectors cannot fill 150 hits
    padded = result.labels < 0
    assert padded.any() and np.isneginf(result.scores[padded]).all() and np.isfinite(result.scores[~padded]).all()
    assert [len(ids) for ids in result.doc_ids] == (~padded).sum(axis=1).tolist()

"""Bad input to indexes: each case a clear error naming what was expected and what arrived."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex
from retrieval.errors import ConfigError, ShapeError, UnknownIdError
from retrieval.types import Embeddings

MAKERS = [pytest.param(lambda: FlatIndex(8), id="numpy-flat"), pytest.param(lambda: FaissIndex(8, spec="HNSW8"), id="hnsw")]


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((20, 8)).astype(np.float32)


@pytest.mark.parametrize("make", MAKERS)
def test_query_dimension_mismatch(make, x):
    index = make().add(x, ids=[str(i) for i in range(20)])
    with pytest.raises(ShapeError, match=r"shape \(n, 8\) to match the index; got \(2, 7\)"):
        index.search(x[:2, :7], k=3)
    with pytest.raises(ShapeError, match=r"2-D.*x\[None, :\]"):
        index.search(x[0], k=3)


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors(make, x, bad):
    index = make()
    y = x.copy()
    y[4, 2] = bad
    with pytest.raises(ShapeError, match=r"NaN or inf.*row 4"):
        index.add(y, ids=[str(i) for i in range(20)])
    assert len(index) == 0  # nothing half-added
    index.add(x, ids=[str(i) for i in range(20)])
    with pytest.raises(ShapeError, match="NaN or inf"):
        index.search(y[3:6], k=2)


@pytest.mark.parametrize("make", MAKERS)
def test_wrong_dtype(make, x):
    index = make()
    with pytest.raises(ShapeError, match=r"floating dtype.*int64"):
        index.add(x.astype(np.int64), ids=[str(i) for i in range(20)])
    with pytest.raises(ShapeError, match="floating dtype"):
        index.search(np.array([["a"] * 8]), k=1)
    index.add(x.astype(np.float64), ids=[str(i) for i in range(20)])  # float64 is converted, not rejected
    assert len(index) == 20


@pytest.mark.parametrize("make", MAKERS)
def test_duplicate_and_bad_ids(make, x):
    index = make()
    with pytest.raises(ConfigError, match="duplicate document id '1'"):
        index.add(x[:3], ids=["0", "1", "1"])
    index.add(x[:3], ids=["0", "1", "2"])
    with pytest.raises(ConfigError, match="already in the index"):
        index.add(x[:1], ids=["2"])
    with pytest.raises(ConfigError, match="newline"):
        index.add(x[:1], ids=["a\nb"])
    with pytest.raises(ConfigError, match="holds str document ids; got int ids"):
        index.add(x[:1], ids=[5])
    with pytest.raises(ConfigError, match="must be str"):
        index.add(x[:2], ids=["x", 5])
    with pytest.raises(ShapeError, match="one id per vector"):
        index.add(x[:2], ids=["x"])
    with pytest.raises(ConfigError, match="needs `ids`"):
        index.add(x[:2])
    assert len(index) == 3


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_bad_k(make, x, k):
    index = make().add(x, ids=[str(i) for i in range(20)])
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        index.search(x[:1], k=k)


def test_empty_corpus_is_fine_and_empty_queries_too(x):
    index = FlatIndex(8).add(x[:0], ids=[])
    assert len(index) == 0
    res = index.search(x[:0], k=3)
    assert res.doc_ids == [] and res.scores.shape == (0, 0)  # min(k, live documents) columns


def test_unknown_delete_names_the_ids(x):
    index = FlatIndex(8).add(x[:2], ids=["a", "b"])
    with pytest.raises(UnknownIdError, match=r"\['zz'\]"):
        index.delete(["a", "zz"])
    with pytest.raises(KeyError):  # UnknownIdError is a KeyError too
        index.delete("zz")
    assert len(index) == 2


def test_bad_constructor_arguments():
    with pytest.raises(ConfigError, match="metric must be one of"):
        FlatIndex(8, metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dim must be a positive integer"):
        FlatIndex(0)
    with pytest.raises(ConfigError, match="binary"):
        FaissIndex(64, spec="BFlat")
    with pytest.raises(ShapeError, match="one id per vector"):
        Embeddings(np.zeros((2, 3), dtype=np.float32), ["a"])


# ---------------------------------------------------------------------- absurd k, search parameters, ids
def _ten_doc_indexes() -> list:
    from indexes import ShardedIndex, ShardedMultiVectorIndex
    from indexes.multivector import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    x = np.random.default_rng(5).standard_normal((10, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(10)]
    mv = MultiVectorEmbeddings.from_list([np.stack([v, -v]) for v in x], ids=ids)
    return [
        FlatIndex(8).add(x, ids=ids), FaissIndex(8, spec="HNSW8").add(x, ids=ids),
        FaissIndex(8, spec="IVF1,Flat").train(x).add(x, ids=ids),
        MultiVectorIndex(8, spec="Flat").add(mv), MultiVectorIndex(8, spec="KMeans4", first_stage="centroid").add(mv),
        MultiVectorIndex(8, spec="Binary", first_stage="binary").add(mv),
        ShardedIndex(FlatIndex(8), 3).add(x, ids=ids), ShardedMultiVectorIndex(MultiVectorIndex(8, spec="Flat"), 2).add(mv),
    ]


def test_absurd_k_allocates_by_live_documents():
    """k = 10**9 on a 10-document index: 10 hits per query, no k-sized array (which would need 8 GB)."""
    from retrieval.types import MultiVectorEmbeddings

    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    for index in _ten_doc_indexes():
        multi = "MultiVector" in type(index).__name__
        queries = MultiVectorEmbeddings.from_list([x[:2], x[2:]]) if multi else x[:2]
        result = index.search(queries, k=10**9)
        assert result.labels.shape == (2, 10) and result.scores.shape == (2, 10), type(index).__name__
        assert [len(r) for r in result.doc_ids] == [10, 10], type(index).__name__  # every document reachable here
        index.delete(["d0", "d1"])
        assert index.search(queries, k=2**62).labels.shape == (2, 8)  # the live count, deletions included
        if hasattr(index, "close"):
            index.close()


@pytest.mark.parametrize("name", ["nprobe", "ef_search"])
@pytest.mark.parametrize("value", [0, -1, 2**31, 10**30, 2.0, True, "4"])
def test_search_parameters_that_overflow_faiss_are_refused(name, value):
    index = FaissIndex(8, spec="IVF1,Flat" if name == "nprobe" else "HNSW8")
    with pytest.raises(ConfigError, match=rf"{name} must be an integer from 1 to 2147483647"):
        setattr(index, name, value)
    setattr(index, name, 2**31 - 1)  # the largest C int is fine


def test_hnsw_large_k_returns_as_many_hits_as_the_filtered_path():
    """A beam (efSearch 4) narrower than k is widened to k for that call; the filtered path agrees."""
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    ids = [str(i) for i in range(2000)]
    index = FaissIndex(16, spec="HNSW4", ef_search=4).add(x, ids=ids)
    for k in (50, 500, 2000):
        plain = index.search(x[:5], k=k)
        filtered = index.search(x[:5], k=k, subset=ids)
        assert [len(r) for r in plain.doc_ids] == [len(r) for r in filtered.doc_ids] == [k] * 5
    assert index.ef_search == 4  # per-call parameter: the shared setting is untouched


def test_a_multivector_query_without_vectors_matches_nothing_for_every_first_stage():
    from retrieval.types import MultiVectorEmbeddings

    queries = MultiVectorEmbeddings.from_list([np.zeros((0, 8), np.float32), np.ones((1, 8), np.float32)])
    for index in _ten_doc_indexes()[3:6] + _ten_doc_indexes()[7:]:
        result = index.search(queries, k=3)
        assert result.doc_ids[0] == [] and (result.labels[0] == -1).all() and np.isneginf(result.scores[0]).all()
        assert len(result.doc_ids[1]) >= 1
        if hasattr(index, "rerank"):
            assert index.rerank(queries, [["d1", "d2"], ["d1"]], k=2).doc_ids[0] == []
        if hasattr(index, "close"):
            index.close()


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "\udcff"])
def test_ids_that_utf8_cannot_store_are_refused_at_add(bad, x):
    from indexes import ShardedIndex
    from indexes.multivector import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    for index in (FlatIndex(8), FaissIndex(8, spec="HNSW8"), ShardedIndex(FlatIndex(8), 2)):
        with pytest.raises(ConfigError, match=r"not valid Unicode: it holds the lone surrogate"):
            index.add(x[:2], ids=["ok", bad])
        assert len(index) == 0
    mv = MultiVectorEmbeddings.from_list([x[:2], x[2:3]], ids=["ok", bad])
    with pytest.raises(ConfigError, match="lone surrogate"):
        MultiVectorIndex(8, spec="Flat").add(mv)

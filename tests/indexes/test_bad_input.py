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
    with pytest.raises(ConfigError, match="must be str"):
        index.add(x[:1], ids=[5])
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
    assert res.doc_ids == [] and res.scores.shape == (0, 3)


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

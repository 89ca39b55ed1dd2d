"""FlatIndex and FaissIndex behaviour: recall against the exact oracle, ids, deletes, filters."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex
from retrieval.errors import ConfigError, NotTrainedError, UnknownIdError
from retrieval.types import Embeddings


def _data(n: int = 2000, d: int = 32, nq: int = 30, seed: int = 1338) -> tuple[np.ndarray, np.ndarray, list[str]]:
    # Low intrinsic dimension (as in faiss' get_dataset_2) so ANN indexes have structure to find.
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, d))
    xb = (rng.standard_normal((n, 8)) @ basis + 0.1 * rng.standard_normal((n, d))).astype(np.float32)
    xq = (rng.standard_normal((nq, 8)) @ basis + 0.1 * rng.standard_normal((nq, d))).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return xb, xq, [f"doc-{i}" for i in range(n)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return _data()


@pytest.fixture(scope="module")
def oracle(data):
    xb, xq, ids = data
    return FlatIndex(xb.shape[1]).add(xb, ids=ids).search(xq, k=10)


def test_flat_matches_brute_force_by_hand():
    x = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    index = FlatIndex(2).add(x, ids=["a", "b", "c"])
    res = index.search(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), k=3)
    assert res.doc_ids == [["a", "c", "b"], ["b", "c", "a"]]
    np.testing.assert_allclose(res.scores, [[1.0, 0.6, 0.0], [1.0, 0.8, 0.0]], atol=1e-6)
    l2 = FlatIndex(2, metric="l2").add(x, ids=["a", "b", "c"])
    res = l2.search(np.array([[1.0, 0.0]], dtype=np.float32), k=3)
    assert res.doc_ids == [["a", "c", "b"]]
    np.testing.assert_allclose(res.scores, [[0.0, -0.8, -2.0]], atol=1e-6)  # negative squared distances


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_flat_equals_numpy_flat(data, metric):
    xb, xq, ids = data
    exact = FlatIndex(xb.shape[1], metric=metric).add(xb, ids=ids).search(xq, k=10)
    faiss_flat = FaissIndex(xb.shape[1], spec="Flat", metric=metric).add(xb, ids=ids).search(xq, k=10)
    assert faiss_flat.doc_ids == exact.doc_ids
    np.testing.assert_allclose(faiss_flat.scores, exact.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("spec", "params", "min_recall"),
    [
        ("HNSW32", {"ef_search": 64}, 0.95),
        ("IVF32,Flat", {"nprobe": 8}, 0.9),
        ("SQ8", {}, 0.9),
        ("OPQ16,IVF16,PQ16x8", {"nprobe": 16}, 0.6),
    ],
)
def test_approximate_recall_vs_flat(data, oracle, spec, params, min_recall):
    xb, xq, ids = data
    index = FaissIndex(xb.shape[1], spec=spec, **params)
    index.train(xb).add(xb, ids=ids)
    assert index.search(xq, k=10).recall_at(oracle.doc_ids) >= min_recall


def test_pq_error_decreases_with_more_bytes(data, oracle):
    xb, xq, ids = data
    recalls = [
        FaissIndex(xb.shape[1], spec=f"PQ{m}x4").train(xb).add(xb, ids=ids).search(xq, k=10).recall_at(oracle.doc_ids)
        for m in (4, 16)
    ]
    assert recalls[0] < recalls[1]


def test_untrained_add_raises(data):
    xb, _, ids = data
    index = FaissIndex(xb.shape[1], spec="IVF16,Flat")
    with pytest.raises(NotTrainedError, match="train"):
        index.add(xb, ids=ids)


def test_bad_spec_and_params():
    with pytest.raises(ConfigError, match="factory string"):
        FaissIndex(32, spec="NotAnIndex99")
    with pytest.raises(ConfigError, match="nprobe applies to IVF"):
        FaissIndex(32, spec="HNSW16", nprobe=4)
    with pytest.raises(ConfigError, match="ef_search applies to HNSW"):
        FaissIndex(32, spec="Flat", ef_search=4)
    with pytest.raises(ConfigError, match="must be an integer from 1"):
        FaissIndex(32, spec="IVF4,Flat", nprobe=0)
    with pytest.raises(ConfigError, match="training"):
        FaissIndex(32, spec="IVF64,Flat").train(np.ones((10, 32), dtype=np.float32))


ALL_KINDS = [
    pytest.param(lambda d: FlatIndex(d), id="numpy-flat"),
    pytest.param(lambda d: FaissIndex(d, spec="Flat"), id="Flat"),
    pytest.param(lambda d: FaissIndex(d, spec="HNSW16", ef_search=200), id="HNSW16"),
    pytest.param(lambda d: FaissIndex(d, spec="HNSW16,PQ8", ef_search=200), id="HNSW16-PQ-storage"),
    pytest.param(lambda d: FaissIndex(d, spec="IVF8,Flat", nprobe=8), id="IVF8"),
    pytest.param(lambda d: FaissIndex(d, spec="PQ8x4"), id="PQ8x4-no-selector"),
    pytest.param(lambda d: FaissIndex(d, spec="OPQ8,IVF8,PQ8x4", nprobe=8), id="OPQ-IVF-PQ"),
]


@pytest.mark.parametrize("make", ALL_KINDS)
def test_delete_and_subset(data, make):
    xb, xq, ids = data
    index = make(xb.shape[1])
    index.train(xb).add(xb, ids=ids)
    before = index.search(xq, k=10)
    gone = {d for row in before.doc_ids[:5] for d in row[:2]}
    assert index.delete(gone) == len(gone)
    assert len(index) == len(ids) - len(gone)
    assert all(d not in index for d in gone)
    after = index.search(xq, k=10)
    assert all(len(row) == 10 for row in after.doc_ids)
    assert not gone & {d for row in after.doc_ids for d in row}

    subset = [i for i in ids[::7] if i not in gone]
    allowed = set(subset)
    res = index.search(xq, k=10, subset=subset)
    assert all(len(row) == 10 and set(row) <= allowed for row in res.doc_ids)
    # A subset smaller than k is padded with -1 / -inf.
    tiny = index.search(xq[:2], k=10, subset=subset[:3])
    assert [len(r) for r in tiny.doc_ids] == [3, 3]
    assert (tiny.labels[:, 3:] == -1).all() and np.isneginf(tiny.scores[:, 3:]).all()


@pytest.mark.parametrize("make", ALL_KINDS)
def test_readd_after_delete_and_unknown_delete(data, make):
    xb, _, ids = data
    index = make(xb.shape[1])
    index.train(xb).add(xb[:100], ids=ids[:100])
    with pytest.raises(UnknownIdError, match="nothing was deleted"):
        index.delete(["doc-0", "no-such-doc"])
    assert len(index) == 100 and "doc-0" in index
    index.delete(["doc-0"])
    index.add(xb[:1] * 2, ids=["doc-0"])  # the id is free again
    assert index.search(xb[:1], k=1).doc_ids == [["doc-0"]]
    with pytest.raises(UnknownIdError):
        index.search(xb[:1], k=1, subset=["doc-9999"])


def test_k_larger_than_index_gives_one_column_per_document(data):
    xb, xq, ids = data
    index = FaissIndex(xb.shape[1]).add(xb[:5], ids=ids[:5])
    res = index.search(xq[:2], k=8)
    assert res.scores.shape == (2, 5) and [len(r) for r in res.doc_ids] == [5, 5]
    assert (res.labels >= 0).all()
    assert [len(hits) for hits in res.to_list()] == [5, 5]
    assert [len(run) for run in res.to_trec_dict().values()] == [5, 5]
    res = index.search(xq[:2], k=8, subset=ids[:3])  # fewer allowed than live: padded up to the live count
    assert res.scores.shape == (2, 5) and (res.labels[:, 3:] == -1).all() and np.isneginf(res.scores[:, 3:]).all()


def test_empty_index_search(data):
    _, xq, _ = data
    for index in (FlatIndex(32), FaissIndex(32, spec="HNSW16")):
        res = index.search(xq[:3], k=4)
        assert res.doc_ids == [[], [], []]
        assert (res.labels == -1).all()


def test_embeddings_input_and_result_conversions(data):
    xb, xq, ids = data
    index = FlatIndex(xb.shape[1]).add(Embeddings(xb[:50], ids[:50]))
    res = index.search(xq[:2], k=3, query_ids=["q1", "q2"])
    trec = res.to_trec_dict()
    assert list(trec) == ["q1", "q2"] and all(len(v) == 3 for v in trec.values())
    hits = res.to_list()
    assert hits[0][0].doc_id == res.doc_ids[0][0] and hits[0][0].score == pytest.approx(float(res.scores[0, 0]))
    assert "FlatIndex(dim=32" in repr(index)


def test_to_gpu_without_gpu_is_a_clear_error():
    from retrieval._optional import has_faiss_gpu
    from retrieval.errors import MissingDependencyError

    if has_faiss_gpu():
        pytest.skip("a GPU is present; covered by tests/gpu")
    with pytest.raises(MissingDependencyError, match="GPU"):
        FaissIndex(8).to_gpu()

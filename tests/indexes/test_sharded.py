"""ShardedIndex with local threads: exactness against one index, routing, deletes, filters,
persistence, and failing shards (with and without ``allow_partial``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex, ShardedIndex, load_index
from indexes._shards import empty_copy, shard_of
from retrieval.errors import ConfigError, IndexFormatError, ShardError, UnknownIdError
from retrieval.pipeline import Retriever


def _data(n: int = 3000, d: int = 32, nq: int = 25, seed: int = 7) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, d))
    xb = (rng.standard_normal((n, 8)) @ basis + 0.1 * rng.standard_normal((n, d))).astype(np.float32)
    xq = (rng.standard_normal((nq, 8)) @ basis + 0.1 * rng.standard_normal((nq, d))).astype(np.float32)
    return xb, xq, [f"doc-{i}" for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    # conftest imports torch; its OpenMP runtime and faiss' contend, which makes k-means 30x
    # slower with 2 threads (2 s instead of 0.07 s per PQ training here). One thread avoids it.
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return _data()


@pytest.fixture(scope="module")
def pq_template(data) -> FaissIndex:
    xb, _, _ = data
    return FaissIndex(xb.shape[1], spec="PQ8x5", metric="l2").train(xb)


def _same(a, b) -> None:
    """Same ids and scores, rows compared as (score, id) pairs so equal scores may swap places."""
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    for ids_a, ids_b, s in zip(a.doc_ids, b.doc_ids, a.scores, strict=True):
        assert len(ids_a) == len(ids_b)
        if ids_a != ids_b:  # only a tie may reorder
            for x, y, score in zip(ids_a, ids_b, s, strict=False):
                assert x == y or np.isclose(s, score).sum() > 1


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n_shards", [1, 3])
def test_flat_shards_equal_one_index(data, metric, n_shards):
    xb, xq, ids = data
    one = FlatIndex(xb.shape[1], metric=metric).add(xb, ids=ids)
    sharded = ShardedIndex(FlatIndex(xb.shape[1], metric=metric), n_shards).add(xb, ids=ids)
    assert len(sharded) == len(ids) and sorted(sharded.doc_ids) == sorted(ids)
    _same(sharded.search(xq, k=10), one.search(xq, k=10))


@pytest.mark.parametrize(("spec", "nprobe"), [("PQ8x5", None), ("IVF16,PQ8x5", 4)])
def test_pq_shards_with_shared_codebooks_equal_one_index(data, spec, nprobe):
    xb, xq, ids = data
    template = FaissIndex(xb.shape[1], spec=spec, metric="l2", nprobe=nprobe).train(xb[:1500])
    one = empty_copy(template).add(xb, ids=ids)  # same trained codebooks, one index
    sharded = ShardedIndex(template, 4).add(xb, ids=ids)
    a, b = sharded.search(xq, k=10), one.search(xq, k=10)
    np.testing.assert_array_equal(a.scores, b.scores)  # same codes, same tables: bit-identical distances
    _same(a, b)
    # The shards really hold different documents, each on the shard its id hashes to.
    assert sum(sharded.shard_sizes) == len(ids) and min(sharded.shard_sizes) > 0
    for s, handle in enumerate(sharded._handles):
        assert all(shard_of(i, 4) == s for i in handle.server.index.doc_ids)


def test_train_once_gives_every_shard_the_same_codebooks(data):
    import faiss

    xb, _, ids = data
    sharded = ShardedIndex(FaissIndex(xb.shape[1], spec="PQ8x5"), 3)
    assert not sharded.is_trained
    sharded.train(xb[:1500]).add(xb, ids=ids)
    books = [faiss.vector_to_array(h.server.index.faiss_index.pq.centroids) for h in sharded._handles]
    assert all(np.array_equal(books[0], b) for b in books[1:])
    with pytest.raises(ConfigError, match="template must be empty"):
        ShardedIndex(FlatIndex(4).add(np.eye(4, dtype=np.float32), ids=list("abcd")), 2)


def test_add_checks_ids_across_shards_and_adds_nothing_on_error(data):
    xb, _, ids = data
    sharded = ShardedIndex(FlatIndex(xb.shape[1]), 3).add(xb[:100], ids=ids[:100])
    with pytest.raises(ConfigError, match="already in the index"):
        sharded.add(xb[100:110], ids=[*ids[100:109], ids[5]])
    with pytest.raises(ConfigError, match="duplicate"):
        sharded.add(xb[100:102], ids=[ids[100], ids[100]])
    assert len(sharded) == 100 and ids[100] not in sharded and ids[5] in sharded


def test_delete_and_subset(data):
    xb, xq, ids = data
    one = FlatIndex(xb.shape[1]).add(xb, ids=ids)
    sharded = ShardedIndex(FlatIndex(xb.shape[1]), 3).add(xb, ids=ids)
    gone = ids[::3]
    assert sharded.delete(gone) == len(gone) and one.delete(gone) == len(gone)
    assert len(sharded) == len(ids) - len(gone) and gone[0] not in sharded
    _same(sharded.search(xq, k=10), one.search(xq, k=10))
    with pytest.raises(UnknownIdError, match="nothing was deleted"):
        sharded.delete([ids[1], gone[1]])
    assert ids[1] in sharded
    subset = ids[1:200:3]
    res = sharded.search(xq, k=5, subset=subset)
    assert set(i for row in res.doc_ids for i in row) <= set(subset)
    _same(res, one.search(xq, k=5, subset=subset))
    with pytest.raises(UnknownIdError, match="not in the index"):
        sharded.search(xq, k=5, subset=[ids[1], gone[0]])
    # Fewer allowed documents than k: padded like any index.
    small = sharded.search(xq[:2], k=4, subset=[ids[1], ids[2]])
    assert [len(r) for r in small.doc_ids] == [2, 2]
    assert (small.labels[:, 2:] == -1).all() and np.isneginf(small.scores[:, 2:]).all()


def test_save_load_roundtrip_and_manifest(data, pq_template, tmp_path):
    xb, xq, ids = data
    sharded = ShardedIndex(pq_template, 3).add(xb, ids=ids)
    sharded.delete(ids[:10])
    before = sharded.search(xq, k=10)
    path = sharded.save(tmp_path / "sharded")
    manifest = json.loads((path / "manifest.json").read_text())
    shards = manifest["params"]["shards"]
    assert [s["dir"] for s in shards] == ["shard-000", "shard-001", "shard-002"]
    assert sum(s["live"] for s in shards) == len(ids) - 10 and manifest["count"] == len(ids)
    # The shared PQ codebooks are stored once, beside the shards.
    import faiss

    books = np.load(path / "codebooks.npy")
    assert books.shape == (8, 32, 4)
    np.testing.assert_array_equal(books.ravel(), faiss.vector_to_array(pq_template.faiss_index.pq.centroids))
    loaded = load_index(path)
    assert isinstance(loaded, ShardedIndex) and loaded.n_shards == 3 and len(loaded) == len(ids) - 10
    after = loaded.search(xq, k=10)
    assert after.doc_ids == before.doc_ids
    np.testing.assert_array_equal(after.scores, before.scores)
    loaded.add(xb[:10], ids=ids[:10])  # routed adds and deletes keep working after a load
    assert len(loaded) == len(ids)
    with pytest.raises(ConfigError, match="already exists"):
        sharded.save(path)


def test_load_rejects_a_foreign_shard(data, tmp_path):
    xb, _, ids = data
    a = ShardedIndex(FlatIndex(xb.shape[1]), 2).add(xb[:50], ids=ids[:50]).save(tmp_path / "a")
    b = ShardedIndex(FlatIndex(xb.shape[1]), 2).add(xb[50:90], ids=ids[50:90]).save(tmp_path / "b")
    import shutil

    shutil.rmtree(a / "shard-001")
    shutil.copytree(b / "shard-001", a / "shard-001")
    with pytest.raises(IndexFormatError, match="shard-001"):
        load_index(a)


def test_failing_shard_is_named_and_allow_partial_answers_from_the_rest(data):
    xb, xq, ids = data
    sharded = ShardedIndex(FlatIndex(xb.shape[1]), 3).add(xb, ids=ids)

    def broken(*args):
        raise OSError("disk gone")

    sharded._handles[1].server.search = broken  # type: ignore[method-assign]
    with pytest.raises(ShardError, match=r"shard 1 \(shard-001\): OSError: disk gone") as info:
        sharded.search(xq, k=10)
    assert list(info.value.failures) == [1]
    res = sharded.search(xq, k=10, allow_partial=True)
    assert res.partial and list(res.failed_shards) == [1] and "disk gone" in res.failed_shards[1]
    rest = [i for i in ids if shard_of(i, 3) != 1]
    expected = FlatIndex(xb.shape[1]).add(xb[[int(i.split("-")[1]) for i in rest]], ids=rest).search(xq, k=10)
    _same(res, expected)
    assert not sharded.search(xq, k=1, subset=[rest[0]]).partial  # shard 1 not asked: nothing failed


def test_retriever_saves_and_loads_a_sharded_index(fake_encoder, tmp_path):
    texts = [f"document number {i} about topic {i % 7}" for i in range(60)]
    ids = [f"t{i}" for i in range(60)]
    retriever = Retriever(fake_encoder, ShardedIndex(FlatIndex(fake_encoder.dim), 2))
    retriever.index_documents(texts, ids=ids)
    expected = retriever.search(["topic 3"], k=5)
    retriever.save(tmp_path / "r")
    loaded = Retriever.load(tmp_path / "r", encoder=fake_encoder)
    assert isinstance(loaded.index, ShardedIndex)
    assert loaded.search(["topic 3"], k=5).doc_ids == expected.doc_ids


def test_works_without_ray_installed(data, tmp_path, monkeypatch):
    import sys

    from retrieval.distributed import build_sharded
    from retrieval.errors import MissingDependencyError
    from retrieval.types import Embeddings

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    xb, xq, ids = data
    docs = Embeddings(xb[:300], ids[:300])
    report = build_sharded(docs, tmp_path / "s", n_shards=2, spec="exact", use_ray=False)
    assert report.backend == "threads" and sum(report.shard_sizes) == 300
    index = load_index(tmp_path / "s")
    assert isinstance(index, ShardedIndex) and index.backend == "threads"
    _same(index.search(xq, k=5), FlatIndex(xb.shape[1]).add(docs).search(xq, k=5))
    with pytest.raises(MissingDependencyError, match=r"densezip\[distributed\]"):
        ShardedIndex.load(tmp_path / "s", backend="ray")
    with pytest.raises(MissingDependencyError, match=r"densezip\[distributed\]"):
        build_sharded(docs, tmp_path / "r", n_shards=2, spec="exact")

"""ShardedMultiVectorIndex: exact agreement with one MultiVectorIndex sharing the trained codec,
one codec for all shards, add / delete / save / load, and failing shards."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from indexes import MultiVectorIndex, ShardedIndex, ShardedMultiVectorIndex, load_index
from indexes._shards import shard_of
from indexes.check import check_index
from retrieval.errors import ConfigError, IndexFormatError, ShardError, UnknownIdError
from retrieval.types import MultiVectorEmbeddings

DIM = 16


def _mv(n: int, prefix: str, seed: int) -> MultiVectorEmbeddings:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((6, DIM))
    arrays = [(rng.standard_normal((int(rng.integers(1, 9)), 6)) @ basis
               + 0.3 * rng.standard_normal((1, DIM))).astype(np.float32) for _ in range(n)]
    return MultiVectorEmbeddings.from_list(arrays, ids=[f"{prefix}{i}" for i in range(n)])


@pytest.fixture(scope="module")
def docs() -> MultiVectorEmbeddings:
    return _mv(90, "doc-", 1)


@pytest.fixture(scope="module")
def queries() -> MultiVectorEmbeddings:
    return _mv(7, "q-", 2)


def _same(a, b, queries=None, single=None) -> None:
    """Same scores, and the same ids except among documents tied at the k-th score.

    Quantized codecs (KMeans ids, sign bits) give many documents equal MaxSim scores; which of
    those tied at the cut-off fill the last places depends on the order they are met. With
    ``single``, every id in ``a`` is also re-scored by one index to check its score is exact.
    """
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    for row, (ids_a, ids_b) in enumerate(zip(a.doc_ids, b.doc_ids, strict=True)):
        assert len(ids_a) == len(ids_b)
        if not ids_a:
            continue
        last = float(a.scores[row, len(ids_a) - 1])
        cut = last + 1e-5 * max(1.0, abs(last))  # float32 sums differ in the last bits between layouts
        above_a = {i for i, sc in zip(ids_a, a.scores[row], strict=False) if sc > cut}
        above_b = {i for i, sc in zip(ids_b, b.scores[row], strict=False) if sc > cut}
        assert above_a == above_b
    if single is not None:
        exact = single.rerank(queries, a.doc_ids, k=max(len(r) for r in a.doc_ids) or 1)
        for row, ids_a in enumerate(a.doc_ids):
            truth = dict(zip(exact.doc_ids[row], exact.scores[row], strict=False))
            np.testing.assert_allclose([truth[i] for i in ids_a], a.scores[row, : len(ids_a)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["FP16", "KMeans32", "BinaryITQ"])
@pytest.mark.parametrize("n_shards", [1, 4])
def test_exhaustive_shards_equal_one_index(docs, queries, spec, n_shards):
    template = MultiVectorIndex(DIM, spec=spec, first_stage="exhaustive")
    if spec != "FP16":
        template.train(docs)
    sharded = ShardedMultiVectorIndex(template, n_shards).add(docs)
    single = template.add(docs)  # the sharded index copied the template before this add
    if spec == "FP16":  # no ties among float scores: the lists are identical
        assert sharded.search(queries, k=10).doc_ids == single.search(queries, k=10).doc_ids
    assert len(sharded) == len(single) == len(docs) and sum(sharded.shard_sizes) == len(docs)
    assert sorted(sharded.doc_ids) == sorted(single.doc_ids)
    assert sharded.num_vectors == single.num_vectors > 0
    for k in (1, 10, 200):
        _same(sharded.search(queries, k=k), single.search(queries, k=k), queries, single)
    subset = [f"doc-{i}" for i in range(0, 90, 7)]
    _same(sharded.search(queries, k=5, subset=subset), single.search(queries, k=5, subset=subset))
    res = sharded.search(queries, k=3)
    assert res.query_ids == queries.ids and not res.partial
    # labels are row_in_shard * n_shards + shard
    for row, labels in zip(res.doc_ids, res.labels, strict=True):
        assert [int(lab) % n_shards for lab in labels] == [shard_of(i, n_shards) for i in row]


def test_codec_trained_once_on_the_whole_batch(docs, queries):
    sharded = ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="KMeans16"), 3)
    assert not sharded.is_trained
    sharded.add(docs)  # untrained: the template is trained on the whole batch before routing
    shared = sharded._template.codec.state()
    for handle in sharded._handles:
        state = handle.server.index.codec.state()  # type: ignore[attr-defined]
        assert state.keys() == shared.keys()
        for name in shared:
            np.testing.assert_array_equal(state[name], shared[name])
    one = MultiVectorIndex(DIM, spec="KMeans16").add(docs)  # same seed, same batch: same centroids
    _same(sharded.search(queries, k=10), one.search(queries, k=10))
    trained = ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="KMeans16"), 2).train(docs)
    assert trained.is_trained and all(h.server.index.is_trained for h in trained._handles)  # type: ignore[attr-defined]


def test_add_delete_save_load_round_trip(docs, queries, tmp_path):
    template = MultiVectorIndex(DIM, spec="KMeans32").train(docs)
    sharded = ShardedMultiVectorIndex(template, 3)
    sharded.add(docs.select(np.arange(60)))
    sharded.add(docs.select(np.arange(60, 90)))
    with pytest.raises(ConfigError, match="already in the index"):
        sharded.add(docs.select([5]))
    with pytest.raises(UnknownIdError, match="nothing was deleted"):
        sharded.delete(["doc-1", "nope"])
    assert len(sharded) == 90 and "doc-1" in sharded
    gone = [f"doc-{i}" for i in range(0, 90, 4)]
    assert sharded.delete(gone) == len(gone)
    assert len(sharded) == 90 - len(gone) and "doc-0" not in sharded and "doc-1" in sharded
    reference = template.add(docs)
    reference.delete(gone)
    _same(sharded.search(queries, k=10), reference.search(queries, k=10))

    path = sharded.save(tmp_path / "mv")
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["shard-000", "shard-001", "shard-002"]
    report = check_index(path)
    assert report.healthy, report.problems
    loaded = load_index(path)
    assert isinstance(loaded, ShardedMultiVectorIndex)
    assert loaded.spec == "KMeans32" and loaded.shard_sizes == sharded.shard_sizes
    _same(loaded.search(queries, k=10), sharded.search(queries, k=10))
    loaded.add(docs.select([0, 4]))  # a re-added document gets the same codes as before
    reference.add(docs.select([0, 4]))
    _same(loaded.search(queries, k=10), reference.search(queries, k=10))
    with pytest.raises(ConfigError, match="exists"):
        loaded.save(path)
    loaded.save(path, overwrite=True)
    assert len(ShardedMultiVectorIndex.load(path)) == len(reference)
    loaded.close()


def test_failing_shard_and_foreign_shard(docs, queries, tmp_path):
    sharded = ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="FP16"), 3).add(docs)
    server = sharded._handles[1].server  # type: ignore[attr-defined]

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    server.search = broken
    with pytest.raises(ShardError, match=r"shard 1 .*disk gone.*allow_partial") as info:
        sharded.search(queries, k=5)
    assert set(info.value.failures) == {1}
    res = sharded.search(queries, k=5, allow_partial=True)
    assert res.partial and set(res.failed_shards) == {1} and "disk gone" in res.failed_shards[1]
    assert all(shard_of(i, 3) != 1 for row in res.doc_ids for i in row)
    assert all(len(row) == 5 for row in res.doc_ids)

    # a shard copied in from another sharded index (different codec) is refused on load
    a = ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="KMeans16").train(docs), 2).add(docs).save(tmp_path / "a")
    other = MultiVectorIndex(DIM, spec="KMeans16", seed=5).train(docs.select(np.arange(40)))
    b = ShardedMultiVectorIndex(other, 2).add(docs).save(tmp_path / "b")
    shutil.rmtree(a / "shard-001")
    shutil.copytree(b / "shard-001", a / "shard-001")
    with pytest.raises(IndexFormatError, match="shard-001"):
        load_index(a)


def test_bad_input(docs):
    with pytest.raises(ConfigError, match="MultiVectorIndex"):
        ShardedMultiVectorIndex(object(), 2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be empty"):
        ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="FP16").add(docs.select([0])), 2)
    with pytest.raises(ConfigError, match="n_shards"):
        ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="FP16"), 0)
    sharded = ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="FP16"), 5)
    with pytest.raises(ConfigError, match="MultiVectorEmbeddings"):
        sharded.add(np.zeros((3, DIM), np.float32))  # type: ignore[arg-type]
    assert sharded.search(docs.select([0, 1]), k=3).doc_ids == [[], []]
    with pytest.raises(ConfigError, match="ShardedMultiVectorIndex"):
        ShardedIndex(MultiVectorIndex(DIM, spec="FP16"), 2)  # type: ignore[arg-type]
    sharded.add(docs.select([0, 1, 2]))  # fewer documents than shards: empty shards are skipped
    assert sharded.search(docs.select([1]), k=5).doc_ids[0][0] == "doc-1"
    with pytest.raises(UnknownIdError, match="not in the index"):
        sharded.search(docs.select([1]), k=5, subset=["doc-1", "nope"])
    assert sharded.search(docs.select([1]), k=5, subset=["doc-2"]).doc_ids == [["doc-2"]]

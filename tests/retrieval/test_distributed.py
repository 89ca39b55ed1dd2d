"""densezip on a local Ray with 2 CPUs: actor encoding, shard builds as tasks, shard actors.

Ray starts once for the module (a few seconds); the data are tiny. Skipped without Ray.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from indexes import FaissIndex, ShardedIndex, load_index  # noqa: E402
from indexes._shards import empty_copy, shard_of  # noqa: E402
from retrieval.distributed import build_sharded, encode_documents  # noqa: E402
from retrieval.errors import ShardError  # noqa: E402
from retrieval.types import Embeddings  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    faiss = pytest.importorskip("faiss")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # torch (from conftest) and faiss OpenMP runtimes contend otherwise
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def docs() -> Embeddings:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 16)).astype(np.float32)
    return Embeddings(x, [f"p{i}" for i in range(1500)])


def test_encode_documents_with_actors_matches_local(fake_encoder):
    # Ray workers cannot import pytest's `conftest` module: ship the FakeEncoder class by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[type(fake_encoder).__module__])
    texts = [f"passage {i} on subject {i % 5} and {i % 3}" for i in range(90)]
    ids = [f"d{i}" for i in range(90)]
    got = encode_documents(fake_encoder, texts, ids=ids, workers=2, chunk_size=20)
    want = fake_encoder.encode_documents(texts, ids=ids)
    assert got.ids == ids
    np.testing.assert_array_equal(got.vectors, want.vectors)  # chunks come back in order


def test_ray_build_equals_thread_build_and_one_index(docs, tmp_path):
    q = docs.vectors[:12] + 0.01
    attrs = {"group": np.arange(len(docs)) % 7}  # routed with their documents on both paths
    by_ray = build_sharded(docs, tmp_path / "ray", n_shards=3, spec="PQ4x5", metric="l2", train_size=1200,
                           attributes=attrs)
    by_threads = build_sharded(docs, tmp_path / "threads", n_shards=3, spec="PQ4x5", metric="l2",
                               train_size=1200, use_ray=False, attributes=attrs)
    assert by_ray.backend == "ray" and by_ray.shard_sizes == by_threads.shard_sizes
    assert (tmp_path / "ray" / "codebooks.npy").read_bytes() == (tmp_path / "threads" / "codebooks.npy").read_bytes()
    auto = load_index(tmp_path / "ray")  # with Ray running, backend="auto" puts the shards in actors
    assert isinstance(auto, ShardedIndex) and auto.backend == "ray"
    auto.close()
    threads = ShardedIndex.load(tmp_path / "threads", backend="threads")
    template = threads._template
    one = empty_copy(template).add(docs, attributes=attrs)
    a, b = threads.search(q, k=8), one.search(q, k=8)
    np.testing.assert_array_equal(a.scores, b.scores)
    where = {"group": {"$in": [2, 5]}}
    filtered = threads.search(q, k=8, where=where)
    np.testing.assert_array_equal(filtered.scores, one.search(q, k=8, where=where).scores)
    remote = ShardedIndex.load(tmp_path / "ray", backend="ray", actor_options={"num_cpus": 0})
    try:
        c = remote.search(q, k=8)
        np.testing.assert_array_equal(c.scores, b.scores)
        assert c.doc_ids == a.doc_ids
        assert remote.search(q, k=8, where=where).doc_ids == filtered.doc_ids
    finally:
        remote.close()


def _wait_until_dead(actor, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.stats.remote(), timeout=seconds)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed actor still answers after {seconds} s")


def test_ray_shards_add_delete_save_and_a_dead_actor(docs, tmp_path):
    template = FaissIndex(docs.dim, spec="Flat", metric="ip")
    ShardedIndex(template, 2).add(Embeddings(docs.vectors[:1000], docs.ids[:1000])).save(tmp_path / "s")
    index = ShardedIndex.load(tmp_path / "s", backend="ray", actor_options={"num_cpus": 0})
    try:
        index.add(docs.vectors[1000:], ids=docs.ids[1000:])
        index.delete(docs.ids[:100])
        assert len(index) == 1400 and docs.ids[1200] in index and docs.ids[5] not in index
        q = docs.vectors[100:110]
        res = index.search(q, k=3)
        assert [row[0] for row in res.doc_ids] == docs.ids[100:110]
        index.save(tmp_path / "s2")
        again = ShardedIndex.load(tmp_path / "s2", backend="threads")
        assert again.search(q, k=3).doc_ids == res.doc_ids
        assert all(m > 0 for m in index.memory())
        ray.kill(index._actors[1])
        _wait_until_dead(index._actors[1])  # ray.kill is asynchronous: a call right after may still be served
        with pytest.raises(ShardError, match=r"shard 1 \(shard-001\)"):
            index.search(q, k=3)
        partial = index.search(q, k=3, allow_partial=True)
        assert partial.partial and list(partial.failed_shards) == [1]
        assert all(shard_of(i, 2) == 0 for row in partial.doc_ids for i in row)
    finally:
        index.close()


@pytest.mark.slow  # ~20 s: the encoder actor imports torch and loads MiniLM
def test_cli_index_with_shards_on_ray(tmp_path, capsys):
    import json

    from retrieval.app.cli import main

    sys.path.insert(0, str(Path(__file__).parent))
    from test_cli_sharded import write_corpus

    data = write_corpus(tmp_path / "beir")
    assert main(["index", str(data), "--out", str(tmp_path / "ix"), "--spec", "Flat", "--shards", "2",
                 "--encode-workers", "1", "--device", "cpu", "--no-cache", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["backend"] == "ray" and sum(built["shard_sizes"]) == 6 and ray.is_initialized()
    assert main(["search", str(tmp_path / "ix"), "statins and cholesterol", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["hits"][0]["doc_id"] == "d6"


def test_ray_multivector_shards_match_threads_and_report_a_dead_actor(tmp_path):
    from indexes import MultiVectorIndex, ShardedMultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    rng = np.random.default_rng(4)
    mv = MultiVectorEmbeddings.from_list([rng.standard_normal((4, 8)) for _ in range(60)],
                                         ids=[f"m{i}" for i in range(60)])
    template = MultiVectorIndex(8, spec="KMeans16").train(mv)
    ShardedMultiVectorIndex(template, 2).add(mv.select(np.arange(50))).save(tmp_path / "mv")
    threads = ShardedMultiVectorIndex.load(tmp_path / "mv", backend="threads")
    index = ShardedMultiVectorIndex.load(tmp_path / "mv", backend="ray", actor_options={"num_cpus": 0})
    try:
        assert index.backend == "ray" and index.shard_sizes == threads.shard_sizes
        for target in (index, threads):
            target.add(mv.select(np.arange(50, 60)))
            target.delete(["m0", "m1"])
        q = mv.select(np.arange(10, 15))
        res = index.search(q, k=5)
        expected = threads.search(q, k=5)
        assert res.doc_ids == expected.doc_ids
        np.testing.assert_array_equal(res.scores, expected.scores)
        ray.kill(index._actors[0])
        _wait_until_dead(index._actors[0])
        with pytest.raises(ShardError, match=r"shard 0 \(shard-000\)"):
            index.search(q, k=5)
        partial = index.search(q, k=5, allow_partial=True)
        assert list(partial.failed_shards) == [0]
        assert all(shard_of(i, 2) == 1 for row in partial.doc_ids for i in row)
    finally:
        index.close()
        threads.close()

"""The whole JPQ loop on tiny real data: a few steps, the loss falls, centroids move, the export loads."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from indexes._io import is_replaceable
from retrieval.beir import load_beir
from retrieval.errors import ConfigError
from training.jpq import JPQTrainer, JPQTrainingArgs, _unpack_codes, load_jpq


@pytest.fixture(scope="module")
def tiny(minilm_encoder):
    data = load_beir("scifact", split="train").subset(120, seed=1)
    docs = minilm_encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
    return data, docs


def _trainer(tiny, n_queries: int | None = None, **overrides) -> JPQTrainer:
    data, docs = tiny
    qrels = dict(list(data.qrels.items())[:n_queries]) if n_queries else data.qrels
    settings = {"m": 8, "nbits": 4, "opq": False, "epochs": 1, "batch_size": 8, "top_n": 20, "lr_centroids": 1e-2,
                "lr_encoder": 1e-5, "warmup_steps": 1, "dev_fraction": 0.0, "seed": 3}
    settings.update(overrides)
    return JPQTrainer(JPQTrainingArgs(**settings), doc_ids=docs.ids, doc_vectors=docs.vectors,
                      queries=data.queries, qrels=qrels)


def test_loss_falls_and_centroids_move(tiny):
    trainer = _trainer(tiny)
    batch = trainer.train_qids[:8]
    before = float(trainer.loss(batch).detach())
    optimizer, _ = trainer._optimizer()
    for _ in range(5):  # a few steps on one batch must lower its loss
        loss = trainer.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trainer._sync_centroids()
    after = float(trainer.loss(batch).detach())
    assert after < before
    assert not np.allclose(trainer.centroids.detach().numpy(), trainer.initial_centroids)


@pytest.mark.parametrize("opq", [False, True])
def test_scores_match_faiss_on_the_compressed_index(tiny, opq):
    data, docs = tiny
    # OPQ needs >= 256 training vectors: pad the real documents with random unit vectors.
    rng = np.random.default_rng(0)
    extra = rng.standard_normal((300, docs.dim)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    vectors = np.concatenate([docs.vectors, extra])
    ids = docs.ids + [f"random-{i}" for i in range(len(extra))]
    trainer = JPQTrainer(JPQTrainingArgs(m=8, nbits=4, opq=opq, dev_fraction=0.0), doc_ids=ids, doc_vectors=vectors,
                         queries=data.queries, qrels=data.qrels)
    q = trainer.encode_queries(["vitamin d", "cancer risk"])
    distances, labels = trainer.index.search(q, 5)
    import torch

    ours = trainer.score(torch.from_numpy(q), torch.from_numpy(labels)).detach().numpy()
    np.testing.assert_allclose(ours, distances, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("loss", ["pairwise", "softmax"])
def test_train_save_load_search(tiny, tmp_path, loss):
    data, _ = tiny
    trainer = _trainer(tiny, loss=loss, dev_fraction=0.25, epochs=1)
    history = trainer.train()
    assert history.steps == len(trainer.train_qids) // 8 + (len(trainer.train_qids) % 8 > 0)
    assert all(np.isfinite(history.losses)) and len(history.dev) == 2
    out = trainer.save(tmp_path / "jpq")
    retriever = load_jpq(out, device="cpu")
    assert retriever.index.spec == "PQ8x4" and len(retriever.index) == len(data.corpus)
    qid = trainer.train_qids[0]
    res = retriever.search(data.queries[qid], k=5)
    assert len(res.doc_ids[0]) == 5
    # The exported index scores exactly as the trainer's compressed index does.
    direct = trainer.index.search(trainer.encode_queries([data.queries[qid]]), 5)[1][0]
    assert res.doc_ids[0] == [trainer.doc_ids[r] for r in direct]
    with pytest.raises(ConfigError, match="already exists"):
        trainer.save(out)
    assert is_replaceable(out)  # an export is densezip's: overwrite=True may replace it, a user folder not
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="nothing in it was touched"):
        trainer.save(tmp_path / "mine", overwrite=True)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]
    # The encoder and the index are replaced together: a save that fails half-way (here in the
    # index part, after the new encoder was written) leaves the previous export whole.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with mock.patch("indexes.faiss_index.FaissIndex.save", side_effect=OSError("disk full")), \
            pytest.raises(OSError, match="disk full"):
        trainer.save(out, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert load_jpq(out, device="cpu").search(data.queries[qid], k=5).doc_ids == res.doc_ids


def test_ablation_switches_and_bad_args(tiny):
    trainer = _trainer(tiny, train_encoder=False)
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert all(torch_equal(a, b) for a, b in zip(weights, trainer.model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="at least one"):
        JPQTrainingArgs(train_encoder=False, train_centroids=False)
    with pytest.raises(ConfigError, match="must divide"):
        _trainer(tiny, m=7)
    with pytest.raises(ConfigError, match="positive integer"):
        JPQTrainingArgs(m=0)
    with pytest.raises(ConfigError, match="at least 256"):
        _trainer(tiny, opq=True)
    data, docs = tiny
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        JPQTrainer(JPQTrainingArgs(), doc_ids=docs.ids, doc_vectors=docs.vectors, queries=data.queries,
                   qrels=data.qrels, device="cuda")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_unpack_codes_matches_faiss_packing():
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    for nbits in (4, 6, 8):
        pq = faiss.ProductQuantizer(16, 4, nbits)
        pq.train(x)
        packed = pq.compute_codes(x)
        codes = _unpack_codes(packed, 4, nbits)
        centroids = faiss.vector_to_array(pq.centroids).reshape(4, 2**nbits, 4)
        rebuilt = np.concatenate([centroids[m, codes[:, m]] for m in range(4)], axis=1)
        np.testing.assert_allclose(rebuilt, pq.decode(packed), atol=1e-6)


def test_checkpoint_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    common = {"n_queries": 24, "batch_size": 8, "top_n": 10}
    straight = _trainer(tiny, epochs=2, checkpoint_dir=str(tmp_path / "a"), **common)
    straight.train()
    first = _trainer(tiny, epochs=1, checkpoint_dir=str(tmp_path / "b"), **common)
    first.train()
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    resumed = _trainer(tiny, epochs=2, checkpoint_dir=str(tmp_path / "b"), **common)
    history = resumed.train()
    assert history.steps == straight.history.steps
    np.testing.assert_allclose(resumed.centroids.detach().numpy(), straight.centroids.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(history.losses, straight.history.losses, rtol=1e-4)
    with pytest.raises(ConfigError, match="different settings"):
        _trainer(tiny, epochs=2, n_queries=24, batch_size=8, top_n=12, checkpoint_dir=str(tmp_path / "b")).train()


def test_an_old_pickled_checkpoint_is_never_loaded(tiny, tmp_path, caplog):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint.pt").write_bytes(pickle.dumps({"epoch": 0, "model": Payload()}))
    trainer = _trainer(tiny, epochs=1, n_queries=24, batch_size=8, top_n=10, checkpoint_dir=str(tmp_path / "ck"))
    with caplog.at_level("WARNING", logger="training.jpq"):
        trainer.train()
    assert not (tmp_path / "ran").exists()
    assert "never loaded" in caplog.text
    assert (tmp_path / "ck" / "checkpoint.safetensors").is_file()

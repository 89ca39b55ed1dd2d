"""Label-free JPQ: pseudo-queries, query files, the teacher, the listwise loss, selection and export."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest

from retrieval.beir import load_beir
from retrieval.errors import ConfigError, DataError
from training.distill import ExactTeacher, agreement, candidate_rows, listwise_kl, split_heldout
from training.jpq import JPQTrainer, JPQTrainingArgs, load_jpq
from training.queries import pseudo_queries, read_queries


@pytest.fixture(scope="module")
def tiny(minilm_encoder):
    data = load_beir("scifact", split="train").subset(120, seed=1)
    docs = minilm_encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
    return data, docs


def _label_free(tiny, n_queries: int = 96, **overrides) -> JPQTrainer:
    data, docs = tiny
    settings = {"m": 8, "nbits": 4, "opq": False, "epochs": 1, "batch_size": 16, "lr_centroids": 1e-3,
                "lr_encoder": 1e-5, "warmup_steps": 1, "dev_fraction": 0.0, "seed": 3, "teacher": "exact",
                "train_encoder": False,
                "teacher_dev": 24, "distill_top_n": 10, "distill_negatives": 10}
    settings.update(overrides)
    queries = pseudo_queries(data.doc_texts(), n_queries, seed=0)
    return JPQTrainer(JPQTrainingArgs(**settings), doc_ids=docs.ids, doc_vectors=docs.vectors, queries=queries)


# ---------------------------------------------------------------- queries
def test_pseudo_queries_are_spans_of_the_documents():
    texts = ["Alpha beta gamma delta epsilon. Zeta eta theta iota kappa lambda mu!", "one two three",
             " ".join(f"w{i}" for i in range(100))]
    queries = pseudo_queries(texts, 5, seed=1, min_words=4, max_words=8)
    assert 1 <= len(queries) <= 5 and list(queries) == [f"pseudo-{i}" for i in range(len(queries))]
    assert len(set(queries.values())) == len(queries)  # distinct
    for text in queries.values():
        words = text.split()
        assert 4 <= len(words) <= 8
        assert any(text in " ".join(t.split()) for t in texts)  # a contiguous span of one document
    assert pseudo_queries(texts, 5, seed=1, min_words=4, max_words=8) == queries  # seeded
    with pytest.raises(DataError, match="no document has 150 or more words"):
        pseudo_queries(texts, 3, min_words=150, max_words=160)
    with pytest.raises(ConfigError, match="positive integer"):
        pseudo_queries(texts, 0)


def test_read_queries_text_and_jsonl(tmp_path):
    plain = tmp_path / "q.txt"
    plain.write_text("vitamin d and bones\n\n  aspirin risk  \n", encoding="utf-8")
    assert read_queries(plain) == {"line-1": "vitamin d and bones", "line-3": "aspirin risk"}
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(json.dumps({"_id": "a", "text": "x y"}) + "\n" + json.dumps({"query": "z", "id": 7}) + "\n")
    assert read_queries(jsonl) == {"a": "x y", "7": "z"}


@pytest.mark.parametrize(("content", "error", "match"), [
    ("", DataError, "holds no queries"),
    ("\n  \n", DataError, "holds no queries"),
    ("a\nb\na\nb\n", DataError, r"2 repeated queries \(line 3 repeats line 1, line 4 repeats line 2\)"),
    ('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n', DataError, "used twice"),
    ('{"_id": "1", "text": "a"}\nnot json\n', DataError, ":2: not a JSON object"),
    ('{"_id": "1", "title": "a"}\n', DataError, "no string \"text\""),
    (b"\xff\xfe bad", DataError, "not UTF-8"),
])
def test_read_queries_bad_files(tmp_path, content, error, match):
    path = tmp_path / "q.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(error, match=match):
        read_queries(path)


def test_read_queries_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_queries(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_queries(tmp_path)


# ---------------------------------------------------------------- teacher, loss, agreement
def test_teacher_ranks_exactly():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    teacher = ExactTeacher(x)
    scores, rows = teacher.rank(q, 5)
    brute = q @ x.T
    np.testing.assert_array_equal(rows, np.argsort(-brute, axis=1)[:, :5])
    np.testing.assert_allclose(teacher.scores(q, rows), scores, rtol=1e-5)
    assert teacher.rank(q, 500)[1].shape == (3, 50)  # capped at the corpus


def test_listwise_kl_is_zero_at_the_teacher_and_ignores_masked():
    import torch

    t = torch.tensor([[0.9, 0.5, 0.1, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert float(listwise_kl(t.clone(), t, mask, 0.05)) == pytest.approx(0.0, abs=1e-6)
    other = torch.tensor([[0.9, 0.5, 0.1, 5.0]])  # differs only where masked
    assert float(listwise_kl(other, t, mask, 0.05)) == pytest.approx(0.0, abs=1e-6)
    swapped = torch.tensor([[0.5, 0.9, 0.1, 0.0]], requires_grad=True)
    loss = listwise_kl(swapped, t, mask, 0.05)
    loss.backward()
    assert float(loss.detach()) > 0.1 and torch.isfinite(swapped.grad).all()
    assert float(swapped.grad[0, 3]) == 0.0


def test_candidate_rows_and_agreement():
    rows, mask = candidate_rows(np.array([[4, 2], [1, 0]]), np.array([[2, 9], [-1, 3]]))
    assert rows.tolist() == [[4, 2, 0, 9], [1, 0, 0, 3]] and mask.tolist() == [[1, 1, 0, 1], [1, 1, 0, 1]]
    teacher = np.array([[1, 2, 3], [4, 5, 6]])
    perfect = agreement(teacher, teacher, k=3)
    assert perfect == {"teacher-R@3": 1.0, "teacher-nDCG@3": pytest.approx(1.0)}
    half = agreement(np.array([[1, 9, 8], [6, 5, 4]]), teacher, k=3)
    assert half["teacher-R@3"] == pytest.approx((1 / 3 + 1) / 2) and half["teacher-nDCG@3"] < 1
    held, rest = split_heldout([str(i) for i in range(10)], 4, seed=0)
    assert len(held) == 4 and sorted(held + rest) == sorted(str(i) for i in range(10))
    assert len(split_heldout(["a", "b", "c"], 5, seed=0)[0]) == 1  # at most half


# ---------------------------------------------------------------- trainer
def test_label_free_training_raises_agreement_and_exports(tiny, tmp_path):
    trainer = _label_free(tiny, epochs=3, n_queries=200)
    assert not trainer.dev_qids and len(trainer.teacher_dev_qids) == 24
    assert set(trainer.train_qids).isdisjoint(trainer.teacher_dev_qids)
    history = trainer.train()
    start, *later = [e["teacher-nDCG@10"] for e in history.dev]
    assert len(later) == 3 and max(later) > start
    assert history.selected["by"] == "teacher"
    assert history.selected["teacher-nDCG@10"] == max(start, *later)
    out = trainer.save(tmp_path / "jpq")
    meta = json.loads((out / "jpq.json").read_text())
    assert meta["selected"]["by"] == "teacher" and meta["args"]["teacher"] == "exact"
    assert len(load_jpq(out, device="cpu").search("vitamin d", k=3).doc_ids[0]) == 3


def test_selection_restores_the_best_state(tiny):
    # A learning rate this large wrecks the centroids; the start (step 0) must be kept.
    trainer = _label_free(tiny, lr_centroids=50.0, epochs=1)
    history = trainer.train()
    assert history.selected["step"] == 0
    np.testing.assert_allclose(trainer.centroids.detach().numpy(), trainer.initial_centroids)


def test_centroids_only_sgd_and_anchor(tiny):
    free = _label_free(tiny, centroid_optimizer="sgd", lr_centroids=0.5, select="last")
    weights = [p.detach().clone() for p in free.model.parameters()]
    free.train()
    import torch

    assert all(torch.equal(a, b) for a, b in zip(weights, free.model.parameters(), strict=True))
    drift_free = float(np.abs(free.centroids.detach().numpy() - free.initial_centroids).sum())
    anchored = _label_free(tiny, centroid_optimizer="sgd", lr_centroids=0.5, select="last", anchor=50.0)
    anchored.train()
    drift_anchored = float(np.abs(anchored.centroids.detach().numpy() - anchored.initial_centroids).sum())
    assert 0 < drift_anchored < drift_free


def test_judgments_and_distillation_combine(tiny):
    data, docs = tiny
    settings = JPQTrainingArgs(m=8, nbits=4, opq=False, epochs=1, batch_size=16, top_n=20, teacher="exact",
                               dev_fraction=0.2, teacher_dev=8, distill_top_n=10, distill_negatives=10, seed=1)
    qrels = dict(list(data.qrels.items())[:20])
    queries = {**{q: data.queries[q] for q in qrels}, **pseudo_queries(data.doc_texts(), 24, seed=0)}
    trainer = JPQTrainer(settings, doc_ids=docs.ids, doc_vectors=docs.vectors, queries=queries, qrels=qrels)
    assert trainer.selection == "dev" and trainer.dev_qids and trainer.teacher_dev_qids
    assert all(q.startswith("pseudo-") for q in trainer.teacher_dev_qids)
    judged = [q for q in trainer.train_qids if q in qrels][:4]
    pseudo = [q for q in trainer.train_qids if q.startswith("pseudo-")][:4]
    assert float(trainer.loss(judged + pseudo).detach()) > 0
    history = trainer.train()
    assert {"nDCG@10", "teacher-nDCG@10"} <= set(history.dev[-1]) and history.selected["by"] == "dev"


def test_fast_scan_and_ivf_exports_rank_like_the_trained_index(tiny, tmp_path):
    trainer = _label_free(tiny)
    trainer.train()
    q = trainer.encode_queries(["vitamin d deficiency", "cancer cells", "protein folding"])
    _, trained = trainer.index.search(q, 5)
    fast, spec = trainer.export_faiss(fast_scan=True)
    assert spec == "PQ8x4fs"
    assert (fast.search(q, 5)[1] == trained).mean() >= 0.8  # fast-scan rounds its lookup tables to 8 bits
    ivf, spec = trainer.export_faiss(fast_scan=True, ivf_lists=4)
    assert spec == "IVF4,PQ8x4fs" and ivf.ntotal == len(trainer.doc_ids)
    import faiss

    faiss.extract_index_ivf(ivf).nprobe = 4  # every list: the same codes, the same ranking
    np.testing.assert_array_equal(ivf.search(q, 5)[1], fast.search(q, 5)[1])
    plain_ivf, spec = trainer.export_faiss(ivf_lists=4)
    faiss.extract_index_ivf(plain_ivf).nprobe = 4
    assert spec == "IVF4,PQ8x4"
    np.testing.assert_array_equal(plain_ivf.search(q, 5)[1], trained)
    out = trainer.save(tmp_path / "fs", fast_scan=True)
    assert load_jpq(out, device="cpu").index.spec == "PQ8x4fs"
    with pytest.raises(ConfigError, match="ivf_lists must be an integer"):
        trainer.export_faiss(ivf_lists=0)


def test_label_free_bad_input(tiny):
    _, docs = tiny
    with pytest.raises(DataError, match="teacher='exact'"):
        JPQTrainer(JPQTrainingArgs(m=8, nbits=4, opq=False), doc_ids=docs.ids, doc_vectors=docs.vectors,
                   queries={"q": "text"}, qrels={})
    with pytest.raises(DataError, match="needs training query texts"):
        JPQTrainer(JPQTrainingArgs(m=8, nbits=4, opq=False, teacher="exact"), doc_ids=docs.ids,
                   doc_vectors=docs.vectors, queries={})
    with pytest.raises(ConfigError, match="cannot train 256 centroids"):
        JPQTrainer(JPQTrainingArgs(m=8, nbits=8, opq=False, teacher="exact"), doc_ids=docs.ids,
                   doc_vectors=docs.vectors, queries={"q": "text"})
    with pytest.raises(ConfigError, match="must divide"):
        JPQTrainer(JPQTrainingArgs(m=7, nbits=4, opq=False, teacher="exact"), doc_ids=docs.ids,
                   doc_vectors=docs.vectors, queries={"q": "text"})
    with pytest.raises(ConfigError, match="fast-scan layouts hold 4-bit codes"):
        trainer = _label_free(tiny, n_queries=40)
        trainer.args = JPQTrainingArgs(**{**trainer.args.__dict__, "nbits": 8})
        trainer.export_faiss(fast_scan=True)
    for bad in ({"teacher": "bm25"}, {"centroid_optimizer": "adam"}, {"select": "best"}, {"teacher_dev": -1},
                {"distill_temperature": 0}, {"select": "teacher"}):
        with pytest.raises(ConfigError):
            JPQTrainingArgs(**bad)


def test_query_adapter_trains_and_exports_into_the_encoder(tiny, tmp_path):
    trainer = _label_free(tiny, query_adapter=True, train_centroids=False, lr_adapter=1e-2, epochs=2, select="last")
    before = trainer.centroids.detach().clone()
    trainer.train()
    import torch

    assert torch.equal(before, trainer.centroids.detach())  # only the adapter moved
    assert not torch.allclose(trainer.adapter.detach(), torch.eye(trainer.dim))
    texts = ["vitamin d deficiency", "protein folding"]
    _, direct = trainer.index.search(trainer.encode_queries(texts), 5)
    out = trainer.save(tmp_path / "adapted")
    retriever = load_jpq(out, device="cpu")
    assert retriever.search(texts, k=5).doc_ids == [[trainer.doc_ids[r] for r in row] for row in direct]


def test_query_vectors_from_an_earlier_trainer_replace_encoding(tiny):
    first = _label_free(tiny, n_queries=40)
    given = first.teacher_vectors()
    assert len(given) == len(first.train_qids) + len(first.teacher_dev_qids)
    data, docs = tiny
    with mock.patch.object(JPQTrainer, "encode_queries", side_effect=AssertionError("encoded again")):
        second = JPQTrainer(first.args, doc_ids=docs.ids, doc_vectors=docs.vectors,
                            queries=pseudo_queries(data.doc_texts(), 40, seed=0), query_vectors=given)
    np.testing.assert_array_equal(second._teacher_rows, first._teacher_rows)
    from retrieval.errors import ShapeError

    with pytest.raises(ShapeError, match="must be 384 finite floats"):
        JPQTrainer(first.args, doc_ids=docs.ids, doc_vectors=docs.vectors, queries={"q": "text"},
                   query_vectors={"q": np.zeros(3)})

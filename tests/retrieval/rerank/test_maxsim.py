"""MaxSim against hand-built tensors with known answers, and the kernels against each other.

Shape legend: q (nq, Lq, d) queries; D (nd, Ld, d) documents; masks True = real vector.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from retrieval.errors import ShapeError, UnknownIdError
from retrieval.rerank import MaxSimReranker, maxsim, maxsim_csr
from retrieval.scores import top_k
from retrieval.types import MultiVectorEmbeddings, SearchResult


def test_known_answers_with_masks() -> None:
    # q0 = [e0, e1], q1 = [e0, (masked) e1]
    q = np.array([[[1.0, 0, 0], [0, 1, 0]], [[1.0, 0, 0], [0, 1, 0]]])
    qm = np.array([[True, True], [True, False]])
    # d0 = [e0, e2]; d1 = [0.5 e0 + 0.5 e1, (masked) 10 e1]
    d = np.array([[[1.0, 0, 0], [0, 0, 1]], [[0.5, 0.5, 0], [0, 10, 0]]])
    dm = np.array([[True, True], [True, False]])
    expected = [[1.0 + 0.0, 0.5 + 0.5], [1.0, 0.5]]
    np.testing.assert_allclose(maxsim(q, d, qm, dm), expected)
    mq = MultiVectorEmbeddings.from_list([q[0], q[1][:1]])
    md = MultiVectorEmbeddings.from_list([d[0], d[1][:1]])
    np.testing.assert_allclose(maxsim_csr(mq, md), expected)


def test_negative_similarities_are_not_clipped() -> None:
    q = MultiVectorEmbeddings.from_list([np.array([[1.0, 0.0]])])
    d = MultiVectorEmbeddings.from_list([np.array([[-1.0, 0.0], [-0.5, 0.0]])])
    assert maxsim_csr(q, d).tolist() == [[-0.5]]


def test_empty_documents_and_queries() -> None:
    q = MultiVectorEmbeddings.from_list([np.ones((1, 2)), np.zeros((0, 2))])
    d = MultiVectorEmbeddings.from_list([np.zeros((0, 2)), np.ones((2, 2))])
    s = maxsim_csr(q, d)
    assert s[0].tolist() == [-np.inf, 2.0]  # an empty document never matches
    assert s[1].tolist() == [-np.inf, 0.0]  # an empty query scores 0 against any real document


@pytest.mark.parametrize("block", [1, 7, 1 << 24])
def test_csr_kernel_matches_padded_kernel_for_any_block_size(block: int, rng: np.random.Generator,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("retrieval.scores")
    monkeypatch.setattr(module, "_BLOCK", block)
    monkeypatch.setattr(module, "_MAX_ROWS", max(1, block // 3))
    docs = [rng.standard_normal((int(n), 6)) for n in rng.integers(0, 9, size=25)]
    queries = [rng.standard_normal((int(n), 6)) for n in rng.integers(1, 5, size=4)]
    mq, md = MultiVectorEmbeddings.from_list(queries), MultiVectorEmbeddings.from_list(docs)
    pq, qmask = mq.padded()
    pd, dmask = md.padded()
    np.testing.assert_allclose(maxsim_csr(mq, md), maxsim(pq, pd, qmask, dmask), rtol=1e-5, atol=1e-5)
    brute = [[sum(max(float(qv @ dv) for dv in doc) for qv in qu) if len(doc) else -np.inf for doc in docs]
             for qu in queries]
    np.testing.assert_allclose(maxsim_csr(mq, md), brute, rtol=1e-5, atol=1e-5)


def test_shape_errors() -> None:
    with pytest.raises(ShapeError, match="same d"):
        maxsim(np.ones((1, 2, 3)), np.ones((1, 2, 4)))
    with pytest.raises(ShapeError, match="d=3"):
        maxsim_csr(MultiVectorEmbeddings.from_list([np.ones((1, 3))]), MultiVectorEmbeddings.from_list([np.ones((1, 4))]))


def test_top_k_pads_and_breaks_ties_by_position() -> None:
    s = np.array([[1.0, 3.0, 3.0, -np.inf]], dtype=np.float32)
    scores, labels = top_k(s, 5)
    assert labels.tolist() == [[1, 2, 0, -1, -1]]
    assert scores[0, :3].tolist() == [3.0, 3.0, 1.0] and np.isneginf(scores[0, 3:]).all()


class _TokenEncoder:
    """Each character of a query becomes a one-hot vector (d = 4 letters 'abcd')."""

    def encode_queries(self, texts: list[str]) -> MultiVectorEmbeddings:
        return MultiVectorEmbeddings.from_list([np.eye(4, dtype=np.float32)[["abcd".index(c) for c in t]]
                                                for t in texts])


def test_reranker_reorders_first_stage_candidates() -> None:
    eye = np.eye(4, dtype=np.float32)
    store = MultiVectorEmbeddings.from_list([eye[[0]], eye[[0, 1]], eye[[2, 3]]], ids=["x", "y", "z"])
    first = SearchResult(doc_ids=[["x", "z", "y"]], scores=np.zeros((1, 3), np.float32),
                         labels=np.zeros((1, 3), np.int64), query_ids=["q"])
    out = MaxSimReranker(_TokenEncoder(), store).rerank(["ab"], first, k=2)
    assert out.doc_ids == [["y", "x"]] and out.scores[0].tolist() == [2.0, 1.0] and out.query_ids == ["q"]
    with pytest.raises(UnknownIdError, match="no stored vectors"):
        MaxSimReranker(_TokenEncoder(), store).rerank(
            ["a"], SearchResult(doc_ids=[["nope"]], scores=np.zeros((1, 1), np.float32),
                                labels=np.zeros((1, 1), np.int64)), k=1)

"""MultiVectorEncoder on the real offline all-MiniLM-L6-v2 (a handful of short texts)."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import MultiVectorIndex
from retrieval.compress import AttentionPruner
from retrieval.encode.multivector import MultiVectorEncoder
from retrieval.errors import ConfigError, MissingDependencyError, ShapeError
from retrieval.rerank import maxsim_csr

TEXTS = [
    "Aspirin lowers the risk of heart attack in adults.",
    "Protein folding is driven by the hydrophobic effect.",
    "",
    "Vitamin D deficiency is common in northern countries during winter months.",
]


@pytest.fixture(scope="module")
def encoder() -> MultiVectorEncoder:
    return MultiVectorEncoder(device="cpu", query_length=8, document_length=16)


@pytest.fixture(scope="module")
def docs(encoder: MultiVectorEncoder):
    return encoder.encode_documents(TEXTS, ids=["a", "p", "e", "v"])


def test_one_unit_vector_and_one_saliency_per_token(encoder: MultiVectorEncoder, docs) -> None:
    tokenizer = encoder._load()[1]
    n_tokens = [len(tokenizer(t, truncation=True, max_length=16)["input_ids"]) - 2 for t in TEXTS]  # minus CLS/SEP
    assert docs.lengths.tolist() == n_tokens and docs.lengths[2] == 0
    assert docs.dim == encoder.dim == 384 and docs.ids == ["a", "p", "e", "v"]
    np.testing.assert_allclose(np.linalg.norm(docs.vectors, axis=1), 1.0, rtol=1e-5)
    assert docs.saliency is not None and np.isfinite(docs.saliency).all() and (docs.saliency >= 0).all()
    long = encoder.encode_documents(["retrieval " * 40])
    assert long.lengths.tolist() == [14]  # truncated at document_length=16, the two special tokens included


def test_batching_and_order_do_not_change_vectors(docs) -> None:
    other = MultiVectorEncoder(device="cpu", query_length=8, document_length=16, batch_size=1)
    again = other.encode_documents(TEXTS[::-1], ids=["v", "e", "p", "a"])
    for i, j in ((0, 3), (1, 2), (3, 0)):
        np.testing.assert_allclose(docs.doc(i), again.doc(j), atol=1e-4)
        np.testing.assert_allclose(docs.saliency[docs.offsets[i]:docs.offsets[i + 1]],
                                   again.saliency[again.offsets[j]:again.offsets[j + 1]], atol=1e-5)


def test_maxsim_finds_the_matching_document(encoder: MultiVectorEncoder, docs) -> None:
    queries = encoder.encode_queries(["heart attack aspirin", "hydrophobic protein folding"])
    assert queries.lengths.max() <= 6
    scores = maxsim_csr(queries, docs)
    assert scores.argmax(axis=1).tolist() == [0, 1]
    index = MultiVectorIndex(384, spec="Prune0.6,FP16").add(docs)
    assert index.search(queries, k=1).doc_ids == [["a"], ["p"]]


def test_special_tokens_and_projection(encoder: MultiVectorEncoder, docs) -> None:
    with_special = MultiVectorEncoder(device="cpu", document_length=16, keep_special_tokens=True)
    assert (with_special.encode_documents(TEXTS).lengths == docs.lengths + 2).all()
    projected = MultiVectorEncoder(device="cpu", document_length=16).fit_projection(docs, 8)
    out = projected.encode_documents(TEXTS[:2])
    assert out.dim == projected.dim == 8
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError, match="dim <= 384"):
        MultiVectorEncoder(device="cpu").fit_projection(docs, 500)
    pruned = AttentionPruner(0.5)(docs)
    assert pruned.lengths.tolist() == [int(np.ceil(n / 2)) if n else 0 for n in docs.lengths]


def test_bad_input(encoder: MultiVectorEncoder) -> None:
    with pytest.raises(ConfigError, match="Wrap it in a list"):
        encoder.encode_queries("one string")
    with pytest.raises(ShapeError, match="one id per text"):
        encoder.encode_documents(["x", "y"], ids=["only-one"])
    with pytest.raises(ConfigError, match="device"):
        MultiVectorEncoder(device="gpu")
    with pytest.raises(ConfigError, match="query_length"):
        MultiVectorEncoder(query_length=0)
    empty = encoder.encode_documents([])
    assert len(empty) == 0 and empty.num_vectors == 0


def test_explicit_cuda_without_a_gpu_raises() -> None:
    import torch

    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        pytest.skip("a GPU is present")
    with pytest.raises(MissingDependencyError, match=r"(?i)cuda"):
        MultiVectorEncoder(device="cuda").encode_queries(["x"])

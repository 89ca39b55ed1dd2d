"""The FakeEncoder test double must be deterministic and behave like a (crude) retrieval model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.encode.base import Encoder
from retrieval.errors import ConfigError, ShapeError
from retrieval.types import Embeddings


def test_satisfies_encoder_protocol(fake_encoder: Any) -> None:
    assert isinstance(fake_encoder, Encoder)
    assert fake_encoder.dim == 64
    assert fake_encoder.name == "fake-hash-64"


def test_shapes_dtype_and_unit_norm(fake_encoder: Any) -> None:
    q = fake_encoder.encode_queries(["a query", "another query here"])
    assert q.shape == (2, 64)
    assert q.dtype == np.float32
    assert q.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-6)

    docs = fake_encoder.encode_documents(["doc one", "doc two", "doc three"], ids=["a", "b", "c"])
    assert isinstance(docs, Embeddings)
    assert docs.ids == ["a", "b", "c"]
    assert docs.vectors.shape == (3, 64)
    assert fake_encoder.encode_documents(["x", "y"]).ids == ["0", "1"]


def test_deterministic_across_calls_and_instances(fake_encoder_cls: Any) -> None:
    texts = ["The quick brown fox", "jumps over the lazy dog", ""]
    a = fake_encoder_cls(64).encode_queries(texts)
    b = fake_encoder_cls(64).encode_queries(texts)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, fake_encoder_cls(64).encode_documents(texts).vectors)


def test_deterministic_across_processes(fake_encoder: Any) -> None:
    # Guards against anyone "simplifying" to Python's hash(), which is salted per process.
    here = fake_encoder.encode_queries(["salted hashes differ between processes"])[0].tolist()
    tests_dir = Path(__file__).resolve().parent
    code = (
        f"import json, sys; sys.path[:0] = [{str(tests_dir)!r}, {str(tests_dir.parent)!r}]; "
        "from conftest import FakeEncoder; "
        "print(json.dumps(FakeEncoder(64).encode_queries(['salted hashes differ between processes'])[0].tolist()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == here


def test_case_and_punctuation_insensitive(fake_encoder: Any) -> None:
    a, b = fake_encoder.encode_queries(["Hello, World!", "hello world"])
    np.testing.assert_allclose(a, b)


def test_shared_words_score_higher(fake_encoder: Any) -> None:
    query = fake_encoder.encode_queries(["vitamin d deficiency and bone density"])[0]
    docs = fake_encoder.encode_documents(
        [
            "low vitamin d levels reduce bone density in older adults",
            "the stock market closed higher on friday",
        ]
    ).vectors
    scores = docs @ query
    assert scores[0] > scores[1]
    assert scores[0] > 0.3


def test_identical_text_has_similarity_one(fake_encoder: Any) -> None:
    v = fake_encoder.encode_queries(["same words same words"])[0]
    assert float(v @ v) == pytest.approx(1.0)


def test_empty_inputs(fake_encoder: Any) -> None:
    assert fake_encoder.encode_queries([]).shape == (0, 64)
    assert len(fake_encoder.encode_documents([])) == 0
    # A text without tokens is the zero vector, not NaN.
    assert not fake_encoder.encode_queries([""]).any()


def test_rejects_bad_input(fake_encoder: Any) -> None:
    with pytest.raises(ConfigError, match="single str"):
        fake_encoder.encode_queries("not a list")
    with pytest.raises(ConfigError, match="item 1 is int"):
        fake_encoder.encode_queries(["ok", 3])
    with pytest.raises(ShapeError, match="one id per text"):
        fake_encoder.encode_documents(["a", "b"], ids=["only-one"])


def test_records_calls(fake_encoder: Any) -> None:
    fake_encoder.encode_queries(["q"])
    fake_encoder.encode_documents(["d1", "d2"])
    assert fake_encoder.calls == [("query", 1), ("document", 2)]


def test_describe_round_trip(fake_encoder_cls: Any) -> None:
    enc = fake_encoder_cls(32, normalize=False)
    desc = json.loads(json.dumps(enc.describe()))
    again = fake_encoder_cls.from_description(desc)
    assert again.describe() == enc.describe()
    with pytest.raises(ConfigError, match="FakeEncoder"):
        fake_encoder_cls.from_description({"type": "DenseEncoder"})


def test_other_dims(fake_encoder_cls: Any, rng: np.random.Generator) -> None:
    dim = int(rng.integers(8, 200))
    assert fake_encoder_cls(dim).encode_queries(["a b c"]).shape == (1, dim)
    with pytest.raises(ConfigError):
        fake_encoder_cls(0)

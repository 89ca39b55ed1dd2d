"""DenseEncoder against the real, pip-installed all-MiniLM-L6-v2 (offline, CPU, a few texts).

Model-loading tests share the session fixture ``minilm_encoder``; tests that need their
own settings or cache build a fresh encoder (about half a second per model load).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.encode import DEFAULT_MODEL, DenseEncoder, Encoder, fingerprint_model_dir
from retrieval.errors import ConfigError, MissingDependencyError, ShapeError
from retrieval.types import Embeddings

REPO = Path(__file__).resolve().parents[2]
LOGGER = "retrieval.encode.dense"

DOCS = [
    "Smoking tobacco is a leading cause of lung cancer.",
    "Mutations in the BRCA1 gene raise the risk of breast cancer.",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "Regular exercise lowers blood pressure in adults.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "",
]


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


# --------------------------------------------------------------------------- cheap, no model


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, retrieval.encode.dense, retrieval.encode; "
        "from retrieval.encode import DenseEncoder; e = DenseEncoder(); repr(e); e.fingerprint; "
        "bad = sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_subprocess_env(), cwd=REPO)


def test_constructor_validates_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device must be one of"):
        DenseEncoder(device="gpu")
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        DenseEncoder(batch_size=0)
    with pytest.raises(ConfigError, match="max_seq_length"):
        DenseEncoder(max_seq_length=0)
    with pytest.raises(ConfigError, match="normalize"):
        DenseEncoder(normalize="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not exist"):
        DenseEncoder(tmp_path / "missing-model")
    with pytest.raises(ConfigError, match="cache_dir"):
        DenseEncoder(cache_dir=True)  # type: ignore[arg-type]


def test_construction_is_lazy_and_repr() -> None:
    enc = DenseEncoder(cache_dir=False)
    assert enc._model is None
    text = repr(enc)
    assert DEFAULT_MODEL in text and "not loaded" in text and "cache_dir=False" in text
    assert enc.name == "all-MiniLM-L6-v2"


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENSEZIP_CACHE", str(tmp_path))
    assert DenseEncoder().cache_dir == tmp_path / "embeddings"
    monkeypatch.delenv("DENSEZIP_CACHE")
    assert DenseEncoder().cache_dir == Path.home() / ".cache" / "densezip" / "embeddings"
    assert DenseEncoder(cache_dir=False).cache_dir is None


def test_fingerprint_is_content_based(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode": "mean"}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 20_000)  # > 2 MiB: head + tail
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("ignored")
    fp = fingerprint_model_dir(model)
    assert fp.startswith("dir-sha256:")

    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(model, copy)
    (copy / ".cache" / "lock").write_text("hidden files do not count")
    assert fingerprint_model_dir(copy) == fp  # path, mtimes and hidden files ignored

    (copy / "1_Pooling" / "config.json").write_text('{"pooling_mode": "cls"}')
    assert fingerprint_model_dir(copy) != fp
    shutil.copy(model / "1_Pooling" / "config.json", copy / "1_Pooling" / "config.json")
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[10] ^= 0xFF  # a fine-tune rewrites the first tensors
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert fingerprint_model_dir(copy) != fp

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no files"):
        fingerprint_model_dir(empty)


def test_cache_key_depends_on_texts_order_and_settings(tmp_path: Path) -> None:
    # cache_file needs only the (file-based) fingerprint, not the model.
    base = DenseEncoder(cache_dir=tmp_path)
    key = base.cache_file(["a", "b"])
    assert key is not None and key.parent == tmp_path and key.suffix == ".npy"
    assert base.cache_file(["a", "b"]) == key
    assert base.cache_file(["b", "a"]) != key
    assert base.cache_file(["ab"]) != base.cache_file(["a", "b"])
    assert base.cache_file(["a", "b", ""]) != key
    assert DenseEncoder(cache_dir=tmp_path, normalize=False).cache_file(["a", "b"]) != key
    assert DenseEncoder(cache_dir=tmp_path, max_seq_length=64).cache_file(["a", "b"]) != key
    assert DenseEncoder(cache_dir=tmp_path, document_prompt="passage: ").cache_file(["a", "b"]) != key
    # Runtime settings do not change the vectors, so they share the cache.
    assert DenseEncoder(cache_dir=tmp_path, batch_size=8, device="cpu").cache_file(["a", "b"]) == key
    assert base._model is None


def test_from_description_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="'FakeEncoder'"):
        DenseEncoder.from_description({"type": "FakeEncoder", "dim": 64})
    with pytest.raises(ConfigError, match="unknown key"):
        DenseEncoder.from_description({"type": "DenseEncoder", "model": DEFAULT_MODEL, "pooling": "cls"})
    with pytest.raises(ConfigError, match="fingerprint"):
        DenseEncoder.from_description(
            {"type": "DenseEncoder", "model": DEFAULT_MODEL, "fingerprint": "dir-sha256:0000"}, cache_dir=False
        )


def test_explicit_cuda_without_cuda_raises() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path cannot be exercised")
    enc = DenseEncoder(device="cuda", cache_dir=False)  # constructing never probes the device
    with pytest.raises(MissingDependencyError, match=r"device='cuda'.*device='auto'"):
        enc.encode_queries(["x"])
    with pytest.raises(MissingDependencyError, match="cuda:1"):
        DenseEncoder(device="cuda:1", cache_dir=False).encode_queries(["x"])


# --------------------------------------------------------------------------- real model


def test_is_an_encoder(minilm_encoder: DenseEncoder) -> None:
    assert isinstance(minilm_encoder, Encoder)
    assert minilm_encoder.dim == 384
    assert minilm_encoder.device in ("cpu", "cuda", "mps")  # "auto" resolved at load


def test_encode_queries_shape_dtype_and_norm(minilm_encoder: DenseEncoder) -> None:
    q = minilm_encoder.encode_queries(["What causes cancer?", "tallest tower in Paris", ""])
    assert q.shape == (3, 384)
    assert q.dtype == np.float32
    assert q.flags.c_contiguous
    assert np.isfinite(q).all()
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_encode_documents_returns_embeddings(minilm_encoder: DenseEncoder) -> None:
    docs = minilm_encoder.encode_documents(DOCS, ids=[f"d{i}" for i in range(len(DOCS))])
    assert isinstance(docs, Embeddings)
    assert docs.vectors.shape == (len(DOCS), 384)
    assert docs.ids[0] == "d0"
    np.testing.assert_allclose(np.linalg.norm(docs.vectors, axis=1), 1.0, atol=1e-5)
    assert minilm_encoder.encode_documents(DOCS[:2]).ids == ["0", "1"]


def test_queries_and_documents_agree_without_prompts(minilm_encoder: DenseEncoder) -> None:
    texts = DOCS[:3]
    np.testing.assert_allclose(
        minilm_encoder.encode_queries(texts), minilm_encoder.encode_documents(texts).vectors, atol=1e-5
    )


def test_query_prompt_changes_only_queries(minilm_encoder: DenseEncoder) -> None:
    enc = DenseEncoder(query_prompt="query: ", cache_dir=False)
    text = ["vitamin D and bone density"]
    plain = minilm_encoder.encode_queries(text)
    assert not np.allclose(enc.encode_queries(text), plain, atol=1e-4)
    np.testing.assert_allclose(enc.encode_documents(text).vectors, plain, atol=1e-5)


def test_semantic_ordering(minilm_encoder: DenseEncoder) -> None:
    q = minilm_encoder.encode_queries(["What causes cancer?"])[0]
    d = minilm_encoder.encode_documents(DOCS).vectors
    scores = d @ q
    cancer = scores[[0, 1]]
    unrelated = scores[[2, 4]]
    assert cancer.min() > unrelated.max()
    assert int(np.argmax(scores)) in (0, 1)


def test_unnormalized_vectors(minilm_encoder: DenseEncoder) -> None:
    # all-MiniLM-L6-v2 ends with a Normalize module, so only check the option is honoured
    # without errors and stays consistent with the normalised direction.
    enc = DenseEncoder(normalize=False, cache_dir=False)
    raw = enc.encode_queries(DOCS[:2])
    unit = minilm_encoder.encode_queries(DOCS[:2])
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_empty_input(minilm_encoder: DenseEncoder) -> None:
    q = minilm_encoder.encode_queries([])
    assert q.shape == (0, 384) and q.dtype == np.float32
    docs = minilm_encoder.encode_documents([], ids=[])
    assert docs.vectors.shape == (0, 384) and docs.ids == []


def test_bad_texts_raise(minilm_encoder: DenseEncoder) -> None:
    with pytest.raises(ConfigError, match=r"item 1 is int"):
        minilm_encoder.encode_queries(["fine", 42])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"item 0 is NoneType"):
        minilm_encoder.encode_documents([None])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="single str"):
        minilm_encoder.encode_queries("What causes cancer?")
    with pytest.raises(ShapeError, match="one id per text"):
        minilm_encoder.encode_documents(["a", "b"], ids=["x"])
    with pytest.raises(ConfigError, match="batch_size"):
        minilm_encoder.encode_queries(["a"], batch_size=-1)


def test_max_seq_length(minilm_encoder: DenseEncoder) -> None:
    short = DenseEncoder(max_seq_length=8, cache_dir=False)
    long_text = ["word " * 50 + "cancer"]
    assert not np.allclose(short.encode_queries(long_text), minilm_encoder.encode_queries(long_text), atol=1e-4)
    with pytest.raises(ConfigError, match="exceeds"):
        DenseEncoder(max_seq_length=100_000, cache_dir=False).encode_queries(["x"])


def test_describe_round_trip(minilm_encoder: DenseEncoder) -> None:
    desc = minilm_encoder.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["type"] == "DenseEncoder"
    assert desc["model"] == DEFAULT_MODEL
    assert desc["dim"] == 384 and desc["normalize"] is True
    assert desc["fingerprint"].startswith("dir-sha256:")
    again = DenseEncoder.from_description(desc, cache_dir=False)
    assert again.describe() == desc
    np.testing.assert_allclose(again.encode_queries(["x y"]), minilm_encoder.encode_queries(["x y"]), atol=1e-5)

    custom = DenseEncoder(max_seq_length=128, query_prompt="q: ", document_prompt="", cache_dir=False)
    rebuilt = DenseEncoder.from_description(custom.describe(), cache_dir=False)
    assert rebuilt.describe() == custom.describe()


# --------------------------------------------------------------------------- embedding cache


def test_cache_miss_then_hit_without_loading_model(
    tmp_path: Path, minilm_encoder: DenseEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = DenseEncoder(cache_dir=tmp_path)
    a = first.encode_documents(DOCS)
    assert "cache miss" in caplog.text
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file
    np.testing.assert_allclose(a.vectors, minilm_encoder.encode_documents(DOCS).vectors, atol=1e-5)

    caplog.clear()
    second = DenseEncoder(cache_dir=tmp_path)
    b = second.encode_documents(DOCS, ids=[f"x{i}" for i in range(len(DOCS))])
    assert "cache hit" in caplog.text
    assert second._model is None  # served from disk: no model load, no torch needed
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert b.ids[0] == "x0"  # ids are not part of the cache
    assert second.dim == 384  # learnt from the cache file


def test_cache_hit_does_not_call_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = DenseEncoder(cache_dir=tmp_path)
    a = enc.encode_documents(DOCS[:3])

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not be called on a cache hit")

    model = enc._get_model()
    monkeypatch.setattr(model, "encode", boom)
    monkeypatch.setattr(model, "encode_document", boom)
    np.testing.assert_array_equal(enc.encode_documents(DOCS[:3]).vectors, a.vectors)
    with pytest.raises(AssertionError, match="must not be called"):
        enc.encode_documents(list(reversed(DOCS[:3])))  # other order -> other key -> model


def test_different_texts_use_different_files(tmp_path: Path) -> None:
    enc = DenseEncoder(cache_dir=tmp_path)
    enc.encode_documents(DOCS[:2])
    enc.encode_documents(DOCS[:3])
    enc.encode_documents(DOCS[:2])  # hit
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_queries_are_not_cached(tmp_path: Path) -> None:
    DenseEncoder(cache_dir=tmp_path).encode_queries(DOCS[:2])
    assert not any(tmp_path.iterdir())


def test_cache_disabled_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENSEZIP_CACHE", str(tmp_path))
    DenseEncoder(cache_dir=False).encode_documents(DOCS[:2])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "corruption",
    ["garbage-bytes", "truncated", "wrong-shape", "wrong-dtype", "nan", "not-normalised"],
)
def test_corrupt_cache_file_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture, corruption: str) -> None:
    enc = DenseEncoder(cache_dir=tmp_path)
    good = enc.encode_documents(DOCS[:3]).vectors
    (path,) = tmp_path.glob("*.npy")
    if corruption == "garbage-bytes":
        path.write_bytes(b"this is not a numpy file")
    elif corruption == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif corruption == "wrong-shape":
        np.save(path, good[:2])
    elif corruption == "wrong-dtype":
        np.save(path, good.astype(np.float64))
    elif corruption == "nan":
        bad = good.copy()
        bad[1, 5] = np.nan
        np.save(path, bad)
    else:
        np.save(path, good * 2.0)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    again = enc.encode_documents(DOCS[:3]).vectors
    assert any(r.levelno == logging.WARNING and str(path) in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(again, good, atol=1e-5)
    # The bad file was replaced by a good one.
    np.testing.assert_allclose(np.load(path), good, atol=1e-5)


def test_unwritable_cache_dir_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("a file where the cache directory should be")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    out = DenseEncoder(cache_dir=not_a_dir).encode_documents(DOCS[:2])
    assert out.vectors.shape == (2, 384)
    assert "Could not write embedding cache" in caplog.text


def test_cache_hit_in_fresh_process_needs_no_torch(tmp_path: Path) -> None:
    DenseEncoder(cache_dir=tmp_path).encode_documents(DOCS)
    code = (
        "import sys, json; from retrieval.encode import DenseEncoder; "
        f"e = DenseEncoder(cache_dir={str(tmp_path)!r}); "
        f"v = e.encode_documents(json.loads({json.dumps(json.dumps(DOCS))})).vectors; "
        f"assert v.shape == ({len(DOCS)}, 384), v.shape; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_subprocess_env(), cwd=REPO)

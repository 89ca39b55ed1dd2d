"""Shared fixtures: a deterministic FakeEncoder, a seeded RNG, and one real MiniLM encoder.

Model hubs are unreachable in CI and on developer laptops without a network, so the
suite runs offline; the only real model is the pip-installed all-MiniLM-L6-v2.
"""

from __future__ import annotations

import os

# Must be set before transformers / huggingface_hub are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Silences the tokenizers "process just got forked" notice in subprocess tests.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from retrieval.encode.dense import DenseEncoder
from retrieval.errors import ConfigError, ShapeError
from retrieval.types import Embeddings, MultiVectorEmbeddings

_TOKEN_RE = re.compile(r"\w+")


class FakeEncoder:
    """Deterministic bag-of-words encoder for tests: no model, no torch, no randomness.

    Every lowercase word token is hashed with BLAKE2b (stable across processes, unlike
    the salted built-in ``hash``) to one of ``dim`` coordinates and a sign (the
    "hashing trick"); a text's vector is the sum over its tokens, L2-normalised. Texts
    that share words therefore have a higher inner product than texts that do not.
    A text without word tokens (e.g. ``""``) maps to the zero vector.

    Parameters
    ----------
    dim : int, default 64
        Vector width.
    normalize : bool, default True
        L2-normalise each vector.

    Attributes
    ----------
    calls : list of tuple (str, int)
        ``("query" | "document", n)`` for every encode call, to assert how often a
        component encodes.
    """

    def __init__(self, dim: int = 64, *, normalize: bool = True) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive int; got {dim!r}.")
        self._dim = dim
        self.normalize = normalize
        self.calls: list[tuple[str, int]] = []

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return f"fake-hash-{self._dim}"

    def _vector(self, text: str) -> NDArray[np.float64]:
        vec = np.zeros(self._dim, dtype=np.float64)
        for token in _TOKEN_RE.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
            vec[h % self._dim] += 1.0 if (h >> 63) == 0 else -1.0
        norm = float(np.linalg.norm(vec))
        if self.normalize and norm > 0.0:
            vec /= norm
        return vec

    def _encode(self, texts: Sequence[str], side: str) -> NDArray[np.float32]:
        if isinstance(texts, str):
            raise ConfigError("texts must be a sequence of str; got a single str. Wrap it in a list.")
        items = list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise ConfigError(f"every text must be a str; item {i} is {type(text).__name__}.")
        self.calls.append((side, len(items)))
        out = np.zeros((len(items), self._dim), dtype=np.float32)
        for row, text in enumerate(items):
            out[row] = self._vector(text)
        return out

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> NDArray[np.float32]:
        return self._encode(texts, "query")

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> Embeddings:
        vectors = self._encode(texts, "document")
        id_list = [str(i) for i in range(len(vectors))] if ids is None else [str(i) for i in ids]
        if len(id_list) != len(vectors):
            raise ShapeError(f"need one id per text; got {len(id_list)} ids for {len(vectors)} texts.")
        return Embeddings(vectors, id_list)

    def describe(self) -> dict[str, Any]:
        return {"type": "FakeEncoder", "dim": self._dim, "normalize": self.normalize}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> FakeEncoder:
        if description.get("type") != "FakeEncoder":
            raise ConfigError(f"expected a FakeEncoder description; got type {description.get('type')!r}.")
        return cls(int(description["dim"]), normalize=bool(description.get("normalize", True)))

    def __repr__(self) -> str:
        return f"FakeEncoder(dim={self._dim}, normalize={self.normalize})"


@pytest.fixture(autouse=True)
def _isolated_densezip_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Point the default embedding cache at a temp dir so tests never write to ~/.cache."""
    root = tmp_path_factory.mktemp("densezip-cache-root")
    monkeypatch.setenv("DENSEZIP_CACHE", str(root))
    yield root


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator per test."""
    return np.random.default_rng(1338)


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    """A 64-dimensional :class:`FakeEncoder`."""
    return FakeEncoder(64)


@pytest.fixture
def fake_encoder_cls() -> type[FakeEncoder]:
    """The :class:`FakeEncoder` class, for tests that need other widths or settings."""
    return FakeEncoder


@pytest.fixture(scope="session")
def minilm_encoder(tmp_path_factory: pytest.TempPathFactory) -> DenseEncoder:
    """The real default DenseEncoder (all-MiniLM-L6-v2, d=384), loaded once per session.

    Shared: tests must not change its settings. Its cache lives in a session temp dir.
    """
    encoder = DenseEncoder(cache_dir=tmp_path_factory.mktemp("minilm-cache"))
    _ = encoder.dim  # load now, so the first test that uses it is not charged for it
    return encoder


def token_collection(rng: np.random.Generator, n: int, *, dim: int, noise: float, lo: int = 1, hi: int = 12,
                     prefix: str = "d") -> MultiVectorEmbeddings:
    """``n`` documents of ``lo`` to ``hi - 1`` unit token vectors around 6 shared centres (noise
    ``noise``), ids ``<prefix>0 ...``: the small clustered token sets of the engine tests."""
    centres = rng.standard_normal((6, dim))
    arrays = []
    for _ in range(n):
        length = int(rng.integers(lo, hi))
        x = centres[rng.integers(0, 6, size=length)] + noise * rng.standard_normal((length, dim))
        arrays.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return MultiVectorEmbeddings.from_list(arrays, ids=[f"{prefix}{i}" for i in range(n)])


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-model tests (restored afterwards): on 2 shared
    cores, torch's own thread pool only adds contention for models this small."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def colpali_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised ColPali checkpoint saved to disk (model and processor), for
    the page-collection tests (tests/retrieval/rag/page_fixtures.py builds it)."""
    from page_fixtures import tiny_colvision

    model, processor = tiny_colvision("colpali")
    path = tmp_path_factory.mktemp("tiny-colpali")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path

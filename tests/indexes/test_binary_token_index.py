"""The binary engine's FAISS token index saved with a MultiVectorIndex: read back instead of rebuilt,
checked before FAISS reads it, rebuilt when absent or not matching, kept consistent after edits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from indexes import MultiVectorIndex, load_index
from indexes.binary_ann import TOKEN_INDEX_ARRAY, TOKEN_INDEX_FORMAT, BinaryEngine
from retrieval.errors import IndexFormatError
from retrieval.types import MultiVectorEmbeddings

D = 24
KINDS = ("ivf", "hnsw", "flat")
FILE = f"{TOKEN_INDEX_ARRAY}.npy"


def _docs(seed: int, n: int, prefix: str) -> MultiVectorEmbeddings:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((int(rng.integers(1, 9)), D)).astype(np.float32) for _ in range(n)]
    return MultiVectorEmbeddings.from_list(arrays, ids=[f"{prefix}{i}" for i in range(n)])


@pytest.fixture(scope="module")
def data() -> tuple[MultiVectorEmbeddings, MultiVectorEmbeddings]:
    return _docs(3, 120, "d"), _docs(4, 6, "q")


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every FAISS token-index build; a test asserts none happened."""
    builds: list[str] = []
    original = BinaryEngine._build

    def build(self: BinaryEngine, seed: int) -> object:
        builds.append(self.kind)
        return original(self, seed)

    monkeypatch.setattr(BinaryEngine, "_build", build)
    return builds


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, raw: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", ["BinaryITQ", "FP16"])  # shared sign codes, and a separate sign quantizer
def test_saved_token_index_is_read_back_not_rebuilt(data, tmp_path, no_build, kind: str, spec: str, mmap: bool) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec=spec, first_stage="binary", binary_index=kind, token_k=4, nprobe=2, ef_search=16)
    index.add(docs)
    before = index.search(queries, k=5)
    index.save(tmp_path / "ix")
    raw = _manifest(tmp_path / "ix")
    assert raw["params"]["binary_token_index"]["format"] == TOKEN_INDEX_FORMAT
    assert raw["params"]["binary_token_index"]["kind"] == kind and FILE in raw["files"]
    built = len(no_build)
    loaded = load_index(tmp_path / "ix", mmap=mmap)
    after = loaded.search(queries, k=5)
    assert len(no_build) == built  # the load and the search built nothing
    assert loaded._binary is not None and loaded._binary.index.ntotal == index.num_vectors
    assert after.doc_ids == before.doc_ids
    np.testing.assert_array_equal(after.scores, before.scores)


def test_save_builds_the_token_index_a_search_did_not(data, tmp_path, no_build) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec="Binary", first_stage="binary").add(docs)
    assert index._binary is None
    index.save(tmp_path / "ix")
    assert no_build == ["ivf"]
    loaded = load_index(tmp_path / "ix")
    assert loaded.search(queries, k=3).doc_ids == index.search(queries, k=3).doc_ids and no_build == ["ivf"]


@pytest.mark.parametrize("verify", [True, False])
def test_tampered_token_index_is_a_clear_error(data, tmp_path, verify: bool) -> None:
    docs, _ = data
    MultiVectorIndex(D, spec="Binary", first_stage="binary", binary_index="hnsw").add(docs).save(tmp_path / "ix")
    blob = bytearray((tmp_path / "ix" / FILE).read_bytes())
    blob[-40:-20] = b"\xff" * 20  # same size: only a checksum can tell
    (tmp_path / "ix" / FILE).write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError, match=rf"{TOKEN_INDEX_ARRAY}\.npy.*sha256"):
        load_index(tmp_path / "ix", verify=verify)


def test_unreadable_or_foreign_token_index_is_a_clear_error(data, tmp_path) -> None:
    """A file whose manifest entry was forged to match still never crashes FAISS's reader or a search."""
    docs, _ = data
    path = tmp_path / "ix"
    MultiVectorIndex(D, spec="Binary", first_stage="binary").add(docs).save(path)
    other = tmp_path / "other"
    MultiVectorIndex(D, spec="Binary", first_stage="binary").add(docs.select(np.arange(50))).save(other)
    for payload, message in ((np.arange(64, dtype=np.uint8), "cannot be read by FAISS"),
                             (np.load(other / FILE), "does not belong to this index")):
        np.save(path / FILE, payload)
        raw = _manifest(path)
        raw["files"][FILE] = {"bytes": (path / FILE).stat().st_size,
                              "sha256": __import__("hashlib").sha256((path / FILE).read_bytes()).hexdigest()}
        raw["arrays"][TOKEN_INDEX_ARRAY]["shape"] = list(payload.shape)
        _write_manifest(path, raw)
        with pytest.raises(IndexFormatError, match=message):
            load_index(path)


def test_directory_without_token_index_loads_and_rebuilds(data, tmp_path, no_build, caplog) -> None:
    """Indexes saved before the token index was kept still load; the index is built on the first search."""
    docs, queries = data
    index = MultiVectorIndex(D, spec="BinaryITQ", first_stage="binary").add(docs)
    before = index.search(queries, k=5)
    path = index.save(tmp_path / "ix")
    raw = _manifest(path)
    (path / FILE).unlink()
    del raw["files"][FILE], raw["arrays"][TOKEN_INDEX_ARRAY], raw["params"]["binary_token_index"]
    _write_manifest(path, raw)
    built = len(no_build)
    with caplog.at_level(logging.INFO, logger="indexes.binary_ann"):
        loaded = load_index(path)
    assert "no saved binary token index" in caplog.text and loaded._binary is None
    after = loaded.search(queries, k=5)
    assert len(no_build) == built + 1 and after.doc_ids == before.doc_ids
    np.testing.assert_array_equal(after.scores, before.scores)


@pytest.mark.parametrize("change", [{"format": TOKEN_INDEX_FORMAT + 1}, {"vectors": 3}, {"seed": 7}, {"nlist": 2},
                                    "not a dict"])
def test_mismatching_description_rebuilds_with_a_reason(data, tmp_path, no_build, caplog, change) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec="Binary", first_stage="binary").add(docs)
    path = index.save(tmp_path / "ix")
    raw = _manifest(path)
    p = raw["params"]
    p["binary_token_index"] = {**p["binary_token_index"], **change} if isinstance(change, dict) else change
    _write_manifest(path, raw)
    built = len(no_build)
    with caplog.at_level(logging.WARNING, logger="indexes.binary_ann"):
        loaded = load_index(path)
    assert "does not match this index" in caplog.text and loaded._binary is None
    assert loaded.search(queries, k=5).doc_ids == index.search(queries, k=5).doc_ids and len(no_build) == built + 1


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_edits_after_a_load_save_a_consistent_token_index(data, tmp_path, no_build, kind: str) -> None:
    docs, queries = data
    MultiVectorIndex(D, spec="Binary", first_stage="binary", binary_index=kind).add(docs).save(tmp_path / "a")
    index = load_index(tmp_path / "a")
    index.add(_docs(9, 30, "n"))
    index.delete([f"d{i}" for i in range(0, 120, 3)])
    expected = index.search(queries, k=6)  # rebuilt over the edited codes
    index.save(tmp_path / "b")
    built = len(no_build)
    loaded = load_index(tmp_path / "b", mmap=True)
    assert loaded._binary.index.ntotal == loaded.num_vectors == index.num_vectors
    got = loaded.search(queries, k=6)
    assert len(no_build) == built and got.doc_ids == expected.doc_ids
    empty = MultiVectorIndex(D, spec="Binary", first_stage="binary").add(docs)
    empty.delete(empty.doc_ids)
    empty.save(tmp_path / "empty")
    assert len(load_index(tmp_path / "empty")) == 0

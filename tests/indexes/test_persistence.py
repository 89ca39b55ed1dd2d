"""Saved index directories: round trips, atomicity, and validated loads of damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes import FORMAT_VERSION, FaissIndex, FlatIndex, load_index, read_manifest
from retrieval.errors import ConfigError, IndexFormatError

KINDS = {
    "numpy-flat": lambda d: FlatIndex(d),
    "faiss-flat-l2": lambda d: FaissIndex(d, spec="Flat", metric="l2"),
    "hnsw": lambda d: FaissIndex(d, spec="HNSW16", ef_search=32),
    "ivf-pq": lambda d: FaissIndex(d, spec="IVF4,PQ4x4", nprobe=2),
    "opq-pq": lambda d: FaissIndex(d, spec="OPQ4,PQ4x4"),
}


def _vectors(n: int, d: int = 16, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((max(n, 64), d)).astype(np.float32)[:n]


def _built(kind: str, n: int) -> FlatIndex | FaissIndex:
    index = KINDS[kind](16)
    train = _vectors(256, seed=1)
    index.train(train)
    return index.add(_vectors(n), ids=[f"d{i}" for i in range(n)])


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_save_load_roundtrip(kind, n, tmp_path):
    index = _built(kind, n)
    if n > 3:
        index.delete(["d1", "d3"])
    index.metadata["note"] = {"hello": "world"}
    queries = _vectors(5, seed=99)
    before = index.search(queries, k=5)
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert type(loaded) is type(index) and len(loaded) == len(index) and loaded.metadata == index.metadata
    after = loaded.search(queries, k=5)
    assert after.doc_ids == before.doc_ids
    np.testing.assert_array_equal(after.scores, before.scores)
    assert loaded.doc_ids == index.doc_ids
    if isinstance(index, FaissIndex):
        assert loaded.spec == index.spec and repr(loaded) == repr(index)


def test_mmap_load_of_flat_vectors(tmp_path):
    index = _built("numpy-flat", 50)
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix", mmap=True)
    assert isinstance(loaded.vectors, np.memmap)
    assert loaded.search(_vectors(2), k=3).doc_ids == index.search(_vectors(2), k=3).doc_ids
    loaded.add(_vectors(1) * 5, ids=["extra"])  # adding after an mmap load works on a copy
    assert "extra" in loaded


def test_save_refuses_to_overwrite_and_keeps_old_on_failure(tmp_path, monkeypatch):
    index = _built("numpy-flat", 10)
    path = index.save(tmp_path / "ix")
    with pytest.raises(ConfigError, match="already exists"):
        index.save(path)
    old_manifest = (path / "manifest.json").read_text()
    bigger = _built("numpy-flat", 20)

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("indexes.base.write_manifest", boom)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(path, overwrite=True)
    monkeypatch.undo()
    assert (path / "manifest.json").read_text() == old_manifest
    assert len(load_index(path)) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # no temp directory left behind
    bigger.save(path, overwrite=True)
    assert len(load_index(path)) == 20


def test_manifest_is_peekable(tmp_path):
    _built("hnsw", 12).save(tmp_path / "ix")
    manifest = read_manifest(tmp_path / "ix")
    assert manifest.index_type == "FaissIndex" and manifest.count == 12 and manifest.params["spec"] == "HNSW16"
    assert manifest.format_version == FORMAT_VERSION
    assert set(manifest.files) == {"faiss.index", "id_block.npy", "id_perm.npy"}  # fixed-width ids, nothing deleted


def _edit_manifest(path: Path, **changes: object) -> None:
    raw = json.loads((path / "manifest.json").read_text())
    raw.update(changes)
    (path / "manifest.json").write_text(json.dumps(raw))


def test_newer_format_version_is_rejected(tmp_path):
    path = _built("numpy-flat", 3).save(tmp_path / "ix")
    _edit_manifest(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(IndexFormatError, match=rf"version {FORMAT_VERSION + 1}.*pip install -U densezip") as info:
        load_index(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "manifest.json").write_text("[1, 2]"), "JSON object"),
        (lambda p: _edit_manifest(p, format="something-else"), "not written by densezip"),
        (lambda p: _edit_manifest(p, dim="16"), "'dim' must be int"),
        (lambda p: _edit_manifest(p, index_type="MysteryIndex"), "unknown index_type"),
        (lambda p: (p / "vectors.npy").write_bytes((p / "vectors.npy").read_bytes()[:-40]), "bytes, but the manifest"),
        (lambda p: (p / "id_block.npy").write_text("x\n" * 5), "sha256|bytes"),
        (lambda p: (p / "id_perm.npy").unlink(), "id_perm.npy is missing"),
        (lambda p: _edit_manifest(p, files={"vectors.npy": 12}), "plain file name"),
        (lambda p: _edit_manifest(p, files={"../x.npy": {"bytes": 1}}), "plain file name"),
        (lambda p: _edit_manifest(p, arrays={"vectors": "vectors.npy"}), "lists no id arrays"),
    ],
)
def test_damaged_directory_is_a_clear_error(tmp_path, damage, pattern):
    path = _built("numpy-flat", 5).save(tmp_path / "ix")
    damage(path)
    with pytest.raises(IndexFormatError, match=pattern):
        load_index(path)


def test_truncated_array_without_checksums_is_still_caught(tmp_path):
    path = _built("numpy-flat", 5).save(tmp_path / "ix")
    data = (path / "vectors.npy").read_bytes()
    (path / "vectors.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match=r"vectors\.npy"):
        load_index(path, verify=False)


def test_wrong_dtype_array_is_rejected_without_checksums(tmp_path):
    path = _built("numpy-flat", 5).save(tmp_path / "ix")
    np.save(path / "vectors.npy", np.zeros((5, 16), dtype=np.float64))
    with pytest.raises(IndexFormatError, match="bytes, but the manifest"):  # sizes are always checked
        load_index(path, verify=False)
    _edit_manifest(path, files={})  # even with no size on record, the dtype check catches it
    with pytest.raises(IndexFormatError, match="dtype"):
        load_index(path, verify=False)


def test_corrupt_faiss_file_is_rejected(tmp_path):
    path = _built("hnsw", 20).save(tmp_path / "ix")
    blob = bytearray((path / "faiss.index").read_bytes())
    blob[100:140] = b"\x00" * 40
    (path / "faiss.index").write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError, match="sha256"):
        load_index(path)


def test_missing_directory_and_plain_file(tmp_path):
    with pytest.raises(IndexFormatError, match="not an index directory"):
        load_index(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexFormatError, match="not an index directory"):
        load_index(tmp_path / "file")

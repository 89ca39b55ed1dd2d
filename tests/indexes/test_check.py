"""``densezip check`` / :func:`indexes.check.check_index`: every kind of damage is named."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex, load_index
from indexes._idfixed import build_strings
from indexes._idstore import encode
from indexes._io import file_sha256
from indexes.check import check_index
from retrieval.app.cli import main
from retrieval.errors import IndexFormatError


def _flat(path: Path, *, variable: bool = False) -> Path:
    """30 ids of 2-3 bytes (the fixed-width layout) or, ``variable``, one of them 62 bytes long (padding
    every id to 62 bytes would cost more than the variable layout's offsets and hashes)."""
    x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    index = FlatIndex(8).add(x, ids=[f"d{i}" + ("x" * 60 if variable and i == 0 else "") for i in range(30)])
    index.delete(["d3"])
    return index.save(path)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, raw: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(raw))


def _rehash(path: Path, name: str) -> None:
    """Make the manifest agree with a rewritten file, so only the deeper check can catch it."""
    raw = _manifest(path)
    raw["files"][name] = {"bytes": (path / name).stat().st_size, "sha256": file_sha256(path / name)}
    _write_manifest(path, raw)


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))


def _reshape(path: Path) -> None:
    np.save(path / "vectors.npy", np.zeros((30, 4), np.float32))
    _rehash(path, "vectors.npy")


def _save_array(path: Path, name: str, array: np.ndarray) -> None:
    """Replace the array ``name`` and make the manifest agree (entry and file table)."""
    np.save(path / f"{name}.npy", array)
    raw = _manifest(path)
    raw["arrays"][name] = {"file": f"{name}.npy", "dtype": str(array.dtype), "shape": list(array.shape)}
    _write_manifest(path, raw)
    _rehash(path, f"{name}.npy")


def _rewrite_ids(path: Path, ids: list[str]) -> None:
    """Save consistent id arrays for ``ids`` (sorted and all), so only the count or duplicate check can tell."""
    store = build_strings(*encode(ids))
    for name, array in store.arrays().items():
        _save_array(path, name, np.asarray(array))


def _ids(path: Path) -> list[str]:
    return FlatIndex.load(path)._table.ids


def _drop_id(path: Path) -> None:
    _rewrite_ids(path, _ids(path)[:-1])


def _dup_id(path: Path) -> None:
    ids = _ids(path)
    ids[5] = ids[6]
    _rewrite_ids(path, ids)


def _unsort_hashes(path: Path) -> None:
    hashes = np.load(path / "id_hashes.npy")
    _save_array(path, "id_hashes", hashes[::-1].copy())


def _break_perm(path: Path) -> None:
    perm = np.load(path / "id_perm.npy")
    perm[0] = perm[1]
    _save_array(path, "id_perm", perm)


def _short_offsets(path: Path) -> None:
    offsets = np.load(path / "id_offsets.npy")
    offsets[-1] -= 1
    _save_array(path, "id_offsets", offsets)


def _edit_block(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    _save_array(path, "id_block", change(np.load(path / "id_block.npy")))


def _put(block: np.ndarray, row: int, col: int, value: int) -> np.ndarray:
    block[row, col] = value
    return block


def _set(key: str, value: object) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        raw = _manifest(path)
        if value is KeyError:
            del raw[key]
        else:
            raw[key] = value
        _write_manifest(path, raw)

    return damage


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "no-manifest": (lambda p: (p / "manifest.json").unlink(), "missing-manifest"),
    "bad-json": (lambda p: (p / "manifest.json").write_text("{not json"), "bad-json"),
    "json-list": (lambda p: (p / "manifest.json").write_text("[1, 2]"), "bad-json"),
    "invalid-utf8": (lambda p: (p / "manifest.json").write_bytes(b"\xff\xfe{}"), "bad-json"),
    "future-version": (_set("format_version", 99), "future-version"),
    "other-format": (_set("format", "something-else"), "wrong-format"),
    "missing-key": (_set("count", KeyError), "bad-field"),
    "wrong-type": (_set("dim", "eight"), "bad-field"),
    "negative-count": (_set("count", -1), "bad-field"),
    "unknown-type": (_set("index_type", "QuantumIndex"), "unknown-index-type"),
    "missing-file": (lambda p: (p / "vectors.npy").unlink(), "missing-file"),
    "truncated-file": (lambda p: _truncate(p / "vectors.npy"), "truncated-file"),
    "longer-file": (lambda p: (p / "id_block.npy").write_bytes((p / "id_block.npy").read_bytes() + b"x"), "size-mismatch"),
    "longer-file-variable": (lambda p: (p / "id_bytes.npy").write_bytes((p / "id_bytes.npy").read_bytes() + b"x"),
                             "size-mismatch"),
    "bit-flip": (lambda p: _flip(p / "vectors.npy"), "checksum-mismatch"),
    "wrong-shape": (_reshape, "array-mismatch"),
    "id-count": (_drop_id, "id-count"),
    "duplicate-id": (_dup_id, "duplicate-ids"),
    "duplicate-id-variable": (_dup_id, "duplicate-ids"),
    "id-count-variable": (_drop_id, "id-count"),
    "unsorted-hashes-variable": (_unsort_hashes, "bad-ids"),
    "not-a-permutation": (_break_perm, "bad-ids"),
    "not-a-permutation-variable": (_break_perm, "bad-ids"),
    "offsets-past-the-end-variable": (_short_offsets, "bad-ids"),
    # The fixed-width layout (id_block.npy, rows of 3 bytes here):
    "unsorted-block": (lambda p: _edit_block(p, lambda b: b[::-1].copy()), "bad-ids"),
    "nul-inside-an-id": (lambda p: _edit_block(p, lambda b: _put(b, 4, 0, 0)), "bad-ids"),
    "block-not-utf8": (lambda p: _edit_block(p, lambda b: _put(b, 29, 0, 0xFF)), "bad-ids"),
    "block-1d": (lambda p: _edit_block(p, lambda b: b.reshape(-1).copy()), "id-count"),
    "block-uint16": (lambda p: _edit_block(p, lambda b: b.astype(np.uint16)), "bad-ids"),
    "block-zero-width": (lambda p: _edit_block(p, lambda b: b[:, :0].copy()), "bad-ids"),
    "perm-short": (lambda p: _save_array(p, "id_perm", np.load(p / "id_perm.npy")[:-1].copy()), "id-count"),
    "deleted-bits-too-long": (lambda p: _save_array(p, "deleted_bits", np.zeros(9, np.uint8)), "array-mismatch"),
    "deleted-bits-past-the-rows": (lambda p: _save_array(p, "deleted_bits", np.full(4, 255, np.uint8)), "load-failed"),
    "no-id-arrays": (lambda p: _write_manifest(p, {**_manifest(p), "arrays": {
        k: v for k, v in _manifest(p)["arrays"].items() if not k.startswith("id_")}}), "bad-ids"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_each_damage_is_reported(case, tmp_path, capsys):
    path = _flat(tmp_path / "ix", variable=case.endswith("-variable"))
    damage, code = DAMAGE[case]
    damage(path)
    report = check_index(path)
    assert not report.healthy
    assert code in {p.code for p in report.problems}, report.format()
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and code in out


def test_healthy_index_and_json(tmp_path, capsys):
    path = _flat(tmp_path / "ix")
    (path / "notes.txt").write_text("mine")  # an extra file is a warning, not damage
    assert main(["check", str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["healthy"] and payload["loaded"] and payload["index_type"] == "FlatIndex" and payload["count"] == 30
    assert [p["code"] for p in payload["problems"]] == ["extra-file"]


def test_no_verify_skips_hashing(tmp_path):
    path = _flat(tmp_path / "ix")
    _flip(path / "vectors.npy")  # same size: only the hash can tell
    assert check_index(path, verify=False).healthy
    assert not check_index(path).healthy


def test_faiss_file_damage_found_by_load(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    path = FaissIndex(8, spec="HNSW8").add(x, ids=[str(i) for i in range(50)]).save(tmp_path / "ix")
    (path / "faiss.index").write_bytes(b"garbage" * 10)
    _rehash(path, "faiss.index")
    report = check_index(path)
    assert [p.code for p in report.problems] == ["load-failed"] and "faiss" in report.problems[0].message


def test_interrupted_save_and_leftovers_reported_without_touching_anything(tmp_path):
    path = _flat(tmp_path / "ix")
    os.replace(path, tmp_path / ".ix.old-999999999")
    report = check_index(path)
    assert [p.code for p in report.problems] == ["interrupted-save"]
    assert not path.exists()  # check is read-only
    assert check_index(tmp_path / "nothing").problems[0].code == "missing-directory"
    os.replace(tmp_path / ".ix.old-999999999", path)
    (tmp_path / ".ix.tmp-999999999-x").mkdir()
    report = check_index(path)
    assert report.healthy and [p.code for p in report.problems] == ["leftover"]


def test_multivector_index_checked(tmp_path):
    from indexes.multivector import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    rng = np.random.default_rng(0)
    docs = MultiVectorEmbeddings.from_list([rng.standard_normal((3, 8)) for _ in range(10)])
    path = MultiVectorIndex(8, spec="FP16").add(docs).save(tmp_path / "mv")
    assert check_index(path).healthy
    _truncate(path / "codes.npy")
    assert "truncated-file" in {p.code for p in check_index(path).problems}


# ---------------------------------------------------------------------------- sharded indexes, RAG collections
def _sharded(path: Path) -> Path:
    from indexes import ShardedIndex

    x = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    return ShardedIndex(FlatIndex(8), 3).add(x, ids=[f"d{i}" for i in range(40)]).save(path)


def test_sharded_index_is_checked_shard_by_shard(tmp_path):
    path = _sharded(tmp_path / "s")
    report = check_index(path)
    assert report.healthy and report.loaded, report.format()
    assert report.index_type == "ShardedIndex" and report.count == 40
    assert report.files_checked > len(_manifest(path)["files"])  # the shards' files were checked too

    victim = sorted(path.glob("shard-*/vectors.npy"))[1]
    with victim.open("r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x7f")
    report = check_index(path)
    assert not report.healthy
    assert [p.code for p in report.problems] == ["checksum-mismatch"]
    assert report.problems[0].file == f"{victim.parent.name}/vectors.npy"


def test_sharded_index_with_a_missing_shard(tmp_path):
    import shutil

    path = _sharded(tmp_path / "s")
    shutil.rmtree(path / "shard-002")
    codes = {p.code for p in check_index(path).problems}
    assert "missing-directory" in codes


def test_rag_collection_checks_index_and_passages(tmp_path, fake_encoder):
    from retrieval.rag.ingest import Passage
    from retrieval.rag.passages import build_collection, check_collection

    texts = [f"note {i} about topic {i % 3} and more words" for i in range(12)]
    passages = [Passage(f"doc{i}#0", t, f"doc{i}", 0, len(t)) for i, t in enumerate(texts)]
    path = build_collection(passages, tmp_path / "c", encoder=fake_encoder, spec="exact")
    report = check_collection(path)
    assert report.healthy and report.loaded, report.format()

    store = path / "passages" / "passages.jsonl"
    store.write_bytes(store.read_bytes()[:-20])
    report = check_collection(path)
    assert not report.healthy and [p.code for p in report.problems] == ["bad-passages"]
    assert main(["check", str(path)]) == 1


@pytest.mark.parametrize("case,message", [
    ("unsorted-block", "not sorted along id_perm"),
    ("not-a-permutation", "not a permutation"),
    ("nul-inside-an-id", "holds a NUL byte"),
    ("block-not-utf8", "not valid UTF-8"),
    ("duplicate-id", "duplicate live ids"),
    ("block-1d", r"id_block.npy must be 2-d uint8 of 30 rows at least 1 wide; got uint8 \(90,\)"),
    ("block-uint16", r"id_block.npy must be 2-d uint8 .*got uint16 \(30, 3\)"),
    ("block-zero-width", r"at least 1 wide; got uint8 \(30, 0\)"),
    ("perm-short", r"id_perm.npy must be 1-d uint32/int64 of 30 rows; got uint32 \(29,\)"),
    ("deleted-bits-past-the-rows", "marks rows past the 30 of the index as deleted"),
])
def test_damaged_fixed_ids_are_a_clear_load_error(case, message, tmp_path):
    """A forged fixed-width id store with a consistent file table: the verified load names the damage."""
    path = _flat(tmp_path / "ix")
    DAMAGE[case][0](path)
    with pytest.raises(IndexFormatError, match=message):
        load_index(path)

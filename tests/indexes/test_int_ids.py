"""Integer document ids in every index kind: add, search, ``in``, delete, subset, save / load,
``densezip check``, and a clear error when str and int ids meet in one index."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex, MultiVectorIndex, ShardedIndex, ShardedMultiVectorIndex, load_index
from indexes._io import file_sha256
from indexes.check import check_index
from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError
from retrieval.types import Embeddings, MultiVectorEmbeddings

pytest.importorskip("faiss")

N, DIM = 120, 16
IDS = np.arange(N, dtype=np.int64) * 1_000_003 - 50_000_000  # negative and large ids too


def _docs() -> tuple[np.ndarray, MultiVectorEmbeddings]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    arrays = [rng.standard_normal((int(rng.integers(1, 4)), DIM)) for _ in range(N)]
    return x, MultiVectorEmbeddings.from_list(arrays, ids=IDS)


def _faiss() -> FaissIndex:
    index = FaissIndex(DIM, spec="IVF4,Flat")
    index.train(_docs()[0])
    index.nprobe = 4  # every list: exact, comparable with Flat
    return index


MAKERS: dict[str, Callable[[], Any]] = {
    "flat": lambda: FlatIndex(DIM),
    "faiss": _faiss,
    "sharded": lambda: ShardedIndex(FlatIndex(DIM), n_shards=3),
    "multivector": lambda: MultiVectorIndex(DIM, spec="FP16"),
    "sharded-multivector": lambda: ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="FP16"), n_shards=2),
}


def _add(index: Any, rows: np.ndarray, ids: Any) -> None:
    x, mv = _docs()
    if isinstance(index, (MultiVectorIndex, ShardedMultiVectorIndex)):
        index.add(MultiVectorEmbeddings(vectors=mv.select(rows).vectors, offsets=mv.select(rows).offsets, ids=ids))
    else:
        index.add(x[rows], ids=ids)


def _queries(index: Any) -> Any:
    x, mv = _docs()
    return mv.select([3, 50]) if isinstance(index, (MultiVectorIndex, ShardedMultiVectorIndex)) else x[[3, 50]]


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_int_ids_through_every_operation_and_a_save(kind: str, tmp_path: Path) -> None:
    index = MAKERS[kind]()
    _add(index, np.arange(N), IDS)
    top = index.search(_queries(index), k=3).doc_ids
    assert [row[0] for row in top] == [int(IDS[3]), int(IDS[50])] and all(type(i) is int for r in top for i in r)
    assert int(IDS[7]) in index and np.int64(IDS[7]) in index and str(IDS[7]) not in index and 5 not in index
    assert index.delete([int(IDS[3]), IDS[4]]) == 2 and len(index) == N - 2
    assert int(IDS[3]) not in index
    allowed = [int(i) for i in IDS[[50, 60, 70]]]
    assert {i for row in index.search(_queries(index), k=2, subset=allowed).doc_ids for i in row} <= set(allowed)
    with pytest.raises(UnknownIdError):
        index.search(_queries(index), k=2, subset=[int(IDS[3])])
    with pytest.raises(ConfigError, match="holds int document ids; got str ids"):
        _add(index, np.arange(1), ["a"])
    with pytest.raises(ConfigError, match="already in the index"):
        _add(index, np.arange(1), IDS[50:51])
    _add(index, np.arange(3, 4), IDS[3:4])  # a deleted id comes back
    assert int(IDS[3]) in index
    index.save(tmp_path / "ix")
    assert check_index(tmp_path / "ix").healthy
    loaded = load_index(tmp_path / "ix")
    assert sorted(loaded.doc_ids) == sorted(index.doc_ids) and len(loaded) == len(index)
    assert loaded.search(_queries(index), k=3).doc_ids == index.search(_queries(index), k=3).doc_ids
    loaded.delete([int(IDS[50])])
    _add(loaded, np.arange(2), np.array([-1, 2**63 - 1]))
    assert -1 in loaded and 2**63 - 1 in loaded and int(IDS[50]) not in loaded
    for ix in (index, loaded):
        getattr(ix, "close", lambda: None)()


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_str_index_refuses_int_ids(kind: str) -> None:
    index = MAKERS[kind]()
    _add(index, np.arange(4), [f"d{i}" for i in range(4)])
    with pytest.raises(ConfigError, match="holds str document ids; got int ids"):
        _add(index, np.arange(4, 6), np.array([4, 5]))
    assert len(index) == 4
    getattr(index, "close", lambda: None)()


def test_embeddings_keep_int_arrays_and_lists_stay_str() -> None:
    x = np.ones((2, 3), np.float32)
    assert Embeddings(x, ids=np.array([5, 6], dtype=np.uint16)).ids.tolist() == [5, 6]
    assert Embeddings(x, ids=[5, 6]).ids == ["5", "6"]  # as before: any sequence becomes str
    index = FlatIndex(3).add(Embeddings(x, ids=np.array([5, 6])))
    assert index.search(x[:1], k=1).doc_ids == [[5]] and index.doc_ids == [5, 6]
    assert FlatIndex(3).add(x, ids=[7, 8]).doc_ids == [7, 8]  # a list of int is int ids too


def _resave(path: Path, name: str, array: np.ndarray) -> None:
    np.save(path / f"{name}.npy", array)
    raw = json.loads((path / "manifest.json").read_text())
    raw["files"][f"{name}.npy"] = {"bytes": (path / f"{name}.npy").stat().st_size,
                                   "sha256": file_sha256(path / f"{name}.npy")}
    (path / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("ascending", [True, False])
def test_damaged_int_arrays_are_refused(ascending: bool, tmp_path: Path) -> None:
    ids = IDS if ascending else np.random.default_rng(0).permutation(IDS)
    path = FlatIndex(DIM).add(_docs()[0], ids=ids).save(tmp_path / "ix")
    assert (path / "id_perm.npy").exists() != ascending  # ascending ids: 8 bytes per row, no permutation
    name = "id_keys" if ascending else "id_perm"
    array = np.load(path / f"{name}.npy")
    np.save(path / f"{name}.npy", array[::-1].copy())
    with pytest.raises(IndexFormatError, match="sha256"):
        load_index(path)
    _resave(path, name, array[::-1].copy())
    with pytest.raises(IndexFormatError, match="do not ascend" if ascending else "id_sorted is not id_keys sorted"):
        load_index(path)
    assert "bad-ids" in {p.code for p in check_index(path).problems}
    load_index(path, verify=False)  # O(1) checks only: opens (lookups may then miss)


def test_int_ids_cost_8_bytes_a_row_while_they_ascend() -> None:
    index = FlatIndex(DIM)
    x = _docs()[0]
    index.add(x[:60], ids=np.arange(60))
    index.add(x[60:], ids=np.arange(100, 160))
    assert index.memory_bytes() - x.nbytes == N * 8  # no tombstones before the first delete
    index.add(x[:1], ids=[70])  # out of order: the sorted copy and the permutation appear
    assert index.memory_bytes() - x.nbytes - 4 * DIM == (N + 1) * (8 + 8 + 4)
    assert index.search(x[:1], k=1).doc_ids == [[0]] and 70 in index and 159 in index and 60 not in index
    index.delete([70])  # the first delete allocates the tombstones: one bit a row
    assert index.memory_bytes() - x.nbytes - 4 * DIM == (N + 1) * (8 + 8 + 4) + -(-(N + 1) // 8)

"""Indexes saved in format version 1 (ids as ``doc_ids.txt`` lines) still load, search, change and
re-save as the current version; ``densezip check`` passes them. So do indexes of format version 2
(the variable id layout and bool tombstones, ``fixtures/format2``).

The fixtures in ``fixtures/format1`` were written by densezip at commit 3727e62 (the last
version-1 writer) by ``fixtures/make_format1.py``: a FlatIndex and an ``IVF2,Flat`` FaissIndex of 40
8-d vectors with two / one deleted, a 2-shard ShardedIndex, a MultiVectorIndex (FP16) of 6
documents with one deleted, and an empty FlatIndex; ``expected.json`` holds their live ids and
top-3 results as that version returned them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexes import load_index, read_manifest
from indexes.check import check_index
from indexes.manifest import FORMAT_VERSION
from retrieval.errors import IndexFormatError
from retrieval.types import MultiVectorEmbeddings

pytest.importorskip("faiss")

FIXTURES = Path(__file__).parent / "fixtures" / "format1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


@pytest.mark.parametrize("name", ["flat", "faiss_ivf", "sharded"])
def test_single_vector_indexes_of_format_1_load_and_search_as_before(name: str, tmp_path: Path) -> None:
    path = _copy(name, tmp_path)
    assert read_manifest(path).format_version == 1
    assert check_index(path).healthy
    queries = np.load(FIXTURES / "queries.npy")
    index = load_index(path)
    assert index.doc_ids == EXPECTED[name]["doc_ids"]
    assert index.search(queries, k=3).doc_ids == EXPECTED[name]["top3"]
    assert "文書-é" in index and ("doc-3" not in index) == (name == "flat")
    # Changed and saved again, it is a version-2 index with the same ids.
    index.delete(["doc-0"])
    index.add(queries[:1] * 2, ids=["new"])
    index.save(tmp_path / "v2")
    again = load_index(tmp_path / "v2")
    assert read_manifest(tmp_path / "v2").format_version == FORMAT_VERSION
    assert again.doc_ids == index.doc_ids and not (tmp_path / "v2" / "doc_ids.txt").exists()
    assert again.search(queries, k=3).doc_ids == index.search(queries, k=3).doc_ids
    assert check_index(tmp_path / "v2").healthy


def test_multivector_and_empty_indexes_of_format_1_load(tmp_path: Path) -> None:
    index = load_index(_copy("multivector", tmp_path))
    assert index.doc_ids == EXPECTED["multivector"]["doc_ids"]
    rng = np.random.default_rng(7)
    rng.standard_normal((40, 8))  # the fixture's single-vector data came first
    docs = MultiVectorEmbeddings.from_list([rng.standard_normal((int(rng.integers(1, 4)), 8)) for _ in range(6)],
                                           ids=[f"mv-{i}" for i in range(6)])
    assert index.search(docs.select([0, 1]), k=3).doc_ids == EXPECTED["multivector"]["top3"]
    empty = load_index(_copy("empty", tmp_path))
    assert len(empty) == 0
    empty.add(np.ones((1, 8), np.float32), ids=np.array([7]))  # an empty index takes either type of id
    assert empty.doc_ids == [7]


def test_a_format_1_index_without_its_lines_is_refused(tmp_path: Path) -> None:
    path = _copy("flat", tmp_path)
    raw = json.loads((path / "manifest.json").read_text())
    del raw["files"]["doc_ids.txt"]
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(IndexFormatError, match=r"does not list.*doc_ids\.txt"):
        load_index(path)
    assert "unlisted-file" in {p.code for p in check_index(path).problems}


FORMAT2 = Path(__file__).parent / "fixtures" / "format2"


@pytest.mark.parametrize("name", ["flat", "int_ids"])
def test_indexes_of_format_2_load_with_their_bool_tombstones_and_resave_as_3(name: str, tmp_path: Path) -> None:
    """Written by the code of commit c78e751 (``fixtures/make_format2.py``): variable-layout string
    ids, or sorted integer ids, and ``deleted.npy`` (bool); the flat index deleted ``doc-3`` and added it again."""
    path = Path(shutil.copytree(FORMAT2 / name, tmp_path / name))
    expected = json.loads((FORMAT2 / "expected.json").read_text(encoding="utf-8"))[name]
    assert read_manifest(path).format_version == 2 and check_index(path).healthy
    index = load_index(path)
    queries = np.load(FORMAT2 / "queries.npy")
    assert index.doc_ids == expected["doc_ids"] and index.search(queries, k=3).doc_ids == expected["top3"]
    if name == "flat":
        assert "doc-3" in index and "doc-17" not in index and index._table.rows_of(["doc-3"]) == [20]
        assert index.ntotal == 21 and len(index) == 19 and index._table.deleted.nonzero()[0].tolist() == [3, 17]
        index.delete(["doc-3"])
        index.add(queries[:1], ids=["doc-17"])
    index.save(tmp_path / "v3")
    again = load_index(tmp_path / "v3")
    files = set(read_manifest(tmp_path / "v3").files)
    assert read_manifest(tmp_path / "v3").format_version == FORMAT_VERSION == 3 and "deleted.npy" not in files
    assert ("deleted_bits.npy" in files) == (name == "flat") and ("id_block.npy" in files) == (name == "flat")
    assert again.doc_ids == index.doc_ids and check_index(tmp_path / "v3").healthy
    assert again.search(queries, k=3).doc_ids == index.search(queries, k=3).doc_ids

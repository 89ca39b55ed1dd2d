"""Hypothesis fuzzing of the saved layouts above single indexes: sharded indexes (the top
manifest and each shard's own) and RAG passage stores (manifest and records).

The same rule as tests/indexes/test_fuzz.py: every damaged directory must load as the same
index / store or fail with a :class:`~retrieval.errors.RetrievalError`, never another
exception or a silently different result. ``DENSEZIP_FUZZ_EXAMPLES`` sets the number of cases.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import (  # tests/indexes is on sys.path
    _IDS,
    _X,
    DIM,
    FUZZ,
    _same,
    copy_of,
    json_values,
    manifest_mutations,
)

from indexes import FaissIndex, FlatIndex, ShardedIndex, load_index
from indexes._io import file_sha256
from retrieval.errors import RetrievalError
from retrieval.rag.ingest import Passage
from retrieval.rag.passages import PassageStore

_ROOT = Path(tempfile.mkdtemp(prefix="densezip-fuzz-layouts-"))
SAVED: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)
    SAVED.clear()


def _passages() -> list[Passage]:
    return [Passage(id=f"p{i}", text=f"passage {i} " * (i + 1), doc_id=f"doc{i // 3}", start=i, end=2 * i + 5,
                    source=f"d{i // 3}.txt" if i % 2 else None, metadata={"lang": "en", "n": i})
            for i in range(7)]


def _saved(kind: str) -> Path:
    if kind not in SAVED:
        if kind == "sharded":
            index = ShardedIndex(FaissIndex(DIM, spec="HNSW8", ef_search=64), 2)
            index.add(_X, ids=_IDS)
            index.delete(["d5"])
            SAVED[kind] = index.save(_ROOT / kind)
            index.close()
        elif kind == "sharded-flat":
            index = ShardedIndex(FlatIndex(DIM), 3).add(_X, ids=_IDS)
            SAVED[kind] = index.save(_ROOT / kind)
            index.close()
        else:
            SAVED[kind] = PassageStore(_passages(), chunking={"window": 16, "overlap": 4}).save(_ROOT / kind)
    return SAVED[kind]


def _copy(kind: str) -> contextlib.AbstractContextManager[Path]:
    return copy_of(_saved(kind), _ROOT)


def _rehash(directory: Path, manifest_name: str, file_name: str) -> None:
    """Make ``manifest_name`` agree with the current bytes of ``file_name`` (a forged, consistent manifest)."""
    manifest = json.loads((directory / manifest_name).read_text())
    manifest["files"][file_name] = {"bytes": (directory / file_name).stat().st_size,
                                    "sha256": file_sha256(directory / file_name)}
    (directory / manifest_name).write_text(json.dumps(manifest))


# ---------------------------------------------------------------------- sharded indexes
@pytest.mark.parametrize("kind", ["sharded", "sharded-flat"])
@pytest.mark.parametrize("where", ["manifest.json", "shard-000/manifest.json", "shard-001/manifest.json"])
@FUZZ
@given(data=st.data(), verify=st.booleans())
def test_fuzz_sharded_manifests(kind, where, data, verify):
    original = load_index(_saved(kind))
    raw = json.loads((_saved(kind) / where).read_text())
    what, text, structural = data.draw(manifest_mutations(raw))
    with _copy(kind) as path, contextlib.closing(original):
        (path / where).write_bytes(text)
        try:
            loaded = load_index(path, verify=verify)
        except RetrievalError as exc:
            assert str(exc)
            return
        with contextlib.closing(loaded):
            # Loading succeeded: a structural field (for the top manifest, params too: the
            # shard list and the shared trained state) cannot have changed what the index holds.
            if structural or (where == "manifest.json" and what.startswith(("replace params", "delete params"))):
                assert _same(loaded, original), what


# ---------------------------------------------------------------------- passage stores
def _load_checked(path: Path) -> PassageStore | None:
    """The store at ``path`` with every record's types checked, or None when it was refused with a message."""
    try:
        store = PassageStore.load(path)
    except RetrievalError as exc:
        assert str(exc)
        return None
    _valid(store)
    return store


def _valid(store: PassageStore) -> None:
    """Every loaded record has the types the RAG component relies on."""
    for p in store.passages:
        assert isinstance(p.id, str) and p.id and isinstance(p.text, str) and isinstance(p.doc_id, str)
        assert type(p.start) is int and type(p.end) is int and 0 <= p.start <= p.end
        assert p.source is None or isinstance(p.source, str)
        assert isinstance(p.metadata, dict)


@FUZZ
@given(data=st.data())
def test_fuzz_passage_manifest(data):
    raw = json.loads((_saved("store") / "manifest.json").read_text())
    what, text, structural = data.draw(manifest_mutations(raw))
    with _copy("store") as path:
        (path / "manifest.json").write_bytes(text)
        store = _load_checked(path)
        if store is not None and structural:
            assert [p.to_json() for p in store.passages] == [p.to_json() for p in _passages()], what


records = st.one_of(
    st.text(max_size=80),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"id": json_values, "text": json_values, "doc_id": json_values, "start": json_values, "end": json_values},
        optional={"source": json_values, "metadata": json_values},
    ).map(json.dumps),
    st.fixed_dictionaries(
        {"id": st.text(max_size=4), "text": st.text(max_size=8), "doc_id": st.text(max_size=4),
         "start": st.integers(-3, 30), "end": st.integers(-3, 30)},
        optional={"source": st.none() | st.text(max_size=4) | st.integers(),
                  "metadata": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.lists(st.integers())},
    ).map(json.dumps),
)


@FUZZ
@given(line=records, row=st.integers(0, 6))
def test_fuzz_passage_records(line, row):
    """A record replaced and the manifest re-hashed to match: parsed and type-checked, or refused."""
    with _copy("store") as path:
        lines = (path / "passages.jsonl").read_text(encoding="utf-8").splitlines()
        lines[row] = line.replace("\n", " ").replace("\r", " ")
        (path / "passages.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        _rehash(path, "manifest.json", "passages.jsonl")
        store = _load_checked(path)
        assert store is None or len(store) == 7


def test_records_with_wrong_types_are_refused(tmp_path):
    """Found by the fuzzing above: these once loaded as passages with non-int offsets or ids."""
    good = _passages()[0].to_json()
    for change in ({"start": "3"}, {"end": 2.5}, {"start": True}, {"doc_id": 7}, {"source": 3},
                   {"start": 9, "end": 4}, {"start": -1}, {"id": ""}, {"metadata": [1]}):
        store = PassageStore([_passages()[0]]).save(tmp_path / "s", overwrite=True)
        (store / "passages.jsonl").write_text(json.dumps({**good, **change}) + "\n", encoding="utf-8")
        _rehash(store, "manifest.json", "passages.jsonl")
        with pytest.raises(RetrievalError, match=r"passages\.jsonl:1"):
            PassageStore.load(store)


def test_a_sharded_index_survives_the_cases_above_untouched():
    """The originals the fuzzing copies from still load and search the same."""
    for kind in ("sharded", "sharded-flat"):
        a, b = load_index(_saved(kind)), load_index(_saved(kind))
        try:
            assert _same(a, b)
            assert len(a.search(np.zeros((1, DIM), np.float32) + 1, k=3).doc_ids[0]) == 3
        finally:
            a.close()
            b.close()


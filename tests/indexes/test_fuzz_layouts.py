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



# ---------------------------------------------------------------------- every manifest field of every kind
# Values a damaged or forged manifest may hold in any field: type swaps (bools, floats where ints
# belong, strings, containers), out-of-range numbers (negative, zero, past C int / int64, past
# float64 once serialised), and very long strings. ``"<missing>"`` deletes the field.
PATHOLOGICAL = [-1, 0, 1, 2**31, 2**63, 10**30, 1.5, 2.0, 1e300, True, False, None, "", "x" * 5000, "3",
                [], [1, -1], {}, {"a": {"b": [None]}}, "<missing>"]


def _build_kind(kind: str, path: Path) -> Path:
    from indexes import ShardedMultiVectorIndex
    from indexes.multivector import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    mv = MultiVectorEmbeddings.from_list([np.stack([x, -x]) for x in _X], ids=_IDS)
    if kind.startswith("faiss:"):
        index = FaissIndex(DIM, spec=kind[6:]).train(_X).add(_X, ids=_IDS)
        index.delete(["d5"])
    elif kind.startswith("mv:"):
        _, spec, first_stage = kind.split(":")
        if spec == "KMeans300":  # 2-byte centroid ids: enough vectors to fit 300 centroids
            rng = np.random.default_rng(1)
            mv = MultiVectorEmbeddings.from_list([rng.standard_normal((8, DIM)) for _ in _IDS], ids=_IDS)
        index = MultiVectorIndex(DIM, spec=spec, first_stage=first_stage).add(mv)
    elif kind == "sharded-mv":
        index = ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="KMeans16"), 2).add(mv)
    elif kind == "sharded-ivf":
        index = ShardedIndex(FaissIndex(DIM, spec="IVF2,Flat", nprobe=2), 2).train(_X).add(_X, ids=_IDS)
    else:
        index = FlatIndex(DIM).add(_X, ids=_IDS)
    saved = index.save(path)
    if hasattr(index, "close"):
        index.close()
    return saved


FIELD_KINDS = ["flat", "faiss:HNSW8", "faiss:IVF2,PQ4x4", "faiss:PCA4,IVF2,SQ8", "mv:Flat:exhaustive",
               "mv:KMeans16r2:centroid", "mv:KMeans300:exhaustive", "mv:Binary:binary", "mv:FP16:binary",
               "sharded-ivf", "sharded-mv"]


def _kind_dir(kind: str) -> Path:
    if kind not in SAVED:
        SAVED[kind] = _build_kind(kind, _ROOT / kind.replace(":", "_").replace(",", "_"))
    return SAVED[kind]


def _json_paths(obj: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _json_paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:3]):
            out += _json_paths(value, (*prefix, i))  # type: ignore[arg-type]
    return out


@st.composite
def field_mutation(draw: st.DrawFn, raw: dict) -> tuple[str, dict]:
    """One field of ``raw`` (nested anywhere, list items included) replaced, deleted, or one extra key added."""
    data = json.loads(json.dumps(raw))
    path = draw(st.sampled_from(_json_paths(data)))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    value = draw(st.sampled_from(PATHOLOGICAL) | json_values)
    if value == "<missing>":
        del parent[path[-1]]
    elif isinstance(parent, dict) and draw(st.integers(0, 9)) == 0:
        parent[f"extra-{path[-1]}"] = value  # an unknown key next to the field: ignored or refused
    else:
        parent[path[-1]] = value
    return f"{'.'.join(map(str, path))} = {value!r:.40}", data


def _queries(index: object) -> object:
    from indexes.multivector import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    multi = isinstance(index, MultiVectorIndex) or type(index).__name__ == "ShardedMultiVectorIndex"
    return MultiVectorEmbeddings.from_list([_X[:2], _X[2:3], np.zeros((0, DIM), np.float32)]) if multi else _X[:3]


#: Manifest settings that steer a search, not what the index holds: a valid new value may change the hits.
SEARCH_TIME = ("n_candidates", "nprobe", "token_k", "first_stage", "ef_search", "ndocs", "centroid_score_threshold",
               "binary_index")


def _check_field_case(directory: Path, text: bytes, what: str, original: object) -> None:
    """The contract for one mutated manifest: load refuses it with IndexFormatError, or the loaded
    index searches like the original; ``check_index`` reports, never raises."""
    from indexes.check import check_index
    from retrieval.errors import IndexFormatError

    (directory / "manifest.json").write_bytes(text)
    report = check_index(directory)  # must not raise, whatever the manifest holds
    assert report.format()
    try:
        loaded = load_index(directory)
    except IndexFormatError as exc:
        assert str(exc), what  # the CLI prints it on one line (newlines from echoed names are folded)
        return
    with contextlib.closing(loaded) if hasattr(loaded, "close") else contextlib.nullcontext():
        queries = _queries(loaded)
        got, want = loaded.search(queries, k=5), original.search(queries, k=5)
        if any(f"{name} =" in what or f".{name}." in what for name in SEARCH_TIME):
            # A search-time setting (still valid, or it would have been refused) may change which
            # candidates are scored, not what a hit is: the hits must still be real documents.
            assert all(set(row) <= set(original.doc_ids) and len(set(row)) == len(row) for row in got.doc_ids), what
        else:
            assert got.doc_ids == want.doc_ids, what


@pytest.mark.parametrize("kind", FIELD_KINDS)
@FUZZ
@given(data=st.data())
def test_fuzz_every_manifest_field(kind, data):
    original = load_index(_kind_dir(kind))
    where = data.draw(st.sampled_from(["manifest.json", *(["shard-001/manifest.json"] if "sharded" in kind else [])]))
    raw = json.loads((_kind_dir(kind) / where).read_text())
    what, mutated = data.draw(field_mutation(raw))
    with copy_of(_kind_dir(kind), _ROOT) as path, contextlib.closing(original) if hasattr(original, "close") \
            else contextlib.nullcontext():
        if where != "manifest.json":  # a shard's manifest: the top one then records another sha256
            (path / where).write_text(json.dumps(mutated))
            _check_field_case(path, (path / "manifest.json").read_bytes(), f"{where}: {what}", original)
        else:
            _check_field_case(path, json.dumps(mutated).encode(), what, original)


@pytest.mark.parametrize("text", [
    b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,  # nesting past the recursion limit
    b'{"format": "densezip-index", "dim": ' + b"9" * 5000 + b"}",  # an integer past Python's digit limit
    b'{"format": "densezip-index", "dim": 1e999}', b'{"format": "densezip-index", "count": NaN}',
    b'{"format": "densezip-index", "count": -Infinity}',
], ids=["deep-list", "deep-object", "huge-int", "float-overflow", "nan", "infinity"])
def test_pathological_json_is_damage(text):
    from retrieval.errors import IndexFormatError

    with copy_of(_kind_dir("flat"), _ROOT) as path:
        (path / "manifest.json").write_bytes(text)
        report = __import__("indexes.check", fromlist=["check_index"]).check_index(path)
        assert [p.code for p in report.problems] == ["bad-json"]
        with pytest.raises(IndexFormatError, match="is not valid JSON"):
            load_index(path)


@pytest.mark.parametrize("kind", ["flat", "faiss:HNSW8", "mv:KMeans16r2:centroid", "sharded-ivf"])
def test_a_file_table_that_drops_a_read_file_is_damage(kind):
    """Every file the load reads must be in ``files`` (so it is size- and sha256-checked first)."""
    from indexes.check import check_index
    from indexes.manifest import files_read
    from retrieval.errors import IndexFormatError

    raw = json.loads((_kind_dir(kind) / "manifest.json").read_text())
    for name in files_read(raw):
        with copy_of(_kind_dir(kind), _ROOT) as path:
            damaged = json.loads(json.dumps(raw))
            del damaged["files"][name]
            (path / "manifest.json").write_text(json.dumps(damaged))
            assert "unlisted-file" in [p.code for p in check_index(path).problems], name
            with pytest.raises(IndexFormatError, match="file table does not list"):
                load_index(path)


def _collection() -> Path:
    """A RAG collection (index/ + passages/) without an encoder: a FlatIndex over the passages' ids."""
    if "collection" not in SAVED:
        root = _ROOT / "collection"
        passages = _passages()
        FlatIndex(DIM).add(_X[: len(passages)], ids=[p.id for p in passages]).save(root / "index")
        PassageStore(passages, chunking={"window": 16, "overlap": 4}).save(root / "passages")
        SAVED["collection"] = root
    return SAVED["collection"]


@FUZZ
@given(data=st.data())
def test_fuzz_every_collection_manifest_field(data):
    """The passages manifest of a RAG collection: refused with IndexFormatError or loaded as the same
    store; ``check_collection`` reports, never raises."""
    from retrieval.errors import IndexFormatError
    from retrieval.rag.passages import check_collection

    raw = json.loads((_collection() / "passages" / "manifest.json").read_text())
    what, mutated = data.draw(field_mutation(raw))
    with copy_of(_collection(), _ROOT) as path:
        (path / "passages" / "manifest.json").write_text(json.dumps(mutated))
        assert check_collection(path).format()
        try:
            store = PassageStore.load(path / "passages")
        except IndexFormatError as exc:
            assert str(exc), what
            return
        assert [p.to_json() for p in store.passages] == [p.to_json() for p in _passages()], what


def _jpq_like_export() -> Path:
    """The index part of a JPQ export (``index/``: an OPQ + PQ FaissIndex whose metadata records the
    query encoder relative to it and the training run), without training a model."""
    if "jpq" not in SAVED:
        index = FaissIndex(DIM, spec="OPQ2,PQ2x4").train(np.tile(_X, (8, 1))).add(_X, ids=_IDS)
        index.metadata["encoder"] = {"type": "DenseEncoder", "model": "../query_encoder", "normalize": True,
                                     "max_seq_length": 32, "query_prompt": None, "document_prompt": None,
                                     "dim": DIM, "fingerprint": "0" * 16}
        index.metadata["jpq"] = {"args": {"m": 2, "epochs": 1, "spec": "OPQ2,PQ2x4"}, "steps": 3, "dev": {}}
        SAVED["jpq"] = index.save(_ROOT / "jpq" / "index")
        (_ROOT / "jpq" / "jpq.json").write_text(json.dumps(index.metadata["jpq"]))
    return SAVED["jpq"]


@FUZZ
@given(data=st.data())
def test_fuzz_every_jpq_export_field(data):
    """What ``load_jpq`` reads: the index manifest (every field, the encoder description included).
    The index is refused with IndexFormatError or loads the same; a damaged encoder description is a
    one-line RetrievalError from the encoder registry (the model itself is never loaded here)."""
    from retrieval.encode.registry import encoder_from_description

    raw = json.loads((_jpq_like_export() / "manifest.json").read_text())
    what, mutated = data.draw(field_mutation(raw))
    original = load_index(_jpq_like_export())
    with copy_of(_jpq_like_export(), _ROOT) as path:
        _check_field_case(path, json.dumps(mutated).encode(), what, original)
        description = mutated.get("metadata", {}).get("encoder") if isinstance(mutated.get("metadata"), dict) else None
        try:
            encoder_from_description(description, device="cpu", base_dir=path, check_fingerprint=False)
        except RetrievalError as exc:
            assert str(exc), what

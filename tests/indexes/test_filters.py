"""Filtered search (``where=``): every index kind against a brute force over the attribute table.

The oracle here is written independently of :mod:`indexes._predicates`: a plain-Python match
of one record, and exact scores over the matching live rows. Flat (and sharded Flat) must agree
exactly; approximate kinds must return ``min(k, matches)`` hits, every one of them matching.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexes import FaissIndex, FlatIndex, _filtered, load_index
from indexes._filtered import exact_is_cheaper
from indexes._predicates import evaluate_records, fields_of, uses_operators
from indexes.multivector import MultiVectorIndex
from indexes.sharded import ShardedIndex
from indexes.sharded_multivector import ShardedMultiVectorIndex
from retrieval.errors import ConfigError, IndexFormatError
from retrieval.types import Embeddings, MultiVectorEmbeddings

EXAMPLES = int(os.environ.get("DENSEZIP_FUZZ_EXAMPLES", "25"))
PROPS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 25,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
DIM = 8
N = 60
DAY0 = dt.datetime(2024, 1, 1)
_RNG = np.random.default_rng(7)
X = _RNG.standard_normal((N, DIM)).astype(np.float32)
TRAIN = _RNG.standard_normal((512, DIM)).astype(np.float32)
Q = _RNG.standard_normal((3, DIM)).astype(np.float32)
IDS = [f"d{i}" for i in range(N)]
RECORDS = [{"year": 2015 + i % 10, "type": ["faq", "manual", "blog"][i % 3], "ok": i % 4 == 0,
            "score": float(_RNG.random()), "when": DAY0 + dt.timedelta(days=i)} for i in range(N)]
VALUES = {"year": st.integers(2013, 2026), "type": st.sampled_from(["faq", "manual", "blog", "none"]),
          "ok": st.booleans(), "score": st.floats(0, 1), "when": st.integers(-3, N + 3).map(
              lambda d: (DAY0 + dt.timedelta(days=d)).isoformat())}


# ---------------------------------------------------------------------- the oracle
def _value(field: str, v: Any) -> Any:
    return dt.datetime.fromisoformat(v) if field == "when" else v


def py_match(where: dict[str, Any], rec: dict[str, Any]) -> bool:
    """An independent, one-record evaluation of a predicate."""
    for key, arg in where.items():
        if key == "$and":
            ok = all(py_match(p, rec) for p in arg)
        elif key == "$or":
            ok = any(py_match(p, rec) for p in arg)
        elif key == "$not":
            ok = not py_match(arg, rec)
        else:
            x = rec[key]
            conds = arg if isinstance(arg, dict) else {"$eq": arg}
            ok = True
            for op, v in conds.items():
                if op in ("$in", "$nin"):
                    hit = any(x == _value(key, i) for i in v)
                    ok &= hit if op == "$in" else not hit
                else:
                    v = _value(key, v)
                    ok &= {"$eq": x == v, "$ne": x != v, "$gt": x > v, "$gte": x >= v, "$lt": x < v,
                           "$lte": x <= v}[op]
        if not ok:
            return False
    return True


@st.composite
def leaf(draw: Any) -> dict[str, Any]:
    field = draw(st.sampled_from(sorted(VALUES)))
    ops = ["$eq", "$ne", "$in", "$nin"] + ([] if field == "ok" else ["$gt", "$gte", "$lt", "$lte"])
    op = draw(st.sampled_from([*ops, "plain"]))
    if op in ("$in", "$nin"):
        return {field: {op: draw(st.lists(VALUES[field], max_size=3))}}
    value = draw(VALUES[field])
    return {field: value} if op == "plain" else {field: {op: value}}


PREDICATES = st.recursive(leaf(), lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=3).map(lambda ps: {"$and": ps}),
    st.lists(inner, min_size=1, max_size=3).map(lambda ps: {"$or": ps}),
    inner.map(lambda p: {"$not": p})), max_leaves=5)


def expected(where: dict[str, Any], deleted: set[str], k: int, q: np.ndarray) -> list[list[str]]:
    rows = [i for i in range(N) if IDS[i] not in deleted and py_match(where, RECORDS[i])]
    out = []
    for qv in q:
        scores = X[rows] @ qv
        out.append([IDS[rows[j]] for j in np.argsort(-scores, kind="stable")[:k]])
    return out


def attributes() -> dict[str, list[Any]]:
    return {f: [r[f] for r in RECORDS] for f in RECORDS[0]}


def check_hits(result: Any, where: dict[str, Any], deleted: set[str], k: int) -> None:
    matches = sum(1 for i in range(N) if IDS[i] not in deleted and py_match(where, RECORDS[i]))
    for row in result.doc_ids:
        assert len(row) == min(k, matches)
        assert len(set(row)) == len(row)
        for doc in row:
            assert doc not in deleted and py_match(where, RECORDS[int(str(doc)[1:])])


# ---------------------------------------------------------------------- single-vector kinds
def _faiss(spec: str) -> FaissIndex:
    index = FaissIndex(DIM, spec=spec, metric="ip")
    if not index.is_trained:
        index.train(TRAIN)
    return index


_KINDS = {
    "flat": lambda: FlatIndex(DIM),
    "sharded-flat": lambda: ShardedIndex(FlatIndex(DIM), 3),
    "faiss-flat": lambda: _faiss("Flat"),
    "hnsw": lambda: _faiss("HNSW8"),
    "hnsw-pq": lambda: _faiss("HNSW8,PQ4x4"),
    "ivf": lambda: _faiss("IVF4,Flat"),
    "ivf-pq": lambda: _faiss("IVF4,PQ2x4"),
    "ivf-opq": lambda: _faiss("OPQ2,IVF4,PQ2x4"),
    "ivf-fs": lambda: _faiss("IVF4,PQ2x4fs"),  # fast-scan codes: the every-list selector plan
    "pq": lambda: _faiss("PQ4x4"),
    "sq": lambda: _faiss("SQ8"),
    "sharded-ivf": lambda: ShardedIndex(_faiss("IVF4,Flat"), 2),
}
_BUILT: dict[str, Any] = {}


def built(kind: str) -> Any:
    if kind not in _BUILT:
        _BUILT[kind] = _KINDS[kind]().add(X, ids=IDS, attributes=attributes())
    return _BUILT[kind]


@pytest.mark.parametrize("plan", ["cost-based", "never-exact"])
@pytest.mark.parametrize("kind", sorted(_KINDS))
@PROPS
@given(where=PREDICATES, k=st.integers(1, 12))
def test_filtered_search_against_brute_force(kind: str, plan: str, where: dict[str, Any], k: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if plan == "never-exact":  # the small test set would always take the exact scan: test the other plans too
        monkeypatch.setattr(_filtered, "exact_is_cheaper", lambda *_, **__: False)
    result = built(kind).search(Q, k, where=where)
    check_hits(result, where, set(), k)
    if kind in ("flat", "sharded-flat", "faiss-flat"):
        assert result.doc_ids == expected(where, set(), k, Q)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivf-opq", "pq", "sharded-flat"])
@PROPS
@given(where=PREDICATES, k=st.integers(1, 12), drop=st.sets(st.sampled_from(IDS), max_size=20))
def test_filtered_search_skips_deleted(kind: str, where: dict[str, Any], k: int, drop: set[str]) -> None:
    index = _KINDS[kind]().add(X, ids=IDS, attributes=attributes())
    if drop:
        index.delete(sorted(drop))
    result = index.search(Q, k, where=where)
    check_hits(result, where, drop, k)
    if kind in ("flat", "sharded-flat"):
        assert result.doc_ids == expected(where, drop, k, Q)


def test_attributes_survive_save_and_load(tmp_path: Any) -> None:
    where = {"$or": [{"type": "faq"}, {"when": {"$gte": "2024-02-10"}}], "year": {"$nin": [2016]}}
    for kind in ("flat", "hnsw", "sharded-flat"):
        index = built(kind)
        index.save(tmp_path / kind)
        loaded = load_index(tmp_path / kind)
        assert loaded.attribute_schema == {"year": "int", "type": "str", "ok": "bool", "score": "float",
                                           "when": "timestamp"}
        assert loaded.search(Q, 7, where=where).doc_ids == index.search(Q, 7, where=where).doc_ids
    loaded = load_index(tmp_path / "flat")
    new = {"year": [2030], "type": ["new"], "ok": [True], "score": [0.5], "when": [dt.date(2030, 1, 1)]}
    loaded.add(X[:1], ids=["z"], attributes=new)
    assert loaded.search(Q[:1], 5, where={"type": "new"}).doc_ids == [["z"]]
    assert loaded.search(Q[:1], 5, where={"when": {"$gt": dt.datetime(2029, 12, 31)}}).doc_ids == [["z"]]


@pytest.mark.parametrize("kind", sorted(_KINDS))
def test_every_kind_round_trips_its_attributes_with_deletes(kind: str, tmp_path: Any) -> None:
    where = {"$or": [{"type": "faq"}, {"when": {"$gte": "2024-02-10"}}], "year": {"$nin": [2016]}}
    gone = set(IDS[:40:3])
    index = _KINDS[kind]().add(X, ids=IDS, attributes=attributes())
    index.delete(sorted(gone))
    index.save(tmp_path / "i")
    loaded = load_index(tmp_path / "i")
    assert loaded.attribute_schema == index.attribute_schema
    for k in (3, 50):
        got = loaded.search(Q, k, where=where)
        assert got.doc_ids == index.search(Q, k, where=where).doc_ids
        check_hits(got, where, gone, k)
    loaded.add(X[:1], ids=["z"], attributes={"year": [2030], "type": ["new"], "ok": [True], "score": [0.5],
                                             "when": [dt.date(2030, 1, 1)]})
    assert loaded.search(Q[:1], 5, where={"type": "new"}).doc_ids == [["z"]]


def test_sharded_multivector_round_trips_its_attributes(tmp_path: Any) -> None:
    index = ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="FP16"), 2).add(_MV, attributes=RECORDS)
    index.delete(IDS[:20:2])
    index.save(tmp_path / "smv")
    loaded = load_index(tmp_path / "smv")
    where = {"year": {"$gte": 2020}}
    assert loaded.search(_MV_Q, 30, where=where).doc_ids == index.search(_MV_Q, 30, where=where).doc_ids
    check_hits(loaded.search(_MV_Q, 30, where=where), where, set(IDS[:20:2]), 30)


def test_build_sharded_routes_attributes(tmp_path: Any) -> None:
    from retrieval.distributed import build_sharded

    build_sharded(Embeddings(X, IDS), tmp_path / "s", n_shards=3, spec="exact", use_ray=False,
                  attributes=attributes())
    loaded = load_index(tmp_path / "s")
    where = {"type": {"$in": ["faq", "manual"]}, "ok": True}
    check_hits(loaded.search(Q, 12, where=where), where, set(), 12)
    assert loaded.search(Q, 12, where=where).doc_ids == expected(where, set(), 12, Q)
    with pytest.raises(ConfigError, match="has 2 values"):
        build_sharded(Embeddings(X, IDS), tmp_path / "bad", n_shards=3, spec="exact", use_ray=False,
                      attributes={"year": [1, 2]})
    assert not (tmp_path / "bad").exists()


def test_a_load_refuses_codes_outside_the_dictionary(tmp_path: Any) -> None:
    built("flat").save(tmp_path / "i")
    codes = np.load(tmp_path / "i" / "attr1.npy")
    np.save(tmp_path / "i" / "attr1.npy", np.full_like(codes, 99), allow_pickle=False)  # same size, bad codes
    with pytest.raises(IndexFormatError, match="outside its dictionary"):
        load_index(tmp_path / "i", verify=False)
    with pytest.raises(IndexFormatError):
        load_index(tmp_path / "i")  # the checksum catches it first


@pytest.mark.parametrize(("where", "says"), [
    ({"nope": 1}, "'nope', which this index does not store"),
    ({"year": {"$foo": 1}}, "unknown operator '$foo'"),
    ({"year": "2020"}, "'year' is a int column"),
    ({"type": 3}, "'type' is a str column"),
    ({"ok": {"$gt": True}}, "'ok' is bool"),
    ({"type": {"$in": "faq"}}, "$in takes a list"),
    ({"$xor": [{"year": 1}]}, "unknown logical operator"),
    ({"$and": []}, "$and takes a non-empty list"),
    ({}, "non-empty dict"),
    ({"when": {"$gt": "yesterday"}}, "not an ISO 8601"),
])
def test_bad_predicates_are_config_errors(where: dict[str, Any], says: str) -> None:
    for kind in ("flat", "sharded-flat"):
        with pytest.raises(ConfigError, match=re.escape(says)):
            built(kind).search(Q, 3, where=where)


@pytest.mark.parametrize(("attrs", "says"), [
    ({"year": [1, 2]}, "has 2 values for 3 documents"),
    ({"year": [1, "a", 2]}, "mixes value types"),
    ({"year": [1, None, 2]}, "mixes value types"),
    ([{"a": 1}, {"b": 2}, {"a": 3}], "same fields"),
    ({"$x": [1, 2, 3]}, "field names"),
])
def test_bad_attributes_are_config_errors(attrs: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        FlatIndex(DIM).add(X[:3], ids=IDS[:3], attributes=attrs)


def test_later_adds_must_match_the_columns() -> None:
    index = FlatIndex(DIM).add(X[:3], ids=IDS[:3], attributes={"year": [1, 2, 3]})
    with pytest.raises(ConfigError, match="stores attributes"):
        index.add(X[3:4], ids=IDS[3:4])
    with pytest.raises(ConfigError, match="'year' is a int column"):
        index.add(X[3:4], ids=IDS[3:4], attributes={"year": ["x"]})
    plain = FlatIndex(DIM).add(X[:3], ids=IDS[:3])
    with pytest.raises(ConfigError, match="without attributes"):
        plain.add(X[3:4], ids=IDS[3:4], attributes={"year": [4]})
    assert len(index) == 3 and len(plain) == 3  # nothing was added by the refused calls


def test_pq_low_selectivity_scans_only_the_matching_rows() -> None:
    """Flat PQ takes no IDSelector: a 0.1% filter is an exact scan of the matching codes (no over-fetch)."""
    rng = np.random.default_rng(1)
    n = 5000
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    index = _faiss("PQ4x4").add(x, ids=np.arange(n), attributes={"g": np.arange(n) % 1000})
    assert exact_is_cheaper("flat", 5, n)
    calls: list[int] = []
    inner = index.faiss_index
    index._index = _Spy(inner, calls)
    res = index.search(x[:4], 10, where={"g": 3})
    assert calls == []  # no unfiltered FAISS search at all
    assert [len(r) for r in res.doc_ids] == [5] * 4 and all(d % 1000 == 3 for r in res.doc_ids for d in r)
    index._index = inner
    dense = index.search(x[:4], 10, where={"g": {"$lt": 600}})  # 60%: the over-fetch path
    assert [len(r) for r in dense.doc_ids] == [10] * 4 and all(d % 1000 < 600 for r in dense.doc_ids for d in r)


class _Spy:
    def __init__(self, inner: Any, calls: list[int]) -> None:
        self._inner, self._calls = inner, calls

    def search(self, q: Any, k: int, **kw: Any) -> Any:
        self._calls.append(k)
        return self._inner.search(q, k, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---------------------------------------------------------------------- multi-vector kinds
_MV = MultiVectorEmbeddings.from_list([_RNG.standard_normal((4, DIM)).astype(np.float32) for _ in range(N)],
                                      ids=IDS)
_MV_Q = _MV.select([0, 7, 20])


@pytest.mark.parametrize(("spec", "stage", "shards"), [("FP16", "exhaustive", 0), ("KMeans16", "centroid", 0),
                                                       ("KMeans16", "plaid", 0), ("FP16", "exhaustive", 2)])
@PROPS
@given(where=PREDICATES, k=st.integers(1, 12))
def test_multivector_filtered_search(spec: str, stage: str, shards: int, where: dict[str, Any], k: int) -> None:
    key = f"mv-{spec}-{stage}-{shards}"
    if key not in _BUILT:
        index = MultiVectorIndex(DIM, spec=spec, first_stage=stage, nprobe=1, n_candidates=4)
        index = ShardedMultiVectorIndex(index, shards) if shards else index
        _BUILT[key] = index.add(_MV, attributes=RECORDS)
    result = _BUILT[key].search(_MV_Q, k, where=where)
    check_hits(result, where, set(), k)


def test_multivector_delete_keeps_attributes_aligned(tmp_path: Any) -> None:
    index = MultiVectorIndex(DIM, spec="FP16").add(_MV, attributes=RECORDS)
    index.delete(IDS[:30:2])
    where = {"type": "faq"}
    check_hits(index.search(_MV_Q, 50, where=where), where, set(IDS[:30:2]), 50)
    index.save(tmp_path / "mv")
    check_hits(load_index(tmp_path / "mv").search(_MV_Q, 50, where=where), where, set(IDS[:30:2]), 50)


# ---------------------------------------------------------------------- predicates over records (RAG metadata)
def test_evaluate_records_matches_the_oracle() -> None:
    where = {"$or": [{"year": {"$gte": 2020}}, {"type": {"$in": ["blog"]}}], "$not": {"ok": True}}
    got = evaluate_records(where, RECORDS).tolist()
    assert got == [py_match(where, r) for r in RECORDS]
    assert fields_of(where) == ["year", "type", "ok"]
    assert uses_operators(where) and not uses_operators({"lang": "en"})
    partial = [{"year": 2020}, {"lang": "en"}]
    assert evaluate_records({"year": {"$ne": 1}}, partial).tolist() == [True, False]  # missing: no match


# ---------------------------------------------------------------------- pipeline and command line
def test_retriever_search_passes_where(fake_encoder: Any) -> None:
    from retrieval.pipeline import Retriever

    texts = ["cats purr", "dogs bark", "cats and dogs", "fish swim"]
    index = FlatIndex(fake_encoder.dim)
    index.add(fake_encoder.encode_documents(texts, ids=["a", "b", "c", "d"]),
              attributes={"lang": ["en", "de", "en", "en"]})
    retriever = Retriever(fake_encoder, index)
    assert retriever.search("cats", 4, where={"lang": {"$ne": "en"}}).doc_ids == [["b"]]
    with pytest.raises(ConfigError, match="'year', which this index does not store"):
        retriever.search("cats", 4, where={"year": 1})


def test_cli_where_must_be_a_json_object() -> None:
    import argparse

    from retrieval.app.cli import _where_json

    assert _where_json('{"year": {"$gte": 2024}}') == {"year": {"$gte": 2024}}
    for bad in ("{year: 1}", "[1]", "{}"):
        with pytest.raises(argparse.ArgumentTypeError):
            _where_json(bad)


def test_memory_bytes_counts_the_attributes() -> None:
    plain = FlatIndex(DIM).add(X, ids=IDS)
    # int64 + int32 codes (+ a 3-string dictionary) + bool + float64 + int64 ns per row
    assert built("flat").memory_bytes() - plain.memory_bytes() >= N * (8 + 4 + 1 + 8 + 8)

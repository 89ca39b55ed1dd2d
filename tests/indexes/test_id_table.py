"""The compact id store (``indexes._ids.IdTable``) against a plain list + dict model: lookups,
hash collisions, deleted twins, the side table of appended ids, snapshots, and reading back."""

from __future__ import annotations

import copy
import pickle
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import indexes._ids as ids_module
import indexes._idstore as store_module
from indexes import FlatIndex, read_manifest
from indexes._idfixed import FixedStore, build_strings, fits, search
from indexes._ids import IdTable, _read_id_lines
from indexes._idstore import StrStore, encode, fnv1a
from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError


class _Model:
    """The old bookkeeping: a list of ids and a dict of the live ones."""

    def __init__(self, tombstones: bool) -> None:
        self.tombstones, self.ids, self.row_of = tombstones, [], {}

    def append(self, new: list[str]) -> None:
        self.row_of.update((d, len(self.ids) + i) for i, d in enumerate(new))
        self.ids.extend(new)

    def remove(self, gone: list[str]) -> None:
        if self.tombstones:
            for d in gone:
                del self.row_of[d]
            return
        self.ids = [d for d in self.ids if d not in set(gone)]
        self.row_of = {d: r for r, d in enumerate(self.ids)}

    def live(self) -> list[str]:
        return [d for r, d in enumerate(self.ids) if self.row_of.get(d) == r]


def _same(table: IdTable, model: _Model, probes: list[str]) -> None:
    assert len(table) == len(model.row_of) and table.ntotal == len(model.ids)
    assert table.ids == model.ids and table.live_ids() == model.live()
    assert table.missing(probes) == [p for p in probes if p not in model.row_of]
    live = [p for p in probes if p in model.row_of]
    assert table.rows_of(live) == [model.row_of[p] for p in live]
    assert all((p in table) == (p in model.row_of) for p in probes)


@pytest.mark.parametrize("tombstones", [True, False])
@pytest.mark.parametrize("collide", [False, True, "int", "fixed"])
def test_random_operations_match_the_list_and_dict_model(tombstones: bool, collide: bool | str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if collide is True:  # every id hashes to one of 3 values: every lookup must compare bytes
        real, real_one = fnv1a, store_module.fnv1a_one
        monkeypatch.setattr(store_module, "fnv1a", lambda buf, off: real(buf, off) % np.uint64(3))
        monkeypatch.setattr(store_module, "fnv1a_one", lambda data: real_one(data) % 3)
    monkeypatch.setattr(ids_module, "_MERGE_MIN", 7)  # merge often
    monkeypatch.setattr(store_module, "_SORT_KEYS", 4)  # batches of 4+ ids sort their keys before searching
    rng = random.Random(5)
    table, model = IdTable(tombstones=tombstones), _Model(tombstones)
    pool: list = [f"d{i}" for i in range(60)] + ["é", "ü-1", "文書", "d1\u00e9", "x" * 40]
    probes: list = ["", "nope"]
    if collide == "int":  # integer ids: the same model, int64 extremes included
        pool, probes = [*range(-30, 30), 2**63 - 1, -(2**63), 10**12], [2**63, -(2**63) - 1, "d1", 1.5]
    if collide == "fixed":  # near-equal lengths (the fixed layout), prefixes of each other, unicode
        pool = [f"k{i:02d}" for i in range(50)] + ["k0", "k", "é1", "文書", "k0é", "\U0001f600x"]
        probes = ["", "nope", "k\x00", "k0\x00", "k01x", "é"]
    for _ in range(150):
        live = list(model.row_of)
        if live and rng.random() < 0.35:
            gone = rng.sample(live, rng.randint(1, min(4, len(live))))
            got, rows = table.rows_to_delete(gone + gone[:1])  # a repeated id deletes once
            assert rows.tolist() == sorted({model.row_of[d] for d in gone})
            table.remove(got, rows)
            model.remove(gone)
        else:
            new = [d for d in rng.sample(pool, rng.randint(1, 5)) if d not in model.row_of]
            batch = np.array(new, dtype=np.int64) if collide == "int" and rng.random() < 0.5 else new
            table.check_new(batch)
            assert table.append(batch) == len(model.ids)
            model.append(new)
        if rng.random() < 0.2:
            table.id_array()  # merges the side table
        _same(table, model, [*rng.sample(pool, 10), *probes])


def test_errors_and_non_str_lookups_are_as_before() -> None:
    table = IdTable(tombstones=True)
    table.append(["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"1 id\(s\) are already in the index, e.g. \['b'\]"):
        table.check_new(["z", "b"])
    with pytest.raises(ConfigError, match="duplicate document id 'z'"):
        table.check_new(["z", "z"])
    with pytest.raises(UnknownIdError, match=r"cannot delete 2 id\(s\) .* e.g. \['x', 7\]; nothing was deleted"):
        table.rows_to_delete(["a", "x", 7])  # type: ignore[list-item]
    with pytest.raises(UnknownIdError, match=r"subset holds 1 id\(s\) .* e.g. \['q'\]"):
        table.subset_mask(["a", "q"])
    assert table.subset_mask("b").tolist() == [False, True, False]
    assert 3 not in table and None not in table
    with pytest.raises(TypeError):
        [1] in table  # noqa: B015 - unhashable, as with the dict
    with pytest.raises(TypeError):
        table.rows_to_delete([["a"]])  # type: ignore[list-item]

    class Sub(str):
        pass

    assert Sub("b") in table and table.rows_of([Sub("c")]) == [2]
    assert len(table) == 3 and table.ntotal == 3


def test_a_view_handed_out_is_a_snapshot() -> None:
    table = IdTable(tombstones=False)
    table.append(["a", "bé", "c"])
    view = table.id_array()
    table.remove(["a"], np.array([0]))
    table.append(["d"])
    assert view[np.array([[0, 2], [1, 1]])].tolist() == [["a", "c"], ["bé", "bé"]]
    assert table.id_array()[np.array([0, 2])].tolist() == ["bé", "d"]


def test_memory_counts_the_arrays_and_a_copy_is_independent() -> None:
    table = IdTable(tombstones=True)
    table.append([f"doc-{i:06d}" for i in range(1000)])
    assert isinstance(table._merged(), FixedStore)
    assert table.memory_bytes() == 1000 * (10 + 4)  # 10-byte rows and a uint32 permutation, no tombstones yet
    uneven = IdTable(tombstones=True)
    uneven.append(["x" * 40] + [f"d{i}" for i in range(999)])  # padding all to 40 bytes would cost more
    raw = 40 + sum(len(f"d{i}") for i in range(999))
    assert isinstance(uneven._merged(), StrStore)
    assert uneven.memory_bytes() == raw + 1000 * (4 + 8 + 4) + 4  # uint32 offsets (rows + 1), hashes, permutation
    clone = table.copy()
    clone.remove(["doc-000001"], np.array([1]))
    clone.append(["new"])
    assert "doc-000001" in table and "new" not in table and table.ntotal == 1000
    assert "doc-000001" not in clone and "new" in clone
    assert clone.memory_bytes() == clone._merged().nbytes() + 126  # the tombstones: ceil(1001 / 8) bytes of bits
    for other in (copy.deepcopy(clone), pickle.loads(pickle.dumps(clone))):
        assert other.ids == clone.ids and other.live_ids() == clone.live_ids() and other.id_array()


@pytest.mark.parametrize("raw,expected", [(b"", []), (b"a\n", ["a"]), (b"a\nb", ["a", "b"]), (b"\n", [""]),
                                          (b"a\n\n", ["a", ""]), ("é\n文\n".encode(), ["é", "文"])])
def test_reading_lines_as_buffer_and_offsets(tmp_path, raw: bytes, expected: list[str]) -> None:
    (tmp_path / "ids.txt").write_bytes(raw)
    buf, offsets = _read_id_lines(tmp_path / "ids.txt", expected=len(expected))
    assert [buf[a:b].tobytes().decode() for a, b in pairwise(offsets.tolist())] == expected
    with pytest.raises(IndexFormatError, match=f"holds {len(expected)} ids, but the manifest says"):
        _read_id_lines(tmp_path / "ids.txt", expected=len(expected) + 1)
    (tmp_path / "bad.txt").write_bytes(raw + b"\xff")
    with pytest.raises(IndexFormatError, match="is not valid UTF-8"):
        _read_id_lines(tmp_path / "bad.txt", expected=len(expected) + 1)


def test_fnv1a_matches_the_reference_and_ignores_the_order_of_lengths() -> None:
    def reference(b: bytes) -> int:
        h = 0xCBF29CE484222325
        for byte in b:
            h = ((h ^ byte) * 0x100000001B3) % 2**64
        return h
    words = [b"", b"a", b"doc-123456", "é文".encode(), b"z" * 300, b"ab"]
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
    assert fnv1a(b"".join(words), offsets).tolist() == [reference(w) for w in words]
    assert [store_module.fnv1a_one(w) for w in words] == [reference(w) for w in words]


@pytest.mark.parametrize("layout", [FixedStore, StrStore])
def test_merging_appended_ids_keeps_the_keys_sorted(layout: type) -> None:
    table = IdTable(tombstones=True)
    rng = np.random.default_rng(3)
    if layout is StrStore:
        table.append(["long-" * 20])  # padding every id to 100 bytes would cost more: the variable layout
    for start in range(0, 3000, 300):
        table.append([f"x{i}" for i in rng.permutation(np.arange(start, start + 300))])
        store = table._merged()
        assert isinstance(store, layout) and store.perm.dtype == np.uint32
        assert sorted(store.perm.tolist()) == list(range(store.rows))
        if layout is StrStore:
            assert (store.hashes[1:] >= store.hashes[:-1]).all()
            assert (fnv1a(store.buf, store.offsets)[store.perm] == store.hashes).all()
        else:
            ordered = [table.ids[r].encode() for r in store.perm.tolist()]
            assert ordered == sorted(ordered) and store.width == max(map(len, ordered))
    assert table.rows_of(["x5", "x2999"]) == [table.ids.index("x5"), table.ids.index("x2999")]


def test_int_ids_errors_and_views() -> None:
    table = IdTable(tombstones=True)
    table.append(np.array([30, 10, 20]))
    assert table.kind == "int" and table.ids == [30, 10, 20] and table.rows_of([20, 30]) == [2, 0]
    assert table.id_array()[np.array([[2, 0]])].tolist() == [[20, 30]]
    with pytest.raises(ConfigError, match="holds int document ids; got str ids"):
        table.check_new(["a"])
    with pytest.raises(ConfigError, match="duplicate document id 5"):
        table.check_new(np.array([5, 5]))
    with pytest.raises(ConfigError, match=r"already in the index, e.g. \[10\]"):
        table.check_new([10, 11])
    with pytest.raises(ConfigError, match="all int or all str"):
        table.check_new([11, "12"])
    with pytest.raises(ConfigError, match="fit in int64"):
        table.check_new([2**64])
    with pytest.raises(ConfigError, match="fit in int64"):
        table.check_new(np.array([2**63], dtype=np.uint64))
    with pytest.raises(ConfigError, match="1-d"):
        table.check_new(np.zeros((2, 2), dtype=np.int64))
    assert "10" not in table and True not in table and 10.0 not in table and np.int32(10) in table
    assert table.subset_mask(np.int64(10)).tolist() == [False, True, False]
    got, rows = table.rows_to_delete(np.array([10]))
    table.remove(got, rows)
    assert table.live_ids() == [30, 20] and 10 not in table
    strs = IdTable(tombstones=False)
    strs.append(["a"])
    with pytest.raises(ConfigError, match="holds str document ids; got int ids"):
        strs.check_new(np.array([1]))
    assert 1 not in strs and strs.missing([1, "a"]) == [1]


# ---------------------------------------------------------------- the fixed-width layout
def _store(ids: list[str]) -> FixedStore | StrStore:
    return build_strings(*encode(ids))


def test_the_fixed_layout_is_chosen_where_padding_costs_less_than_offsets_and_hashes() -> None:
    assert fits(10, 13, 10) and not fits(10, 14, 10)  # 12 bytes of padding a row at most: W + 4 <= len + 16
    assert isinstance(_store([f"doc-{i:07d}" for i in range(100)]), FixedStore)
    near = [f"q{i}" for i in range(1000)]  # 2-4 bytes
    assert isinstance(_store(near), FixedStore) and _store(near).width == 4
    assert isinstance(_store([*near, "x" * 100]), StrStore)  # 96 bytes of padding on 1001 rows
    assert isinstance(_store(["ab", "c\x00d"]), StrStore)  # a NUL byte would read as padding
    same = _store(["bb", "a", "bb", "ab", "a"])  # equal ids sort by row
    assert isinstance(same, FixedStore) and same.perm.tolist() == [1, 4, 3, 0, 2]
    assert same.block.tolist() == [[98, 98], [97, 0], [98, 98], [97, 98], [97, 0]] and same.nbytes() == 5 * 2 + 5 * 4
    assert same.ids() == ["bb", "a", "bb", "ab", "a"] and same.view()[np.array([[3, 1]])].tolist() == [["ab", "a"]]


def test_appends_widen_the_block_or_convert_to_the_variable_layout() -> None:
    table = IdTable(tombstones=True)
    table.append([f"id{i:03d}" for i in range(500)])
    assert isinstance(table._merged(), FixedStore) and table._merged().width == 5
    perm_before = table._merged().perm.copy()
    table.append(["id0005", "id9", "iz", "文書文"])  # up to 9 bytes: still cheaper padded, the permutation keeps its order
    store = table._merged()
    assert isinstance(store, FixedStore) and store.width == 9 and len(store.perm) == 504
    assert [r for r in store.perm.tolist() if r < 500] == perm_before.tolist()
    assert table.rows_of(["id0005", "id000", "文書文", "iz"]) == [500, 0, 503, 502] and "id00" not in table
    table.append(["nul\x00here"])
    assert isinstance(table._merged(), StrStore) and table.rows_of(["nul\x00here", "id499"]) == [504, 499]
    assert "nul" not in table and table.ids[-1] == "nul\x00here"


@pytest.mark.parametrize("tombstones", [True, False])
def test_fixed_layout_deletes_readds_and_keeps(tombstones: bool) -> None:
    table = IdTable(tombstones=tombstones)
    ids = [f"a{i:03d}" for i in range(300)] + ["aé", "a"]
    table.append(ids)
    table._merged()
    for round_ in range(3):  # delete and add again: with tombstones the dead twins pile up before the live row
        got, rows = table.rows_to_delete(["a007", "a"])
        table.remove(got, rows)
        assert "a007" not in table and "a" not in table and table.missing(["a007", "a", "a008"]) == ["a007", "a"]
        table.check_new(["a007", "a"])
        table.append(["a007", "a"])
        table._merged()
        live_rows = table.rows_of(["a007", "a", "aé"])
        assert live_rows == ([302 + 2 * round_, 303 + 2 * round_, 300] if tombstones else [300, 301, 299])
    store = table._merged()
    assert isinstance(store, FixedStore) and store.rows == table.ntotal
    assert table.subset_mask(["a007", "a299"]).nonzero()[0].tolist() == sorted(table.rows_of(["a007", "a299"]))
    assert not store.duplicate_live(table._dead()) and store.duplicate_live(None) == tombstones
    if not tombstones:  # keep() renumbers the permutation without sorting and drops the width
        got, rows = table.rows_to_delete(["aé"] + [f"a{i:03d}" for i in range(300) if i != 7])
        table.remove(got, rows)
        assert table.ids == ["a007", "a"] and table._merged().width == 4 and table._merged().perm.tolist() == [1, 0]


def test_fixed_layout_matches_a_set_on_random_unicode_ids() -> None:
    rng = random.Random(4)
    alphabet = "ab-é文\U0001f600z9"
    table, model = IdTable(tombstones=True), {}
    for _ in range(40):
        batch = {"".join(rng.choices(alphabet, k=rng.randint(3, 5))) for _ in range(rng.randint(1, 60))} - set(model)
        table.append(sorted(batch))
        model.update((d, table.ntotal - len(batch) + i) for i, d in enumerate(sorted(batch)))
        gone = rng.sample(sorted(model), min(len(model), rng.randint(0, 5)))
        if gone:
            table.remove(*table.rows_to_delete(gone))
            for d in gone:
                del model[d]
    assert isinstance(table._merged(), FixedStore)
    probes = [*sorted(model)[:200], "zzzz", "a", "é文é文é文é文"]
    assert table.rows_of(sorted(model)) == [model[d] for d in sorted(model)]
    assert table.missing(probes) == [p for p in probes if p not in model]
    assert all((p in table) == (p in model) for p in probes)


def test_fixed_layout_saves_and_memory_maps(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    ids = [f"doc-{i:04d}" for i in range(399)] + ["dé"]
    index = FlatIndex(8).add(x, ids=ids)
    index.delete(["doc-0003"])
    index.add(x[3:4], ids=["doc-0003"])
    path = index.save(tmp_path / "ix")
    assert {"id_block.npy", "id_perm.npy", "deleted_bits.npy"} <= set(read_manifest(path).files)
    for verify in (True, False):
        loaded = FlatIndex.load(path, verify=verify)
        store = loaded._table._merged()
        assert isinstance(store, FixedStore) and not store.block.flags.writeable and store.block.shape == (401, 9 - 1)
        assert not loaded._table._bits.flags.writeable and loaded._table.deleted.nonzero()[0].tolist() == [3]
        assert loaded.doc_ids == index.doc_ids and loaded._table.rows_of(["doc-0003", "dé"]) == [400, 399]
        hits = loaded.search(x[:2], k=3, subset=["doc-0000", "doc-0001", "doc-0003", "dé"]).doc_ids
        assert hits == index.search(x[:2], k=3, subset=["doc-0000", "doc-0001", "doc-0003", "dé"]).doc_ids
    loaded.delete(["dé", "doc-0000"])  # changes of a mapped table copy first
    loaded.add(x[:1], ids=["doc-00000-longer"])
    again = FlatIndex.load(loaded.save(tmp_path / "ix2"))
    assert again.doc_ids == loaded.doc_ids and "doc-00000-longer" in again and "dé" not in again
    assert again._table._merged().width == 16 and FlatIndex.load(path).doc_ids == index.doc_ids


@pytest.mark.parametrize("n", [1, 5, 1023, 1024, 5000])
def test_the_batched_search_is_searchsorted_along_the_permutation(n: int) -> None:
    """Many equal keys, queries of every width (shorter, longer, absent): with and without the
    sorted sample (``fence``, from 1,024 rows), from either side, one query or 3,000."""
    rng = np.random.default_rng(n)
    ids = ["".join(rng.choice(list("abc"), rng.integers(1, 6))) for _ in range(n)]
    store = build_strings(*encode(ids))
    assert isinstance(store, FixedStore) and (store.fence() is not None) == (n >= 1024)
    ordered = np.sort(store.keys(), kind="stable")
    queries = np.array(["".join(rng.choice(list("abcd"), rng.integers(0, 7))).encode() for _ in range(3000)],
                       dtype=f"S{store.width + 2}")
    for right in (False, True):
        want = np.searchsorted(ordered, queries, side="right" if right else "left")
        for fence in (None, store.fence()):
            assert (search(store.keys(), store.perm, queries, right=right, fence=fence) == want).all()
            assert (search(store.keys(), store.perm, queries[:7], right=right, fence=fence) == want[:7]).all()
    probes = [q.decode() for q in queries[:300].tolist()]
    assert [store.contains(p, None) for p in probes] == [p in set(ids) for p in probes]
    assert pickle.loads(pickle.dumps(store)).ids() == ids

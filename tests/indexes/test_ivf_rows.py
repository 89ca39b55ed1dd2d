"""The exact plan of an IVF filtered search: only the allowed rows decoded, scored as the IVF search scores them.

The reference is FAISS's own search restricted by an ``IDSelectorBitmap`` with every list
visited (``nprobe = nlist``): the exact plan must return the same rows with the same scores
(up to float rounding), for Flat, PQ, SQ and OPQ-rotated codes, both metrics, after deletes,
adds and a save / load.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from indexes import FaissIndex, _filtered, load_index
from indexes._filtered import exact_is_cheaper

DIM = 16
N = 3000
_RNG = np.random.default_rng(11)
X = _RNG.standard_normal((N, DIM)).astype(np.float32)
Q = _RNG.standard_normal((6, DIM)).astype(np.float32)
SPECS = ["IVF16,Flat", "IVF16,PQ4x4", "IVF16,SQ8", "OPQ4,IVF16,PQ4x4"]


def _build(spec: str, metric: str, n: int = N) -> FaissIndex:
    index = FaissIndex(DIM, spec=spec, metric=metric)  # type: ignore[arg-type]
    index.train(X[:1000])
    return index.add(X[:n], ids=[f"d{i}" for i in range(n)], attributes={"g": np.arange(n) % 50})


def _exact(index: FaissIndex, k: int, allowed: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The exact plan, forced, and FAISS's selector search of every list (FAISS convention: l2 distances)."""
    with monkeypatch.context() as m:
        m.setattr(_filtered, "exact_is_cheaper", lambda *_, **__: True)
        got = _filtered.search_filtered(index, Q, k, allowed)
    ref = index._search_with_selector(Q, k, allowed, nprobe=int(index._ivf.nlist))
    return got, ref


def _assert_same(got: Any, ref: Any) -> None:
    (d, lab), (rd, rlab) = got, ref
    hit = rlab >= 0  # FAISS pads a short row with -1 labels (and +-FLT_MAX, where the exact plan puts +-inf)
    assert ((lab >= 0) == hit).all()
    scale = max(1.0, float(np.abs(rd[hit]).max()))
    np.testing.assert_allclose(d[hit], rd[hit], rtol=0, atol=1e-5 * scale)
    d, rd = np.where(hit, d, 0), np.where(hit, rd, 0)
    # the rows agree wherever the scores are not (near-)tied
    tie = np.zeros_like(lab, dtype=bool)
    tie[:, 1:] |= np.abs(np.diff(rd, axis=1)) <= 1e-5 * scale
    tie[:, :-1] |= tie[:, 1:].copy()
    assert (lab[~tie] == rlab[~tie]).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("spec", SPECS)
def test_exact_plan_scores_as_the_all_lists_search(spec: str, metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    index = _build(spec, metric)
    assert index._ivf_rows is not None
    rng = np.random.default_rng(3)
    for m in (1, 7, 300, N):
        allowed = np.zeros(N, dtype=bool)
        allowed[rng.choice(N, m, replace=False)] = True
        got, ref = _exact(index, 10, allowed, monkeypatch)
        assert ((got[1] >= 0).sum(axis=1) == min(10, m)).all()
        _assert_same(got, ref)


@pytest.mark.parametrize("spec", ["IVF16,PQ4x4", "OPQ4,IVF16,PQ4x4"])
def test_exact_plan_after_deletes_and_adds(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    index = _build(spec, "ip", n=2000)
    allowed = np.zeros(2000, dtype=bool)
    allowed[::3] = True
    index.delete(["d1"])  # before the direct map: a hashed IDSelectorBatch
    assert not index._ivf_rows.mapped
    allowed[1] = False
    _assert_same(*_exact(index, 10, allowed, monkeypatch))  # turns the direct map on
    assert index._ivf_rows.mapped
    index.delete([f"d{i}" for i in range(0, 2000, 2)])  # remove_ids moves codes within the lists
    allowed[::2] = False
    got, ref = _exact(index, 10, allowed, monkeypatch)
    _assert_same(got, ref)
    assert set(got[1].ravel().tolist()) <= set(np.flatnonzero(allowed).tolist())
    index.add(X[2000:], ids=[f"d{i}" for i in range(2000, N)], attributes={"g": np.arange(2000, N) % 50})
    allowed = np.zeros(N, dtype=bool)
    allowed[3:N:2] = True  # the odd rows still stored (d1 was deleted)
    got, ref = _exact(index, 10, allowed, monkeypatch)
    _assert_same(got, ref)
    assert (got[1] >= 2000).any()  # the added rows are found


@pytest.mark.parametrize("mmap", [False, True])
def test_exact_plan_after_save_and_load(mmap: bool, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    index = _build("OPQ4,IVF16,PQ4x4", "l2")
    index.delete([f"d{i}" for i in range(0, N, 5)])
    index.save(tmp_path / "ivf")
    loaded = load_index(tmp_path / "ivf", mmap=mmap)
    where = {"g": {"$in": [3, 17]}}
    assert loaded.search(Q, 10, where=where).doc_ids == index.search(Q, 10, where=where).doc_ids
    allowed = np.zeros(N, dtype=bool)
    allowed[1::5] = True
    _assert_same(*_exact(loaded, 10, allowed, monkeypatch))


def test_low_selectivity_decodes_the_matching_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2% filter at nprobe 2 of 16 lists takes the exact plan: no FAISS search, only the matches decoded."""
    index = _build("IVF16,PQ4x4", "ip")
    index.nprobe = 2
    assert exact_is_cheaper("ivf", 60, N, probed=2 / 16)
    decoded: list[int] = []
    rows = index._ivf_rows
    real = rows.decode
    monkeypatch.setattr(rows, "decode", lambda r: decoded.append(len(r)) or real(r))
    monkeypatch.setattr(index, "_search_with_selector", lambda *a, **kw: pytest.fail("selector search used"))
    res = index.search(Q, 10, where={"g": 4})  # 60 matching rows
    assert decoded == [60]
    assert all(len(r) == 10 and all(int(d[1:]) % 50 == 4 for d in r) for r in res.doc_ids)


def test_fast_scan_codes_keep_the_every_list_plan() -> None:
    index = _build("IVF16,PQ4x4fs", "ip")
    assert index._ivf_rows is None
    res = index.search(Q, 10, where={"g": 4})
    assert all(len(r) == 10 and all(int(d[1:]) % 50 == 4 for d in r) for r in res.doc_ids)


def test_memory_bytes_counts_the_direct_map() -> None:
    """The direct map is turned on by the first exact plan only, and memory_bytes counts it (16 bytes a row
    as FAISS serialises it)."""
    index = _build("IVF16,Flat", "ip")
    before = index.memory_bytes()
    index.search(Q, 10)  # unfiltered, and
    index.search(Q, 10, where={"g": {"$ne": 4}})  # 98% allowed: the nprobe plan, neither builds it
    assert not index._ivf_rows.mapped and index.memory_bytes() == before
    index.search(Q, 10, where={"g": 4})
    assert index._ivf_rows.mapped and 0 <= index.memory_bytes() - (before + 16 * N) <= 64  # + a size field

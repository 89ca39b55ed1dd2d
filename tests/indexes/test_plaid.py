"""The PLAID engine (``first_stage="plaid"``): every stage against brute force in NumPy, edits, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import token_collection

from indexes import MultiVectorIndex, ShardedMultiVectorIndex, load_index
from indexes.plaid import PlaidParams
from retrieval.errors import ConfigError
from retrieval.rerank import maxsim_csr
from retrieval.types import MultiVectorEmbeddings

D = 16
K = 32
EVERYTHING = {"nprobe": K, "centroid_score_threshold": None, "ndocs": 10_000}


def _collection(rng: np.random.Generator, n: int, *, lo: int = 1, hi: int = 12, prefix: str = "d") -> MultiVectorEmbeddings:
    return token_collection(rng, n, dim=D, noise=0.5, lo=lo, hi=hi, prefix=prefix)


@pytest.fixture(scope="module")
def data() -> tuple[MultiVectorEmbeddings, MultiVectorEmbeddings, MultiVectorIndex]:
    rng = np.random.default_rng(11)
    docs = _collection(rng, 150)
    queries = _collection(rng, 9, lo=2, hi=6, prefix="q")
    return docs, queries, MultiVectorIndex(D, spec=f"KMeans{K}r2").add(docs)


def _decoded(index: MultiVectorIndex) -> MultiVectorEmbeddings:
    return MultiVectorEmbeddings(index.codec.decode(index._codes), index._offsets, index.doc_ids)


def _query(queries: MultiVectorEmbeddings, i: int) -> np.ndarray:
    return np.asarray(queries.vectors[queries.offsets[i] : queries.offsets[i + 1]], dtype=np.float64)


def _brute_candidates(index: MultiVectorIndex, qv: np.ndarray, nprobe: int) -> np.ndarray:
    cids = index.codec.ids(index._codes)
    probed = np.argsort(-(qv @ index.codec.centroids.T), axis=1)[:, :nprobe]
    hit = np.isin(cids, probed)
    owner = np.repeat(np.arange(len(index)), index.lengths)
    return np.unique(owner[hit])


def _brute_approx(index: MultiVectorIndex, qv: np.ndarray, docs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Centroid-only MaxSim with pruning, one document at a time (the definition, not the kernel)."""
    cids = index.codec.ids(index._codes)
    s = qv @ index.codec.centroids.T.astype(np.float64)  # (Lq, K)
    keep = np.ones(K, bool) if threshold is None else s.max(axis=0) >= threshold
    out = []
    for d in docs:
        mine = cids[index._offsets[d] : index._offsets[d + 1]]
        mine = mine[keep[mine]]
        out.append(s[:, mine].max(axis=1).sum() if mine.size else -np.inf)
    return np.array(out)


def _best(docs: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, bool]:
    """The ``n`` best ``docs`` by ``scores`` (ties: lower document), ascending; and whether the cut is a near tie."""
    order = np.lexsort((docs, -scores))
    cut = scores[order[n - 1 : n + 1]] if docs.size > n else np.zeros(2)
    return np.sort(docs[order[:n]]), bool(np.isfinite(cut).all() and 0 < cut[0] - cut[1] < 1e-4)


def _same_hits(got, want) -> None:
    """Equal scores, and each returned row's own score is its exact score (ties may swap rows)."""
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    for i, row in enumerate(want.scores):
        if row.size > 1 and row[0] - row[1] > 1e-4:  # a clear winner is the same document
            assert got.doc_ids[i][0] == want.doc_ids[i][0]


def test_kmeans_codecs_default_to_plaid_and_others_do_not() -> None:
    assert MultiVectorIndex(D, spec="KMeans64r2").first_stage == "plaid"
    assert MultiVectorIndex(D, spec="Prune0.5,KMeans64").first_stage == "plaid"
    assert MultiVectorIndex(D, spec="FP16").first_stage == "exhaustive"
    index = MultiVectorIndex(D, spec="KMeans64r2")
    assert index.plaid_params == PlaidParams() and index.nprobe == PlaidParams().nprobe
    assert MultiVectorIndex(D, spec="KMeans64r2", first_stage="centroid").nprobe == 4
    with pytest.raises(ConfigError, match="needs a KMeans codec"):
        MultiVectorIndex(D, spec="FP16", first_stage="plaid")


def test_no_spec_gives_plaid_codes_sized_to_the_corpus_and_the_plaid_engine() -> None:
    rng = np.random.default_rng(2)
    docs = MultiVectorEmbeddings.from_list([rng.standard_normal((12, D)).astype(np.float32) for _ in range(60)])
    index = MultiVectorIndex(D).add(docs)
    assert index.first_stage == "plaid" and index.plaid_params == PlaidParams()
    assert index.spec == "KMeans256r2"  # 2 ** floor(log2(16 * sqrt(720))): K sized to the 720 vectors, 2-bit residuals
    assert index.search(docs.select([7]), k=1).doc_ids == [["7"]]


def test_stage1_candidates_are_the_probed_lists(data) -> None:
    docs, queries, index = data
    engine = index.plaid_engine()
    for nprobe in (1, 3, K):
        got = engine.candidates(queries.vectors, queries.offsets, nprobe)
        for i in range(len(queries)):
            np.testing.assert_array_equal(got[i], _brute_candidates(index, _query(queries, i), nprobe))
    everything = engine.candidates(queries.vectors, queries.offsets, K)
    assert all(c.size == len(docs) for c in everything)  # every document holds some centroid


def test_inverted_lists_hold_each_document_once_per_centroid(data) -> None:
    _, _, index = data
    engine = index.plaid_engine()
    cids = index.codec.ids(index._codes)
    for d in range(len(index)):
        mine = cids[index._offsets[d] : index._offsets[d + 1]]
        got = engine.doc_cents[engine.doc_offsets[d] : engine.doc_offsets[d + 1]]
        assert sorted(got.tolist()) == np.unique(mine).tolist()
    for c in range(K):
        members = engine.list_docs[engine.list_offsets[c] : engine.list_offsets[c + 1]]
        assert members.dtype == np.int32 and (np.diff(members) > 0).all()
        assert set(members.tolist()) == {d for d in range(len(index)) if c in engine.doc_cents[
            engine.doc_offsets[d] : engine.doc_offsets[d + 1]]}


@pytest.mark.parametrize("threshold", [None, 0.3, 0.6, 5.0])
def test_stage2_centroid_interaction_with_pruning(data, threshold) -> None:
    _, queries, index = data
    engine = index.plaid_engine()
    rows = np.arange(len(index), dtype=np.int32)
    got = engine.centroid_scores(queries.vectors, queries.offsets, rows, threshold)
    for i in range(len(queries)):
        np.testing.assert_allclose(got[i], _brute_approx(index, _query(queries, i), rows, threshold), rtol=1e-5,
                                   atol=1e-5)
    if threshold is None:  # no pruning: MaxSim over each vector's centroid
        cents = MultiVectorEmbeddings(index.codec.centroids[index.codec.ids(index._codes)], index._offsets,
                                      index.doc_ids)
        np.testing.assert_allclose(got, maxsim_csr(queries, cents), rtol=1e-5, atol=1e-5)


def test_covering_everything_equals_exhaustive_maxsim(data) -> None:
    docs, queries, index = data
    got = index.search(queries, k=10, params=EVERYTHING)
    exact = maxsim_csr(queries, _decoded(index))
    np.testing.assert_allclose(got.scores, -np.sort(-exact, axis=1)[:, :10], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(exact, got.labels, axis=1), got.scores, rtol=1e-5, atol=1e-5)
    exhaustive = MultiVectorIndex(D, spec=f"KMeans{K}r2", first_stage="exhaustive")
    exhaustive.load_trained_state(index.trained_state())
    _same_hits(got, exhaustive.add(docs).search(queries, k=10))


@pytest.mark.parametrize("nprobe,threshold,ndocs", [(1, None, 8), (2, 0.4, 12), (3, 0.2, 5), (K, 0.5, 20)])
def test_each_stage_as_the_brute_force_pipeline(data, nprobe, threshold, ndocs) -> None:
    _, queries, index = data
    got = index.search(queries, k=5, params={"nprobe": nprobe, "centroid_score_threshold": threshold, "ndocs": ndocs})
    exact = maxsim_csr(queries, _decoded(index))
    checked = 0
    for i in range(len(queries)):
        qv = _query(queries, i)
        cands = _brute_candidates(index, qv, nprobe)
        approx = _brute_approx(index, qv, cands, threshold)
        n_exact = max(5, ndocs // 4)
        if threshold is not None:  # stage 2 keeps ndocs by pruned scores, stage 3 re-scores them unpruned
            kept, near_tie = _best(cands, approx, ndocs)
            kept, near_tie_3 = _best(kept, _brute_approx(index, qv, kept, None), n_exact)
            near_tie |= near_tie_3
        else:
            kept, near_tie = _best(cands, approx, n_exact)
        if near_tie:
            continue  # a near tie at a cut: float32 sums may pick either document (exact ties: lower row)
        want = kept[np.lexsort((kept, -exact[i, kept]))][:5]
        assert got.labels[i, : want.size].tolist() == want.tolist()
        assert (got.labels[i, want.size :] == -1).all()
        checked += 1
    assert checked >= len(queries) - 2


def test_batches_equal_one_query_at_a_time(data) -> None:
    _, queries, index = data
    batch = index.search(queries, k=7)
    for i in range(len(queries)):
        one = index.search(queries.select([i]), k=7)
        assert one.labels[0].tolist() == batch.labels[i].tolist()
        np.testing.assert_allclose(one.scores[0], batch.scores[i], rtol=1e-6)


def test_per_call_params_match_index_settings(data) -> None:
    docs, queries, index = data
    tuned = MultiVectorIndex(D, spec=f"KMeans{K}r2", nprobe=3, ndocs=9, centroid_score_threshold=0.1)
    tuned.load_trained_state(index.trained_state())
    tuned.add(docs)
    want = tuned.search(queries, k=5)
    got = index.search(queries, k=5, params=PlaidParams(nprobe=3, ndocs=9, centroid_score_threshold=0.1))
    assert got.labels.tolist() == want.labels.tolist()
    assert index.search(queries, k=5, params={"nprobe": 3, "ndocs": 9, "centroid_score_threshold": 0.1}).labels.tolist() \
        == want.labels.tolist()
    with pytest.raises(ConfigError, match="unknown search params"):
        index.search(queries, k=5, params={"n_probe": 3})
    with pytest.raises(ConfigError, match="ndocs must be a positive int"):
        index.search(queries, k=5, params={"ndocs": 0})
    with pytest.raises(ConfigError, match="centroid_score_threshold"):
        index.search(queries, k=5, params={"centroid_score_threshold": float("nan")})
    with pytest.raises(ConfigError, match="apply to first_stage 'plaid' or 'binary'"):
        MultiVectorIndex(D, spec="FP16").add(docs).search(queries, k=5, params={"nprobe": 2})


def test_deleted_documents_never_come_back(data) -> None:
    docs, queries, index = data
    edited = MultiVectorIndex(D, spec=f"KMeans{K}r2")
    edited.load_trained_state(index.trained_state())
    edited.add(docs)
    before = edited.search(queries, k=10, params=EVERYTHING)
    gone = sorted({ids[0] for ids in before.doc_ids} | {"d0", "d149"})
    edited.delete(gone)
    kept_rows = [i for i, doc_id in enumerate(docs.ids) if doc_id not in gone]
    fresh = MultiVectorIndex(D, spec=f"KMeans{K}r2")
    fresh.load_trained_state(index.trained_state())
    fresh.add(docs.select(kept_rows))
    for params in (None, EVERYTHING, {"nprobe": 1, "ndocs": 4}):
        got = edited.search(queries, k=10, params=params)
        assert not set(gone) & {d for ids in got.doc_ids for d in ids}
        assert got.doc_ids == fresh.search(queries, k=10, params=params).doc_ids
    exhaustive = MultiVectorIndex(D, spec=f"KMeans{K}r2", first_stage="exhaustive")
    exhaustive.load_trained_state(index.trained_state())
    _same_hits(edited.search(queries, k=10, params=EVERYTHING), exhaustive.add(docs.select(kept_rows)).search(queries, k=10))


@pytest.mark.parametrize("size", [5, 60, 149])
def test_subset_is_honoured_in_every_stage(data, size) -> None:
    docs, queries, index = data
    rng = np.random.default_rng(size)
    subset = [docs.ids[i] for i in rng.choice(len(docs), size, replace=False)]
    allowed = np.isin(np.array(docs.ids), subset)
    exact = maxsim_csr(queries, _decoded(index))
    exact[:, ~allowed] = -np.inf
    for params in ({"ndocs": 8}, {"nprobe": 1, "ndocs": 8, "centroid_score_threshold": 0.5}):
        got = index.search(queries, k=5, subset=subset, params=params)
        assert {d for ids in got.doc_ids for d in ids} <= set(subset)
        if size <= 5:  # a subset within max(k, ndocs // 4) is scored exactly, whatever the probes find
            np.testing.assert_allclose(got.scores, -np.sort(-exact, axis=1)[:, :5], rtol=1e-5, atol=1e-5)
    covered = index.search(queries, k=5, subset=subset, params=EVERYTHING)
    np.testing.assert_allclose(covered.scores, -np.sort(-exact, axis=1)[:, :5], rtol=1e-5, atol=1e-5)
    # The subset is applied before stage 2: its candidates are not crowded out by documents outside it.
    narrow = index.search(queries, k=5, subset=subset, params={"nprobe": K, "centroid_score_threshold": None,
                                                                "ndocs": 5})
    assert all(len(ids) == 5 for ids in narrow.doc_ids)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(data, tmp_path, mmap) -> None:
    _, queries, _ = data
    docs = data[0]
    index = MultiVectorIndex(D, spec=f"KMeans{K}r4", nprobe=3, ndocs=11, centroid_score_threshold=0.25).add(docs)
    want = index.search(queries, k=6)
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix", mmap=mmap)
    assert loaded.first_stage == "plaid" and loaded.plaid_params == index.plaid_params
    got = loaded.search(queries, k=6)
    assert got.labels.tolist() == want.labels.tolist()
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
    assert loaded.search(queries, k=6, params=EVERYTHING).labels.tolist() == \
        index.search(queries, k=6, params=EVERYTHING).labels.tolist()


def test_two_byte_ids_empty_documents_and_empty_queries() -> None:
    rng = np.random.default_rng(3)
    docs = _collection(rng, 120, lo=4, hi=10)
    arrays = [docs.vectors[docs.offsets[i] : docs.offsets[i + 1]] for i in range(len(docs))]
    arrays[5] = np.zeros((0, D), np.float32)  # a document without vectors never matches
    docs = MultiVectorEmbeddings.from_list(arrays, ids=docs.ids)
    index = MultiVectorIndex(D, spec="KMeans300r2").add(docs)  # K > 256: 2-byte ids
    assert index.codec.id_bytes == 2
    queries = MultiVectorEmbeddings.from_list([arrays[7][:3], np.zeros((0, D), np.float32), arrays[9][:2]])
    got = index.search(queries, k=4, params={"nprobe": 300, "centroid_score_threshold": None, "ndocs": 500})
    exact = maxsim_csr(queries, _decoded(index))
    assert got.doc_ids[0][0] == "d7" and got.doc_ids[2][0] == "d9" and got.doc_ids[1] == []
    np.testing.assert_allclose(got.scores[[0, 2]], -np.sort(-exact[[0, 2]], axis=1)[:, :4], rtol=1e-5, atol=1e-5)
    assert "d5" not in {d for ids in got.doc_ids for d in ids}


def test_residual_free_codes_and_sharded_plaid(data) -> None:
    docs, queries, _ = data
    for spec in ("KMeans16", "KMeans16r1"):
        index = MultiVectorIndex(D, spec=spec).add(docs)
        exhaustive = MultiVectorIndex(D, spec=spec, first_stage="exhaustive")
        exhaustive.load_trained_state(index.trained_state())
        _same_hits(index.search(queries, k=5, params={"nprobe": 16, "centroid_score_threshold": None, "ndocs": 1000}),
                   exhaustive.add(docs).search(queries, k=5))
    sharded = ShardedMultiVectorIndex(MultiVectorIndex(D, spec="KMeans16r2", ndocs=1000, nprobe=16,
                                                       centroid_score_threshold=None), n_shards=3)
    try:
        sharded.add(docs)
        single = MultiVectorIndex(D, spec="KMeans16r2", first_stage="exhaustive")
        single.load_trained_state(sharded._template.trained_state())
        _same_hits(sharded.search(queries, k=5), single.add(docs).search(queries, k=5))
    finally:
        sharded.close()


def test_concurrent_searches_agree_with_serial_ones(data) -> None:
    """Numba's parallel kernels called from several threads at once (the index's readers lock
    lets searches overlap): every thread sees the serial answer."""
    import threading

    _, queries, index = data
    want = index.search(queries, k=5).labels.tolist()  # a batch: its kernels run on the thread pool
    one = index.search(queries.select([0]), k=5).labels.tolist()
    failures: list[str] = []

    def reader(seed: int) -> None:
        try:
            for i in range(15):
                got = index.search(queries, k=5) if (i + seed) % 2 else index.search(queries.select([0]), k=5)
                if got.labels.tolist() != (want if (i + seed) % 2 else one):
                    failures.append(f"thread {seed} pass {i}")
        except Exception as exc:  # any error in a thread fails the test
            failures.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.mark.parametrize("half_bytes", [True, False])
@pytest.mark.parametrize("spec", ["KMeans32r2", "KMeans300r4", "KMeans32", "KMeans32r1", "KMeans300r8"])
def test_table_stage4_equals_decoding(spec, half_bytes) -> None:
    """Stage 4 from tables (the default: no vector decoded) gives the scores of decoding then MaxSim,
    for 1- and 2-byte ids, every residual width, none, half-byte and whole-byte tables, and queries
    of 1 to 39 vectors (one to five 8-lane steps, remainders included)."""
    from indexes.plaid import _nibble_table

    rng = np.random.default_rng(5)
    docs = _collection(rng, 400)
    queries = _collection(rng, 7, lo=1, hi=40, prefix="q")
    index = MultiVectorIndex(D, spec=spec).add(docs)
    engine = index.plaid_engine()
    assert engine.exact_stage == "tables"
    bits = index.codec.residual_bits
    assert (engine.nibble_table is not None) == (bits in (1, 2, 4))  # 8-bit residuals: one dimension a byte
    engine.nibble_table = _nibble_table(engine.table) if half_bytes else None
    everything = {"nprobe": index.codec.k, "centroid_score_threshold": None, "ndocs": 10_000}
    tables = index.search(queries, 10, params=everything)
    engine.exact_stage = "decode"
    decoded = index.search(queries, 10, params=everything)
    brute = maxsim_csr(queries, _decoded(index))
    assert tables.doc_ids == decoded.doc_ids
    np.testing.assert_allclose(tables.scores, decoded.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tables.scores, -np.sort(-brute, axis=1)[:, :10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_half_byte_tables_add_up_to_the_byte_table(bits) -> None:
    """Each byte value's residual is its high half's row followed by its low half's row."""
    from indexes.plaid import _nibble_table

    rng = np.random.default_rng(bits)
    index = MultiVectorIndex(D, spec=f"KMeans32r{bits}").add(_collection(rng, 60))
    table = index.plaid_engine().table  # (bytes, 256, dims per byte)
    halves = _nibble_table(table)
    assert halves is not None and halves.shape == (2 * table.shape[0], 16, table.shape[2] // 2)
    values = np.arange(256)
    rebuilt = np.concatenate([halves[0::2][:, values >> 4], halves[1::2][:, values & 15]], axis=2)
    np.testing.assert_array_equal(rebuilt, table)
    assert _nibble_table(np.zeros((3, 256, 1), np.float32)) is None  # one dimension per byte
    assert _nibble_table(rng.standard_normal((3, 256, 2)).astype(np.float32)) is None  # halves not separable


@pytest.mark.parametrize("k,d,tq", [(1, 1, 1), (7, 5, 3), (33, 16, 8), (100, 24, 37), (4099, 128, 32), (300, 64, 650)])
def test_stage1_scores_kernel_equals_numpy(k, d, tq) -> None:
    """Stage 1's matmul on Numba's threads: whole blocks of 8 centroids and the last ones alone,
    one to four 8-lane groups and longer rows; columns past the queries are zero."""
    from indexes._plaid_simd import centroid_scores, width

    rng = np.random.default_rng(k + d + tq)
    cents = rng.standard_normal((k, d)).astype(np.float32)
    q = rng.standard_normal((tq, d)).astype(np.float32)
    ld = width(np.array([0, tq]))
    qt = np.zeros((d, ld), np.float32)
    qt[:, :tq] = q.T
    out = np.full(k * ld + 8, np.nan, np.float32)
    centroid_scores(cents.reshape(-1), d, qt.reshape(-1), ld, out)
    got = out[: k * ld].reshape(k, ld)
    np.testing.assert_allclose(got[:, :tq], cents.astype(np.float64) @ q.T.astype(np.float64), rtol=1e-4, atol=1e-4)
    assert (got[:, tq:] == 0).all() and np.isnan(out[k * ld :]).all()  # nothing written past the rows


@pytest.mark.parametrize("budget", [1, 4 * K * 7])
def test_a_batch_split_by_the_scores_budget_gives_the_same_hits(data, monkeypatch, budget) -> None:
    """Batches whose stage-1 scores exceed the budget go through in groups of queries (one
    query each when a single query exceeds it): same results as one pass."""
    from indexes import plaid

    _, queries, index = data
    params = {"nprobe": 2, "centroid_score_threshold": 0.2, "ndocs": 16}
    want = index.search(queries, k=5, params=params)
    calls: list[int] = []
    engine = index.plaid_engine()
    one_pass = engine._search
    monkeypatch.setattr(plaid, "SCORES_BYTES", budget)
    monkeypatch.setattr(engine, "_search", lambda qv, qo, *a: calls.append(len(qo) - 1) or one_pass(qv, qo, *a))
    got = index.search(queries, k=5, params=params)
    assert sum(calls) == len(queries) and len(calls) > 1
    assert max(calls) == 1 if budget == 1 else max(calls) > 1
    assert got.doc_ids == want.doc_ids
    np.testing.assert_array_equal(got.scores, want.scores)

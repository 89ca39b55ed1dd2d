"""The binary engine (``first_stage="binary"``): token neighbours, table MaxSim, filters, edits, persistence;
and k-means sized to the corpus (``"KMeans"`` / ``"KMeansr<b>"``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import token_collection

from indexes import MultiVectorIndex, load_index
from indexes.binary_ann import BinaryEngine, BinaryParams, ivf_nlist, lookup_tables
from indexes.factory import make_index
from retrieval.compress.binary import BinaryQuantizer
from retrieval.compress.kmeans import PatchKMeans, corpus_k
from retrieval.compress.spec import parse_codec
from retrieval.errors import ConfigError
from retrieval.types import MultiVectorEmbeddings

D = 24  # 3 bytes of sign bits
KINDS = ("ivf", "hnsw", "flat")
EVERYTHING = {"token_k": 100_000}


def _collection(rng: np.random.Generator, n: int, *, lo: int = 1, hi: int = 12, prefix: str = "d") -> MultiVectorEmbeddings:
    return token_collection(rng, n, dim=D, noise=0.7, lo=lo, hi=hi, prefix=prefix)


@pytest.fixture(scope="module")
def data() -> tuple[MultiVectorEmbeddings, MultiVectorEmbeddings]:
    rng = np.random.default_rng(5)
    docs = _collection(rng, 160)
    # queries: perturbed tokens of documents 0..7, so each has a source document to find
    arrays = [docs.vectors[docs.offsets[i] : docs.offsets[i + 1]][:3] + 0.05 * rng.standard_normal((1, D))
              for i in range(8)]
    return docs, MultiVectorEmbeddings.from_list([a.astype(np.float32) for a in arrays],
                                                 ids=[f"q{i}" for i in range(8)])


def _brute(index: MultiVectorIndex, queries: MultiVectorEmbeddings, rows: np.ndarray, k: int) -> list[list[str]]:
    """MaxSim over the decoded sign codes of documents ``rows``, one document at a time, in float64."""
    decoded = index.codec.decode(index._codes).astype(np.float64)
    out = []
    for i in range(len(queries)):
        q = np.asarray(queries.vectors[queries.offsets[i] : queries.offsets[i + 1]], dtype=np.float64)
        s = [(q @ decoded[index._offsets[d] : index._offsets[d + 1]].T).max(axis=1).sum() for d in rows]
        order = np.argsort(-np.asarray(s), kind="stable")[:k]
        out.append([index.doc_ids[rows[j]] for j in order])
    return out


@pytest.mark.parametrize("spec", ["Binary", "BinaryITQ"])
def test_lookup_tables_score_like_decoded_codes(spec: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 13)).astype(np.float32)  # 13 bits: the last byte holds padding
    q = BinaryQuantizer(13, rotation="itq" if spec == "BinaryITQ" else None).fit(x)
    codes, qv = q.encode(x[:40]), rng.standard_normal((5, 13)).astype(np.float32)
    table, const = lookup_tables(q, qv)
    assert table.shape == (2, 256, 5)
    via_table = const[:, None] + sum(table[b][codes[:, b]] for b in range(2)).T
    np.testing.assert_allclose(via_table, qv @ q.decode(codes).T, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", ["Binary", "BinaryITQ"])
def test_covering_everything_equals_brute_force_maxsim(data, spec: str, kind: str) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec=spec, first_stage="binary", binary_index=kind).add(docs)
    got = index.search(queries, k=10, params=EVERYTHING)
    assert got.doc_ids == _brute(index, queries, np.arange(len(index)), 10)
    np.testing.assert_allclose(got.scores, index.score(queries)[np.arange(8)[:, None], got.labels], rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_token_neighbours_find_the_source_document(data, kind: str) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec="Binary", first_stage="binary", binary_index=kind).add(docs)
    engine = index.binary_engine()
    offsets, cands = engine.candidates(queries.vectors, queries.offsets, BinaryParams(token_k=5, nprobe=64))
    for i in range(8):
        mine = cands[offsets[i] : offsets[i + 1]]
        assert i in mine and (np.diff(mine) > 0).all() and mine.size <= 5 * queries.lengths[i]
    res = index.search(queries, k=3, params={"token_k": 5, "nprobe": 64, "ef_search": 64})
    assert [ids[0] for ids in res.doc_ids] == [f"d{i}" for i in range(8)]


def test_ivf_lists_and_probing(data) -> None:
    docs, queries = data
    assert [ivf_nlist(n) for n in (1, 3, 4, 1000, 10**6)] == [1, 1, 2, 16, 512]
    index = MultiVectorIndex(D, spec="BinaryITQ", first_stage="binary", binary_index="ivf").add(docs)
    engine = index.binary_engine()
    assert engine.index.nlist == ivf_nlist(index.num_vectors) and engine.index.ntotal == index.num_vectors
    codes = index.hamming.encode(queries.vectors)
    flat = BinaryEngine(index.hamming, index._codes, index._offsets, "flat")
    # probing every list is an exact Hamming search: the same distances as the flat scan (ids may differ at ties)
    every = engine._search_params(BinaryParams(token_k=8, nprobe=engine.index.nlist), None)
    np.testing.assert_array_equal(engine.index.search(codes, 8, params=every)[0], flat.index.search(codes, 8)[0])
    one = engine._search_params(BinaryParams(token_k=8, nprobe=1), None)
    assert (engine.index.search(codes, 8, params=one)[0] >= flat.index.search(codes, 8)[0]).all()
    assert index.memory_bytes() > index._codes.nbytes + engine.memory_bytes()


@pytest.mark.parametrize("kind", KINDS)
def test_subset_where_and_deletes_in_every_stage(data, kind: str) -> None:
    docs, queries = data
    colour = ["red" if i % 3 == 0 else "blue" for i in range(len(docs))]
    index = MultiVectorIndex(D, spec="Binary", first_stage="binary", binary_index=kind)
    index.add(docs, attributes={"colour": colour})
    subset = [f"d{i}" for i in range(0, 160, 7)]
    rows = np.array([int(s[1:]) for s in subset])
    assert index.search(queries, k=5, subset=subset, params=EVERYTHING).doc_ids == _brute(index, queries, rows, 5)
    for params in ({"token_k": 3, "nprobe": 1, "ef_search": 8}, {"token_k": 3, "ndocs": 5}):
        small = index.search(queries, k=5, subset=subset, params=params)  # few hits: rows are completed
        assert all(len(ids) == 5 and set(ids) <= set(subset) for ids in small.doc_ids)
        red = index.search(queries, k=5, where={"colour": "red"}, params=params)
        assert all(len(ids) == 5 and all(int(d[1:]) % 3 == 0 for d in ids) for ids in red.doc_ids)
    gone = [f"d{i}" for i in range(0, 160, 2)]
    assert index.delete(gone) == 80
    left = index.search(queries, k=10, params={"token_k": 4})
    assert not set(gone) & {d for ids in left.doc_ids for d in ids}
    assert index.search(queries, k=10, params=EVERYTHING).doc_ids == _brute(index, queries, np.arange(80), 10)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(data, tmp_path, mmap: bool) -> None:
    docs, queries = data
    for kind in ("ivf", "hnsw"):
        index = MultiVectorIndex(D, spec="BinaryITQ", first_stage="binary", binary_index=kind, token_k=6, nprobe=2,
                                 ef_search=20).add(docs)
        before = index.search(queries, k=5)
        index.save(tmp_path / kind)
        loaded = load_index(tmp_path / kind, mmap=mmap)
        assert (loaded.binary_index, loaded.binary_params) == (kind, BinaryParams(token_k=6, nprobe=2, ef_search=20))
        after = loaded.search(queries, k=5)
        assert after.doc_ids == before.doc_ids
        np.testing.assert_array_equal(after.scores, before.scores)


def test_separate_sign_codes_rescore_with_the_stored_codes(data) -> None:
    docs, queries = data
    full = MultiVectorIndex(D, spec="FP16").add(docs).search(queries, k=5)
    index = MultiVectorIndex(D, spec="FP16", first_stage="binary").add(docs)
    wide = index.search(queries, k=5, params={**EVERYTHING, "ndocs": 1000})
    assert wide.doc_ids == full.doc_ids
    narrow = index.search(queries, k=5, params={"token_k": 4, "ndocs": 5})
    np.testing.assert_allclose(narrow.scores[:, 0], full.scores[:, 0], rtol=1e-5)  # the source documents


def test_bad_binary_settings(data) -> None:
    docs, queries = data
    with pytest.raises(ConfigError, match="binary_index must be"):
        MultiVectorIndex(D, spec="Binary", first_stage="binary", binary_index="lsh")
    index = MultiVectorIndex(D, spec="Binary", first_stage="binary").add(docs)
    with pytest.raises(ConfigError, match=r"unknown search params \['efSearch'\]; the binary engine"):
        index.search(queries, k=5, params={"efSearch": 3})
    with pytest.raises(ConfigError, match="token_k must be a positive int"):
        index.search(queries, k=5, params={"token_k": 0})
    with pytest.raises(ConfigError, match="params must be a dict or BinaryParams"):
        index.search(queries, k=5, params=[("token_k", 3)])
    assert index.search(queries, k=5, params=BinaryParams(token_k=3)).doc_ids is not None


# ---------------------------------------------------------------------- k-means sized to the corpus
def test_corpus_k_rule() -> None:
    for n in (2, 50, 256, 1000, 4096, 123_456, 10**6, 10**7, 10**8, 10**10):
        k = corpus_k(n)
        expected = 2 ** int(np.floor(np.log2(16 * np.sqrt(n))))
        assert k == min(expected, 65536, 2 ** int(np.floor(np.log2(n)))) and k & (k - 1) == 0 and 2 <= k <= n
    assert (corpus_k(10**6), corpus_k(10**7), corpus_k(17 * 10**6), corpus_k(10**9)) == (8192, 32768, 65536, 65536)
    for bad in (0, 1, 2.5, True):
        with pytest.raises(ConfigError, match="at least 2 vectors"):
            corpus_k(bad)  # type: ignore[arg-type]


def test_kmeans_without_k_is_sized_to_the_corpus(data, tmp_path) -> None:
    docs, queries = data
    for spec, bits in (("KMeans", 0), ("KMeansr2", 2)):
        codec = parse_codec(spec, D)
        assert isinstance(codec, PatchKMeans) and codec.auto_k and codec.spec == spec and codec.id_bytes == 2
        assert (codec.k, codec.residual_bits) == (0, bits)
    for spec in ("KMeans256r2", "KMeans32"):  # explicit K as before
        assert parse_codec(spec, D).spec == spec
    with pytest.raises(ConfigError, match="K sized to the corpus"):
        parse_codec("KMeansr", D)
    index = MultiVectorIndex(D, spec="KMeansr2")
    assert index.first_stage == "plaid" and index.spec == "KMeansr2"
    assert make_index(D, "KMeans", multivector=True).spec == "KMeans"
    index.add(docs)
    k = corpus_k(docs.num_vectors)
    assert index.codec.k == k and index.spec == f"KMeans{k}r2" and index._codes.shape[1] == 1 + (2 * D) // 8
    index.save(tmp_path / "auto")
    loaded = load_index(tmp_path / "auto")
    assert loaded.spec == f"KMeans{k}r2"
    assert loaded.search(queries, k=5).doc_ids == index.search(queries, k=5).doc_ids
    big = PatchKMeans(4, k=None, niter=2).fit(np.random.default_rng(0).standard_normal((70_000, 4)).astype(np.float32))
    assert big.k == corpus_k(70_000) == 4096 and big.id_bytes == 2

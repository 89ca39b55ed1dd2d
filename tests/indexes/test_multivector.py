"""MultiVectorIndex: every first stage against brute-force MaxSim, pruning, persistence, edits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexes import MultiVectorIndex, load_index
from retrieval.errors import ConfigError, IndexFormatError, ShapeError, UnknownIdError
from retrieval.rerank import MaxSimReranker, maxsim_csr
from retrieval.types import MultiVectorEmbeddings

D = 16


def _collection(rng: np.random.Generator, n: int, *, lo: int = 1, hi: int = 12, topics: int = 6) -> MultiVectorEmbeddings:
    # Documents draw tokens around a few topic directions, so MaxSim has structure to find.
    centres = rng.standard_normal((topics, D))
    arrays, saliency = [], []
    for _ in range(n):
        length = int(rng.integers(lo, hi))
        topic = centres[rng.integers(0, topics, size=length)]
        x = topic + 0.4 * rng.standard_normal((length, D))
        arrays.append(x / np.linalg.norm(x, axis=1, keepdims=True))
        saliency.append(rng.random(length))
    return MultiVectorEmbeddings.from_list(arrays, ids=[f"d{i}" for i in range(n)], saliency=saliency)


@pytest.fixture(scope="module")
def data() -> tuple[MultiVectorEmbeddings, MultiVectorEmbeddings]:
    rng = np.random.default_rng(7)
    docs = _collection(rng, 120)
    queries = _collection(rng, 6, lo=2, hi=5)
    return docs, MultiVectorEmbeddings(queries.vectors, queries.offsets, [f"q{i}" for i in range(6)])


def _brute(queries: MultiVectorEmbeddings, docs: MultiVectorEmbeddings, k: int) -> list[list[str]]:
    s = maxsim_csr(queries, docs)
    return [[docs.ids[j] for j in np.lexsort((np.arange(s.shape[1]), -row))[:k]] for row in s]


def test_flat_exhaustive_is_exact(data) -> None:
    docs, queries = data
    res = MultiVectorIndex(D, spec="Flat").add(docs).search(queries, k=10)
    assert res.doc_ids == _brute(queries, docs, 10)
    np.testing.assert_allclose(res.scores, np.sort(maxsim_csr(queries, docs), axis=1)[:, ::-1][:, :10], rtol=1e-5)
    assert res.query_ids == queries.ids


@pytest.mark.parametrize("spec", ["KMeans32", "KMeans32r2", "Binary", "BinaryITQ", "FP16"])
def test_codec_scores_equal_maxsim_over_decoded_vectors(spec: str, data) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec=spec, first_stage="exhaustive").add(docs)
    decoded = MultiVectorEmbeddings(index.codec.decode(index._codes), index._offsets, index.doc_ids)
    expected = maxsim_csr(queries, decoded)
    np.testing.assert_allclose(index.score(queries), expected, rtol=1e-4, atol=1e-4)
    # Coarse codecs make exact ties, so compare scores (tie order may differ), then each hit's own score.
    res = index.search(queries, k=5)
    np.testing.assert_allclose(res.scores, -np.sort(-expected, axis=1)[:, :5], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(expected, res.labels, axis=1), res.scores, rtol=1e-4, atol=1e-4)


def test_compression_keeps_most_of_the_ranking(data) -> None:
    docs, queries = data
    exact = _brute(queries, docs, 10)
    for spec, floor in (("KMeans32r4", 0.8), ("FP16", 0.95)):
        got = MultiVectorIndex(D, spec=spec, first_stage="exhaustive").add(docs).search(queries, k=10).doc_ids
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact, strict=True)])
        assert overlap >= floor, (spec, overlap)


def test_centroid_first_stage_probing_everything_equals_exhaustive(data) -> None:
    docs, queries = data
    full = MultiVectorIndex(D, spec="KMeans32r2", first_stage="exhaustive").add(docs).search(queries, k=10)
    probed = MultiVectorIndex(D, spec="KMeans32r2", first_stage="centroid", nprobe=32, n_candidates=1000)
    assert probed.add(docs).search(queries, k=10).doc_ids == full.doc_ids
    narrow = MultiVectorIndex(D, spec="KMeans32r2", first_stage="centroid", nprobe=1, n_candidates=5).add(docs)
    res = narrow.search(queries, k=10)  # at most 5 candidates survive: padded with -1
    assert (res.labels[:, 5:] == -1).all() and all(len(ids) <= 5 for ids in res.doc_ids)


def test_binary_first_stage_with_every_token_equals_exhaustive(data) -> None:
    docs, queries = data
    for spec in ("Binary", "KMeans32r2"):
        full = MultiVectorIndex(D, spec=spec, first_stage="exhaustive").add(docs).search(queries, k=10)
        wide = MultiVectorIndex(D, spec=spec, first_stage="binary", token_k=10_000).add(docs)
        np.testing.assert_allclose(wide.search(queries, k=10).scores, full.scores, rtol=1e-5)  # ties may swap
    small = MultiVectorIndex(D, spec="FP16", first_stage="binary", token_k=1).add(docs)
    res = small.search(queries, k=10)
    assert all(len(ids) <= queries.lengths[i] for i, ids in enumerate(res.doc_ids))  # one doc per query token


def test_pruning_stores_the_kept_share(data) -> None:
    docs, _ = data
    index = MultiVectorIndex(D, spec="Prune0.5,FP16").add(docs)
    assert index.spec == "Prune0.5,FP16"
    assert index.lengths.tolist() == np.maximum(1, np.ceil(0.5 * docs.lengths)).astype(int).tolist()
    full = MultiVectorIndex(D, spec="FP16").add(docs)
    payload = [ix.memory_bytes() - ix._table.memory_bytes() for ix in (index, full)]  # the same ids in both
    assert payload[0] < 0.65 * payload[1]
    with pytest.raises(ConfigError, match="saliency"):
        index.add(MultiVectorEmbeddings.from_list([np.ones((2, D))], ids=["x"]))


@pytest.mark.parametrize("spec,first_stage", [("Prune0.8,KMeans32r2", "centroid"), ("BinaryITQ", "binary"),
                                              ("KMeans300", "exhaustive"), ("Flat", "binary")])
def test_save_load_round_trip(spec: str, first_stage: str, data, tmp_path: Path) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec=spec, first_stage=first_stage, nprobe=8).add(docs)
    before = index.search(queries, k=10)
    index.save(tmp_path / "mv")
    for loaded in (load_index(tmp_path / "mv"), MultiVectorIndex.load(tmp_path / "mv", mmap=True)):
        assert isinstance(loaded, MultiVectorIndex) and loaded.spec == spec and loaded.first_stage == first_stage
        after = loaded.search(queries, k=10)
        assert after.doc_ids == before.doc_ids
        np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)
    with pytest.raises(ConfigError, match="already exists"):
        index.save(tmp_path / "mv")


def test_load_rejects_damaged_files(data, tmp_path: Path) -> None:
    docs, _ = data
    path = MultiVectorIndex(D, spec="KMeans32").add(docs).save(tmp_path / "mv")
    with open(path / "codes.npy", "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IndexFormatError, match="sha256"):
        MultiVectorIndex.load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["params"]["spec"] = "KMeans32x"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="params"):
        MultiVectorIndex.load(path, verify=False)


def test_add_delete_subset_and_empty(data) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec="KMeans32r1", first_stage="centroid", nprobe=32, n_candidates=500)
    empty = index.search(queries, k=3)
    assert empty.doc_ids == [[]] * len(queries) and (empty.labels == -1).all()
    index.add(docs.select(range(60))).add(docs.select(range(60, 120)))
    assert len(index) == 120 and index.num_vectors == docs.num_vectors
    top = index.search(queries, k=1).doc_ids[0][0]
    assert index.delete([top]) == 1 and top not in index
    assert top not in {d for row in index.search(queries, k=119).doc_ids for d in row}
    with pytest.raises(UnknownIdError, match="nothing was deleted"):
        index.delete([top, "d5"])
    assert "d5" in index
    allowed = ["d1", "d2", "d3"]
    assert {d for row in index.search(queries, k=5, subset=allowed).doc_ids for d in row} <= set(allowed)
    with pytest.raises(ConfigError, match="already in the index"):
        index.add(docs.select([1]))


def test_bad_input(data) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec="FP16").add(docs)
    with pytest.raises(ConfigError, match="MultiVectorEmbeddings"):
        index.search(np.ones((2, D), np.float32))
    with pytest.raises(ShapeError, match="d=8"):
        index.search(MultiVectorEmbeddings.from_list([np.ones((2, 8))]))
    bad = MultiVectorEmbeddings.from_list([np.full((1, D), np.nan)])
    with pytest.raises(ShapeError, match="NaN"):
        index.search(bad)
    with pytest.raises(ConfigError, match="centroid"):
        MultiVectorIndex(D, spec="FP16", first_stage="centroid")
    with pytest.raises(ConfigError, match="Prune"):
        MultiVectorIndex(D, spec="Cut0.5,FP16")
    with pytest.raises(ConfigError, match="k must be"):
        index.search(queries, k=0)


def test_index_as_reranker_store(data) -> None:
    docs, queries = data
    index = MultiVectorIndex(D, spec="Flat").add(docs)
    candidates = [["d3", "d1", "d2", "d9"]] * len(queries)
    via_index = MaxSimReranker(object.__new__(_Dummy), index).rerank_vectors(queries, candidates, 2)
    via_store = MaxSimReranker(object.__new__(_Dummy), docs).rerank_vectors(queries, candidates, 2)
    assert via_index.doc_ids == via_store.doc_ids
    np.testing.assert_allclose(via_index.scores, via_store.scores, rtol=1e-5)


class _Dummy:
    def encode_queries(self, texts):  # pragma: no cover - rerank_vectors skips encoding
        raise AssertionError


def test_embeddings_save_and_memory_mapped_load(data, tmp_path: Path) -> None:
    from indexes.multivector import load_embeddings, save_embeddings

    docs, _ = data
    path = save_embeddings(docs, tmp_path / "emb")
    back = load_embeddings(path)
    assert isinstance(back.vectors.base, np.memmap) and back.ids == docs.ids  # a view of the map, no copy
    np.testing.assert_array_equal(back.vectors, docs.vectors)
    np.testing.assert_array_equal(back.offsets, docs.offsets)
    np.testing.assert_array_equal(back.saliency, docs.saliency)
    with pytest.raises(ConfigError, match="already exists"):
        save_embeddings(docs, path)
    (path / "offsets.npy").write_bytes((path / "offsets.npy").read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match=r"offsets\.npy"):
        load_embeddings(path, verify=False)
    with pytest.raises(IndexFormatError, match="not saved MultiVectorEmbeddings"):
        load_embeddings(MultiVectorIndex(D, spec="FP16").add(docs).save(tmp_path / "idx"))


def test_embeddings_with_int64_ids_and_the_older_lines_layout(data, tmp_path: Path) -> None:
    """Integer ids round-trip as int64 (no text file); str ids are arrays, repeats allowed; a
    directory saved with ``doc_ids.txt`` lines (before issue 18) still loads and checks clean."""
    from indexes._io import file_table
    from indexes.check import check_index
    from indexes.multivector import load_embeddings, save_embeddings

    docs, queries = data
    ints = MultiVectorEmbeddings(docs.vectors, docs.offsets, np.arange(5000, 5000 + len(docs)), docs.saliency)
    path = save_embeddings(ints, tmp_path / "int")
    back = load_embeddings(path)
    assert back.ids.dtype == np.int64 and back.ids.tolist() == list(range(5000, 5000 + len(docs)))
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("ids")) == ["ids_int64.npy"]
    index = MultiVectorIndex(D, spec="FP16").add(back)
    reference = MultiVectorIndex(D, spec="FP16").add(docs)
    got, want = index.search(queries, 5), reference.search(queries, 5)
    assert got.doc_ids == [[5000 + int(i[1:]) for i in row] for row in want.doc_ids]
    assert isinstance(got.doc_ids[0][0], int) and index.delete(5000) == 1 and 5000 not in index

    repeated = MultiVectorEmbeddings(queries.vectors, queries.offsets, ["q", "é\nq", "q", "x", "y", "z"])
    assert load_embeddings(save_embeddings(repeated, tmp_path / "rep")).ids == repeated.ids
    assert check_index(tmp_path / "rep").problems == [] and check_index(path).problems == []
    for bad, match in ((np.array([0, 1, 2, 3, 4, 5, 99]), "offsets must rise from 0"),
                       (np.array([0, 1, 5, 3, 7, 8, 9]), "offsets must rise from 0")):
        forged = tmp_path / f"forged-{match[:3]}-{bad[2]}"
        shutil.copytree(tmp_path / "rep", forged)
        np.save(forged / "ids_offsets.npy", bad.astype(np.int64))  # checksums rewritten to match: only the check is left
        raw = json.loads((forged / "manifest.json").read_text())
        raw["files"] = file_table(forged)
        (forged / "manifest.json").write_text(json.dumps(raw))
        with pytest.raises(IndexFormatError, match=f"the saved ids are damaged: the {match}"):
            load_embeddings(forged)

    old = save_embeddings(docs, tmp_path / "old")  # rewritten as the code before issue 18 saved it
    raw = json.loads((old / "manifest.json").read_text())
    for name in ("ids_utf8", "ids_offsets"):
        (old / raw["arrays"].pop(name)["file"]).unlink()
    (old / "doc_ids.txt").write_text("".join(f"{i}\n" for i in docs.ids))
    raw["files"] = file_table(old)
    (old / "manifest.json").write_text(json.dumps(raw))
    assert load_embeddings(old).ids == docs.ids and check_index(old).problems == []
    (old / "doc_ids.txt").write_text("d0\n")  # still read, so still checked against the manifest
    with pytest.raises(IndexFormatError, match=r"doc_ids\.txt has 3 bytes, but the manifest recorded"):
        load_embeddings(old)

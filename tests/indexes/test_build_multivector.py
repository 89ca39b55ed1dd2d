"""Bounded-memory multi-vector builds from a stream of document batches (indexes.build)."""

from __future__ import annotations

import numpy as np
import pytest

import indexes.multivector as multivector_module
from indexes import MultiVectorIndex
from indexes.build import build_multivector_from_batches
from retrieval.compress.kmeans import PatchKMeans
from retrieval.errors import ConfigError, NotTrainedError, ShapeError
from retrieval.types import MultiVectorEmbeddings

RNG = np.random.default_rng(0)
LENGTHS = RNG.integers(1, 9, 120)
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)])
X = RNG.standard_normal((int(OFFSETS[-1]), 16)).astype(np.float32)
X /= np.linalg.norm(X, axis=1, keepdims=True)
SAL = RNG.random(X.shape[0]).astype(np.float32)
IDS = [f"d{i}" for i in range(len(LENGTHS))]
ALL = MultiVectorEmbeddings(X, OFFSETS, IDS, saliency=SAL)


def _stream(batch: int = 25, ids=IDS):
    for s in range(0, len(ids), batch):
        yield MultiVectorEmbeddings(*_slice(s, min(s + batch, len(ids)), ids))


def _slice(a: int, b: int, ids):
    lo, hi = OFFSETS[a], OFFSETS[b]
    return X[lo:hi], OFFSETS[a : b + 1] - lo, list(ids[a:b]) if isinstance(ids, list) else ids[a:b], SAL[lo:hi]


@pytest.mark.parametrize(("spec", "options"), [("KMeans16r2", {}), ("Prune0.5,KMeans16r2", {}), ("BinaryITQ", {}),
                                               ("Flat", {}), ("KMeans16r2", {"first_stage": "binary"})])
def test_same_index_as_one_add(tmp_path, spec, options):
    """Trained on the whole stream as one sample, the streamed index stores what add() stores: the
    codes the codec gives for every (pruned) vector, in order, and the same ids and offsets."""
    streamed = build_multivector_from_batches(_stream(), dim=16, spec=spec, train_size=10_000, add_chunk=50,
                                              spill_dir=tmp_path, **options)
    whole = MultiVectorIndex(16, spec=spec, **options)
    pruned = whole._prepare(ALL)
    whole.train_vectors(pruned.vectors)  # the same sample: every (pruned) vector, in order
    whole.add(ALL)
    assert streamed.doc_ids == IDS and streamed.num_vectors == whole.num_vectors
    np.testing.assert_array_equal(streamed._codes, whole.codec.encode(pruned.vectors))
    np.testing.assert_array_equal(streamed._codes, whole._codes)
    np.testing.assert_array_equal(streamed._hamming_codes, whole._hamming_codes)
    np.testing.assert_array_equal(streamed._offsets, pruned.offsets)
    q = ALL.select([3, 50])
    a, b = streamed.search(q, 5), whole.search(q, 5)
    assert a.doc_ids == b.doc_ids
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    assert list(tmp_path.iterdir()) == []  # the spill is removed


def test_int_ids_and_a_sample_smaller_than_the_stream(tmp_path):
    ids = np.arange(1000, 1000 + len(LENGTHS), dtype=np.int64)
    index = build_multivector_from_batches(_stream(ids=ids), dim=16, spec="KMeans8r1", train_size=64,
                                           spill_dir=tmp_path)
    assert index.doc_ids == ids.tolist() and index.is_trained and index.num_vectors == X.shape[0]
    q = ALL.select([7])
    exhaustive = index.score(q)[0]  # MaxSim against every stored document
    assert index.search(q, 1, params={"nprobe": 8, "ndocs": 1000}).doc_ids == [[int(ids[np.argmax(exhaustive)])]]


def test_bad_streams_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        build_multivector_from_batches(iter([]), dim=16, spec="KMeans8", spill_dir=tmp_path)
    with pytest.raises(ConfigError, match="MultiVectorEmbeddings"):
        build_multivector_from_batches(iter([X]), dim=16, spec="KMeans8", spill_dir=tmp_path)
    dup = [MultiVectorEmbeddings(*_slice(0, 10, IDS)), MultiVectorEmbeddings(*_slice(5, 15, IDS))]
    with pytest.raises(ConfigError, match="d5"):
        build_multivector_from_batches(iter(dup), dim=16, spec="KMeans8", spill_dir=tmp_path)
    mixed = [MultiVectorEmbeddings(*_slice(0, 10, IDS)),
             MultiVectorEmbeddings(*_slice(10, 20, np.arange(len(IDS), dtype=np.int64)))]
    with pytest.raises(ConfigError, match="one kind of id"):
        build_multivector_from_batches(iter(mixed), dim=16, spec="KMeans8", spill_dir=tmp_path)
    with pytest.raises(ShapeError, match="d=16"):
        build_multivector_from_batches(_stream(), dim=8, spec="KMeans8", spill_dir=tmp_path)
    narrow = [MultiVectorEmbeddings(*_slice(0, 10, IDS)), MultiVectorEmbeddings(X[:5, :8], [0, 5], ["late"])]
    with pytest.raises(ShapeError, match="d=8, the index expects d=16"):
        build_multivector_from_batches(iter(narrow), dim=16, spec="KMeans8", spill_dir=tmp_path)
    with pytest.raises(ConfigError, match="add_chunk"):
        build_multivector_from_batches(_stream(), dim=16, spec="KMeans8", add_chunk=0, spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_k_is_sized_to_the_stream_not_to_the_sample(tmp_path):
    assert X.shape[0] >= 512
    index = build_multivector_from_batches(_stream(), dim=16, spec="KMeansr1", train_size=300, spill_dir=tmp_path)
    assert index.codec.k == 256  # corpus_k of the stream's vectors, not corpus_k(300) = 128
    small = build_multivector_from_batches(_stream(), dim=16, spec="KMeansr1", train_size=100, spill_dir=tmp_path)
    assert small.codec.k <= 100  # never more centroids than the sample has vectors


@pytest.mark.parametrize("spec", ["BinaryITQ", "KMeans16r2"])
def test_binary_first_stage_from_a_stream(tmp_path, spec):
    """first_stage="binary" streams like any other: the same sign codes (the codec's own, or a separate
    Hamming quantizer's fitted on the sample), the same binary search, and a save keeps the token index."""
    spill = tmp_path / "spill"
    spill.mkdir()
    streamed = build_multivector_from_batches(_stream(), dim=16, spec=spec, first_stage="binary", binary_index="ivf",
                                              train_size=10_000, add_chunk=50, spill_dir=spill)
    whole = MultiVectorIndex(16, spec=spec, first_stage="binary", binary_index="ivf")
    whole.train_vectors(ALL.vectors)
    whole.add(ALL)
    assert streamed.first_stage == "binary" and streamed.binary_index == "ivf"
    sign = (lambda i: i._codes) if spec == "BinaryITQ" else (lambda i: i._hamming_codes)
    assert sign(streamed).shape == (X.shape[0], 2)
    np.testing.assert_array_equal(sign(streamed), sign(whole))
    q = ALL.select([3, 50, 99])
    a, b = streamed.search(q, 5, params={"token_k": 8, "nprobe": 2}), whole.search(q, 5, params={"token_k": 8, "nprobe": 2})
    assert a.doc_ids == b.doc_ids
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    streamed.save(tmp_path / "saved")
    from indexes import load_index

    loaded = load_index(tmp_path / "saved")
    assert loaded._binary is not None and loaded._binary.n_vectors == X.shape[0]  # read back, not rebuilt
    assert loaded.search(q, 5, params={"token_k": 8, "nprobe": 2}).doc_ids == a.doc_ids
    assert list(spill.iterdir()) == []


class _NumpySpy:
    """numpy as indexes.multivector sees it, with its uint8 allocations and its concatenations recorded."""

    def __init__(self) -> None:
        self.bytes_arrays: list[np.ndarray] = []
        self.concatenated: list[list[tuple[int, ...]]] = []

    def __getattr__(self, name: str):
        return getattr(np, name)

    def empty(self, shape, dtype=float, **kwargs):
        out = np.empty(shape, dtype, **kwargs)
        if out.dtype == np.uint8:
            self.bytes_arrays.append(out)
        return out

    def concatenate(self, arrays, *args, **kwargs):
        self.concatenated.append([np.shape(a) for a in arrays])
        return np.concatenate(arrays, *args, **kwargs)


def test_the_codes_are_allocated_once(tmp_path, monkeypatch):
    """The streamed build encodes block after block into one array sized for the whole stream and
    keeps it: no concatenation copies the codes so far (the peak would be twice the codes)."""
    spy = _NumpySpy()
    monkeypatch.setattr(multivector_module, "np", spy)
    blocks: list[int] = []
    encode = PatchKMeans.encode
    monkeypatch.setattr(PatchKMeans, "encode", lambda self, x: blocks.append(len(x)) or encode(self, x))
    index = build_multivector_from_batches(_stream(), dim=16, spec="KMeans16r2", first_stage="binary",
                                           train_size=200, add_chunk=50, spill_dir=tmp_path)
    assert len(blocks) >= X.shape[0] // 60 and sum(blocks) == X.shape[0]  # many blocks, every vector once
    assert [a.shape for a in spy.bytes_arrays] == [(X.shape[0], index.codec.code_size), (X.shape[0], 2)]
    assert index._codes is spy.bytes_arrays[0] and index._hamming_codes is spy.bytes_arrays[1]  # kept, not copied
    assert all(len(shape) == 1 for shapes in spy.concatenated for shape in shapes)  # only offsets
    assert index.doc_ids == IDS


def test_adding_blocks_checks_before_changing_the_index():
    index = MultiVectorIndex(16, spec="KMeans16r2")
    docs = ALL.select(range(10))
    with pytest.raises(NotTrainedError, match="train"):
        index._add_blocks(docs.ids, docs.offsets, [docs.vectors])
    index.train_vectors(X)
    with pytest.raises(ShapeError, match="blocks hold 3 vectors; the offsets give"):
        index._add_blocks(docs.ids, docs.offsets, [docs.vectors[:3]])
    with pytest.raises(ShapeError, match="more than the"):
        index._add_blocks(docs.ids, docs.offsets, [docs.vectors, docs.vectors[:1]])
    assert len(index) == 0 and index.num_vectors == 0 and len(index._offsets) == 1
    index._add_blocks(docs.ids, docs.offsets, [docs.vectors[:4], docs.vectors[4:]])
    with pytest.raises(ConfigError, match="d0"):
        index._add_blocks(docs.ids[:1], docs.offsets[:2], [docs.vectors[: docs.offsets[1]]])
    more = ALL.select(range(10, 30))
    index._add_blocks(more.ids, more.offsets, [more.vectors])  # a second call appends
    assert index.doc_ids == IDS[:30]
    np.testing.assert_array_equal(index._codes, index.codec.encode(X[: OFFSETS[30]]))
    np.testing.assert_array_equal(index._offsets, OFFSETS[:31])

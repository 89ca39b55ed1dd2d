"""Codecs: spec round trips, exactness where promised, monotone error, persistence of state."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.compress import AttentionPruner, BinaryQuantizer, FloatCodec, PatchKMeans, codec_from_state, parse_codec
from retrieval.compress.kmeans import _pack, _unpack
from retrieval.errors import ConfigError, IndexFormatError, NotTrainedError, ShapeError
from retrieval.types import MultiVectorEmbeddings


def _unit(rng: np.random.Generator, n: int, d: int, rank: int = 8) -> np.ndarray:
    # Low intrinsic dimension plus noise, like real token vectors; unit length.
    x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("spec", ["Flat", "FP16", "KMeans16", "KMeans300", "KMeans16r1", "KMeans16r2", "KMeans16r4",
                                  "Binary", "BinaryITQ", "KMeans", "KMeansr2"])
def test_spec_round_trip(spec: str) -> None:
    assert parse_codec(spec, 32).spec == spec


@pytest.mark.parametrize("spec", ["", "KMeansr", "KMeans-auto", "KMeans16r3", "KMeans1", "PQ8", "binary", "KMeans70000"])
def test_bad_spec_is_rejected_with_the_choices(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"expected|residual_bits must be one of|k must be"):
        parse_codec(spec, 32)


def test_code_sizes() -> None:
    assert parse_codec("Flat", 128).code_size == 512
    assert parse_codec("FP16", 128).code_size == 256
    assert parse_codec("KMeans256", 128).code_size == 1
    assert parse_codec("KMeans257", 128).code_size == 2
    assert parse_codec("KMeans256r2", 128).code_size == 1 + 32
    assert parse_codec("Binary", 130).code_size == 17


def test_float_codecs(rng: np.random.Generator) -> None:
    x = _unit(rng, 50, 24)
    np.testing.assert_array_equal(FloatCodec(24).decode(FloatCodec(24).encode(x)), x)
    np.testing.assert_allclose(FloatCodec(24, dtype="float16").decode(FloatCodec(24, dtype="float16").encode(x)), x,
                               atol=1e-3)
    with pytest.raises(ShapeError, match=r"\(T, 24\)"):
        FloatCodec(24).encode(x[:, :10])
    with pytest.raises(ShapeError, match="uint8"):
        FloatCodec(24).decode(np.zeros((2, 96), dtype=np.int8))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bit_packing_round_trip(bits: int, rng: np.random.Generator) -> None:
    values = rng.integers(0, 1 << bits, size=(7, 13)).astype(np.uint8)
    packed = _pack(values, bits)
    assert packed.shape == (7, (13 * bits + 7) // 8)
    np.testing.assert_array_equal(_unpack(packed, bits, 13), values)


def test_kmeans_error_falls_with_residual_bits(rng: np.random.Generator) -> None:
    x = _unit(rng, 3000, 32)
    errors = []
    for bits in (0, 1, 2, 4):
        q = PatchKMeans(32, k=32, residual_bits=bits, niter=8).fit(x)
        errors.append(float(((q.decode(q.encode(x)) - x) ** 2).sum(axis=1).mean()))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.1 * errors[0]


def test_kmeans_two_byte_ids_and_assignment(rng: np.random.Generator) -> None:
    x = _unit(rng, 2000, 16)
    q = PatchKMeans(16, k=300, niter=4).fit(x)
    codes = q.encode(x)
    assert codes.shape == (2000, 2)
    ids = q.ids(codes)
    np.testing.assert_array_equal(ids, q.assign(x))
    assert ids.max() >= 256  # the second byte is really used
    # The id is the nearest centroid by inner product.
    np.testing.assert_array_equal(ids, np.argmax(x @ q.centroids.T, axis=1))


def test_kmeans_state_round_trip_and_validation(rng: np.random.Generator) -> None:
    x = _unit(rng, 1000, 16)
    q = PatchKMeans(16, k=16, residual_bits=2, niter=4).fit(x)
    restored = codec_from_state("KMeans16r2", 16, q.state())
    np.testing.assert_array_equal(restored.decode(q.encode(x)), q.decode(q.encode(x)))
    with pytest.raises(IndexFormatError, match=r"cutoffs.*missing"):
        codec_from_state("KMeans16r2", 16, {"centroids": q.state()["centroids"]})
    with pytest.raises(IndexFormatError, match="not understood"):
        codec_from_state("KMeansX", 16, {})
    unsized = codec_from_state("KMeansr2", 16, q.state())  # K read from the saved centroids
    assert unsized.k == 16 and unsized.spec == "KMeans16r2"
    np.testing.assert_array_equal(unsized.decode(q.encode(x)), q.decode(q.encode(x)))


def test_kmeans_needs_training_and_enough_points(rng: np.random.Generator) -> None:
    with pytest.raises(NotTrainedError, match="fit"):
        PatchKMeans(8, k=4).encode(np.zeros((1, 8), np.float32))
    with pytest.raises(ConfigError, match="at least 16 training vectors"):
        PatchKMeans(8, k=16).fit(_unit(rng, 10, 8))


def test_binary_bits_are_signs_and_itq_lowers_error(rng: np.random.Generator) -> None:
    x = _unit(rng, 4000, 32, rank=4)
    plain = BinaryQuantizer(32).fit(x)
    itq = BinaryQuantizer(32, rotation="itq").fit(x)
    codes = plain.encode(x)
    assert codes.shape == (4000, 4) and codes.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1, count=32).astype(bool), plain.project(x) >= 0)
    err = {name: float(((c.decode(c.encode(x)) - x) ** 2).sum(axis=1).mean()) for name, c in
           (("plain", plain), ("itq", itq))}
    assert err["itq"] < err["plain"], err
    assert err["plain"] < float((x**2).sum(axis=1).mean())  # better than decoding to zero
    restored = codec_from_state("BinaryITQ", 32, itq.state())
    np.testing.assert_allclose(restored.decode(codes), itq.decode(codes))
    rot = itq.matrix
    np.testing.assert_allclose(rot @ rot.T, np.eye(32), atol=1e-4)


def test_pruner_keeps_the_most_salient_share_in_order() -> None:
    mv = MultiVectorEmbeddings.from_list(
        [np.arange(5)[:, None] * np.ones((5, 2)), np.zeros((0, 2)), np.ones((1, 2))], ids=["a", "b", "c"],
        saliency=[[0.5, 0.1, 0.9, 0.3, 0.7], [], [0.2]],
    )
    out = AttentionPruner(0.6)(mv)
    assert out.lengths.tolist() == [3, 0, 1]  # ceil(0.6 * 5) = 3; empty stays empty; never below 1
    assert out.vectors[:3, 0].tolist() == [0.0, 2.0, 4.0]  # saliencies .5 .9 .7, original order kept
    assert out.saliency.tolist() == pytest.approx([0.5, 0.9, 0.7, 0.2])
    assert AttentionPruner(1.0)(mv).num_vectors == 6
    assert AttentionPruner(0.01)(mv).lengths.tolist() == [1, 0, 1]


def test_pruner_errors() -> None:
    for bad in (0, 1.5, -0.2, True):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            AttentionPruner(bad)
    with pytest.raises(ConfigError, match="saliency"):
        AttentionPruner(0.5)(MultiVectorEmbeddings.from_list([np.ones((2, 2))]))


@pytest.mark.parametrize("bits,dim", [(1, 13), (2, 16), (4, 7), (8, 5)])
def test_residual_decoding_table_matches_bit_unpacking(bits: int, dim: int, rng: np.random.Generator) -> None:
    x = _unit(rng, 600, dim)
    q = PatchKMeans(dim, k=8, residual_bits=bits, niter=3).fit(x)
    codes = q.encode(x)
    buckets = _unpack(codes[:, 1:], bits, dim)
    slow = q.centroids[q.ids(codes)] + q.levels[np.arange(dim)[None, :], buckets]
    assert q.unit  # unit-length training data: decoded vectors are scaled back to unit length
    slow /= np.linalg.norm(slow, axis=1, keepdims=True)
    np.testing.assert_allclose(q.decode(codes), slow, rtol=1e-6, atol=1e-6)


def test_unit_decoding_is_chosen_from_the_data_and_saved(rng: np.random.Generator) -> None:
    from retrieval.compress.spec import codec_from_state
    from retrieval.errors import IndexFormatError

    x = _unit(rng, 600, 16)
    q = PatchKMeans(16, k=8, residual_bits=2, niter=3).fit(x)
    decoded = q.decode(q.encode(x))
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)
    raw = PatchKMeans(16, k=8, residual_bits=2, niter=3)
    raw.load_state({k: v for k, v in q.state().items() if k != "unit"})  # saved before the flag existed
    assert not raw.unit
    unscaled = raw.decode(q.encode(x))
    np.testing.assert_allclose(decoded, unscaled / np.linalg.norm(unscaled, axis=1, keepdims=True), atol=1e-6)
    # the reconstruction of unit vectors gets closer (on average), the codes stay the same
    assert np.linalg.norm(decoded - x, axis=1).mean() < np.linalg.norm(unscaled - x, axis=1).mean()
    again = codec_from_state(q.spec, 16, q.state())
    assert again.unit and np.array_equal(again.decode(q.encode(x)), decoded)
    assert not PatchKMeans(16, k=8, residual_bits=2, niter=3).fit(3 * x).unit  # not unit length
    assert not PatchKMeans(16, k=8, niter=3).fit(x).unit  # no residual: a centroid is already unit length
    for bad in (np.zeros(1, np.float32), np.ones(2, np.float32), np.ones(1, np.float64)):
        with pytest.raises(IndexFormatError, match="unit"):
            PatchKMeans(16, k=8, residual_bits=2).load_state({**q.state(), "unit": bad})


def _clustered(rng: np.random.Generator, n: int, d: int, groups: int) -> np.ndarray:
    centers = rng.standard_normal((groups, d)).astype(np.float32)
    x = centers[rng.integers(0, groups, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cell_assigner_probing_every_cell_is_exact(rng: np.random.Generator) -> None:
    import faiss

    from retrieval.compress import kmeans

    centroids = _clustered(rng, 600, 12, 40)
    x = _clustered(rng, 3000, 12, 40)
    coarse = kmeans._spherical_kmeans(faiss, centroids, 16, 10, 0)
    exact = np.argmax(x @ centroids.T, axis=1)
    scores, ids = kmeans._CellAssigner(centroids, coarse, nprobe=16).search(x, 1)
    np.testing.assert_array_equal(ids[:, 0], exact)
    np.testing.assert_allclose(scores[:, 0], (x * centroids[exact]).sum(1), rtol=1e-5)
    few = kmeans._CellAssigner(centroids, coarse, nprobe=4).search(x, 1)[1][:, 0]
    assert np.mean(few == exact) > 0.8  # probing 4 of 16 cells finds most nearest centroids
    assert ((x * centroids[few]).sum(1) <= (x * centroids[exact]).sum(1) + 1e-5).all()


def test_two_level_kmeans_from_the_threshold_on(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """From TWO_LEVEL_K centroids on, k-means trains in two levels and assigns through cells:
    the codebook has K unit centroids, and the codes decode about as well as a flat k-means'."""
    from retrieval.compress import kmeans

    x = _clustered(rng, 6000, 16, 300)
    flat = PatchKMeans(16, k=256, residual_bits=2, niter=10).fit(x)
    monkeypatch.setattr(kmeans, "TWO_LEVEL_K", 256)
    two = PatchKMeans(16, k=256, residual_bits=2, niter=10).fit(x)
    assert two.centroids.shape == (256, 16)
    np.testing.assert_allclose(np.linalg.norm(two.centroids, axis=1), 1, rtol=1e-4)
    assert type(two._assigner).__name__ == "_CellAssigner"
    exact = np.argmax(x @ two.centroids.T, axis=1)
    assert np.mean(two.assign(x) == exact) > 0.9
    err_flat = np.linalg.norm(flat.decode(flat.encode(x)) - x, axis=1).mean()
    err_two = np.linalg.norm(two.decode(two.encode(x)) - x, axis=1).mean()
    assert err_two < 1.15 * err_flat

"""make_index: every spec kind, every option, and the errors for specs and options that do not fit."""

from __future__ import annotations

import numpy as np
import pytest

import indexes
from indexes import FaissIndex, FlatIndex, MultiVectorIndex, make_index
from retrieval.errors import ConfigError
from retrieval.types import Embeddings, MultiVectorEmbeddings


def test_exact_is_the_numpy_flat_index():
    index = make_index(8, "exact")
    assert type(index) is FlatIndex and index.dim == 8 and index.metric == "ip" and index.is_trained
    assert make_index(8, "exact", metric="l2").metric == "l2"


def test_flat_is_faiss_and_ranks_like_exact(rng):
    faiss_flat = make_index(8, "Flat")
    assert type(faiss_flat) is FaissIndex and faiss_flat.spec == "Flat"
    x = Embeddings(rng.standard_normal((50, 8)).astype(np.float32), [f"d{i}" for i in range(50)])
    exact = make_index(8, "exact").add(x).search(x.vectors[:5], k=3)
    assert faiss_flat.add(x).search(x.vectors[:5], k=3).doc_ids == exact.doc_ids


@pytest.mark.parametrize("spec, kwargs, check", [
    ("HNSW16", {"ef_search": 48}, lambda ix: ix.ef_search == 48),
    ("IVF4,Flat", {"nprobe": 3}, lambda ix: ix.nprobe == 3 and not ix.is_trained),
    ("PQ4x4", {"metric": "l2"}, lambda ix: ix.metric == "l2" and not ix.is_trained),
])
def test_faiss_factory_strings_and_search_options(spec, kwargs, check):
    index = make_index(8, spec, **kwargs)
    assert isinstance(index, FaissIndex) and index.spec == spec and check(index)


def test_multivector_specs_and_options(rng):
    index = make_index(8, "Prune0.5,KMeans16r2", multivector=True, first_stage="centroid", nprobe=2,
                       n_candidates=7, seed=3)
    assert isinstance(index, MultiVectorIndex) and index.spec == "Prune0.5,KMeans16r2"
    assert (index.first_stage, index.nprobe, index.n_candidates, index.seed) == ("centroid", 2, 7, 3)
    binary = make_index(8, "BinaryITQ", multivector=True, first_stage="binary", token_k=5)
    assert binary.first_stage == "binary" and binary.token_k == 5 and binary.binary_index == "ivf"
    hnsw = make_index(8, "Binary", multivector=True, first_stage="binary", binary_index="hnsw", ef_search=24,
                      nprobe=3, ndocs=40)
    assert (hnsw.binary_index, hnsw.ef_search, hnsw.binary_params.ef_search) == ("hnsw", 24, 24)
    assert (hnsw.binary_params.nprobe, hnsw.binary_params.ndocs) == (3, 40)
    flat = make_index(8, "FP16", multivector=True, first_stage="binary", binary_index="flat")
    assert flat.binary_index == "flat" and flat.hamming is not None
    # "Flat" is a spec of both kinds: the flag decides, defaults are MultiVectorIndex's own.
    plain = make_index(8, "Flat", multivector=True)
    assert isinstance(plain, MultiVectorIndex) and plain.first_stage == "exhaustive" and plain.nprobe == 4
    docs = MultiVectorEmbeddings.from_list([rng.standard_normal((3, 8)) for _ in range(6)])
    assert plain.add(docs).search(docs.select([2]), k=1).doc_ids == [["2"]]


@pytest.mark.parametrize("spec, kwargs, message", [
    ("Nonsense12", {}, r"unknown spec 'Nonsense12' for dim=8\. Accepted: 'exact' \(NumPy FlatIndex"),
    ("", {}, "non-empty string"),
    (None, {}, "non-empty string"),
    ("Exact", {}, "spelled 'exact'"),
    ("exact", {"nprobe": 4}, "do not apply to spec 'exact'"),
    ("exact", {"ef_search": 4}, "do not apply to spec 'exact'"),
    ("KMeans256r2", {}, "is a MultiVectorIndex spec.*multivector=True"),
    ("Prune0.6,BinaryITQ", {}, "is a MultiVectorIndex spec"),
    ("HNSW16", {"first_stage": "binary"}, r"\['first_stage'\] apply to multi-vector indexes only"),
    ("Flat", {"token_k": 3, "seed": 1}, r"\['seed', 'token_k'\] apply to multi-vector"),
    ("HNSW16", {"nprobe": 2}, "nprobe applies to IVF indexes"),
    ("Flat", {"metric": "cosine"}, "metric"),
    ("KMeans8x", {"multivector": True}, "unknown multi-vector spec 'KMeans8x'. Accepted: .*Prune<p>"),
    ("Prune2x,FP16", {"multivector": True}, "unknown multi-vector spec"),
    ("Prune0.5,FP16,Flat", {"multivector": True}, "unknown multi-vector spec"),
    ("HNSW32", {"multivector": True}, "unknown multi-vector spec 'HNSW32'"),
    ("exact", {"multivector": True}, "use spec 'Flat'"),
    ("FP16", {"multivector": True, "ef_search": 8}, "ef_search applies to FAISS HNSW specs, and to multi-vector"),
    ("Binary", {"multivector": True, "first_stage": "binary", "ef_search": 8}, r"binary_index='hnsw'.*got .*'ivf'|"
     r"binary_index='hnsw'.*binary_index=None"),
    ("Binary", {"multivector": True, "first_stage": "binary", "binary_index": "ivf", "ef_search": 8},
     "binary_index='hnsw'"),
    ("Binary", {"multivector": True, "binary_index": "hnsw"}, "binary_index='hnsw' is the token index of "
     "first_stage='binary'"),
    ("Binary", {"multivector": True, "first_stage": "binary", "binary_index": "lsh"}, "binary_index must be"),
    ("Flat", {"binary_index": "hnsw"}, r"\['binary_index'\] apply to multi-vector"),
    ("Flat", {"ndocs": 8}, r"\['ndocs'\] apply to multi-vector"),
    ("FP16", {"multivector": True, "metric": "l2"}, "metric must be 'ip'"),
    ("FP16", {"multivector": True, "first_stage": "centroid"}, "needs a KMeans codec"),
    ("KMeans16", {"multivector": True, "first_stage": "sideways"}, "first_stage must be one of"),
])
def test_bad_specs_and_options_fail_with_a_clear_config_error(spec, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_index(8, spec, **kwargs)


def test_is_exported():
    assert "make_index" in indexes.__all__ and indexes.make_index is make_index


def test_every_index_kind_satisfies_the_index_protocol() -> None:
    from indexes import FaissIndex, FlatIndex, Index, MultiVectorIndex, ShardedIndex, ShardedMultiVectorIndex

    kinds = [FlatIndex(4), FaissIndex(4, spec="Flat"), MultiVectorIndex(4, spec="Flat"),
             ShardedIndex(FlatIndex(4), n_shards=2), ShardedMultiVectorIndex(MultiVectorIndex(4, spec="Flat"), n_shards=2)]
    for index in kinds:
        assert isinstance(index, Index), type(index).__name__
        assert len(index) == 0 and index.memory_bytes() >= 0 and index.dim == 4
    assert not isinstance(object(), Index)

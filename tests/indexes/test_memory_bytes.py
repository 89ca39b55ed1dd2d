"""``memory_bytes()`` of every index kind: the figures the benchmark's probe computed from outside."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex, MultiVectorIndex, ShardedIndex, ShardedMultiVectorIndex
from retrieval.types import MultiVectorEmbeddings

pytest.importorskip("faiss")


def _probe_before(index: object) -> int:
    """The accounting ``retrieval.app.bench.probe.index_memory_bytes`` (since removed) did before the indexes had
    ``memory_bytes()``: payload by kind, plus the ids measured through the index's internals."""
    import faiss

    handles = getattr(index, "_handles", None)
    if handles is not None:
        return sum(_probe_before(h.server.index) for h in handles)
    if isinstance(index, FaissIndex):
        payload = int(faiss.serialize_index(index.faiss_index).nbytes)
    elif isinstance(index, FlatIndex):
        payload = int(index.vectors.nbytes)
    else:
        assert isinstance(index, MultiVectorIndex)
        codec = sum(a.nbytes for a in index.codec.state().values()) if index.codec.is_trained else 0
        side = 0
        if index.hamming is not None and index.hamming is not index.codec and index.hamming.is_trained:
            side = index._hamming_codes.nbytes + sum(a.nbytes for a in index.hamming.state().values())
        payload = int(index._codes.nbytes + index._offsets.nbytes + codec + side)
    return payload + _id_store_bytes(index._table)  # type: ignore[attr-defined]


def _id_store_bytes(table: object) -> int:
    """The id store counted from its definition: every row's id (deleted rows keep theirs) as
    UTF-8 padded to the longest with a uint32 row per row where that costs no more than the
    variable layout (UTF-8, uint32 offsets (rows + 1), a uint64 hash and a uint32 row per row),
    and, once a row is deleted (kinds with tombstones), one bit per row."""
    rows = [i.encode("utf-8") for i in table.ids]  # type: ignore[attr-defined]
    n = len(rows)
    utf8, width = sum(map(len, rows)), max(map(len, rows), default=0)
    ids = n * width + 4 * n if n * width <= utf8 + 12 * n else utf8 + 4 * (n + 1) + 8 * n + 4 * n
    deleted = table.tombstones and len(table) < table.ntotal  # type: ignore[attr-defined]
    return ids + (-(-n // 8) if deleted else 0)


def _vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _docs(n: int, seed: int = 0) -> MultiVectorEmbeddings:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((int(rng.integers(1, 6)), 16)) for _ in range(n)]
    return MultiVectorEmbeddings.from_list(arrays, ids=[f"d{i}" for i in range(n)],
                                           saliency=[rng.random(len(a)) for a in arrays])


def _single(kind: str) -> object:
    x, ids = _vectors(300), [f"doc-{i}" for i in range(300)]
    if kind == "flat":
        return FlatIndex(16).add(x, ids=ids)
    if kind == "sharded":
        return ShardedIndex(FlatIndex(16), n_shards=3).add(x, ids=ids)
    index = FaissIndex(16, spec=kind)
    index.train(x)
    return index.add(x, ids=ids)


@pytest.mark.parametrize("kind", ["flat", "PQ4x4", "HNSW8", "IVF4,Flat", "sharded"])
def test_single_vector_kinds_count_as_the_probe_did(kind: str) -> None:
    index = _single(kind)
    before = index.memory_bytes()  # type: ignore[attr-defined]
    assert before == _probe_before(index)  # type: ignore[arg-type]
    index.delete([f"doc-{i}" for i in range(0, 300, 7)])  # type: ignore[attr-defined]
    # A tombstoned row keeps its id (and, but for IVF, its vector): the figure grows by the tombstone bits at most.
    assert index.memory_bytes() == _probe_before(index) <= before + 300 // 8 + 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("spec,first_stage", [("FP16", "exhaustive"), ("Prune0.6,KMeans16r2", "centroid"),
                                              ("KMeans16", "binary")])
def test_multivector_kinds_count_as_the_probe_did(spec: str, first_stage: str) -> None:
    docs = _docs(60)
    index = MultiVectorIndex(16, spec=spec, first_stage=first_stage).add(docs)
    sharded = ShardedMultiVectorIndex(MultiVectorIndex(16, spec=spec, first_stage=first_stage), n_shards=2).add(docs)
    for ix in (index, sharded):
        assert ix.memory_bytes() == _probe_before(ix)
        ix.delete(["d3", "d4"])
        assert ix.memory_bytes() == _probe_before(ix)
    sharded.close()


@pytest.mark.parametrize("kind", ["flat", "PQ4x4", "IVF4,Flat", "sharded", "multivector", "sharded-multivector"])
def test_ids_memory_bytes_is_the_id_share_of_every_kind(kind: str) -> None:
    """``ids_memory_bytes()`` (what a bench reads instead of the private id table): the id store
    counted from its definition; a sharded index sums its shards'."""
    if kind in ("multivector", "sharded-multivector"):
        index: object = MultiVectorIndex(16, spec="FP16").add(_docs(60))
        if kind == "sharded-multivector":
            index = ShardedMultiVectorIndex(MultiVectorIndex(16, spec="FP16"), n_shards=2).add(_docs(60))
    else:
        index = _single(kind)
    handles = getattr(index, "_handles", None)
    tables = [h.server.index._table for h in handles] if handles is not None else [index._table]  # type: ignore[attr-defined]
    assert index.ids_memory_bytes() == sum(_id_store_bytes(t) for t in tables) > 0  # type: ignore[attr-defined]
    assert index.memory_bytes() > index.ids_memory_bytes()  # type: ignore[attr-defined]
    if handles is not None:
        index.close()  # type: ignore[attr-defined]


def test_ids_are_counted() -> None:
    short = FlatIndex(16).add(_vectors(50), ids=[f"{i}" for i in range(50)])
    long = FlatIndex(16).add(_vectors(50), ids=[f"{i}-{'x' * 100}" for i in range(50)])
    assert long.memory_bytes() - short.memory_bytes() == 50 * 101


def test_ids_cost_their_bytes_plus_at_most_4_per_row_and_a_tombstone_bit() -> None:
    """The fixed-width store: 10-byte ids at 10,000 rows cost 10 B of text + 4 B of permutation
    (uint32) per row, also after appends in many small batches, and one bit a row of tombstones
    after the first delete; ids of uneven lengths cost their text + 16 B (offsets, hash, row);
    integer ids cost 8 B of id while they ascend with the rows."""
    index = FlatIndex(16)
    x = _vectors(10_000)
    for start in range(0, 10_000, 100):
        index.add(x[start:start + 100], ids=[f"doc-{i:06d}" for i in range(start, start + 100)])
    assert index.memory_bytes() - x.nbytes == 10_000 * (10 + 4)
    index.delete(["doc-000007"])
    assert index.memory_bytes() - x.nbytes == 10_000 * (10 + 4) + 10_000 // 8
    uneven = FlatIndex(16).add(x[:1000], ids=[f"{i}-{'x' * (i % 30)}" for i in range(1000)])
    text = sum(len(f"{i}-{'x' * (i % 30)}") for i in range(1000))
    assert uneven.memory_bytes() - x[:1000].nbytes == text + 1000 * 16 + 4
    ints = FlatIndex(16)
    for start in range(0, 10_000, 100):
        ints.add(x[start:start + 100], ids=np.arange(start, start + 100) * 7)
    assert ints.memory_bytes() - x.nbytes == 10_000 * 8

"""The pieces sharded indexes are made of: routing, shard servers, merging.

A shard is an ordinary saved index (``FlatIndex``, ``FaissIndex`` or ``MultiVectorIndex``).
A :class:`ShardServer` holds one shard and answers the calls a sharded index sends it; the
same class runs in the caller's process (one thread per shard) or inside a Ray actor, so
both paths share every line of shard-side code. Handles give the two a common face:
``call(name, *args)`` returns a :class:`concurrent.futures.Future`. The coordinating side,
shared by both sharded index kinds, is :class:`indexes._sharded_base.ShardedBase`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from indexes._io import file_sha256
from indexes._paths import member_dir
from indexes.base import VectorIndex, load_index
from indexes.flat import FlatIndex, topk
from indexes.manifest import MANIFEST_NAME, Manifest, read_manifest
from retrieval._optional import require
from retrieval.errors import ConfigError, IndexFormatError, ShardError
from retrieval.types import SearchResult

if TYPE_CHECKING:
    from indexes.multivector import MultiVectorIndex

__all__ = [
    "ROUTING",
    "LocalHandle",
    "RayHandle",
    "ShardHandle",
    "ShardServer",
    "call_all",
    "check_shard",
    "collect_searches",
    "empty_copy",
    "failure_text",
    "gather",
    "merge_results",
    "open_shards",
    "route",
    "shard_dir",
    "shard_metadata",
    "shard_of",
    "template_from_state",
    "template_state",
]

#: Name of the routing rule, recorded in manifests so a future rule cannot be confused with it.
ROUTING = "blake2b64-mod"


_MASK64 = (1 << 64) - 1
_SPLITMIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _mix64(x: int) -> int:
    """SplitMix64's finaliser of the int64 ``x`` (as its two's complement): spreads strided ids evenly."""
    z = (x + _SPLITMIX[0]) & _MASK64
    z = ((z ^ (z >> 30)) * _SPLITMIX[1]) & _MASK64
    z = ((z ^ (z >> 27)) * _SPLITMIX[2]) & _MASK64
    return z ^ (z >> 31)


def _mix64_array(x: NDArray[np.int64]) -> NDArray[np.uint64]:
    """:func:`_mix64` of every item, in NumPy (uint64 arithmetic wraps as the masks do)."""
    z = x.astype(np.int64).view(np.uint64) + np.uint64(_SPLITMIX[0])
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_SPLITMIX[1])
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_SPLITMIX[2])
    return z ^ (z >> np.uint64(31))  # type: ignore[no-any-return]


def shard_of(doc_id: str | int, n_shards: int) -> int:
    """The shard that holds ``doc_id``: the first 8 bytes of its BLAKE2b hash modulo ``n_shards``
    (integer ids: SplitMix64 of the id, modulo ``n_shards``).

    Hash routing needs no id -> shard directory: ``delete``, ``in`` and ``subset`` go straight
    to one shard, and any process (a Ray worker building a shard, a client) computes the same
    answer. Unlike Python's ``hash`` it is stable across processes and runs.

    Examples
    --------
    >>> shard_of("doc-1", 4), shard_of("doc-1", 4) == shard_of("doc-1", 4)
    (2, True)
    """
    if not isinstance(doc_id, str):
        return _mix64(int(doc_id) & _MASK64) % n_shards
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_shards


def route(ids: Sequence[str | int] | NDArray[np.int64], n_shards: int) -> list[NDArray[np.int64]]:
    """Positions of ``ids`` that belong to each shard, in input order.

    Examples
    --------
    >>> [part.tolist() for part in route(["doc-1", "doc-2", "doc-3"], 2)]
    [[0, 2], [1]]
    >>> [part.tolist() for part in route(np.array([5, 6, 7]), 2)] == [part.tolist() for part in route([5, 6, 7], 2)]
    True
    """
    if isinstance(ids, np.ndarray):
        owner = (_mix64_array(ids) % np.uint64(n_shards)).astype(np.int64)
    else:
        owner = np.fromiter((shard_of(i, n_shards) for i in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n_shards + 1))
    return [order[bounds[s] : bounds[s + 1]].astype(np.int64) for s in range(n_shards)]


# ---------------------------------------------------------------------------- trained state
def _faiss() -> Any:
    return require("faiss", extra="cpu", feature="sharded FaissIndex")


def empty_copy(template: VectorIndex) -> VectorIndex:
    """A new empty index with ``template``'s settings and trained state (shared codebooks)."""
    if template.ntotal != 0:
        raise ConfigError(
            f"the shard template must be empty; it holds {template.ntotal} rows. Build shards from an "
            "empty (trained or untrained) index and add documents to the ShardedIndex."
        )
    if type(template) is FlatIndex:
        return FlatIndex(template.dim, metric=template.metric)
    from indexes.faiss_index import FaissIndex

    if type(template) is FaissIndex:
        clone = FaissIndex._bare(template.dim, template.metric, template.spec)
        # clone_index copies the trained quantizers and search parameters (nprobe, efSearch).
        clone._set_backend(_faiss().clone_index(template.faiss_index))
        return clone
    raise ConfigError(
        f"ShardedIndex shards FlatIndex and FaissIndex; got {type(template).__name__}. For a "
        "MultiVectorIndex use indexes.ShardedMultiVectorIndex."
    )


def template_state(template: VectorIndex) -> dict[str, Any]:
    """A picklable description of an empty template: settings plus the serialized FAISS index."""
    state: dict[str, Any] = {"type": type(template).__name__, "dim": template.dim, "metric": template.metric}
    if state["type"] == "FaissIndex":
        state["spec"] = template.spec  # type: ignore[attr-defined]
        state["blob"] = _faiss().serialize_index(template.faiss_index)  # type: ignore[attr-defined]
    return state


def template_from_state(state: dict[str, Any]) -> VectorIndex:
    """Inverse of :func:`template_state`."""
    if state["type"] == "FlatIndex":
        return FlatIndex(state["dim"], metric=state["metric"])
    if state["type"] == "FaissIndex":
        from indexes.faiss_index import FaissIndex

        index = FaissIndex._bare(state["dim"], state["metric"], state["spec"])
        index._set_backend(_faiss().deserialize_index(np.asarray(state["blob"], dtype=np.uint8)))
        return index
    raise ConfigError(f"unknown shard index type {state['type']!r}; expected FlatIndex or FaissIndex.")


# ---------------------------------------------------------------------------- shard server
class ShardServer:
    """One shard: an index plus the calls a ``ShardedIndex`` makes on it.

    Parameters
    ----------
    index : VectorIndex, optional
        The shard, for in-process use or a build task.
    path : path-like, optional
        Instead of ``index``: a saved shard directory to load (what a Ray actor does, so the
        shard is read once and stays in the actor's memory).
    verify, mmap : bool
        Passed to :func:`indexes.load_index` with ``path``.

    Notes
    -----
    User errors (unknown ids) are returned as values, not raised, so that the caller can
    tell them from a shard that failed (a dead actor, a broken file). Subclasses serve
    other index kinds by overriding :attr:`kinds` and the methods whose calls differ.
    """

    #: Index classes a loaded shard may be.
    kinds: ClassVar[tuple[type, ...]] = (VectorIndex,)

    def __init__(
        self,
        index: VectorIndex | MultiVectorIndex | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        verify: bool = True,
        mmap: bool = False,
    ) -> None:
        if (index is None) == (path is None):
            raise ConfigError("ShardServer needs exactly one of `index` or `path`.")
        loaded: Any = index if index is not None else load_index(path, verify=verify, mmap=mmap)  # type: ignore[arg-type]
        if index is None and not isinstance(loaded, self.kinds):
            raise IndexFormatError(f"{path} holds a {type(loaded).__name__}, which cannot be a shard here.")
        self.index: Any = loaded

    def stats(self) -> tuple[int, int]:
        """``(stored rows, live documents)``."""
        return self.index.ntotal, len(self.index)

    def missing(self, ids: list[str]) -> list[str]:
        """The ids that are not live in this shard."""
        return [i for i in ids if i not in self.index]

    def id_kind(self) -> str | None:
        """``"str"`` or ``"int"``: the type of this shard's ids (None before its first add)."""
        return self.index._table.kind  # type: ignore[no-any-return]

    def doc_ids(self) -> list[str]:
        return self.index.doc_ids

    def num_vectors(self) -> int:
        """Stored token / patch vectors of a multi-vector shard."""
        return int(self.index.num_vectors)

    def memory_bytes(self) -> int:
        """The shard's own ``memory_bytes()`` (payload plus ids), measured where it lives."""
        return int(self.index.memory_bytes())

    def ids_memory_bytes(self) -> int:
        """The shard's ``ids_memory_bytes()``: what its ids hold of :meth:`memory_bytes`."""
        return int(self.index.ids_memory_bytes())

    def add(self, vectors: NDArray[np.float32], ids: list[str], attributes: Any = None) -> tuple[int, int]:
        self.index.add(vectors, ids=ids, attributes=attributes)
        return self.stats()

    def attribute_schema(self) -> tuple[int, dict[str, str]]:
        """``(stored rows, field -> kind)`` of this shard's attributes."""
        return self.index.ntotal, self.index.attribute_schema

    def delete(self, ids: list[str]) -> tuple[int, int]:
        self.index.delete(ids)
        return self.stats()

    def search(
        self, queries: NDArray[np.float32], k: int, subset: list[str] | None, where: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.object_], list[str]]:
        """Top-``k`` of this shard: ``(scores, labels, ids, missing)``; ``ids`` is ``None``-padded.

        When ``subset`` names ids that are not here, nothing is searched and they come back
        in ``missing``.
        """
        if subset is not None:
            missing = self.missing(subset)
            if missing:
                empty = np.zeros((0, k))
                return empty.astype(np.float32), empty.astype(np.int64), empty.astype(object), missing
        res = self.index.search(queries, k, subset=subset, where=where)
        ids = np.full(res.labels.shape, None, dtype=object)
        for row, hits in enumerate(res.doc_ids):
            ids[row, : len(hits)] = hits
        return res.scores, res.labels, ids, []

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any]) -> dict[str, Any]:
        """Save the shard with ``metadata["shard"]`` set and return its entry for the top manifest."""
        self.index.metadata["shard"] = metadata
        target = self.index.save(path, overwrite=True)
        return {
            "dir": Path(target).name,
            "index_type": type(self.index).__name__,
            "count": self.stats()[0],
            "live": self.stats()[1],
            "manifest_sha256": file_sha256(Path(target) / MANIFEST_NAME),
        }

    def memory(self) -> int:
        """Resident memory of the process holding this shard, in bytes (psutil)."""
        psutil = require("psutil", extra="distributed", feature="ShardServer.memory()")
        return int(psutil.Process().memory_info().rss)


# ---------------------------------------------------------------------------- handles
class ShardHandle(Protocol):
    """Where a shard lives; ``call`` runs a :class:`ShardServer` method there."""

    def call(self, name: str, *args: Any) -> Future[Any]: ...


class LocalHandle:
    """A shard in this process; calls run on a shared thread pool (FAISS and BLAS release the GIL)."""

    def __init__(self, server: ShardServer, executor: ThreadPoolExecutor) -> None:
        self.server = server
        self.executor = executor

    def call(self, name: str, *args: Any) -> Future[Any]:
        return self.executor.submit(getattr(self.server, name), *args)


class RayHandle:
    """A shard held by a Ray actor running :class:`ShardServer` (calls run in submission order)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def call(self, name: str, *args: Any) -> Future[Any]:
        return getattr(self.actor, name).remote(*args).future()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- fan-out
def shard_dir(number: int) -> str:
    """Directory name of shard ``number`` inside a saved sharded index."""
    return f"shard-{number:03d}"


def shard_metadata(number: int, n_shards: int, trained_sha256: str | None) -> dict[str, Any]:
    """What a saved shard records under ``metadata["shard"]`` (checked by :func:`check_shard`)."""
    return {"number": number, "of": n_shards, "routing": ROUTING, "trained_sha256": trained_sha256}


def call_all(
    handles: Sequence[ShardHandle], name: str, args: Sequence[tuple[Any, ...] | None]
) -> tuple[list[Any], dict[int, BaseException]]:
    """Call ``name`` on every shard whose ``args`` is not None: ``(results, failures)`` by shard."""
    futures = {s: handles[s].call(name, *a) for s, a in enumerate(args) if a is not None}
    results: list[Any] = [None] * len(handles)
    failures: dict[int, BaseException] = {}
    for s, fut in futures.items():
        try:
            results[s] = fut.result()
        except Exception as exc:  # any shard-side failure: reported per shard by the caller
            failures[s] = exc
    return results, failures


def failure_text(name: str, failures: dict[int, BaseException], n_shards: int) -> str:
    """The message of a :class:`ShardError`: which shards failed, how, and what to do."""
    where = "; ".join(f"shard {s} ({shard_dir(s)}): {type(e).__name__}: {e}" for s, e in failures.items())
    return (
        f"{len(failures)} of {n_shards} shard(s) failed during {name}: {where}. "
        + ("Pass allow_partial=True to search the remaining shards." if name == "search" else "")
    )


def gather(handles: Sequence[ShardHandle], name: str, args: Sequence[tuple[Any, ...] | None]) -> list[Any]:
    """:func:`call_all`, raising :class:`ShardError` naming every shard that failed."""
    results, failures = call_all(handles, name, args)
    if failures:
        raise ShardError(failure_text(name, failures, len(handles)), failures=failures)
    return results


def collect_searches(
    handles: Sequence[ShardHandle], args: Sequence[tuple[Any, ...] | None]
) -> tuple[list[tuple[int, Any, Any, Any]], dict[int, BaseException], list[str]]:
    """Run ``search`` on the shards with args: ``(answers for merge_results, failures, missing ids)``."""
    results, failures = call_all(handles, "search", args)
    answers: list[tuple[int, Any, Any, Any]] = []
    missing: list[str] = []
    for s, res in enumerate(results):
        if args[s] is None or s in failures:
            continue
        scores, labels, ids, miss = res
        missing.extend(miss)
        answers.append((s, scores, labels, ids))
    return answers, failures, missing


def check_shard(
    directory: Path, number: int, n: int, entry: Any, trained_sha256: str | None, *, verify: bool,
    top: Manifest | None = None,
) -> None:
    """Check that ``directory``'s shard ``number`` (manifest ``entry``) belongs to this sharded index
    (whose manifest ``top``, when given, must agree with the shard's dimension and metric)."""
    if not isinstance(entry, dict) or not {"dir", "count", "live", "manifest_sha256"} <= entry.keys():
        raise IndexFormatError(f"{directory / MANIFEST_NAME}: params.shards[{number}] is damaged: {entry!r}.")
    sub = member_dir(directory, entry["dir"], what=f"params.shards[{number}].dir")
    shard = read_manifest(sub)
    if verify and file_sha256(sub / MANIFEST_NAME) != entry["manifest_sha256"]:
        raise IndexFormatError(
            f"{sub / MANIFEST_NAME} differs from the one recorded in {directory / MANIFEST_NAME}; the "
            "shard was replaced or modified. Restore it or rebuild the sharded index."
        )
    if top is not None and (shard.dim, shard.metric) != (top.dim, top.metric):
        raise IndexFormatError(
            f"{sub / MANIFEST_NAME} records dim={shard.dim}, metric={shard.metric!r}, but {directory / MANIFEST_NAME} "
            f"records dim={top.dim}, metric={top.metric!r}; the manifests contradict each other."
        )
    meta = shard.metadata.get("shard", {})
    expected = shard_metadata(number, n, trained_sha256)
    if meta != expected:
        raise IndexFormatError(
            f"{sub} is not shard {number} of {n} of this index (its metadata.shard is {meta!r}, expected "
            f"{expected!r}): shards must share the trained codebooks and the routing."
        )


def open_shards(
    server: type[ShardServer], shard_dirs: Sequence[Path], backend: str, pool: ThreadPoolExecutor, *,
    verify: bool, mmap: bool, actor_options: dict[str, Any] | None,
) -> tuple[list[ShardHandle], list[Any]]:
    """Load saved shards into ``server`` objects here (``"threads"``) or in Ray actors: ``(handles, actors)``."""
    if backend == "threads":
        servers = list(pool.map(lambda d: server(path=d, verify=verify, mmap=mmap), shard_dirs))
        return [LocalHandle(s, pool) for s in servers], []
    ray = require("ray", extra="distributed", feature="load(backend='ray') of a sharded index")
    if not ray.is_initialized():
        raise ConfigError("backend='ray' needs a running Ray: call ray.init() (or retrieval.distributed.init_ray()) first.")
    remote = ray.remote(**actor_options)(server) if actor_options else ray.remote(server)
    actors = [remote.remote(path=str(d.resolve()), verify=verify, mmap=mmap) for d in shard_dirs]
    return [RayHandle(actor) for actor in actors], actors


# ---------------------------------------------------------------------------- merging
def merge_results(
    parts: Sequence[tuple[int, NDArray[np.float32], NDArray[np.int64], NDArray[np.object_]]],
    k: int,
    n_shards: int,
    nq: int,
) -> SearchResult:
    """Exact top-``k`` over per-shard top-``k`` lists.

    Every document of the global top-``k`` is in its own shard's top-``k``, so the top-``k``
    of the union is exact. Equal scores are ordered by shard number, then by rank in the
    shard. Labels become ``local_label * n_shards + shard`` (unique, stable across adds);
    padding is label ``-1`` and score ``-inf``, as everywhere.

    Parameters
    ----------
    parts : sequence of (shard, scores, labels, ids)
        ``scores`` (nq, k) float32, ``labels`` (nq, k) int64, ``ids`` (nq, k) object (``None`` pads).

    Examples
    --------
    >>> s0 = np.array([[0.9, 0.5]], dtype=np.float32); s1 = np.array([[0.7, -np.inf]], dtype=np.float32)
    >>> r = merge_results([(0, s0, np.array([[0, 1]]), np.array([["a", "b"]], dtype=object)),
    ...                    (1, s1, np.array([[0, -1]]), np.array([["c", None]], dtype=object))], 3, 2, 1)
    >>> r.doc_ids, r.labels.tolist()
    ([['a', 'c', 'b']], [[0, 1, 2]])
    """
    if not parts or nq == 0:
        return SearchResult(doc_ids=[[] for _ in range(nq)], scores=np.full((nq, k), -np.inf, dtype=np.float32),
                            labels=np.full((nq, k), -1, dtype=np.int64))
    scores = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32, copy=False)
    labels = np.concatenate(
        [np.where(p[2] >= 0, p[2] * n_shards + p[0], -1) for p in parts], axis=1
    ).astype(np.int64, copy=False)
    ids = np.concatenate([p[3] for p in parts], axis=1)
    best_scores, cols = topk(scores, min(k, scores.shape[1]))
    best_labels = np.take_along_axis(labels, cols, axis=1)
    best_ids = np.take_along_axis(ids, cols, axis=1)
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_l = np.full((nq, k), -1, dtype=np.int64)
    out_s[:, : cols.shape[1]] = best_scores
    out_l[:, : cols.shape[1]] = best_labels
    out_s[out_l < 0] = -np.inf
    doc_ids = [[i for i in row if i is not None] for row in best_ids.tolist()]
    return SearchResult(doc_ids=doc_ids, scores=out_s, labels=out_l)


"""Scale-out on Ray: encode a corpus with actors, build index shards in parallel.

The same functions run on a laptop (a local Ray started in-process) and on a cluster
(``init_ray("ray://head:10001")`` or ``address="auto"``); without Ray, :func:`build_sharded`
builds the same shards with local threads (``use_ray=False``) and
:class:`indexes.ShardedIndex` searches them with threads. Ray is the optional extra
``distributed`` and is imported only when a function here needs it.

On a cluster, index directories must be on storage every node can read and write (NFS,
a mounted bucket): shard builders and shard actors open them by path.

Examples
--------
>>> from retrieval.distributed import build_sharded            # doctest: +SKIP
>>> init_ray()                                                 # doctest: +SKIP
>>> docs = encode_documents(DenseEncoder(), texts, ids=ids, workers=4)  # doctest: +SKIP
>>> build_sharded(docs, "runs/pq-4", n_shards=4, spec="IVF1024,PQ32x8")  # doctest: +SKIP
>>> index = ShardedIndex.load("runs/pq-4", backend="ray")      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from retrieval._optional import require
from retrieval.errors import ConfigError
from retrieval.types import Embeddings

if TYPE_CHECKING:
    from indexes.base import Metric
    from retrieval.encode.base import Encoder

__all__ = ["BuildReport", "build_sharded", "encode_documents", "index_corpus", "init_ray"]

logger = logging.getLogger(__name__)


def _ray() -> Any:
    return require("ray", extra="distributed", feature="densezip on Ray")


def init_ray(address: str | None = "local", *, num_cpus: int | None = None) -> bool:
    """Start or join Ray unless this process already has; returns True when it started a local Ray.

    Parameters
    ----------
    address : str or None
        ``"local"`` / ``None`` start a Ray inside this process; anything else (``"auto"``,
        ``"ray://head:10001"``, ``"10.0.0.1:6379"``) joins that cluster.
    num_cpus : int, optional
        CPUs of a local Ray (default: all of this machine's).
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    if address in (None, "local"):
        ray.init(num_cpus=num_cpus, include_dashboard=False)
        return True
    if num_cpus is not None:
        raise ConfigError("num_cpus applies to a local Ray only; a cluster's CPUs are set when it starts.")
    ray.init(address=address)
    return False


# ---------------------------------------------------------------------------- encoding
class EncoderWorker:
    """Holds one encoder (loaded once per actor) and encodes chunks of documents."""

    def __init__(self, payload: dict[str, Any]) -> None:
        if "description" in payload:
            from retrieval.encode.dense import DenseEncoder

            # The driver already checked the whole-corpus cache; chunks are not cached separately.
            self.encoder: Any = DenseEncoder.from_description(
                payload["description"], device=payload.get("device", "cpu"), show_progress=False, cache_dir=False
            )
        else:
            self.encoder = payload["encoder"]

    def encode(self, texts: list[str], batch_size: int | None) -> NDArray[np.float32]:
        kwargs = {"batch_size": batch_size} if batch_size is not None else {}
        return np.asarray(self.encoder.encode_documents(texts, **kwargs).vectors, dtype=np.float32)


def encode_documents(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    ids: Sequence[str],
    workers: int = 2,
    chunk_size: int = 1024,
    batch_size: int | None = None,
    device: str = "cpu",
    actor_options: dict[str, Any] | None = None,
) -> Embeddings:
    """Encode documents on Ray: ``workers`` actors each load the encoder once and take chunks.

    A :class:`~retrieval.encode.dense.DenseEncoder` travels as its description (the actors load
    the model from their own disk, on ``device``); any other encoder is pickled as it is. The
    DenseEncoder's embedding cache is read and written here, for the whole corpus, so a run
    over an already encoded corpus starts no actor.

    Parameters
    ----------
    encoder : Encoder
        Encoder whose ``encode_documents`` the actors call.
    texts, ids : sequence of str, length n
        Documents and their ids.
    workers : int
        Encoder actors (each takes ``actor_options["num_cpus"]`` CPUs, default 1).
    chunk_size : int
        Documents per task; the order of the result is the order of ``texts``.
    batch_size : int, optional
        Passed to the encoder (texts per forward pass).
    """
    if isinstance(texts, str) or len(texts) != len(ids):
        raise ConfigError(f"texts and ids must be sequences of equal length; got {len(texts)} texts, {len(ids)} ids.")
    if workers < 1 or chunk_size < 1:
        raise ConfigError(f"workers and chunk_size must be >= 1; got {workers} and {chunk_size}.")
    items, id_list = list(texts), list(ids)
    cache_path = None
    from retrieval.encode.dense import DenseEncoder

    if isinstance(encoder, DenseEncoder):
        # Same cache key as DenseEncoder.encode_documents over the whole corpus.
        cache_path = encoder.cache_file(items)
        if cache_path is not None:
            cached = encoder.load_cached(cache_path, len(items))
            if cached is not None:
                logger.info("embedding cache hit for %d documents: no encoder actors needed", len(items))
                return Embeddings(cached, id_list)
        payload: dict[str, Any] = {"description": encoder.describe(), "device": device}
    else:
        payload = {"encoder": encoder}
    if not items:
        return Embeddings(np.zeros((0, encoder.dim), dtype=np.float32), [])
    ray = _ray()
    from ray.util import ActorPool

    remote = ray.remote(**({"num_cpus": 1} | (actor_options or {})))(EncoderWorker)
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    actors = [remote.remote(payload) for _ in range(min(workers, len(chunks)))]
    try:
        pool = ActorPool(actors)
        parts = list(pool.map(lambda actor, chunk: actor.encode.remote(chunk, batch_size), chunks))
    finally:
        for actor in actors:
            ray.kill(actor)
    vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    if cache_path is not None and isinstance(encoder, DenseEncoder):
        encoder.store_cached(cache_path, vectors)
    return Embeddings(vectors, id_list)


# ---------------------------------------------------------------------------- building shards
@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_sharded` (and :func:`index_corpus`) did, with phase timings in seconds.

    ``encode_s`` is 0.0 from :func:`build_sharded`, which receives vectors already encoded.
    """

    path: Path
    n_shards: int
    shard_sizes: list[int]
    train_s: float
    build_s: float
    backend: str
    documents: int = 0
    dim: int = 0
    encode_s: float = 0.0


def _build_shard(
    state: dict[str, Any], vectors: NDArray[np.float32], ids: list[str], dest: str, meta: dict[str, Any],
    attributes: Any = None,
) -> dict[str, Any]:
    """Ray task: one shard from the shared trained state, saved to ``dest``; returns its manifest entry."""
    from indexes._shards import ShardServer, template_from_state

    server = ShardServer(template_from_state(state))
    if ids:
        server.add(vectors, ids, attributes)
    return server.save(dest, meta)


def build_sharded(
    docs: Embeddings,
    path: str | os.PathLike[str],
    *,
    n_shards: int,
    spec: str = "Flat",
    metric: Metric = "ip",
    nprobe: int | None = None,
    ef_search: int | None = None,
    train_size: int = 100_000,
    seed: int = 0,
    use_ray: bool = True,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    task_options: dict[str, Any] | None = None,
    attributes: Any = None,
) -> BuildReport:
    """Train the index once on a sample, then build ``n_shards`` shards in parallel and save them.

    Parameters
    ----------
    docs : Embeddings
        All document vectors and ids (use :func:`encode_documents` for a large corpus).
    path : path-like
        Output directory; written atomically, with the top-level manifest last.
    n_shards : int
        Number of shards; documents go to shard ``shard_of(id, n_shards)``.
    spec : str
        ``"exact"`` (the NumPy FlatIndex) or a FAISS factory string, e.g. ``"Flat"`` or
        ``"IVF1024,PQ32x8"`` (see :func:`indexes.make_index`).
    train_size : int
        Training sample size (random rows, ``seed``); the trained state (PQ codebooks, IVF
        centroids) is shared by every shard.
    use_ray : bool
        Build shards as Ray tasks (needs a started Ray, :func:`init_ray`); False builds them
        with local threads.
    task_options : dict, optional
        ``ray.remote`` options for the shard tasks, e.g. ``{"num_cpus": 1, "memory": 8e9}``.
    attributes : dict or list of dicts, optional
        Values to filter on with ``where=``, one per document of ``docs`` (see
        :meth:`VectorIndex.add <indexes.base.VectorIndex.add>`); checked before any shard is
        built, then routed with their documents.

    Returns
    -------
    BuildReport
    """
    from indexes._attributes import AttributeTable
    from indexes._io import atomic_directory
    from indexes._shards import ROUTING, route, template_state
    from indexes.factory import make_index
    from indexes.sharded import ShardedIndex

    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards < 1:
        raise ConfigError(f"n_shards must be a positive integer; got {n_shards!r}.")
    template: Any = make_index(docs.dim, spec, metric=metric, nprobe=nprobe, ef_search=ef_search)
    parts = route(docs.ids, n_shards)
    shard_attributes = AttributeTable().split(attributes, len(docs), parts)  # checks them all first
    t0 = time.perf_counter()
    if not template.is_trained:
        rng = np.random.default_rng(seed)
        n_train = min(train_size, len(docs))
        rows = np.sort(rng.choice(len(docs), size=n_train, replace=False))
        template.train(docs.vectors[rows])
    t1 = time.perf_counter()
    if not use_ray:
        index = ShardedIndex(template, n_shards).add(docs, attributes=attributes)
        index.metadata = dict(metadata or {})
        index.save(path, overwrite=overwrite)
        sizes = index.shard_sizes
        index.close()
        return BuildReport(Path(path), n_shards, sizes, t1 - t0, time.perf_counter() - t1, "threads",
                           documents=len(docs), dim=docs.dim)
    ray = _ray()
    if not ray.is_initialized():
        raise ConfigError("build_sharded(use_ray=True) needs a running Ray: call init_ray() first, or pass use_ray=False.")
    task = ray.remote(**task_options)(_build_shard) if task_options else ray.remote(_build_shard)
    state_ref = ray.put(template_state(template))
    with atomic_directory(path, overwrite=overwrite) as tmp:
        trained = ShardedIndex.write_trained(tmp, template)
        futures = []
        for s, part in enumerate(parts):
            meta = {"number": s, "of": n_shards, "routing": ROUTING, "trained_sha256": trained["sha256"]}
            ids = [docs.ids[i] for i in part]
            futures.append(task.remote(state_ref, ray.put(docs.vectors[part]), ids, str(tmp / f"shard-{s:03d}"), meta,
                                       shard_attributes[s]))
        entries = ray.get(futures)
        ShardedIndex.write_manifest(tmp, template, entries, trained, dict(metadata or {}))
    sizes = [int(e["live"]) for e in entries]
    return BuildReport(Path(path), n_shards, sizes, t1 - t0, time.perf_counter() - t1, "ray",
                       documents=len(docs), dim=docs.dim)


# ---------------------------------------------------------------------------- whole corpus
def index_corpus(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    encoder: Encoder,
    n_shards: int,
    spec: str = "Flat",
    nprobe: int | None = None,
    ef_search: int | None = None,
    use_ray: bool = True,
    ray_address: str | None = "local",
    encode_workers: int = 2,
    device: str = "cpu",
    overwrite: bool = False,
    attributes: Callable[[list[str]], Any] | None = None,
) -> BuildReport:
    """Encode a BEIR corpus, train the index once and build ``n_shards`` shards into ``out``.

    With ``use_ray`` the documents are encoded by ``encode_workers`` actors
    (:func:`encode_documents`) and the shards built as Ray tasks; a Ray this function starts
    (``ray_address="local"`` when none is running) is shut down before it returns. Without
    Ray the encoder runs in this process and the shards are built by local threads. The
    encoder's ``describe()``, when it has one, is saved as the index's ``encoder`` metadata.

    Parameters
    ----------
    data : path-like
        BEIR directory with ``corpus.jsonl[.gz]``, or a bundled data set name.
    out : path-like
        Output directory of the :class:`~indexes.ShardedIndex`.
    encoder : Encoder
        Document encoder.
    n_shards, spec, nprobe, ef_search, overwrite
        As for :func:`build_sharded`.
    use_ray : bool
        Encode and build on Ray (True) or locally with threads (False).
    ray_address : str or None
        Passed to :func:`init_ray` when ``use_ray`` is True.
    encode_workers : int
        Encoder actors (Ray only).
    device : str
        Device of the encoder actors (Ray only).
    attributes : callable, optional
        Called with the corpus's document ids, in order, before anything is encoded; returns
        their attribute columns (as for :func:`build_sharded`).

    Returns
    -------
    BuildReport
        With ``documents``, ``dim`` and ``encode_s`` filled in.
    """
    from dataclasses import replace

    from retrieval.beir import corpus_texts, load_corpus

    started = time.perf_counter()
    own_ray = init_ray(ray_address) if use_ray else False
    try:
        corpus = load_corpus(data)
        texts, ids = corpus_texts(corpus), list(corpus)
        columns = attributes(ids) if attributes is not None else None
        if use_ray:
            docs = encode_documents(encoder, texts, ids=ids, workers=encode_workers, device=device)
        else:
            docs = encoder.encode_documents(texts, ids=ids)
        encoded = time.perf_counter()
        describe = getattr(encoder, "describe", None)
        report = build_sharded(
            docs, out, n_shards=n_shards, spec=spec, nprobe=nprobe, ef_search=ef_search, use_ray=use_ray,
            overwrite=overwrite, metadata={"encoder": describe()} if describe is not None else None,
            attributes=columns,
        )
    finally:
        if own_ray:
            _ray().shutdown()
    return replace(report, encode_s=encoded - started)

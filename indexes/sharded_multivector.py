"""``ShardedMultiVectorIndex``: a :class:`~indexes.multivector.MultiVectorIndex` split into N shards.

Layout on disk::

    index/
      manifest.json        index_type "ShardedMultiVectorIndex"; params.shards lists every shard with
                           its directory, document counts and its manifest's sha256
      codec.*.npy          the trained codec every shard encodes with (absent for Flat / FP16)
      hamming.*.npy        the trained sign quantizer of a separate binary first stage, if any
      shard-000/ ...       ordinary saved MultiVectorIndex directories

The codec is trained once, on the template, and copied into every shard, so a document's codes
and MaxSim scores do not depend on the shard it lands in. Routing, the shard servers (threads or
Ray actors), failure reporting and the exact top-``k`` merge are those of
:class:`~indexes.sharded.ShardedIndex` (:mod:`indexes._shards`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from indexes._io import atomic_directory, file_sha256, load_array, save_array, verify_checksums
from indexes._shards import (
    ROUTING,
    LocalHandle,
    ShardHandle,
    ShardServer,
    check_shard,
    gather,
    open_shards,
    route,
    shard_dir,
    shard_of,
)
from indexes.base import _check_k, check_new_ids, format_errors, register_index
from indexes.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from indexes.multivector import MultiVectorIndex
from indexes.sharded import (
    Backend,
    ShardedSearchResult,
    _new_stats,
    _ray_is_running,
    delete_routed,
    refuse_present_ids,
    search_routed,
)
from retrieval._optional import require
from retrieval.compress.binary import BinaryQuantizer
from retrieval.compress.spec import codec_from_state
from retrieval.errors import ConfigError, IndexFormatError, ShapeError
from retrieval.types import MultiVectorEmbeddings

__all__ = ["MultiVectorShardServer", "ShardedMultiVectorIndex"]

logger = logging.getLogger(__name__)

_PARAMS = ("spec", "first_stage", "n_candidates", "nprobe", "token_k", "seed")


class MultiVectorShardServer(ShardServer):
    """A :class:`~indexes._shards.ShardServer` holding a ``MultiVectorIndex`` shard."""

    kinds: ClassVar[tuple[type, ...]] = (MultiVectorIndex,)

    def stats(self) -> tuple[int, int]:
        """``(documents, documents)``: a MultiVectorIndex drops deleted documents' codes at once."""
        return len(self.index), len(self.index)

    def add(self, data: MultiVectorEmbeddings, ids: list[str] | None = None) -> tuple[int, int]:  # type: ignore[override]
        self.index.add(data)
        return self.stats()


def _shard_params(index: MultiVectorIndex) -> dict[str, Any]:
    return {name: getattr(index, name) for name in _PARAMS}


def _trained_state(template: MultiVectorIndex) -> dict[str, np.ndarray]:
    """The arrays every shard must share: ``codec.<name>`` and ``hamming.<name>`` (when trained)."""
    state = {f"codec.{k}": v for k, v in template.codec.state().items()} if template.codec.is_trained else {}
    hamming = template.hamming
    if hamming is not None and hamming is not template.codec and hamming.is_trained:
        state.update({f"hamming.{k}": v for k, v in hamming.state().items()})
    return state


def _state_digest(state: dict[str, np.ndarray]) -> str | None:
    """sha256 over the trained arrays (names, dtypes, shapes, bytes); ``None`` when nothing is trained."""
    if not state:
        return None
    h = hashlib.sha256()
    for name in sorted(state):
        arr = np.ascontiguousarray(state[name])
        h.update(json.dumps([name, str(arr.dtype), list(arr.shape)]).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _empty_copy(template: MultiVectorIndex, state: dict[str, np.ndarray] | None = None) -> MultiVectorIndex:
    """A new empty MultiVectorIndex with ``template``'s settings and its trained codec (or ``state``)."""
    if len(template):
        raise ConfigError(
            f"the shard template must be empty; it holds {len(template)} documents. Build shards from an "
            "empty (trained or untrained) MultiVectorIndex and add documents to the sharded index."
        )
    clone = MultiVectorIndex(template.dim, **_shard_params(template))
    state = _trained_state(template) if state is None else state
    codec = {k[len("codec."):]: v for k, v in state.items() if k.startswith("codec.")}
    if codec:
        clone.codec = codec_from_state(clone.codec.spec, clone.dim, codec)
        if clone.hamming is not None and isinstance(clone.codec, BinaryQuantizer):
            clone.hamming = clone.codec
    side = {k[len("hamming."):]: v for k, v in state.items() if k.startswith("hamming.")}
    if side and clone.hamming is not None and clone.hamming is not clone.codec:
        clone.hamming.load_state(side)
    return clone


@register_index
class ShardedMultiVectorIndex:
    """A multi-vector (MaxSim) index split into ``n_shards`` shards that share one trained codec.

    Parameters
    ----------
    template : MultiVectorIndex
        An empty index, trained or not, whose spec and first stage every shard copies. Train
        it (or call :meth:`train` here) once; an untrained codec is trained on the first
        :meth:`add` batch as a whole, before the batch is split, never shard by shard.
    n_shards : int
        Number of shards (>= 1).
    workers : int, optional
        Threads searching shards in parallel (default ``n_shards``).

    Notes
    -----
    Every shard returns its MaxSim top ``k`` and the merged top ``k`` is the top ``k`` of the
    union, so with ``first_stage="exhaustive"`` results equal one ``MultiVectorIndex`` over
    the same documents and codec (ties aside). The candidate first stages (``"centroid"``,
    ``"binary"``) pick candidates per shard, so their recall can differ from one index's.
    Labels are ``row_in_shard * n_shards + shard``; rows shift when documents are deleted.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> docs = MultiVectorEmbeddings.from_list([rng.standard_normal((4, 8)) for _ in range(20)])
    >>> index = ShardedMultiVectorIndex(MultiVectorIndex(8, spec="FP16"), n_shards=3).add(docs)
    >>> len(index), index.search(docs.select([7]), k=1).doc_ids
    (20, [['7']])
    """

    def __init__(self, template: MultiVectorIndex, n_shards: int, *, workers: int | None = None) -> None:
        if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
            raise ConfigError(f"n_shards must be a positive integer; got {n_shards!r}.")
        if not isinstance(template, MultiVectorIndex):
            raise ConfigError(f"template must be an empty MultiVectorIndex; got {type(template).__name__}.")
        self._template = _empty_copy(template)
        self.dim = self._template.dim
        self.n_shards = int(n_shards)
        self.metadata: dict[str, Any] = {}
        self.backend: Literal["threads", "ray"] = "threads"
        self._workers = workers or self.n_shards
        self._executor: ThreadPoolExecutor | None = None
        self._handles: list[ShardHandle] = self._new_handles()
        self._stats: list[tuple[int, int]] = [(0, 0)] * self.n_shards
        self._actors: list[Any] = []

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="densezip-mvshard")
        return self._executor

    def _new_handles(self) -> list[ShardHandle]:
        return [LocalHandle(MultiVectorShardServer(_empty_copy(self._template)), self._pool())
                for _ in range(self.n_shards)]

    # ------------------------------------------------------------------ description
    @property
    def spec(self) -> str:
        return self._template.spec

    @property
    def first_stage(self) -> str:
        return self._template.first_stage

    @property
    def is_trained(self) -> bool:
        return self._template.is_trained

    def __len__(self) -> int:
        return sum(live for _, live in self._stats)

    @property
    def shard_sizes(self) -> list[int]:
        """Documents per shard."""
        return [live for _, live in self._stats]

    @property
    def num_vectors(self) -> int:
        """Stored token / patch vectors over all shards."""
        return sum(gather(self._handles, "num_vectors", [()] * self.n_shards))

    @property
    def doc_ids(self) -> list[str]:
        """Document ids, shard by shard (insertion order within a shard)."""
        return [i for part in gather(self._handles, "doc_ids", [()] * self.n_shards) for i in part]

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        return not self._handles[shard_of(doc_id, self.n_shards)].call("missing", [doc_id]).result()

    def __repr__(self) -> str:
        return (f"ShardedMultiVectorIndex(n_shards={self.n_shards}, backend={self.backend!r}, spec={self.spec!r}, "
                f"first_stage={self.first_stage!r}, count={len(self)})")

    # ------------------------------------------------------------------ train / add / delete
    def train(self, data: MultiVectorEmbeddings) -> ShardedMultiVectorIndex:
        """Train the codec once on ``data`` (a sample is enough) and give it to every shard."""
        if self.is_trained:
            return self
        if self.backend != "threads" or len(self):
            raise ConfigError("train() needs a new, empty ShardedMultiVectorIndex in this process; train before adding.")
        self._template.train(data)
        self._handles = self._new_handles()
        return self

    def add(self, data: MultiVectorEmbeddings) -> ShardedMultiVectorIndex:
        """Add documents; each goes to shard :func:`~indexes._shards.shard_of` of its id.

        All ids are checked (unique, not yet in any shard) before any shard changes.
        """
        mv = self._template._checked(data, "documents", "MultiVectorEncoder.encode_documents(texts)")
        check_new_ids(mv.ids, ())
        if len(mv) == 0:
            return self
        if not self.is_trained:
            logger.info("training %s on the %d documents being added", self.spec, len(mv))
            self.train(mv)
        parts = route(mv.ids, self.n_shards)
        id_parts = [[mv.ids[i] for i in part] for part in parts]
        refuse_present_ids(self._handles, id_parts)
        stats = gather(self._handles, "add", [(mv.select(p),) if p.size else None for p in parts])
        self._stats = _new_stats(self._stats, stats)
        return self

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; all ids are checked on their shards before anything is removed."""
        count, self._stats = delete_routed(self._handles, ids, self._stats)
        return count

    # ------------------------------------------------------------------ search
    def search(
        self, queries: MultiVectorEmbeddings, k: int = 10, *, subset: Iterable[str] | None = None,
        query_ids: Sequence[str] | None = None, allow_partial: bool = False,
    ) -> ShardedSearchResult:
        """Search every shard in parallel (MaxSim) and merge their top-``k`` lists exactly.

        Parameters
        ----------
        queries : MultiVectorEmbeddings
            Query token vectors, e.g. ``MultiVectorEncoder.encode_queries(texts)``.
        k : int
            Hits per query; rows are padded with label ``-1`` and score ``-inf``.
        subset : iterable of str, optional
            Restrict the search to these ids; only the shards holding them are searched.
        query_ids : sequence of str, optional
            Stored on the result (defaults to ``queries.ids``).
        allow_partial : bool
            When a shard fails, answer from the others and list the failure in
            :attr:`ShardedSearchResult.failed_shards` instead of raising :class:`ShardError`.

        Raises
        ------
        ShardError
            When a shard fails (and ``allow_partial`` is False), or when every shard fails.
        UnknownIdError
            When ``subset`` names ids that are not in the index.
        """
        k = _check_k(k)
        q = self._template._check_queries(queries)
        qids = list(query_ids) if query_ids is not None else list(q.ids)
        if len(qids) != len(q):
            raise ShapeError(f"query_ids must have one id per query; got {len(qids)} for {len(q)} queries.")
        return search_routed(self._handles, self._stats, q, len(q), k, subset=subset, query_ids=qids,
                             allow_partial=allow_partial)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save atomically: the shared codec, every shard as its own directory, the manifest last."""
        target = Path(path)
        state = _trained_state(self._template)
        digest = _state_digest(state)
        with atomic_directory(target, overwrite=overwrite) as tmp:
            arrays = {name: save_array(tmp, name, arr) for name, arr in state.items()}
            meta = [{"number": s, "of": self.n_shards, "routing": ROUTING, "trained_sha256": digest}
                    for s in range(self.n_shards)]
            entries = gather(self._handles, "save", [(str(tmp / shard_dir(s)), meta[s]) for s in range(self.n_shards)])
            files = {c.name: {"bytes": c.stat().st_size, "sha256": file_sha256(c)}
                     for c in sorted(tmp.iterdir()) if c.is_file()}
            params = {"routing": ROUTING, "shard_type": "MultiVectorIndex", "shard_params": _shard_params(self._template),
                      "trained_sha256": digest, "shards": entries}
            write_manifest(tmp, Manifest(
                index_type=type(self).__name__, dim=self.dim, metric="ip", count=sum(e["count"] for e in entries),
                arrays=arrays, files=files, params=params, metadata=self.metadata,
            ))
        logger.info("saved %r to %s", self, target)
        return target

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, verify: bool = True, mmap: bool = False, backend: Backend = "auto",
        workers: int | None = None, actor_options: dict[str, Any] | None = None,
    ) -> ShardedMultiVectorIndex:
        """Open a saved sharded multi-vector index (arguments as for :meth:`ShardedIndex.load`)."""
        with format_errors(path):
            return cls._load(Path(path), verify=verify, mmap=mmap, backend=backend, workers=workers,
                             actor_options=actor_options)

    @classmethod
    def _load(
        cls, directory: Path, *, verify: bool, mmap: bool, backend: Backend, workers: int | None,
        actor_options: dict[str, Any] | None,
    ) -> ShardedMultiVectorIndex:
        manifest = read_manifest(directory)
        if manifest.index_type != cls.__name__:
            raise IndexFormatError(f"{directory} holds a {manifest.index_type}, not a {cls.__name__}; use load_index().")
        verify_checksums(directory, manifest.files, hashes=verify)
        params = manifest.params
        entries = params.get("shards")
        if params.get("routing") != ROUTING or not isinstance(entries, list) or not entries:
            raise IndexFormatError(
                f"{directory / MANIFEST_NAME}: expected routing {ROUTING!r} and a non-empty params.shards list; got "
                f"routing {params.get('routing')!r}. The manifest is damaged or from a newer densezip."
            )
        state = {name: load_array(directory, entry, name=name) for name, entry in manifest.arrays.items()}
        if _state_digest(state) != params.get("trained_sha256"):
            raise IndexFormatError(f"{directory}: the codec arrays do not match params.trained_sha256 in the manifest.")
        try:
            template = _empty_copy(MultiVectorIndex(manifest.dim, **params["shard_params"]), state)
        except (KeyError, TypeError, ConfigError) as exc:
            raise IndexFormatError(
                f"{directory / MANIFEST_NAME}: bad params.shard_params {params.get('shard_params')!r} ({exc})."
            ) from exc
        for s, entry in enumerate(entries):
            check_shard(directory, s, len(entries), entry, params.get("trained_sha256"), verify=verify)
        if backend == "auto":
            backend = "ray" if _ray_is_running() else "threads"
        if backend not in ("threads", "ray"):
            raise ConfigError(f"backend must be 'auto', 'threads' or 'ray'; got {backend!r}.")
        index = cls(template, len(entries), workers=workers)
        index.metadata = manifest.metadata
        shard_dirs = [directory / e["dir"] for e in entries]
        index._handles, index._actors = open_shards(
            MultiVectorShardServer, shard_dirs, backend, index._pool(), verify=verify, mmap=mmap,
            actor_options=actor_options,
        )
        index.backend = backend
        index._stats = gather(index._handles, "stats", [()] * index.n_shards)
        for s, (entry, stats) in enumerate(zip(entries, index._stats, strict=True)):
            if stats != (entry["count"], entry["live"]):
                raise IndexFormatError(
                    f"{shard_dirs[s]} holds {stats[1]} documents, but {directory / MANIFEST_NAME} lists "
                    f"{entry['live']}. The shard does not belong to this index."
                )
        return index

    def close(self) -> None:
        """Stop the shard actors (Ray) or the search threads; the index is unusable afterwards."""
        if self._actors:
            ray = require("ray", extra="distributed", feature="ShardedMultiVectorIndex.close()")
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

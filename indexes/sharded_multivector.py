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
Ray actors), failure reporting, the exact top-``k`` merge, save and load are those of
:class:`~indexes.sharded.ShardedIndex` (:class:`indexes._sharded_base.ShardedBase`, :mod:`indexes._shards`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from indexes._io import load_array, save_array
from indexes._sharded_base import ShardedBase, check_n_shards, write_sharded_manifest
from indexes._shards import ShardServer
from indexes.base import check_new_ids, register_index
from indexes.manifest import MANIFEST_NAME, Manifest
from indexes.multivector import MultiVectorIndex
from retrieval.errors import ConfigError, IndexFormatError
from retrieval.types import MultiVectorEmbeddings

__all__ = ["MultiVectorShardServer", "ShardedMultiVectorIndex"]

logger = logging.getLogger(__name__)

_PARAMS = ("spec", "first_stage", "n_candidates", "nprobe", "token_k", "seed", "ndocs", "centroid_score_threshold",
           "binary_index", "ef_search")


class MultiVectorShardServer(ShardServer):
    """A :class:`~indexes._shards.ShardServer` holding a ``MultiVectorIndex`` shard."""

    kinds: ClassVar[tuple[type, ...]] = (MultiVectorIndex,)

    def add(  # type: ignore[override]
        self, data: MultiVectorEmbeddings, ids: list[str] | None = None, attributes: Any = None
    ) -> tuple[int, int]:
        self.index.add(data, attributes=attributes)
        return self.stats()


def _shard_params(index: MultiVectorIndex) -> dict[str, Any]:
    return {name: getattr(index, name) for name in _PARAMS}


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
    clone.load_trained_state(template.trained_state() if state is None else state)
    return clone


@register_index
class ShardedMultiVectorIndex(ShardedBase):
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

    server = MultiVectorShardServer
    _thread_prefix = "densezip-mvshard"

    def __init__(self, template: MultiVectorIndex, n_shards: int, *, workers: int | None = None) -> None:
        n_shards = check_n_shards(n_shards)
        if not isinstance(template, MultiVectorIndex):
            raise ConfigError(f"template must be an empty MultiVectorIndex; got {type(template).__name__}.")
        self._template = _empty_copy(template)
        self.dim = self._template.dim
        self.metadata: dict[str, Any] = {}
        self._init_shards(n_shards, workers)

    def _empty_shard(self) -> MultiVectorIndex:
        return _empty_copy(self._template)

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

    @property
    def num_vectors(self) -> int:
        """Stored token / patch vectors over all shards."""
        return sum(self._on_every_shard("num_vectors"))

    def __repr__(self) -> str:
        return (f"ShardedMultiVectorIndex(n_shards={self.n_shards}, backend={self.backend!r}, spec={self.spec!r}, "
                f"first_stage={self.first_stage!r}, count={len(self)})")

    # ------------------------------------------------------------------ train / add / delete
    def train(self, data: MultiVectorEmbeddings) -> ShardedMultiVectorIndex:
        """Train the codec once on ``data`` (a sample is enough) and give it to every shard."""
        if not self.is_trained:
            self._train_template(data)
        return self

    def add(self, data: MultiVectorEmbeddings, *, attributes: Any = None) -> ShardedMultiVectorIndex:
        """Add documents; each goes to shard :func:`~indexes._shards.shard_of` of its id.

        All ids (unique, not yet in any shard) and ``attributes`` (as for
        :meth:`MultiVectorIndex.add`) are checked before any shard changes.
        """
        mv = self._template.check_documents(data)
        new_ids = check_new_ids(mv.ids, ())
        if len(mv) == 0:
            return self
        if not self.is_trained:
            logger.info("training %s on the %d documents being added", self.spec, len(mv))
            self.train(mv)
        self._add_routed(new_ids, lambda rows: (mv.select(rows), None), attributes)
        return self

    # ------------------------------------------------------------------ search (ShardedBase.search)
    def _checked_queries(self, queries: Any) -> tuple[MultiVectorEmbeddings, int, list[str]]:
        q = self._template.check_queries(queries)
        return q, len(q), list(q.ids)

    # ------------------------------------------------------------------ persistence (ShardedBase hooks)
    def _write_shared(self, directory: Path) -> dict[str, Any]:
        state = self._template.trained_state()
        arrays = {name: save_array(directory, name, arr) for name, arr in state.items()}
        return {"sha256": _state_digest(state), "arrays": arrays}

    def _write_top_manifest(self, directory: Path, entries: list[dict[str, Any]], trained: dict[str, Any]) -> None:
        params = {"shard_params": _shard_params(self._template), "trained_sha256": trained["sha256"]}
        write_sharded_manifest(directory, type(self).__name__, self._template, entries, arrays=trained["arrays"],
                               params=params, metadata=self.metadata)

    @classmethod
    def _read_template(cls, directory: Path, manifest: Manifest) -> MultiVectorIndex:
        params = manifest.params
        state = {name: load_array(directory, entry, name=name) for name, entry in manifest.arrays.items()}
        if _state_digest(state) != params.get("trained_sha256"):
            raise IndexFormatError(f"{directory}: the codec arrays do not match params.trained_sha256 in the manifest.")
        try:
            return _empty_copy(MultiVectorIndex(manifest.dim, **params["shard_params"]), state)
        except (KeyError, TypeError, ConfigError) as exc:
            raise IndexFormatError(
                f"{directory / MANIFEST_NAME}: bad params.shard_params {params.get('shard_params')!r} ({exc})."
            ) from exc

"""``ShardedIndex``: one index split into N shards, searched in parallel, merged exactly.

Layout on disk::

    index/
      manifest.json          index_type "ShardedIndex"; params.shards lists every shard with its
                             directory, row and live counts and its manifest's sha256
      trained.faiss          the empty trained FAISS index every shard was cloned from (FAISS kinds)
      codebooks.npy          (M, 2**nbits, dim/M) float32 PQ centroids shared by all shards (PQ kinds)
      coarse_centroids.npy   (nlist, dim) float32 IVF centroids shared by all shards (IVF kinds)
      shard-000/ ...         ordinary saved FlatIndex / FaissIndex directories

Documents are routed to shards by a hash of their id (:func:`indexes._shards.shard_of`), so
add, delete, ``in`` and ``subset`` touch only the shards that hold the ids. Shards live in
this process (searched by a thread pool) or in Ray actors that keep them loaded
(``backend="ray"``, see :mod:`retrieval.distributed`); the code on the shard side is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexes._io import file_sha256, load_array, save_array
from indexes._paths import member, open_member
from indexes._sharded_base import (
    Backend,
    ShardedBase,
    ShardedSearchResult,
    check_n_shards,
    write_sharded_manifest,
)
from indexes._shards import empty_copy, template_from_state, template_state
from indexes.base import VectorIndex, check_new_ids, register_index
from indexes.manifest import MANIFEST_NAME, Manifest
from retrieval._optional import require
from retrieval.errors import ConfigError, IndexFormatError
from retrieval.types import Embeddings, as_float32_matrix

__all__ = ["Backend", "ShardedIndex", "ShardedSearchResult"]

logger = logging.getLogger(__name__)

_TRAINED_FILE = "trained.faiss"


@register_index
class ShardedIndex(ShardedBase, VectorIndex):
    """An index split into ``n_shards`` shards that share one trained state.

    Parameters
    ----------
    template : VectorIndex
        An empty ``FlatIndex`` or ``FaissIndex``, trained or not. Every shard is a copy of it,
        so all shards use the same PQ codebooks / IVF centroids (train the template, or call
        :meth:`train` on the sharded index, once).
    n_shards : int
        Number of shards (>= 1).
    workers : int, optional
        Threads searching shards in parallel (default ``n_shards``).

    Notes
    -----
    Search is exact with respect to the shards: each shard returns its top ``k`` and the
    merged top ``k`` is the top ``k`` of their union, so for exact and PQ indexes it equals
    one index over the same vectors and codebooks (ties aside). Labels in results are
    ``row_in_shard * n_shards + shard``. :attr:`doc_ids` lists shard by shard.

    Examples
    --------
    >>> from indexes import FlatIndex
    >>> x = np.eye(4, dtype=np.float32)
    >>> index = ShardedIndex(FlatIndex(4), n_shards=2).add(x, ids=["a", "b", "c", "d"])
    >>> index.search(x[2:3], k=2).doc_ids
    [['c', 'a']]
    """

    def __init__(self, template: VectorIndex, n_shards: int, *, workers: int | None = None) -> None:
        n_shards = check_n_shards(n_shards)
        if not isinstance(template, VectorIndex) or isinstance(template, ShardedIndex):
            raise ConfigError(
                f"template must be an empty FlatIndex or FaissIndex; got {type(template).__name__}. "
                "For a MultiVectorIndex use indexes.ShardedMultiVectorIndex."
            )
        super().__init__(template.dim, metric=template.metric)
        self._template = empty_copy(template)
        self._init_shards(n_shards, workers)

    def _empty_shard(self) -> VectorIndex:
        return empty_copy(self._template)

    def _describe(self) -> str:
        return f"n_shards={self.n_shards}, backend={self.backend!r}, shard={self._template!r}, "

    # ------------------------------------------------------------------ train / add / delete
    @property
    def is_trained(self) -> bool:
        return self._template.is_trained

    def train(self, data: Embeddings | NDArray[np.floating]) -> ShardedIndex:
        """Train the shared state once on ``data`` (a sample is enough) and give it to every shard."""
        if not self.is_trained:
            self._train_template(data)
        return self

    def add(self, data: Embeddings | NDArray[np.floating], ids: Sequence[str] | None = None, *,
            attributes: Any = None) -> ShardedIndex:
        """Add vectors; each document goes to shard :func:`~indexes._shards.shard_of` of its id.

        Parameters
        ----------
        data : Embeddings or np.ndarray, shape (n, dim)
            Vectors; with an array, ``ids`` is required.
        ids : sequence of str, or of int (an int64 array), length n
            Unique document ids, not already in the index (see :meth:`VectorIndex.add`).
        attributes : dict or list of dicts, optional
            Values to filter on with ``where=`` (see :meth:`VectorIndex.add`); checked against the
            shards' columns before any shard changes, then routed with their documents.
        """
        vectors, given = self._split(data, ids)
        new_ids = check_new_ids(given, ())
        self._add_routed(new_ids, lambda rows: (vectors[rows], new_ids[rows] if isinstance(new_ids, np.ndarray)
                                                else [new_ids[i] for i in rows]), attributes)
        return self

    # ------------------------------------------------------------------ search (ShardedBase.search)
    def _checked_queries(self, queries: Any) -> tuple[NDArray[np.float32], int, None]:
        q = as_float32_matrix(queries, name="queries", dim=self.dim)
        return q, q.shape[0], None

    # ------------------------------------------------------------------ persistence
    def _write_shared(self, directory: Path) -> dict[str, Any]:
        return self.write_trained(directory, self._template)

    def _write_top_manifest(self, directory: Path, entries: list[dict[str, Any]], trained: dict[str, Any]) -> None:
        self.write_manifest(directory, self._template, entries, trained, self.metadata)

    @staticmethod
    def write_trained(directory: Path, template: VectorIndex) -> dict[str, Any]:
        """Write the shared trained state; returns ``{"file", "sha256", "arrays"}`` for the manifest."""
        state = template_state(template)
        if "blob" not in state:
            return {"file": None, "sha256": None, "arrays": {}}
        blob = np.asarray(state["blob"], dtype=np.uint8)
        blob.tofile(directory / _TRAINED_FILE)
        arrays: dict[str, Any] = {}
        faiss = require("faiss", extra="cpu", feature="ShardedIndex")
        ivf = faiss.try_extract_index_ivf(template.faiss_index)  # type: ignore[attr-defined]
        core = faiss.downcast_index(template.faiss_index)  # type: ignore[attr-defined]
        while isinstance(core, faiss.IndexPreTransform):
            core = faiss.downcast_index(core.index)
        pq = getattr(ivf if ivf is not None else core, "pq", None)
        if pq is not None and template.is_trained:
            codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
            arrays["codebooks"] = save_array(directory, "codebooks", codebooks.astype(np.float32))
        if ivf is not None and template.is_trained:
            centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
            arrays["coarse_centroids"] = save_array(directory, "coarse_centroids", centroids.astype(np.float32))
        return {"file": _TRAINED_FILE, "sha256": file_sha256(directory / _TRAINED_FILE), "arrays": arrays}

    @staticmethod
    def write_manifest(
        directory: Path, template: VectorIndex, entries: list[dict[str, Any]], trained: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        """Write the top-level manifest (last) for shards already saved under ``directory``."""
        params: dict[str, Any] = {"trained_file": trained["file"], "trained_sha256": trained["sha256"]}
        if hasattr(template, "params"):
            params["shard_params"] = template.params()
        write_sharded_manifest(directory, "ShardedIndex", template, entries, arrays=trained["arrays"],
                               params=params, metadata=metadata)

    @classmethod
    def _read_template(cls, directory: Path, manifest: Manifest) -> VectorIndex:
        params = manifest.params
        kind = params.get("shard_type")
        if kind == "FlatIndex":
            return template_from_state({"type": kind, "dim": manifest.dim, "metric": manifest.metric})
        if kind != "FaissIndex" or not isinstance(params.get("trained_file"), str):
            raise IndexFormatError(
                f"{directory / MANIFEST_NAME}: params.shard_type must be 'FlatIndex' or 'FaissIndex' (with "
                f"params.trained_file); got {kind!r}."
            )
        for name, entry in manifest.arrays.items():
            load_array(directory, entry, name=name)  # checks the shared codebooks' dtype and shape
        spec = params.get("shard_params", {}).get("spec")
        trained = member(directory, params["trained_file"], what="params.trained_file")
        with open_member(trained) as f:
            blob = np.fromfile(f, dtype=np.uint8)
        template = template_from_state(
            {"type": kind, "dim": manifest.dim, "metric": manifest.metric, "spec": spec, "blob": blob}
        )
        stored_dim = template.faiss_index.d  # type: ignore[attr-defined]
        if stored_dim != manifest.dim:
            raise IndexFormatError(f"{directory / params['trained_file']} has dimension {stored_dim}, not {manifest.dim}.")
        return template

    # ------------------------------------------------------------------ unused hooks
    # ShardedIndex overrides add / delete / search / save / load and stores no rows itself, so
    # the per-row hooks of VectorIndex are never reached; they raise if something calls them.
    def _add_vectors(self, vectors: NDArray[np.float32], start: int) -> None:
        raise TypeError("ShardedIndex stores no rows itself; use add().")

    def _search_rows(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_] | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        raise TypeError("ShardedIndex stores no rows itself; use search().")

    def _write_payload(self, directory: Path, arrays: dict[str, Any]) -> dict[str, Any]:
        raise TypeError("ShardedIndex writes its own layout; use save().")

    @classmethod
    def _from_manifest(cls, manifest: Manifest, directory: Path) -> ShardedIndex:
        raise TypeError("ShardedIndex reads its own layout; use load().")

    def _read_payload(self, directory: Path, manifest: Manifest, *, mmap: bool) -> None:
        raise TypeError("ShardedIndex reads its own layout; use load().")

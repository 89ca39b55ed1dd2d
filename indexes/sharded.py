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
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from indexes._io import atomic_directory, file_sha256, load_array, save_array, verify_checksums
from indexes._shards import (
    ROUTING,
    LocalHandle,
    ShardHandle,
    ShardServer,
    check_shard,
    collect_searches,
    empty_copy,
    failure_text,
    gather,
    merge_results,
    open_shards,
    route,
    shard_dir,
    shard_of,
    template_from_state,
    template_state,
)
from indexes.base import VectorIndex, _check_k, check_new_ids, register_index
from indexes.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from retrieval._optional import require
from retrieval.errors import ConfigError, IndexFormatError, ShapeError, ShardError, UnknownIdError
from retrieval.types import Embeddings, SearchResult, as_float32_matrix

__all__ = ["Backend", "ShardedIndex", "ShardedSearchResult"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "threads", "ray"]
_TRAINED_FILE = "trained.faiss"


class ShardedSearchResult(SearchResult):
    """A :class:`~retrieval.types.SearchResult` that also says which shards did not answer.

    Attributes
    ----------
    failed_shards : dict of int to str
        Shard number -> error message, for shards skipped under ``allow_partial=True``.
    """

    __slots__ = ("failed_shards",)

    def __init__(self, *args: Any, failed_shards: dict[int, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_shards: dict[int, str] = dict(failed_shards or {})

    @property
    def partial(self) -> bool:
        """True when some shards failed and the hits come from the others only."""
        return bool(self.failed_shards)


def _ray_is_running() -> bool:
    # Only a process that already imported ray can have started or joined a cluster; importing
    # ray just to ask would cost a second on every load.
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


# -------------------------------------------------------------------- shard coordination
# Shared by ShardedIndex and ShardedMultiVectorIndex: both route ids to shards the same way and
# differ only in what a shard holds and how a query batch is checked.
def _new_stats(old: list[tuple[int, int]], new: list[Any]) -> list[tuple[int, int]]:
    """Per-shard (rows, live) counts after a call that returned counts only from the shards it reached."""
    return [st if st is not None else old[s] for s, st in enumerate(new)]


def refuse_present_ids(handles: Sequence[ShardHandle], id_parts: list[list[str]]) -> None:
    """Raise ConfigError if any id of ``id_parts`` (one list per shard) is already on its shard."""
    absent = gather(handles, "missing", [(p,) if p else None for p in id_parts])
    absent_sets = [set(a) if a is not None else set() for a in absent]
    clash = [i for s, p in enumerate(id_parts) for i in p if i not in absent_sets[s]]
    if clash:
        raise ConfigError(
            f"{len(clash)} id(s) are already in the index, e.g. {clash[:3]}; delete them first to replace them."
        )


def delete_routed(
    handles: Sequence[ShardHandle], ids: Iterable[str], stats: list[tuple[int, int]]
) -> tuple[int, list[tuple[int, int]]]:
    """Delete ``ids`` from their shards once every id was found; returns (count, new stats)."""
    ids = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
    id_parts = [[ids[i] for i in part] for part in route(ids, len(handles))] if ids else []
    missing = [i for m in gather(handles, "missing", [(p,) if p else None for p in id_parts]) if m for i in m]
    if missing:
        raise UnknownIdError(
            f"cannot delete {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}; "
            "nothing was deleted. Check `doc_id in index` first."
        )
    return len(ids), _new_stats(stats, gather(handles, "delete", [(p,) if p else None for p in id_parts]))


def search_routed(
    handles: Sequence[ShardHandle], stats: list[tuple[int, int]], queries: Any, nq: int, k: int, *,
    subset: Iterable[str] | None, query_ids: list[str] | None, allow_partial: bool,
) -> ShardedSearchResult:
    """Search the shards that can answer (all live ones, or those holding ``subset``) and merge exactly."""
    n_shards = len(handles)
    if subset is not None:
        subset_ids = [subset] if isinstance(subset, str) else list(dict.fromkeys(subset))
        parts = [[subset_ids[i] for i in p] for p in route(subset_ids, n_shards)]
        args: list[tuple[Any, ...] | None] = [(queries, k, p) if p else None for p in parts]
    else:
        args = [(queries, k, None) if live else None for _, live in stats]
    answers, failures, missing = collect_searches(handles, args)
    if missing:
        raise UnknownIdError(f"subset holds {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}.")
    if failures and (not allow_partial or not answers):
        raise ShardError(failure_text("search", failures, n_shards), failures=failures)
    if failures:
        logger.warning("answering from %d of %d shards: %s", len(answers), len(answers) + len(failures),
                       failure_text("search", failures, n_shards))
    merged = merge_results(answers, k, n_shards, nq)
    return ShardedSearchResult(
        doc_ids=merged.doc_ids, scores=merged.scores, labels=merged.labels, query_ids=query_ids,
        failed_shards={s: f"{type(e).__name__}: {e}" for s, e in failures.items()},
    )


@register_index
class ShardedIndex(VectorIndex):
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
        if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
            raise ConfigError(f"n_shards must be a positive integer; got {n_shards!r}.")
        if not isinstance(template, VectorIndex) or isinstance(template, ShardedIndex):
            raise ConfigError(
                f"template must be an empty FlatIndex or FaissIndex; got {type(template).__name__}. "
                "For a MultiVectorIndex use indexes.ShardedMultiVectorIndex."
            )
        super().__init__(template.dim, metric=template.metric)
        self._template = empty_copy(template)
        self.n_shards = int(n_shards)
        self.backend: Literal["threads", "ray"] = "threads"
        self._workers = workers or self.n_shards
        self._executor: ThreadPoolExecutor | None = None
        self._handles: list[ShardHandle] = [
            LocalHandle(ShardServer(empty_copy(self._template)), self._pool()) for _ in range(self.n_shards)
        ]
        self._stats: list[tuple[int, int]] = [(0, 0)] * self.n_shards
        self._actors: list[Any] = []

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="densezip-shard")
        return self._executor

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return sum(live for _, live in self._stats)

    @property
    def ntotal(self) -> int:
        return sum(rows for rows, _ in self._stats)

    @property
    def shard_sizes(self) -> list[int]:
        """Live documents per shard."""
        return [live for _, live in self._stats]

    @property
    def doc_ids(self) -> list[str]:
        """Live document ids, shard by shard (insertion order within a shard)."""
        return [i for part in self._gather("doc_ids", [()] * self.n_shards) for i in part]

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        s = shard_of(doc_id, self.n_shards)
        return not self._handles[s].call("missing", [doc_id]).result()

    def _describe(self) -> str:
        return f"n_shards={self.n_shards}, backend={self.backend!r}, shard={self._template!r}, "

    # ------------------------------------------------------------------ calls to shards
    def _gather(self, name: str, args: Sequence[tuple[Any, ...] | None]) -> list[Any]:
        """Call ``name`` on every shard whose ``args`` is not None; raise ShardError naming failures."""
        return gather(self._handles, name, args)

    # ------------------------------------------------------------------ train / add / delete
    @property
    def is_trained(self) -> bool:
        return self._template.is_trained

    def train(self, data: Embeddings | NDArray[np.floating]) -> ShardedIndex:
        """Train the shared state once on ``data`` (a sample is enough) and give it to every shard."""
        if self.is_trained:
            return self
        if self.backend != "threads" or self.ntotal:
            raise ConfigError("train() needs a new, empty ShardedIndex in this process; train before adding.")
        self._template.train(data)
        self._handles = [LocalHandle(ShardServer(empty_copy(self._template)), self._pool()) for _ in self._handles]
        return self

    def add(self, data: Embeddings | NDArray[np.floating], ids: Sequence[str] | None = None) -> ShardedIndex:
        """Add vectors; each document goes to shard :func:`~indexes._shards.shard_of` of its id.

        Parameters
        ----------
        data : Embeddings or np.ndarray, shape (n, dim)
            Vectors; with an array, ``ids`` is required.
        ids : sequence of str, length n
            Unique document ids, not already in the index.
        """
        vectors, new_ids = self._split(data, ids)
        check_new_ids(new_ids, ())
        parts = route(new_ids, self.n_shards)
        id_parts = [[new_ids[i] for i in part] for part in parts]
        refuse_present_ids(self._handles, id_parts)
        stats = self._gather("add", [(vectors[p], id_parts[s]) if p.size else None for s, p in enumerate(parts)])
        self._stats = _new_stats(self._stats, stats)
        return self

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; all ids are checked on their shards before anything is removed."""
        count, self._stats = delete_routed(self._handles, ids, self._stats)
        return count

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: NDArray[np.floating],
        k: int = 10,
        *,
        subset: Iterable[str] | None = None,
        query_ids: Sequence[str] | None = None,
        allow_partial: bool = False,
    ) -> ShardedSearchResult:
        """Search every shard in parallel and merge their top-``k`` lists exactly.

        Parameters
        ----------
        queries : np.ndarray, shape (nq, dim), float
        k : int
            Hits per query; rows are padded with label ``-1`` and score ``-inf``.
        subset : iterable of str, optional
            Restrict the search to these ids; only the shards holding them are searched.
        query_ids : sequence of str, optional
            Stored on the result.
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
        q = as_float32_matrix(queries, name="queries", dim=self.dim)
        if query_ids is not None and len(query_ids) != q.shape[0]:
            raise ShapeError(f"query_ids must have one id per query; got {len(query_ids)} for {q.shape[0]} queries.")
        return search_routed(self._handles, self._stats, q, q.shape[0], k, subset=subset,
                             query_ids=list(query_ids) if query_ids is not None else None,
                             allow_partial=allow_partial)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save atomically: every shard as its own index directory, then the top manifest last.

        With ``backend="ray"`` each actor writes its own shard, so ``path`` must be on storage
        every node sees (a shared file system), as for the distributed build.
        """
        target = Path(path)
        with atomic_directory(target, overwrite=overwrite) as tmp:
            trained = self.write_trained(tmp, self._template)
            args = [
                (str(tmp / shard_dir(s)), self._shard_metadata(s, trained["sha256"])) for s in range(self.n_shards)
            ]
            entries = self._gather("save", args)
            self.write_manifest(tmp, self._template, entries, trained, self.metadata)
        logger.info("saved %r to %s", self, target)
        return target

    def _shard_metadata(self, number: int, trained_sha256: str | None) -> dict[str, Any]:
        return {"number": number, "of": self.n_shards, "routing": ROUTING, "trained_sha256": trained_sha256}

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
        files = {
            child.name: {"bytes": child.stat().st_size, "sha256": file_sha256(child)}
            for child in sorted(directory.iterdir()) if child.is_file()
        }
        params: dict[str, Any] = {
            "routing": ROUTING, "shard_type": type(template).__name__, "trained_file": trained["file"],
            "trained_sha256": trained["sha256"], "shards": entries,
        }
        if hasattr(template, "_params"):
            params["shard_params"] = template._params()
        manifest = Manifest(
            index_type="ShardedIndex", dim=template.dim, metric=template.metric,
            count=sum(e["count"] for e in entries), arrays=trained["arrays"], files=files, params=params,
            metadata=metadata,
        )
        write_manifest(directory, manifest)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        verify: bool = True,
        mmap: bool = False,
        backend: Backend = "auto",
        workers: int | None = None,
        actor_options: dict[str, Any] | None = None,
    ) -> ShardedIndex:
        """Open a saved sharded index.

        Parameters
        ----------
        path : path-like
            Directory written by :meth:`save` or :func:`retrieval.distributed.build_sharded`.
        verify, mmap : bool
            As for :func:`indexes.load_index`, applied to every shard.
        backend : {"auto", "threads", "ray"}
            ``"ray"`` loads each shard in a Ray actor that keeps it in memory (needs the
            ``distributed`` extra and a started Ray; ``path`` must be readable by every node);
            ``"threads"`` loads the shards here; ``"auto"`` picks ``"ray"`` when this process has
            already started or joined Ray, else ``"threads"``.
        workers : int, optional
            Search threads for ``"threads"`` (default: one per shard).
        actor_options : dict, optional
            ``ray.remote`` options for the shard actors, e.g. ``{"num_cpus": 0.5}``.
        """
        directory = Path(path)
        manifest = read_manifest(directory)
        if manifest.index_type != cls.__name__:
            raise IndexFormatError(f"{directory} holds a {manifest.index_type}, not a ShardedIndex; use load_index().")
        verify_checksums(directory, manifest.files, hashes=verify)
        params = manifest.params
        entries = params.get("shards")
        if params.get("routing") != ROUTING or not isinstance(entries, list) or not entries:
            raise IndexFormatError(
                f"{directory / MANIFEST_NAME}: expected routing {ROUTING!r} and a non-empty params.shards list; got "
                f"routing {params.get('routing')!r}. The manifest is damaged or from a newer densezip."
            )
        template = cls._read_template(directory, manifest)
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
            ShardServer, shard_dirs, backend, index._pool(), verify=verify, mmap=mmap, actor_options=actor_options
        )
        index.backend = backend
        index._stats = index._gather("stats", [()] * index.n_shards)
        for s, (entry, stats) in enumerate(zip(entries, index._stats, strict=True)):
            if stats != (entry["count"], entry["live"]):
                raise IndexFormatError(
                    f"{shard_dirs[s]} holds {stats[0]} rows / {stats[1]} live documents, but {directory / MANIFEST_NAME} "
                    f"lists {entry['count']} / {entry['live']}. The shard does not belong to this index."
                )
        return index

    @staticmethod
    def _read_template(directory: Path, manifest: Manifest) -> VectorIndex:
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
        blob = np.fromfile(directory / params["trained_file"], dtype=np.uint8)
        template = template_from_state(
            {"type": kind, "dim": manifest.dim, "metric": manifest.metric, "spec": spec, "blob": blob}
        )
        if template.dim != manifest.dim:
            raise IndexFormatError(f"{directory / params['trained_file']} has dimension {template.dim}, not {manifest.dim}.")
        return template

    def close(self) -> None:
        """Stop the shard actors (Ray) or the search threads; the index is unusable afterwards."""
        if self._actors:
            ray = require("ray", extra="distributed", feature="ShardedIndex.close()")
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def memory(self) -> list[int]:
        """Resident memory of each shard's process in bytes (actors: one process per shard)."""
        return list(self._gather("memory", [()] * self.n_shards))

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
    def _from_manifest(cls, manifest: Manifest) -> ShardedIndex:
        raise TypeError("ShardedIndex reads its own layout; use load().")

    def _read_payload(self, directory: Path, manifest: Manifest, *, mmap: bool) -> None:
        raise TypeError("ShardedIndex reads its own layout; use load().")

"""The coordinating side of a sharded index: :class:`ShardedBase`, shared by both sharded kinds.

:class:`~indexes.sharded.ShardedIndex` (FlatIndex / FaissIndex shards) and
:class:`~indexes.sharded_multivector.ShardedMultiVectorIndex` (MultiVectorIndex shards)
differ only in what a shard holds, how a batch is checked and what trained state the shards
share. Everything else lives here once: routing adds, deletes and lookups to the shards that
own the ids (:mod:`indexes._shards`), the exact merge of searches, the saved layout (every
shard its own index directory, the top manifest last) and the verified load.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from indexes._attributes import AttributeTable
from indexes._ids import is_int, one_or_many
from indexes._io import atomic_directory, file_table
from indexes._paths import load_pinned
from indexes._predicates import evaluate
from indexes._shards import (
    ROUTING,
    LocalHandle,
    ShardHandle,
    ShardServer,
    check_shard,
    collect_searches,
    failure_text,
    gather,
    merge_results,
    open_shards,
    route,
    shard_dir,
    shard_metadata,
    shard_of,
)
from indexes.base import check_k, format_errors, open_manifest
from indexes.manifest import MANIFEST_NAME, Manifest, write_manifest
from retrieval._optional import require
from retrieval.errors import ConfigError, IndexFormatError, ShapeError, ShardError, UnknownIdError
from retrieval.types import SearchResult

__all__ = ["Backend", "ShardedBase", "ShardedSearchResult", "check_n_shards", "ray_is_running",
           "write_sharded_manifest"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "threads", "ray"]
B = TypeVar("B", bound="ShardedBase")


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


def ray_is_running() -> bool:
    """True when this process has started or joined Ray (never imports ray just to ask: that costs a second)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def check_n_shards(n_shards: Any) -> int:
    """``n_shards`` as an int, or ConfigError unless it is a positive integer."""
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
        raise ConfigError(f"n_shards must be a positive integer; got {n_shards!r}.")
    return int(n_shards)


def _args_for(parts: Sequence[Sequence[Any]], *head: Any) -> list[tuple[Any, ...] | None]:
    """``(*head, part)`` for every shard with a non-empty part, None (no call) for the others."""
    return [(*head, p) if len(p) else None for p in parts]


class ShardedBase:
    """The coordinating side shared by the sharded index kinds (a mixin).

    Holds one handle per shard and the per-shard ``(rows, live)`` counts; routes ids by
    :func:`shard_of`; checks every id on its shard before any shard changes; merges
    per-shard top-``k`` lists exactly; saves every shard as its own index directory beside
    the shared trained state, with the top manifest last; loads and checks them again.

    A subclass sets :attr:`server` and :attr:`_thread_prefix` and implements the hooks
    :meth:`_empty_shard`, :meth:`_write_shared`, :meth:`_write_top_manifest` and
    :meth:`_read_template`; it calls :meth:`_init_shards` from ``__init__``.
    """

    #: The :class:`ShardServer` class a shard of this kind runs in.
    server: ClassVar[type[ShardServer]] = ShardServer
    _thread_prefix: ClassVar[str] = "densezip-shard"
    _template: Any
    metadata: dict[str, Any]

    def _init_shards(self, n_shards: int, workers: int | None) -> None:
        self.n_shards = n_shards
        self.backend: Literal["threads", "ray"] = "threads"
        self._workers = workers or n_shards
        self._executor: ThreadPoolExecutor | None = None
        self._handles: list[ShardHandle] = self._new_handles()
        self._stats: list[tuple[int, int]] = [(0, 0)] * n_shards
        self._actors: list[Any] = []

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=self._thread_prefix)
        return self._executor

    def _new_handles(self) -> list[ShardHandle]:
        return [LocalHandle(self.server(self._empty_shard()), self._pool()) for _ in range(self.n_shards)]

    def _on_every_shard(self, name: str) -> list[Any]:
        """Call the argument-less ``name`` on every shard; raise ShardError naming failures."""
        return gather(self._handles, name, [()] * self.n_shards)

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return sum(live for _, live in self._stats)

    @property
    def ntotal(self) -> int:
        """Stored rows over all shards, deleted ones included."""
        return sum(rows for rows, _ in self._stats)

    @property
    def shard_sizes(self) -> list[int]:
        """Live documents per shard."""
        return [live for _, live in self._stats]

    @property
    def doc_ids(self) -> list[str]:
        """Live document ids, shard by shard (insertion order within a shard)."""
        return [i for part in self._on_every_shard("doc_ids") for i in part]

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str) and not is_int(doc_id):
            return False
        return not self._handles[shard_of(doc_id, self.n_shards)].call("missing", [doc_id]).result()

    def memory_bytes(self) -> int:
        """Bytes in memory: the sum of every shard's ``memory_bytes()`` (its payload, its own copy
        of the trained state, its ids), each measured where the shard lives (threads or Ray)."""
        return int(sum(self._on_every_shard("memory_bytes")))

    def ids_memory_bytes(self) -> int:
        """The share of :meth:`memory_bytes` held by the document ids, summed over the shards."""
        return int(sum(self._on_every_shard("ids_memory_bytes")))

    def memory(self) -> list[int]:
        """Resident memory of each shard's process in bytes (actors: one process per shard)."""
        return list(self._on_every_shard("memory"))

    # ------------------------------------------------------------------ train / add / delete
    def _train_template(self, data: Any) -> None:
        """Train the shared state once on ``data`` and give every shard a copy."""
        if self.backend != "threads" or self.ntotal:
            raise ConfigError(f"train() needs a new, empty {type(self).__name__} in this process; train before adding.")
        self._template.train(data)
        self._handles = self._new_handles()

    def _add_routed(self, ids: Any, payload: Callable[[NDArray[np.int64]], Any], attributes: Any = None) -> None:
        """Send ``payload(positions)`` (+ their attributes) to each shard owning some of ``ids`` (a list of
        str or an int64 array, checked by :func:`~indexes._ids.check_new_ids`) after checking none is
        present, that they are of the type of the ids already here and the attributes fit the columns."""
        kind = "int" if isinstance(ids, np.ndarray) else "str"
        held = {k for k in self._on_every_shard("id_kind") if k is not None}
        if len(ids) and held and held != {kind}:
            raise ConfigError(f"this index holds {held.pop()} document ids; got {kind} ids. One index holds one "
                              "type of id: convert them, or use another index.")
        parts = route(ids, self.n_shards)
        id_parts = [ids[part].tolist() if isinstance(ids, np.ndarray) else [ids[i] for i in part] for part in parts]
        absent = gather(self._handles, "missing", _args_for(id_parts))
        absent_sets = [set(a) if a is not None else set() for a in absent]
        clash = [i for s, p in enumerate(id_parts) for i in p if i not in absent_sets[s]]
        if clash:
            raise ConfigError(
                f"{len(clash)} id(s) are already in the index, e.g. {clash[:3]}; delete them first to replace them."
            )
        attr_parts = self._attribute_table().split(attributes, len(ids), parts)
        args = [(*payload(p), a) if p.size else None for p, a in zip(parts, attr_parts, strict=True)]
        self._update_stats(gather(self._handles, "add", args))

    def _attribute_table(self) -> AttributeTable:
        """An empty table with the shards' attribute columns (and their row count), to check input against."""
        answers = self._on_every_shard("attribute_schema")
        schema = next((s for rows, s in answers if rows and s), {})
        return AttributeTable.like(schema, rows=sum(rows for rows, _ in answers))

    @property
    def attribute_schema(self) -> dict[str, str]:
        """``field -> kind`` of the attributes stored for ``where=``."""
        return self._attribute_table().schema

    def _update_stats(self, new: list[Any]) -> None:
        """Take the ``(rows, live)`` counts returned by the shards a call reached."""
        self._stats = [st if st is not None else self._stats[s] for s, st in enumerate(new)]

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; all ids are checked on their shards before anything is removed."""
        ids = list(dict.fromkeys(one_or_many(ids)))
        id_parts = [[ids[i] for i in part] for part in route(ids, self.n_shards)] if ids else []
        missing = [i for m in gather(self._handles, "missing", _args_for(id_parts)) if m for i in m]
        if missing:
            raise UnknownIdError(
                f"cannot delete {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}; "
                "nothing was deleted. Check `doc_id in index` first."
            )
        self._update_stats(gather(self._handles, "delete", _args_for(id_parts)))
        return len(ids)

    # ------------------------------------------------------------------ search
    def search(
        self, queries: Any, k: int = 10, *, subset: Iterable[str] | None = None,
        query_ids: Sequence[str] | None = None, allow_partial: bool = False, where: dict[str, Any] | None = None,
    ) -> ShardedSearchResult:
        """Search every shard in parallel and merge their top-``k`` lists exactly.

        Parameters
        ----------
        queries : np.ndarray of shape (nq, dim), or MultiVectorEmbeddings
            What a shard searches with: float vectors for a ``ShardedIndex``; query token
            vectors (e.g. ``MultiVectorEncoder.encode_queries(texts)``) for a
            ``ShardedMultiVectorIndex``.
        k : int
            Hits per query. The result has ``min(k, len(index))`` columns; shorter rows are
            padded with label ``-1`` and score ``-inf``.
        subset : iterable of str, optional
            Restrict the search to these ids; only the shards holding them are searched.
        where : dict, optional
            A predicate over the attributes (:mod:`indexes._predicates`), checked here against the
            columns, then evaluated in each shard; the exact merge then holds ``min(k, matches)`` hits.
        query_ids : sequence of str, optional
            Stored on the result (multi-vector queries default to ``queries.ids``).
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
        k = min(check_k(k), len(self))  # at most one column per document, whatever k is
        q, nq, default_ids = self._checked_queries(queries)
        qids = list(query_ids) if query_ids is not None else default_ids
        if qids is not None and len(qids) != nq:
            raise ShapeError(f"query_ids must have one id per query; got {len(qids)} for {nq} queries.")
        n_shards = self.n_shards
        if subset is not None:
            subset_ids = list(dict.fromkeys(one_or_many(subset)))
            args = _args_for([[subset_ids[i] for i in p] for p in route(subset_ids, n_shards)], q, k)
        else:
            args = [(q, k, None) if live else None for _, live in self._stats]
        if where is not None:
            evaluate(where, self._attribute_table())  # a bad field / operator / value: ConfigError, before any shard
            args = [(*a, where) if a is not None else None for a in args]
        answers, failures, missing = collect_searches(self._handles, args)
        if missing:
            raise UnknownIdError(f"subset holds {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}.")
        if failures and (not allow_partial or not answers):
            raise ShardError(failure_text("search", failures, n_shards), failures=failures)
        if failures:
            logger.warning("answering from %d of %d shards: %s", len(answers), len(answers) + len(failures),
                           failure_text("search", failures, n_shards))
        merged = merge_results(answers, k, n_shards, nq)
        return ShardedSearchResult(
            doc_ids=merged.doc_ids, scores=merged.scores, labels=merged.labels, query_ids=qids,
            failed_shards={s: f"{type(e).__name__}: {e}" for s, e in failures.items()},
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save atomically: the shared trained state, every shard as its own index directory, the manifest last.

        With ``backend="ray"`` each actor writes its own shard, so ``path`` must be on storage
        every node sees (a shared file system), as for the distributed build.
        """
        target = Path(path)
        with atomic_directory(target, overwrite=overwrite) as tmp:
            trained = self._write_shared(tmp)
            args = [(str(tmp / shard_dir(s)), shard_metadata(s, self.n_shards, trained["sha256"]))
                    for s in range(self.n_shards)]
            self._write_top_manifest(tmp, gather(self._handles, "save", args), trained)
        logger.info("saved %r to %s", self, target)
        return target

    @classmethod
    def load(
        cls: type[B], path: str | os.PathLike[str], *, verify: bool = True, mmap: bool = False,
        backend: Backend = "auto", workers: int | None = None, actor_options: dict[str, Any] | None = None,
    ) -> B:
        """Open a saved sharded index.

        Parameters
        ----------
        path : path-like
            Directory written by :meth:`save` (or :func:`retrieval.distributed.build_sharded`).
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
        with format_errors(path):
            return load_pinned(path, lambda d: cls._load(d, verify=verify, mmap=mmap, backend=backend,
                                                         workers=workers, actor_options=actor_options))

    @classmethod
    def _load(
        cls: type[B], directory: Path, *, verify: bool, mmap: bool, backend: Backend, workers: int | None,
        actor_options: dict[str, Any] | None,
    ) -> B:
        manifest = open_manifest(directory, cls.__name__, verify=verify)
        params = manifest.params
        entries = params.get("shards")
        if params.get("routing") != ROUTING or not isinstance(entries, list) or not entries:
            raise IndexFormatError(
                f"{directory / MANIFEST_NAME}: expected routing {ROUTING!r} and a non-empty params.shards list; got "
                f"routing {params.get('routing')!r}. The manifest is damaged or from a newer densezip."
            )
        template = cls._read_template(directory, manifest)
        for s, entry in enumerate(entries):
            check_shard(directory, s, len(entries), entry, params.get("trained_sha256"), verify=verify, top=manifest)
        if backend == "auto":
            backend = "ray" if ray_is_running() else "threads"
        if backend not in ("threads", "ray"):
            raise ConfigError(f"backend must be 'auto', 'threads' or 'ray'; got {backend!r}.")
        index = cls(template, len(entries), workers=workers)  # type: ignore[call-arg]
        try:  # a failed load (e.g. one that raced a save and is retried) stops the threads it started
            index._open_saved(directory, entries, backend, verify=verify, mmap=mmap, actor_options=actor_options)
        except BaseException:
            index.close()
            raise
        index.metadata = manifest.metadata
        return index

    def _open_saved(
        self, directory: Path, entries: list[Any], backend: str, *, verify: bool, mmap: bool,
        actor_options: dict[str, Any] | None,
    ) -> None:
        shard_dirs = [directory / e["dir"] for e in entries]
        self._handles, self._actors = open_shards(
            self.server, shard_dirs, backend, self._pool(), verify=verify, mmap=mmap, actor_options=actor_options
        )
        self.backend = backend  # type: ignore[assignment]
        self._stats = self._on_every_shard("stats")
        for s, (entry, stats) in enumerate(zip(entries, self._stats, strict=True)):
            if stats != (entry["count"], entry["live"]):
                raise IndexFormatError(
                    f"{shard_dirs[s]} holds {stats[0]} rows / {stats[1]} live documents, but {directory / MANIFEST_NAME} "
                    f"lists {entry['count']} / {entry['live']}. The shard does not belong to this index."
                )

    def close(self) -> None:
        """Stop the shard actors (Ray) or the search threads; the index is unusable afterwards."""
        if self._actors:
            ray = require("ray", extra="distributed", feature=f"{type(self).__name__}.close()")
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ hooks
    def _checked_queries(self, queries: Any) -> tuple[Any, int, list[str] | None]:
        """``(queries as the shards take them, their number, default query ids or None)``, or a clear error."""
        raise NotImplementedError

    def _empty_shard(self) -> Any:
        """A new empty shard: a copy of the template with its trained state."""
        raise NotImplementedError

    def _write_shared(self, directory: Path) -> dict[str, Any]:
        """Write the trained state every shard shares; returns at least ``{"sha256": digest or None}``."""
        raise NotImplementedError

    def _write_top_manifest(self, directory: Path, entries: list[dict[str, Any]], trained: dict[str, Any]) -> None:
        """Write the top manifest (last) for the shards saved under ``directory``."""
        raise NotImplementedError

    @classmethod
    def _read_template(cls, directory: Path, manifest: Manifest) -> Any:
        """The empty, trained template of a saved sharded index."""
        raise NotImplementedError


def write_sharded_manifest(
    directory: Path, index_type: str, template: Any, entries: list[dict[str, Any]], *,
    arrays: dict[str, Any], params: dict[str, Any], metadata: dict[str, Any],
) -> None:
    """Write the manifest of a sharded index (last): routing, the shards' entries, the files beside them."""
    params = {"routing": ROUTING, "shard_type": type(template).__name__, **params, "shards": entries}
    write_manifest(directory, Manifest(
        index_type=index_type, dim=template.dim, metric=template.metric, count=sum(e["count"] for e in entries),
        arrays=arrays, files=file_table(directory), params=params, metadata=metadata,
    ))

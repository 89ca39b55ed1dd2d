"""The :class:`MultiVectorIndex`: compressed token / patch vectors, candidate generation, MaxSim.

Layout on disk (one directory, manifest written last, as for every index)::

    manifest.json      index_type "MultiVectorIndex", spec, first stage, codec kind
    codes.npy          (T, code_size) uint8: every stored vector, documents back to back
    offsets.npy        (n + 1,) int64: document i owns codes[offsets[i]:offsets[i + 1]]
    doc_ids.txt        one id per line
    codec.*.npy        the fitted codec (centroids, residual levels, rotation, ...)
    hamming.*.npy      the binary first-stage quantizer and its codes, when it is separate
    binary.token_index.npy   the binary first stage's FAISS index, serialized (indexes.binary_ann)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from indexes import _centroid_lists as centroid_lists
from indexes._embeddings_io import load_embeddings, save_embeddings
from indexes._io import load_array, save_array
from indexes._lock import reads, writes
from indexes.base import Metric, StoredIndex, check_k, register_index
from indexes.binary_ann import (
    TOKEN_INDEX_ARRAY,
    BinaryEngine,
    BinaryIndexKind,
    BinaryParams,
    restore_engine,
    save_token_index,
)
from indexes.manifest import MANIFEST_NAME, Manifest
from indexes.plaid import PlaidEngine, PlaidParams
from retrieval.compress.base import Codec
from retrieval.compress.binary import BinaryQuantizer
from retrieval.compress.kmeans import PatchKMeans
from retrieval.compress.prune import AttentionPruner
from retrieval.compress.spec import codec_from_state, parse_codec, split_prune
from retrieval.errors import ConfigError, IndexFormatError, NotTrainedError, ShapeError, UnknownIdError
from retrieval.scores import maxsim_scores, top_k
from retrieval.types import MultiVectorEmbeddings, SearchResult, _ranges, offsets_from_lengths

__all__ = ["FirstStage", "MultiVectorIndex", "load_embeddings", "save_embeddings"]

logger = logging.getLogger(__name__)

FirstStage = Literal["plaid", "exhaustive", "centroid", "binary"]
_FIRST_STAGES = ("plaid", "exhaustive", "centroid", "binary")
_QUERY_BATCH = 32


@register_index
class MultiVectorIndex(StoredIndex):
    """Late-interaction index: several compressed vectors per document, ranked by MaxSim.

    Parameters
    ----------
    dim : int
        Token / patch vector dimension.
    spec : str
        ``"<codec>"`` or ``"Prune<p>,<codec>"``. Codecs: ``Flat``, ``FP16``, ``KMeans<K>``
        (1-byte ids for K <= 256, 2-byte above), ``KMeans<K>r<b>`` (plus b-bit residuals),
        ``Binary``, ``BinaryITQ`` (see :mod:`retrieval.compress`); without ``<K>`` K is sized
        to the training vectors. ``Prune<p>`` keeps the top ``p`` share of each document's
        vectors by saliency when documents are added. Default ``"KMeansr2"``: ColBERTv2 /
        PLAID's codes (centroid id plus 2 bits per dimension), searched by the PLAID engine;
        within 1% of float MaxSim on SciFact (docs/BENCHMARKS.md section 4).
    first_stage : {"plaid", "exhaustive", "centroid", "binary"}, optional
        How candidates are found before exact MaxSim over the stored codes. Default:
        ``"plaid"`` for a ``KMeans`` codec, ``"exhaustive"`` for the others.

        - ``"plaid"``: the PLAID engine (:mod:`indexes.plaid`): ``nprobe`` centroids per query
          vector nominate documents through inverted lists, centroid-only MaxSim with
          centroid pruning keeps the best ``ndocs``, whose codes are decoded and scored exactly.
        - ``"exhaustive"``: every document is scored (for a ``KMeans`` codec without
          residuals through a centroid lookup table, which is cheap).
        - ``"centroid"``: inverted lists keyed by centroid id (needs a ``KMeans`` codec).
          Each query vector probes its ``nprobe`` best centroids; the documents holding
          them are scored with centroid-only MaxSim and the best ``n_candidates`` are
          re-scored with the full codes (PLAID's pipeline, without its pruning heuristics).
        - ``"binary"``: the binary engine (:mod:`indexes.binary_ann`): a FAISS binary index
          (``binary_index``) over sign codes of every stored vector gives each query vector's
          ``token_k`` nearest codes by Hamming distance; their documents are scored by
          asymmetric MaxSim (float query, bit document) through byte lookup tables. With a
          ``Binary`` codec the codes are shared and that score is final; otherwise a separate
          sign quantizer is kept and the best ``ndocs`` are re-scored with the stored codes.
    n_candidates : int
        Documents re-scored after centroid-only scoring (``"centroid"``).
    nprobe : int, optional
        Centroids probed per query vector (``"plaid"``, default 1; ``"centroid"``, default 4), or
        IVF lists probed per query vector (``"binary"`` with ``binary_index="ivf"``, default 16).
    ndocs : int
        Documents decoded and scored exactly per query (``"plaid"``); documents re-scored with the
        stored codes after the table scoring (``"binary"`` with a codec that is not binary).
    centroid_score_threshold : float or None
        Centroid pruning of ``"plaid"``'s stage 2 (None: no pruning).
    token_k : int
        Hamming neighbours per query vector (``"binary"``).
    binary_index : {"ivf", "hnsw", "flat"}
        The FAISS binary index of ``"binary"``: IVF (``nprobe``), HNSW (``ef_search``) or a flat scan.
    ef_search : int
        HNSW search breadth (``binary_index="hnsw"``).
    seed : int
        Seed for codec training.

    Notes
    -----
    Thread safety: ``search`` / ``rerank`` / ``score`` / ``save`` run concurrently; ``train``,
    ``add`` and ``delete`` are exclusive (a readers-writer lock, see :mod:`indexes._lock`).
    Ids, ``save`` and ``load`` are those of every index (:class:`~indexes.base.StoredIndex`);
    a deleted document's codes are dropped at once, so rows always equal live documents.

    Examples
    --------
    >>> import numpy as np
    >>> from retrieval.types import MultiVectorEmbeddings
    >>> rng = np.random.default_rng(0)
    >>> docs = MultiVectorEmbeddings.from_list([rng.standard_normal((5, 8)) for _ in range(40)])
    >>> index = MultiVectorIndex(8, spec="FP16").add(docs)
    >>> index.search(docs.select([3]), k=1).doc_ids
    [['3']]
    """

    _tombstones = False  # a deleted document's codes are dropped at once
    #: MaxSim sums inner products; recorded in the manifest like every index's metric.
    metric: Metric = "ip"

    def __init__(
        self, dim: int, *, spec: str = "KMeansr2", first_stage: FirstStage | None = None,
        n_candidates: int = 256, nprobe: int | None = None, token_k: int = BinaryParams.token_k, seed: int = 0,
        ndocs: int = PlaidParams.ndocs, centroid_score_threshold: float | None = PlaidParams.centroid_score_threshold,
        binary_index: BinaryIndexKind = "ivf", ef_search: int = BinaryParams.ef_search,
    ) -> None:
        super().__init__()
        keep, codec_spec = split_prune(spec)
        self.codec: Codec = parse_codec(codec_spec, dim, seed=seed)
        self.dim = self.codec.dim
        self.pruner = AttentionPruner(keep) if keep is not None else None
        if first_stage is None:
            first_stage = "plaid" if isinstance(self.codec, PatchKMeans) else "exhaustive"
        if nprobe is None:
            nprobe = {"plaid": PlaidParams.nprobe, "binary": BinaryParams.nprobe}.get(first_stage, 4)
        if first_stage not in _FIRST_STAGES:
            raise ConfigError(f"first_stage must be one of {_FIRST_STAGES}; got {first_stage!r}.")
        if first_stage in ("centroid", "plaid") and not isinstance(self.codec, PatchKMeans):
            raise ConfigError(
                f"first_stage={first_stage!r} needs a KMeans codec (inverted lists are keyed by centroid id); "
                f"got spec {spec!r}. Use e.g. 'KMeans256r2', or first_stage='exhaustive' / 'binary'."
            )
        for name, value in (("n_candidates", n_candidates), ("nprobe", nprobe), ("token_k", token_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int; got {value!r}.")
        self.first_stage: FirstStage = first_stage
        self.n_candidates, self.nprobe, self.token_k, self.seed = n_candidates, nprobe, token_k, seed
        self.plaid_params = PlaidParams(nprobe=nprobe, ndocs=ndocs, centroid_score_threshold=centroid_score_threshold)
        self.ndocs, self.centroid_score_threshold = ndocs, centroid_score_threshold
        self.binary_params = BinaryParams(token_k=token_k, nprobe=nprobe, ef_search=ef_search, ndocs=ndocs)
        if binary_index not in ("ivf", "hnsw", "flat"):
            raise ConfigError(f"binary_index must be 'ivf', 'hnsw' or 'flat'; got {binary_index!r}.")
        self.binary_index: BinaryIndexKind = binary_index
        self.ef_search = ef_search
        self.hamming: BinaryQuantizer | None = None
        if first_stage == "binary":
            self.hamming = self.codec if isinstance(self.codec, BinaryQuantizer) else BinaryQuantizer(dim, seed=seed)
        self._codes = np.zeros((0, self.codec.code_size), dtype=np.uint8)
        self._hamming_codes = np.zeros((0, self.hamming.code_size if self.hamming else 0), dtype=np.uint8)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._lists: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None  # centroid -> doc rows (CSR)
        self._binary: BinaryEngine | None = None
        self._plaid: PlaidEngine | None = None

    # ------------------------------------------------------------------ description
    @property
    def spec(self) -> str:
        return (f"{self.pruner.spec}," if self.pruner else "") + self.codec.spec

    def __repr__(self) -> str:
        return (f"MultiVectorIndex(dim={self.dim}, spec={self.spec!r}, first_stage={self.first_stage!r}, "
                f"count={len(self)}, vectors={self.num_vectors})")

    @property
    def num_vectors(self) -> int:
        """Stored vectors T (after pruning)."""
        return int(self._codes.shape[0])

    @property
    def lengths(self) -> NDArray[np.int64]:
        return np.diff(self._offsets)

    @property
    def is_trained(self) -> bool:
        return self.codec.is_trained and (self.hamming is None or self.hamming.is_trained)

    def memory_bytes(self) -> int:
        """Bytes in memory: the codes, the offsets, the trained codec's arrays, a separate binary
        first stage's codes and quantizer, the PLAID engine's lists and the binary engine's FAISS
        index once a search built them, plus the ids (:meth:`ids_memory_bytes`: the id store's
        arrays; no tombstones: deleted documents are dropped) and the attributes."""
        trained = sum(a.nbytes for a in self.trained_state().values())
        side = self._hamming_codes.nbytes if self._separate_hamming() else 0
        side += self._plaid.memory_bytes() if self._plaid is not None else 0
        side += self._binary.memory_bytes() if self._binary is not None else 0
        payload = int(self._codes.nbytes + self._offsets.nbytes + trained + side)
        return payload + self._table.memory_bytes() + self._attrs.memory_bytes()

    def trained_state(self) -> dict[str, NDArray[Any]]:
        """The trained arrays: ``codec.<name>`` once the codec is trained, ``hamming.<name>`` for a
        trained separate binary first stage. Every shard of a sharded index shares them."""
        state = {f"codec.{k}": v for k, v in self.codec.state().items()} if self.codec.is_trained else {}
        if self._separate_hamming():
            assert self.hamming is not None
            state.update({f"hamming.{k}": v for k, v in self.hamming.state().items()})
        return state

    def load_trained_state(self, state: dict[str, NDArray[Any]]) -> None:
        """Install arrays as :meth:`trained_state` returns them (into an index with the same spec)."""
        codec = {k[len("codec."):]: v for k, v in state.items() if k.startswith("codec.")}
        if codec:
            self.codec = codec_from_state(self.codec.spec, self.dim, codec)
            if self.hamming is not None and isinstance(self.codec, BinaryQuantizer):
                self.hamming = self.codec
        side = {k[len("hamming."):]: v for k, v in state.items() if k.startswith("hamming.")}
        if side and self.hamming is not None and self.hamming is not self.codec:
            self.hamming.load_state(side)

    def _separate_hamming(self) -> bool:
        """True when a trained binary first stage keeps codes of its own (the codec is not Binary)."""
        return self.hamming is not None and self.hamming is not self.codec and self.hamming.is_trained

    # ------------------------------------------------------------------ train / add / delete
    @writes
    def train(self, data: MultiVectorEmbeddings) -> MultiVectorIndex:
        """Fit the codec (and the Hamming quantizer) on representative documents, pruned as at add time."""
        mv = self._prepare(data)
        if mv.num_vectors == 0:
            raise ConfigError("train() needs at least one vector; the documents hold none.")
        return self.train_vectors(mv.vectors)

    @writes
    def train_vectors(self, vectors: NDArray[np.floating], *, corpus_size: int | None = None) -> MultiVectorIndex:
        """Fit the codec (and the Hamming quantizer) on token vectors already pruned as at add
        time, e.g. a sample drawn from a stream (:func:`indexes.build.build_multivector_from_batches`);
        a k-means codec without K is sized to ``corpus_size`` vectors (default: these)."""
        if isinstance(self.codec, PatchKMeans):
            self.codec.fit(vectors, corpus_size=corpus_size)
        else:
            self.codec.fit(vectors)
        if self.hamming is not None and self.hamming is not self.codec:
            self.hamming.fit(vectors)
        self._lists, self._binary, self._plaid = None, None, None
        return self

    @writes
    def add(self, data: MultiVectorEmbeddings, *, attributes: Any = None) -> MultiVectorIndex:
        """Prune (if the spec says so), encode and append documents; returns ``self``.

        ``attributes`` (field -> values, or one dict per document) are stored for ``search(where=...)``.

        Codecs that learn (``KMeans``, ``Binary``) are trained on this batch first when the
        index is not trained yet. A document may hold no vector (it then never matches).
        """
        return self._add_prepared(self._prepare(data), attributes)

    @writes
    def add_pruned(self, data: MultiVectorEmbeddings, *, attributes: Any = None) -> MultiVectorIndex:
        """:meth:`add` for documents already pruned as the spec says (no pruning is applied again)."""
        return self._add_prepared(self.check_documents(data), attributes)

    def _add_prepared(self, mv: MultiVectorEmbeddings, attributes: Any) -> MultiVectorIndex:
        self._check_new_ids(mv.ids)
        prepared = self._attrs.prepare(attributes, len(mv))
        if len(mv) == 0:
            return self
        if not self.is_trained:  # float codecs without a Hamming stage need no training
            logger.info("training %s on the %d vectors being added", self.spec, mv.num_vectors)
            self.train(mv)
        return self._add_blocks(mv.ids, mv.offsets, [mv.vectors], prepared)

    @writes
    def _add_blocks(self, ids: Any, offsets: NDArray[np.int64], blocks: Iterable[NDArray[np.float32]],
                    prepared: Any = None) -> MultiVectorIndex:
        """Append documents (pruned, values checked) whose vectors arrive as consecutive blocks, encoded
        into codes allocated once for all ``offsets[-1]`` vectors; an empty index keeps those arrays. The
        streamed build (:func:`indexes.build.build_multivector_from_batches`) hands every spilled block in
        one call: memory is the codes plus one block, where ``add`` per block copies the codes so far.
        ``prepared`` None: the ids and attributes (none) are checked here."""
        if prepared is None:
            self._check_new_ids(ids)
            prepared = self._attrs.prepare(None, len(offsets) - 1)
        if not self.is_trained:
            raise NotTrainedError("the codec is not trained; call train() or train_vectors() before adding codes.")
        total, hamming = int(offsets[-1]), self.hamming if self._separate_hamming() else None
        codes = np.empty((total, self.codec.code_size), dtype=np.uint8)
        side = np.empty((total, hamming.code_size), dtype=np.uint8) if hamming is not None else None
        row = 0
        for block in blocks:
            stop = row + block.shape[0]
            if stop > total:
                raise ShapeError(f"the blocks hold more than the {total} vectors the offsets give.")
            codes[row:stop] = self.codec.encode(block)  # a copy: a float codec's codes may be a view of block
            if hamming is not None and side is not None:
                side[row:stop] = hamming.encode(block)
            row = stop
        if row != total:
            raise ShapeError(f"the blocks hold {row} vectors; the offsets give {total}.")
        base = self.num_vectors
        self._codes = np.concatenate([self._codes, codes]) if base else codes
        if side is not None:
            self._hamming_codes = np.concatenate([self._hamming_codes, side]) if self._hamming_codes.shape[0] else side
        self._offsets = np.concatenate([self._offsets, base + np.asarray(offsets[1:], dtype=np.int64)])
        self._table.append(ids)
        self._attrs.commit(prepared)
        self._lists, self._binary, self._plaid = None, None, None
        return self

    @writes
    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id (their codes are dropped); all ids are checked first."""
        ids, rows = self._table.rows_to_delete(ids)
        if rows.size == 0:
            return 0
        keep_docs = np.ones(len(self), dtype=bool)
        keep_docs[rows] = False
        kept = np.flatnonzero(keep_docs)
        take = _ranges(self._offsets[kept], self._offsets[kept + 1])
        self._codes = self._codes[take]
        if self._hamming_codes.shape[0]:
            self._hamming_codes = self._hamming_codes[take]
        self._offsets = offsets_from_lengths(self.lengths[kept])
        self._table.remove(ids, rows)
        self._attrs.keep(keep_docs)
        self._lists, self._binary, self._plaid = None, None, None
        return int(rows.size)

    # ------------------------------------------------------------------ search
    @reads
    def search(
        self, queries: MultiVectorEmbeddings, k: int = 10, *, subset: Iterable[str] | None = None,
        query_ids: Sequence[str] | None = None, params: PlaidParams | BinaryParams | Mapping[str, Any] | None = None,
        where: dict[str, Any] | None = None,
    ) -> SearchResult:
        """Top-``k`` documents per query by MaxSim over the stored codes.

        Parameters
        ----------
        queries : MultiVectorEmbeddings
            Query token vectors, e.g. ``MultiVectorEncoder.encode_queries(texts)``.
        k : int
            Hits per query. The result has ``min(k, len(index))`` columns; a row with fewer
            hits (a ``subset``, few candidates) is padded with ``-1`` / ``-inf``. A query with
            no vectors matches nothing: its row is all padding, for every first stage.
        subset : iterable of str, optional
            Only these document ids can be returned.
        where : dict, optional
            Only documents whose attributes match (:mod:`indexes._predicates`). With ``subset`` or
            ``where`` the mask applies in every stage, and a row short of ``min(k, matches)`` hits
            is completed by exact MaxSim over the matching documents.
        query_ids : sequence of str, optional
            Stored on the result (defaults to ``queries.ids``).
        params : dict, PlaidParams or BinaryParams, optional
            Settings for this call only: ``"plaid"``'s (``nprobe``, ``centroid_score_threshold``,
            ``ndocs``) or ``"binary"``'s (``token_k``, ``nprobe``, ``ef_search``, ``ndocs``);
            omitted ones keep the index's own (:attr:`plaid_params`, :attr:`binary_params`).
        """
        k = min(check_k(k), len(self))  # at most one column per document, whatever k is
        q = self.check_queries(queries)
        if params is not None and self.first_stage not in ("plaid", "binary"):
            raise ConfigError(f"search params apply to first_stage 'plaid' or 'binary'; this index uses "
                              f"{self.first_stage!r}. Set nprobe / n_candidates on the index instead.")
        current: Any = self.binary_params if self.first_stage == "binary" else self.plaid_params
        settings = current.updated(params)
        if self._codes.shape[0] and not self.is_trained:
            raise NotTrainedError("the index holds codes but its codec is not trained; the index is corrupt.")
        allowed = self._allowed(subset, where) if subset is not None or where is not None else None
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        if len(self) and len(q):
            with np.errstate(over="ignore", invalid="ignore"):  # huge inputs overflow; reported below
                for s in range(0, len(q), _QUERY_BATCH):
                    batch = q.select(np.arange(s, min(s + _QUERY_BATCH, len(q))))
                    scores[s : s + len(batch)], labels[s : s + len(batch)] = self._search_batch(batch, k, allowed, settings)
            if allowed is not None:  # guaranteed k: exact MaxSim over the allowed rows for short rows
                short = np.flatnonzero((labels >= 0).sum(axis=1) < min(k, int(np.count_nonzero(allowed))))
                if short.size:
                    scores[short], labels[short] = self._score_rows(q.select(short), np.flatnonzero(allowed), k)
            if not np.isfinite(scores[labels >= 0]).all():
                raise ShapeError("MaxSim scores overflowed float32 (inf / NaN): the query vectors hold values too "
                                 "large for this index. Normalise them.")
        _no_match_for_empty(q, scores, labels)
        return self._result(scores, labels, query_ids if query_ids is not None else q.ids)

    @reads
    def rerank(
        self, queries: MultiVectorEmbeddings, candidates: Sequence[Sequence[str]], k: int,
        *, query_ids: Sequence[str] | None = None,
    ) -> SearchResult:
        """MaxSim over the stored codes of each query's candidate ids; the best ``k`` kept."""
        k = min(check_k(k), len(self))  # at most one column per document, whatever k is
        q = self.check_queries(queries)
        if len(candidates) != len(q):
            raise ShapeError(f"need one candidate list per query; got {len(candidates)} for {len(q)} queries.")
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        for qi, cands in enumerate(candidates):
            cands = list(cands)
            missing = self._table.missing(cands)
            if missing:
                raise UnknownIdError(f"{len(missing)} candidate id(s) are not in the index, e.g. {missing[:3]}.")
            rows = np.unique(np.array(self._table.rows_of(cands), dtype=np.int64))
            scores[qi], labels[qi] = self._score_rows(q.select([qi]), rows, k)
        _no_match_for_empty(q, scores, labels)
        return self._result(scores, labels, query_ids if query_ids is not None else q.ids)

    @reads
    def score(self, queries: MultiVectorEmbeddings, rows: NDArray[np.int64] | None = None) -> NDArray[np.float32]:
        """Full MaxSim of every query against documents ``rows`` (all when None), shape (nq, len(rows))."""
        q = self.check_queries(queries)
        if rows is None:
            return maxsim_scores(centroid_lists.row_scorer(self.codec, self._codes), self._offsets, q)
        rows = np.asarray(rows, dtype=np.int64)
        take = _ranges(self._offsets[rows], self._offsets[rows + 1])
        scorer = centroid_lists.row_scorer(self.codec, self._codes[take])
        return maxsim_scores(scorer, offsets_from_lengths(self.lengths[rows]), q)

    # ------------------------------------------------------------------ persistence (StoredIndex hooks)
    def _write_payload(self, directory: Path, arrays: dict[str, Any]) -> dict[str, Any]:
        arrays["codes"] = save_array(directory, "codes", self._codes)
        arrays["offsets"] = save_array(directory, "offsets", self._offsets)
        for name, arr in self.trained_state().items():
            arrays[name] = save_array(directory, name, arr)
        if self._separate_hamming():
            arrays["hamming.codes"] = save_array(directory, "hamming.codes", self._hamming_codes)
        params = {
            "spec": self.spec, "first_stage": self.first_stage, "n_candidates": self.n_candidates,
            "nprobe": self.nprobe, "token_k": self.token_k, "seed": self.seed, "trained": self.codec.is_trained,
            "ndocs": self.ndocs, "centroid_score_threshold": self.centroid_score_threshold,
            "binary_index": self.binary_index, "ef_search": self.ef_search,
        }
        if self.first_stage == "binary" and self.is_trained:  # built here if no search did: a load then reads it
            arrays[TOKEN_INDEX_ARRAY], params["binary_token_index"] = save_token_index(self.binary_engine(), directory)
        return params

    @classmethod
    def _from_manifest(cls, manifest: Manifest, directory: Path) -> MultiVectorIndex:
        p = manifest.params
        seed, trained = p.get("seed"), p.get("trained")
        if type(seed) is not int or not -(2**63) <= seed < 2**63 or type(trained) is not bool:
            raise IndexFormatError(f"{directory / MANIFEST_NAME}: params.seed must be a 64-bit integer and "
                                   f"params.trained a boolean; got {seed!r:.40} and {trained!r:.40}.")
        try:
            optional = ("ndocs", "centroid_score_threshold", "binary_index", "ef_search")  # absent in older manifests
            plaid = {name: p[name] for name in optional if name in p}
            return cls(manifest.dim, spec=p["spec"], first_stage=p["first_stage"], n_candidates=p["n_candidates"],
                       nprobe=p["nprobe"], token_k=p["token_k"], seed=p["seed"], **plaid)
        except (KeyError, ConfigError) as exc:
            raise IndexFormatError(f"{directory / MANIFEST_NAME}: bad MultiVectorIndex params {p!r} ({exc}).") from exc

    def _read_payload(self, directory: Path, manifest: Manifest, *, mmap: bool) -> None:
        arrays, p, n = manifest.arrays, manifest.params, manifest.count
        codes = load_array(directory, arrays.get("codes"), name="codes", mmap=mmap)
        offsets = load_array(directory, arrays.get("offsets"), name="offsets")
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.codec.code_size:
            raise IndexFormatError(f"{directory / 'codes.npy'} must be uint8 (T, {self.codec.code_size}); got "
                                   f"{codes.dtype} {codes.shape}.")
        if (offsets.dtype != np.int64 or offsets.shape != (n + 1,) or offsets[0] != 0
                or offsets[-1] != codes.shape[0] or (np.diff(offsets) < 0).any()):
            raise IndexFormatError(f"{directory / 'offsets.npy'} is not a valid (n + 1,) int64 offset array for "
                                   f"{n} documents and {codes.shape[0]} codes.")
        side = "hamming.codes" in arrays
        names = [name for name in arrays if (name.startswith("codec.") and p.get("trained"))
                 or (side and name.startswith("hamming.") and name != "hamming.codes")]
        self.load_trained_state({name: load_array(directory, arrays[name], name=name) for name in names})
        if self.hamming is not None and self.hamming is not self.codec and side:
            self._hamming_codes = load_array(directory, arrays["hamming.codes"], name="hamming.codes", mmap=mmap)
            if self._hamming_codes.shape != (codes.shape[0], self.hamming.code_size):
                raise IndexFormatError(f"{directory / 'hamming.codes.npy'} does not match codes.npy.")
        if codes.shape[0] and not self.is_trained:
            raise IndexFormatError(f"{directory / MANIFEST_NAME}: the index holds {codes.shape[0]} codes but no trained "
                                   "codec (params.trained or the codec arrays are missing); the manifest is damaged.")
        self._codes, self._offsets = codes, np.array(offsets)
        if self.first_stage == "binary" and self.is_trained:
            assert self.hamming is not None
            sign = self._codes if self.hamming is self.codec else self._hamming_codes
            self._binary = restore_engine(directory, manifest, self.hamming, sign, self._offsets, self.binary_index,
                                          self.seed, mmap=mmap)

    # ------------------------------------------------------------------ internals
    def check_documents(self, data: Any) -> MultiVectorEmbeddings:
        """``data`` if it can be added here (MultiVectorEmbeddings of width ``dim``, finite), else a clear error."""
        return self._checked(data, "documents", "MultiVectorEncoder.encode_documents(texts)")

    def check_queries(self, queries: Any) -> MultiVectorEmbeddings:
        """``queries`` if they can search here (MultiVectorEmbeddings of width ``dim``, finite), else a clear error."""
        return self._checked(queries, "queries", "MultiVectorEncoder.encode_queries(texts)")

    def _prepare(self, data: Any) -> MultiVectorEmbeddings:
        mv = self.check_documents(data)
        return self.pruner(mv) if self.pruner is not None else mv

    def _checked(self, data: Any, what: str, source: str) -> MultiVectorEmbeddings:
        """``data`` as MultiVectorEmbeddings of this index's width with finite values, or a clear error."""
        if not isinstance(data, MultiVectorEmbeddings):
            raise ConfigError(f"{what} must be MultiVectorEmbeddings (e.g. from {source}); got {type(data).__name__}.")
        if data.dim != self.dim:
            raise ShapeError(f"{what} have d={data.dim}, the index expects d={self.dim}. "
                             "Was the index built with a different encoder or projection?")
        if not np.isfinite(np.asarray(data.vectors, dtype=np.float32)).all():
            raise ShapeError(f"{what} contain NaN or inf values; check the encoder output.")
        return data

    def _result(self, scores: NDArray[np.float32], labels: NDArray[np.int64], query_ids: Sequence[str]) -> SearchResult:
        view = self._table.id_array()
        doc_ids = [view[row[row >= 0]].tolist() for row in labels]
        return SearchResult(doc_ids=doc_ids, scores=scores, labels=labels, query_ids=list(query_ids))

    def _score_rows(self, q: MultiVectorEmbeddings, rows: NDArray[np.int64], k: int) -> tuple[Any, Any]:
        """Top-k among document ``rows`` for the query batch ``q`` (labels are index rows)."""
        if rows.size == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        s, local = top_k(self.score(q, rows), k)
        return s, np.where(local >= 0, rows[np.maximum(local, 0)], -1)

    def _search_batch(self, q: MultiVectorEmbeddings, k: int, allowed: NDArray[np.bool_] | None,
                      settings: Any) -> tuple[Any, Any]:
        if self.first_stage == "plaid":
            return self.plaid_engine().search(q.vectors, q.offsets, k, settings, allowed)
        if self.first_stage == "binary":
            return self._binary_search(q, k, allowed, settings)
        if self.first_stage == "exhaustive":
            s = self.score(q)
            if allowed is not None:
                s[:, ~allowed] = -np.inf
            return top_k(s, k)
        scores = np.full((len(q), k), -np.inf, np.float32)
        labels = np.full((len(q), k), -1, np.int64)
        assert isinstance(self.codec, PatchKMeans)
        if self._lists is None:
            self._lists = centroid_lists.inverted_lists(self.codec, self._codes, self.lengths)
        for qi in range(len(q)):
            one = q.select([qi])
            rows = centroid_lists.candidates(self.codec, self._lists, one, self.nprobe)
            if allowed is not None:
                rows = rows[allowed[rows]]
            if self.codec.residual_bits and rows.size > self.n_candidates:
                approx = centroid_lists.centroid_scores(self.codec, self._codes, self._offsets, self.lengths, one, rows)
                rows = np.sort(rows[np.argpartition(-approx, self.n_candidates - 1)[: self.n_candidates]])
            scores[qi], labels[qi] = self._score_rows(one, rows, k)
        return scores, labels

    def plaid_engine(self) -> PlaidEngine:
        """The PLAID engine over the current codes (built on first use, rebuilt after an edit)."""
        engine = self._plaid
        if engine is None:
            assert isinstance(self.codec, PatchKMeans)
            engine = self._plaid = PlaidEngine(self.codec, self._codes, self._offsets)
        return engine

    # binary first stage --------------------------------------------------------------
    def binary_engine(self) -> BinaryEngine:
        """The binary engine over the current sign codes (built on first use, rebuilt after an edit)."""
        engine = self._binary
        if engine is None:
            assert self.hamming is not None
            codes = self._codes if self.hamming is self.codec else self._hamming_codes
            engine = self._binary = BinaryEngine(self.hamming, codes, self._offsets, self.binary_index, self.seed)
        return engine

    def _binary_search(self, q: MultiVectorEmbeddings, k: int, allowed: NDArray[np.bool_] | None,
                       params: BinaryParams) -> tuple[Any, Any]:
        """Table MaxSim over the sign codes; with codes of another codec its best ``ndocs`` are re-scored."""
        engine = self.binary_engine()
        if self.hamming is self.codec:
            return engine.search(q.vectors, q.offsets, k, params, allowed)
        _, rows = engine.search(q.vectors, q.offsets, max(k, params.ndocs), params, allowed)
        scores, labels = np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        for qi in range(len(q)):  # one exact MaxSim over the stored codes per query
            scores[qi], labels[qi] = self._score_rows(q.select([qi]), np.sort(rows[qi][rows[qi] >= 0]), k)
        return scores, labels

def _no_match_for_empty(q: MultiVectorEmbeddings, scores: NDArray[np.float32], labels: NDArray[np.int64]) -> None:
    """A query with no vectors matches nothing: its row is all padding, whatever the first stage.

    Exhaustive MaxSim would give every document the empty sum 0, while the candidate first
    stages find no candidate for it; one rule keeps every first stage (and rerank) alike.
    """
    empty = q.lengths == 0
    if empty.any():
        scores[empty], labels[empty] = -np.inf, -1

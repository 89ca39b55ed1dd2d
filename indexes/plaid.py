"""PLAID-style search over ``KMeans<K>r<b>`` codes: the default first stage of a k-means
:class:`~indexes.multivector.MultiVectorIndex`.

One query batch goes through these stages, each vectorised over every candidate (the loops
are Numba kernels in :mod:`indexes._plaid_kernels`):

1. **Probe.** One matmul gives every query vector's score against every centroid,
   ``S = centroids @ Q.T`` (K x T_q, shared by the batch). Each query vector's ``nprobe`` best
   centroids select inverted lists (centroid -> the documents holding it); their union, minus
   documents outside a ``subset``, is the query's candidate set.
2. **Centroid interaction with pruning.** Each candidate's approximate MaxSim is read from
   ``S`` alone, over the distinct centroids its vectors use. With
   ``centroid_score_threshold = t``, centroids whose best score over the query's vectors is
   below ``t`` are skipped (PLAID's centroid pruning). The best ``ndocs`` candidates go on.
3. **Centroid interaction without pruning** over those (only when pruning is on): the best
   ``max(k, ndocs // 4)`` go on. Without pruning, stage 2 keeps that many directly.
4. **Exact MaxSim.** Their exact MaxSim, top ``k``. By default nothing is decoded: a stored
   vector's inner product with a query vector is its centroid's stage 1 score plus one table
   entry per residual byte (tables of ``residual bytes x 256 x query vectors`` per query, one
   batched matmul), summed 16 query vectors at a time. ``exact_stage = "decode"`` decodes the
   documents instead (once per batch) and scores them with a BLAS product; both give the same
   scores.

With ``nprobe = K``, no threshold and ``ndocs // 4`` at least the number of documents, the
result equals exhaustive MaxSim over the decoded codes.

The engine's arrays are derived from the stored codes (centroid id of each vector) in one
O(T + K) pass, so nothing beyond the codes is saved: a loaded or edited index rebuilds them
on its next search.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval.compress.kmeans import PatchKMeans
from retrieval.errors import ConfigError
from retrieval.scores import top_k
from retrieval.types import _ranges

__all__ = ["PlaidEngine", "PlaidParams", "updated_params"]


@dataclass(frozen=True)
class PlaidParams:
    """Search settings of the PLAID engine (per index, overridable per ``search`` call).

    Parameters
    ----------
    nprobe : int
        Centroids probed per query vector in stage 1.
    centroid_score_threshold : float or None
        Stage 2 skips centroids whose best score over the query's vectors is below it;
        ``None`` keeps every centroid (exact centroid-only MaxSim).
    ndocs : int
        Candidates per query kept by the pruned centroid interaction; ``max(k, ndocs // 4)``
        of them are decoded and scored exactly (PLAID's ratio).
    """

    # Picked by the sweep in docs/BENCHMARKS.md section 4 (1M synthetic token vectors, k=10).
    nprobe: int = 1
    centroid_score_threshold: float | None = 0.3
    ndocs: int = 256

    def __post_init__(self) -> None:
        for name in ("nprobe", "ndocs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive int; got {value!r}.")
        t = self.centroid_score_threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t)):
            raise ConfigError(f"centroid_score_threshold must be a finite number or None; got {t!r}.")

    def budget(self, k: int) -> tuple[int, int]:
        """(documents kept by the pruned centroid interaction, documents scored exactly) for top-``k``."""
        ndocs = max(self.ndocs, k)
        return ndocs, max(k, ndocs // 4)

    def updated(self, params: PlaidParams | Mapping[str, Any] | None) -> PlaidParams:
        """These settings with ``params`` (a PlaidParams, or a dict of some of its fields) applied."""
        return updated_params(self, params, "the PLAID engine")


def updated_params(current: Any, params: Any, engine: str) -> Any:
    """The frozen dataclass ``current`` with ``params`` applied: an instance of its class replaces
    it, a dict replaces some of its fields, None keeps it; anything else is a clear error."""
    if params is None:
        return current
    if isinstance(params, type(current)):
        return params
    if not isinstance(params, Mapping):
        raise ConfigError(f"params must be a dict or {type(current).__name__}; got {type(params).__name__}.")
    known = {f.name for f in fields(current)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"unknown search params {unknown}; {engine} accepts {sorted(known)}.")
    return replace(current, **params)


class PlaidEngine:
    """Inverted lists and per-document centroid ids over one index's codes, and the 3-stage search.

    Parameters
    ----------
    codec : PatchKMeans
        The trained k-means codec the codes were made with.
    codes : array, shape (T, code_size), uint8
        Every stored vector's code (may be memory-mapped).
    offsets : array, shape (n + 1,), int64
        Document i owns ``codes[offsets[i]:offsets[i + 1]]``.

    Attributes
    ----------
    doc_offsets, doc_cents : CSR over documents of their distinct centroid ids (uint16).
    list_offsets, list_docs : CSR over centroids of the documents holding them (int32, ascending).
    """

    def __init__(self, codec: PatchKMeans, codes: NDArray[np.uint8], offsets: NDArray[np.int64]) -> None:
        from indexes import _plaid_kernels as kernels

        if not codec.is_trained or codec.centroids is None:
            raise ConfigError("the PLAID engine needs a trained KMeans codec.")
        self._k = kernels
        self.codec = codec
        self.codes = np.asarray(codes)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.n_docs = self.offsets.shape[0] - 1
        self.centroids = np.ascontiguousarray(codec.centroids, dtype=np.float32)
        self.table = codec.byte_table() if codec.residual_bits else np.zeros((0, 256, 1), np.float32)
        cids = codec.ids(self.codes).astype(np.uint16) if self.codes.shape[0] else np.zeros(0, np.uint16)
        self.doc_offsets, self.doc_cents, self.list_offsets, self.list_docs = kernels.build_lists(
            cids, self.offsets, codec.k)
        self.lengths = np.diff(self.offsets)
        #: how stage 4 scores: "tables" (no decoding, the default) or "decode" (decode, then a BLAS MaxSim)
        self.exact_stage = "tables"

    def memory_bytes(self) -> int:
        """Bytes of the derived arrays (the codes themselves are counted by the index)."""
        return int(self.doc_offsets.nbytes + self.doc_cents.nbytes + self.list_offsets.nbytes
                   + self.list_docs.nbytes + self.lengths.nbytes)

    # ------------------------------------------------------------------ search
    def search(
        self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], k: int, params: PlaidParams,
        allowed: NDArray[np.bool_] | None = None, timings: dict[str, float] | None = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-``k`` (scores, rows) of each query of a CSR batch; ``-inf`` / ``-1`` pad missing hits.

        ``allowed`` (n,) bool restricts the documents in every stage; when it admits no more
        documents than are scored exactly (``max(k, ndocs // 4)``), stages 1-3 are skipped and
        those documents are scored exactly.
        ``timings``, when given, receives the seconds spent in each stage.
        """
        clock = _Clock(timings)
        qv = np.ascontiguousarray(qv, dtype=np.float32)
        q_offsets = np.ascontiguousarray(q_offsets, dtype=np.int64)
        nq = q_offsets.shape[0] - 1
        ndocs, n_exact = params.budget(k)
        st = self.centroids @ qv.T  # (K, T_q): stage 1's matmul, reused by stages 2-4
        if allowed is not None and int(np.count_nonzero(allowed)) <= n_exact:
            docs = np.flatnonzero(allowed & (self.lengths > 0)).astype(np.int32)
            return self._exact(qv, q_offsets, st, np.arange(nq + 1, dtype=np.int64) * docs.size, np.tile(docs, nq),
                               k, clock)
        clock.lap("stage1_matmul")
        with _threads(st.size >= _PARALLEL_WORK):
            probed = self._k.probe(st, min(params.nprobe, self.codec.k))
        mask = np.zeros(0, np.bool_) if allowed is None else np.ascontiguousarray(allowed, dtype=np.bool_)
        with _threads(nq > 1):
            cand_offsets, cand_docs = self._k.doc_candidates(probed, q_offsets, self.list_offsets, self.list_docs,
                                                             mask, self.n_docs)
        clock.lap("stage1_candidates")
        keep = self._kept_centroids(st, q_offsets, params.centroid_score_threshold)
        with _threads(cand_docs.size >= _PARALLEL_DOCS):
            approx = self._k.centroid_interaction(st, q_offsets, cand_offsets, cand_docs, self.doc_offsets,
                                                  self.doc_cents, keep)
        pruned = params.centroid_score_threshold is not None
        with _threads(nq > 1):
            sel_offsets, sel_docs = self._k.select_top(cand_offsets, cand_docs, approx, ndocs if pruned else n_exact)
        clock.lap("stage2_pruned")
        if pruned and n_exact < ndocs:
            # PLAID's third stage: the survivors again, now with every centroid; the best n_exact go on.
            keep = np.ones((nq, self.codec.k), dtype=np.bool_)
            with _threads(sel_docs.size >= _PARALLEL_DOCS):
                approx = self._k.centroid_interaction(st, q_offsets, sel_offsets, sel_docs, self.doc_offsets,
                                                      self.doc_cents, keep)
            with _threads(nq > 1):
                sel_offsets, sel_docs = self._k.select_top(sel_offsets, sel_docs, approx, n_exact)
            clock.lap("stage3_full_interaction")
        return self._exact(qv, q_offsets, st, sel_offsets, sel_docs, k, clock)

    def centroid_scores(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], docs: NDArray[np.int32],
                        threshold: float | None) -> NDArray[np.float32]:
        """Stage 2's approximate MaxSim of every query against every document of ``docs`` (nq, len(docs))."""
        qv = np.ascontiguousarray(qv, dtype=np.float32)
        q_offsets = np.ascontiguousarray(q_offsets, dtype=np.int64)
        nq = q_offsets.shape[0] - 1
        docs = np.ascontiguousarray(docs, dtype=np.int32)
        st = self.centroids @ qv.T
        keep = self._kept_centroids(st, q_offsets, threshold)
        approx = self._k.centroid_interaction(st, q_offsets, np.arange(nq + 1, dtype=np.int64) * docs.size,
                                              np.tile(docs, nq), self.doc_offsets, self.doc_cents, keep)
        return np.asarray(approx, dtype=np.float32).reshape(nq, docs.size)

    def candidates(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], nprobe: int,
                   allowed: NDArray[np.bool_] | None = None) -> list[NDArray[np.int32]]:
        """Stage 1's candidate documents of each query (ascending rows)."""
        st = self.centroids @ np.ascontiguousarray(qv, dtype=np.float32).T
        probed = self._k.probe(st, min(nprobe, self.codec.k))
        mask = np.zeros(0, np.bool_) if allowed is None else np.ascontiguousarray(allowed, dtype=np.bool_)
        offs, docs = self._k.doc_candidates(probed, np.ascontiguousarray(q_offsets, dtype=np.int64),
                                            self.list_offsets, self.list_docs, mask, self.n_docs)
        return [docs[offs[q] : offs[q + 1]] for q in range(offs.shape[0] - 1)]

    # ------------------------------------------------------------------ internals
    def _exact_tables(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], st: NDArray[np.float32],
                      sel_offsets: NDArray[np.int64], sel_docs: NDArray[np.int32]) -> NDArray[np.float32]:
        """Exact MaxSim of each selected (query, document) pair without decoding: a vector's inner
        product is its centroid's stage 1 score plus one table entry per residual byte
        (:func:`indexes._plaid_kernels.lut_exact_maxsim`). Per query the residual tables are
        ``residual bytes x 256 x W`` floats (3 MB for 384-d, 2 bits, 32 query vectors), built by
        one batched matmul; queries go through in groups that keep them under 64 MB."""
        from indexes._binary_kernels import table_width

        nq = q_offsets.shape[0] - 1
        lengths = np.diff(q_offsets)
        w = table_width(q_offsets)
        n_res, per_byte = self.table.shape[0], self.table.shape[2]
        per_query = n_res * 256 * w
        group = max(1, (64 << 20) // max(1, 4 * per_query))
        most_pairs = int(np.diff(sel_offsets).max(initial=0)) * min(group, nq)
        r_size = min(group, nq) * per_query
        flat = np.empty(r_size + most_pairs * w, dtype=np.float32)  # residual tables, then scratch rows
        flat[r_size:] = 0.0  # lanes past a query's length are read (never summed): keep them finite
        st = np.ascontiguousarray(st, dtype=np.float32)
        out = np.empty(sel_docs.shape[0], dtype=np.float32)
        for g0 in range(0, nq, group):
            g1 = min(nq, g0 + group)
            r_base = np.arange(g1 - g0, dtype=np.int64) * per_query
            for q in range(g0, g1):
                q0, lq = q_offsets[q], int(lengths[q])
                block = flat[(q - g0) * per_query : (q - g0 + 1) * per_query].reshape(n_res, 256, w)
                if n_res and lq:
                    qpad = np.zeros((lq, n_res * per_byte), dtype=np.float32)
                    qpad[:, : qv.shape[1]] = qv[q0 : q0 + lq]
                    block[:, :, :lq] = np.matmul(self.table, qpad.reshape(lq, n_res, per_byte).transpose(1, 2, 0))
                    block[:, :, lq:] = 0.0
            c0, c1 = sel_offsets[g0], sel_offsets[g1]
            with _threads(c1 - c0 >= 256):  # as decoding: one query's 64 documents stay on one thread
                out[c0:c1] = self._k.lut_exact_maxsim(
                    flat, w, st, r_base, r_size, q_offsets[g0 : g1 + 1], sel_offsets[g0 : g1 + 1] - c0,
                    np.ascontiguousarray(sel_docs[c0:c1]), self.codes, self.offsets, self.codec.id_bytes)
        return out

    def _kept_centroids(self, st: NDArray[np.float32], q_offsets: NDArray[np.int64],
                        threshold: float | None) -> NDArray[np.bool_]:
        """(nq, K) True where a centroid takes part in query q's centroid interaction."""
        nq = q_offsets.shape[0] - 1
        if threshold is None:
            return np.ones((nq, self.codec.k), dtype=np.bool_)
        keep = np.zeros((nq, self.codec.k), dtype=np.bool_)
        live = np.flatnonzero(np.diff(q_offsets) > 0)
        if live.size:  # empty queries own no column, so the live queries' segments tile st's columns
            best = np.maximum.reduceat(st, q_offsets[live], axis=1)  # (K, live)
            keep[live] = (best >= threshold).T
        return keep

    def _exact(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], st: NDArray[np.float32],
               sel_offsets: NDArray[np.int64], sel_docs: NDArray[np.int32], k: int,
               clock: _Clock) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Stage 4: exact MaxSim of the selected documents, top ``k``: from tables (no vector decoded,
        :meth:`_exact_tables`) or, with ``exact_stage="decode"``, by decoding them once per batch."""
        nq = q_offsets.shape[0] - 1
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        labels = np.full((nq, k), -1, dtype=np.int64)
        if self.exact_stage == "tables":
            pair = self._exact_tables(qv, q_offsets, st, sel_offsets, sel_docs)
            clock.lap("stage4_tables")
            for q in range(nq):
                a, b = sel_offsets[q], sel_offsets[q + 1]
                if b > a:
                    scores[q], labels[q] = _best(pair[a:b], sel_docs[a:b], k)
            clock.lap("stage4_maxsim")
            return scores, labels
        union = np.unique(sel_docs).astype(np.int32)
        with _threads(union.size >= 256):
            vectors, vec_offsets = self._k.decode_docs(self.codes, self.offsets, union, self.centroids, self.table,
                                                       self.codec.id_bytes)
        clock.lap("stage4_decode")
        for q in range(nq):  # one BLAS product per query over its ndocs documents' vectors
            docs = sel_docs[sel_offsets[q] : sel_offsets[q + 1]]
            q0, q1 = q_offsets[q], q_offsets[q + 1]
            if docs.size == 0 or q1 == q0:
                continue
            if docs.size == union.size:  # every selected document (one query, or identical selections)
                block, lengths = vectors, np.diff(vec_offsets)
            else:
                pos = np.searchsorted(union, docs)
                block = vectors[_ranges(vec_offsets[pos], vec_offsets[pos + 1])]
                lengths = vec_offsets[pos + 1] - vec_offsets[pos]
            sims = block @ qv[q0:q1].T  # (vectors of the selected documents, query vectors)
            starts = np.cumsum(lengths) - lengths  # candidates always hold vectors: no empty segment
            exact = np.maximum.reduceat(sims, starts, axis=0).sum(axis=1, dtype=np.float32)
            scores[q], labels[q] = _best(exact, docs, k)
        clock.lap("stage4_maxsim")
        return scores, labels


def _best(exact: NDArray[np.float32], docs: NDArray[np.int32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The top ``k`` of one query's exact scores of ``docs``: (scores, rows), ``-inf`` / ``-1`` padded."""
    s, local = top_k(exact[None, :], k)
    return s[0], np.where(local[0] >= 0, docs[np.maximum(local[0], 0)], -1)


# Below these sizes a kernel runs on the calling thread alone: waking the pool costs more than it
# saves, and far more on a machine whose cores are shared (a parallel region waits for its slowest thread).
_PARALLEL_WORK = 1 << 20  # centroid scores scanned by the probe
_PARALLEL_DOCS = 2048  # (query, document) pairs in a centroid interaction


@contextmanager
def _threads(parallel: bool) -> Iterator[None]:
    """Run the enclosed Numba kernels on one thread unless ``parallel`` (Numba's setting is per thread)."""
    if parallel:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


class _Clock:
    """Adds the seconds since the previous lap to ``timings[name]`` (does nothing without a dict)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
            self.last = now

"""PLAID-style search over ``KMeans<K>r<b>`` codes: the default first stage of a k-means
:class:`~indexes.multivector.MultiVectorIndex`.

One query batch goes through these stages, each vectorised over every candidate (the loops
are Numba kernels in :mod:`indexes._plaid_kernels`, their inner steps vector code in
:mod:`indexes._plaid_simd`; every stage runs on Numba's thread pool):

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
   entry per residual byte, or per half-byte when a byte holds an even number of dimensions
   (tables of ``residual bytes x 256 x query vectors`` or ``2 x residual bytes x 16 x query
   vectors`` per query, one batched matmul), summed 8 query vectors at a time. ``exact_stage
   = "decode"`` decodes the
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
from typing import Any, NamedTuple

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
    table, nibble_table : the codec's residual byte table and its half-byte form (None when a
        byte holds one dimension); stage 4 builds each query's tables from the latter when it exists.
    scales : (T,) float32 inverse decoded length of every vector when the codec decodes to unit
        length (``codec.unit``), else empty; stage 4 multiplies each vector's scores by it.
    """

    def __init__(self, codec: PatchKMeans, codes: NDArray[np.uint8], offsets: NDArray[np.int64]) -> None:
        from indexes import _plaid_kernels as kernels

        if not codec.is_trained or codec.centroids is None:
            raise ConfigError("the PLAID engine needs a trained KMeans codec.")
        self._k = kernels
        self.codec = codec
        self.codes = np.ascontiguousarray(codes)  # a view of C-ordered (memory-mapped) codes, not a copy
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.n_docs = self.offsets.shape[0] - 1
        self.centroids = np.ascontiguousarray(codec.centroids, dtype=np.float32)
        self.table = codec.byte_table() if codec.residual_bits else np.zeros((0, 256, 1), np.float32)
        self.nibble_table = _nibble_table(self.table)
        #: each vector's inverse decoded length when the codec decodes to unit length (else empty)
        self.scales = (kernels.inverse_lengths(self.codes, self.centroids, self.table, codec.id_bytes)
                       if codec.unit and self.codes.shape[0] else np.zeros(0, np.float32))
        cids = codec.ids(self.codes).astype(np.uint16) if self.codes.shape[0] else np.zeros(0, np.uint16)
        self.doc_offsets, self.doc_cents, self.list_offsets, self.list_docs = kernels.build_lists(
            cids, self.offsets, codec.k)
        self.lengths = np.diff(self.offsets)
        #: how stage 4 scores: "tables" (no decoding, the default) or "decode" (decode, then a BLAS MaxSim)
        self.exact_stage = "tables"

    def memory_bytes(self) -> int:
        """Bytes of the derived arrays (the codes themselves are counted by the index)."""
        return int(self.doc_offsets.nbytes + self.doc_cents.nbytes + self.list_offsets.nbytes
                   + self.list_docs.nbytes + self.lengths.nbytes + self.scales.nbytes)

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

        A batch whose stage-1 scores would exceed :data:`SCORES_BYTES` goes through in groups of
        queries that stay under it (at least one query each): the scores are read at random by
        every later stage, and a smaller block stays in cache and is not faulted in anew.
        """
        clock = _Clock(timings)
        qv = np.ascontiguousarray(qv, dtype=np.float32)
        q_offsets = np.ascontiguousarray(q_offsets, dtype=np.int64)
        nq = q_offsets.shape[0] - 1
        per_vector = 4 * self.centroids.shape[0]
        if nq > 1 and per_vector * qv.shape[0] > SCORES_BYTES:
            scores = np.full((nq, k), -np.inf, dtype=np.float32)
            labels = np.full((nq, k), -1, dtype=np.int64)
            q0 = 0
            while q0 < nq:  # the most queries whose vectors' scores fit, at least one
                fits = np.searchsorted(q_offsets, q_offsets[q0] + SCORES_BYTES // per_vector, side="right") - 1
                q1 = min(nq, max(q0 + 1, int(fits)))
                part = q_offsets[q0 : q1 + 1]
                scores[q0:q1], labels[q0:q1] = self._search(qv[part[0] : part[-1]], part - part[0], k, params,
                                                            allowed, clock)
                q0 = q1
            return scores, labels
        return self._search(qv, q_offsets, k, params, allowed, clock)

    def _search(
        self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], k: int, params: PlaidParams,
        allowed: NDArray[np.bool_] | None, clock: _Clock,
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        nq = q_offsets.shape[0] - 1
        ndocs, n_exact = params.budget(k)
        s1 = self._centroid_scores(qv, q_offsets)  # stage 1's matmul, reused by stages 2-4
        if allowed is not None and int(np.count_nonzero(allowed)) <= n_exact:
            docs = np.flatnonzero(allowed & (self.lengths > 0)).astype(np.int32)
            return self._exact(qv, q_offsets, s1, np.arange(nq + 1, dtype=np.int64) * docs.size,
                               np.tile(docs, nq), k, clock)
        clock.lap("stage1_matmul")
        threshold = params.centroid_score_threshold
        pruned = threshold is not None
        with _threads(nq > 1):  # one pass over the scores: each vector's best centroids, and the kept ones
            probed, keep = self._k.probe_keep(s1.st, q_offsets, min(params.nprobe, self.codec.k),
                                              0.0 if threshold is None else threshold, pruned)
        mask = np.zeros(0, np.bool_) if allowed is None else np.ascontiguousarray(allowed, dtype=np.bool_)
        with _threads(nq > 1):
            cand_offsets, cand_docs = self._k.doc_candidates(probed, q_offsets, self.list_offsets, self.list_docs,
                                                             mask, self.n_docs)
        clock.lap("stage1_candidates")
        with _threads(cand_docs.size >= _PARALLEL_DOCS):
            approx = self._interaction(s1, q_offsets, cand_offsets, cand_docs, keep)
        with _threads(nq > 1):
            sel_offsets, sel_docs = self._k.select_top(cand_offsets, cand_docs, approx, ndocs if pruned else n_exact)
        clock.lap("stage2_pruned")
        if pruned and n_exact < ndocs:
            # PLAID's third stage: the survivors again, now with every centroid; the best n_exact go on.
            keep = np.ones((nq, self.codec.k), dtype=np.bool_)
            with _threads(sel_docs.size >= _PARALLEL_DOCS):
                approx = self._interaction(s1, q_offsets, sel_offsets, sel_docs, keep)
            with _threads(nq > 1):
                sel_offsets, sel_docs = self._k.select_top(sel_offsets, sel_docs, approx, n_exact)
            clock.lap("stage3_full_interaction")
        return self._exact(qv, q_offsets, s1, sel_offsets, sel_docs, k, clock)

    def centroid_scores(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], docs: NDArray[np.int32],
                        threshold: float | None) -> NDArray[np.float32]:
        """Stage 2's approximate MaxSim of every query against every document of ``docs`` (nq, len(docs))."""
        qv = np.ascontiguousarray(qv, dtype=np.float32)
        q_offsets = np.ascontiguousarray(q_offsets, dtype=np.int64)
        nq = q_offsets.shape[0] - 1
        docs = np.ascontiguousarray(docs, dtype=np.int32)
        s1 = self._centroid_scores(qv, q_offsets)
        keep = self._kept_centroids(s1.st, q_offsets, threshold)
        approx = self._interaction(s1, q_offsets, np.arange(nq + 1, dtype=np.int64) * docs.size,
                                   np.tile(docs, nq), keep)
        return np.asarray(approx, dtype=np.float32).reshape(nq, docs.size)

    def candidates(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], nprobe: int,
                   allowed: NDArray[np.bool_] | None = None) -> list[NDArray[np.int32]]:
        """Stage 1's candidate documents of each query (ascending rows)."""
        q_offsets = np.ascontiguousarray(q_offsets, dtype=np.int64)
        st = self._centroid_scores(np.ascontiguousarray(qv, dtype=np.float32), q_offsets).st
        probed, _ = self._k.probe_keep(st, q_offsets, min(nprobe, self.codec.k), 0.0, False)
        mask = np.zeros(0, np.bool_) if allowed is None else np.ascontiguousarray(allowed, dtype=np.bool_)
        offs, docs = self._k.doc_candidates(probed, q_offsets, self.list_offsets, self.list_docs, mask, self.n_docs)
        return [docs[offs[q] : offs[q + 1]] for q in range(offs.shape[0] - 1)]

    # ------------------------------------------------------------------ internals
    def _centroid_scores(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64]) -> _Stage1:
        """Stage 1's centroid scores of the batch (:func:`indexes._plaid_simd.centroid_scores`, on
        Numba's threads like every later stage)."""
        from indexes._plaid_simd import centroid_scores, width

        k, d = self.centroids.shape
        ld = width(np.array([0, qv.shape[0]]))  # row stride: the batch's vectors rounded up to whole lanes
        qt = np.zeros((d, ld), dtype=np.float32)
        qt[:, : qv.shape[0]] = qv.T
        flat = np.empty(k * ld + width(q_offsets), dtype=np.float32)
        flat[k * ld :] = 0.0
        with _threads(k * d * ld >= _PARALLEL_FLOPS):
            centroid_scores(self.centroids.reshape(-1), d, qt.reshape(-1), ld, flat)
        return _Stage1(flat[: k * ld].reshape(k, ld), flat)

    def _interaction(self, s1: _Stage1, q_offsets: NDArray[np.int64], cand_offsets: NDArray[np.int64],
                     cand_docs: NDArray[np.int32], keep: NDArray[np.bool_]) -> NDArray[np.float32]:
        """Stages 2 and 3: the centroid interaction of each (query, candidate) pair
        (:func:`indexes._plaid_kernels.centroid_interaction`)."""
        from indexes._plaid_simd import width

        return self._k.centroid_interaction(s1.flat, s1.st.shape[1], width(q_offsets), q_offsets, cand_offsets, cand_docs,
                                            self.doc_offsets, self.doc_cents, keep.reshape(-1))

    def _exact_tables(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], s1: _Stage1,
                      sel_offsets: NDArray[np.int64], sel_docs: NDArray[np.int32]) -> NDArray[np.float32]:
        """Exact MaxSim of each selected (query, document) pair without decoding: a vector's inner
        product is its centroid's stage 1 score plus one table entry per residual byte
        (:func:`indexes._plaid_kernels.lut_exact_maxsim`). Per query the residual tables are
        ``residual bytes x 256 x W`` floats (2.4 MB for 384-d, 2 bits, 24 query vectors) or, when
        a byte holds an even number of dimensions, two half-byte tables of 16 values per byte (a
        16th of that, so that they stay in the core's cache), built by one batched matmul;
        queries go through in groups that keep them under 64 MB."""
        from indexes._plaid_simd import width

        nq = q_offsets.shape[0] - 1
        lengths = np.diff(q_offsets)
        w = width(q_offsets)
        nibbles = self.nibble_table is not None
        table = self.table if self.nibble_table is None else self.nibble_table
        n_res, per_byte = self.table.shape[0], self.table.shape[2]
        n_rows, values, per_row = table.shape
        per_query = n_rows * values * w
        group = max(1, (64 << 20) // max(1, 4 * per_query))
        flat = np.empty(min(group, nq) * per_query, dtype=np.float32)  # one group's residual tables
        codes = self.codes.reshape(-1)  # a view: the codes are C-ordered
        out = np.empty(sel_docs.shape[0], dtype=np.float32)
        for g0 in range(0, nq, group):
            g1 = min(nq, g0 + group)
            r_base = np.arange(g1 - g0, dtype=np.int64) * per_query
            for q in range(g0, g1):
                q0, lq = q_offsets[q], int(lengths[q])
                block = flat[(q - g0) * per_query : (q - g0 + 1) * per_query].reshape(n_rows, values, w)
                if n_res and lq:  # lanes past the query's length multiply zero rows: they stay finite
                    qpad = np.zeros((w, n_res * per_byte), dtype=np.float32)
                    qpad[:lq, : qv.shape[1]] = qv[q0 : q0 + lq]
                    np.matmul(table, qpad.reshape(w, n_rows, per_row).transpose(1, 2, 0), out=block)
            c0, c1 = sel_offsets[g0], sel_offsets[g1]
            with _threads(c1 - c0 >= _PARALLEL_EXACT):
                out[c0:c1] = self._k.lut_exact_maxsim(
                    flat, w, s1.flat, s1.st.shape[1], r_base, q_offsets[g0 : g1 + 1], sel_offsets[g0 : g1 + 1] - c0,
                    np.ascontiguousarray(sel_docs[c0:c1]), codes, self.codes.shape[1], self.offsets,
                    self.codec.id_bytes, nibbles, self.scales)
        return out

    def _kept_centroids(self, st: NDArray[np.float32], q_offsets: NDArray[np.int64],
                        threshold: float | None) -> NDArray[np.bool_]:
        """(nq, K) True where a centroid takes part in query q's centroid interaction."""
        _, keep = self._k.probe_keep(st, q_offsets, 1, 0.0 if threshold is None else threshold, threshold is not None)
        return keep

    def _exact(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], s1: _Stage1,
               sel_offsets: NDArray[np.int64], sel_docs: NDArray[np.int32], k: int,
               clock: _Clock) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Stage 4: exact MaxSim of the selected documents, top ``k``: from tables (no vector decoded,
        :meth:`_exact_tables`) or, with ``exact_stage="decode"``, by decoding them once per batch."""
        nq = q_offsets.shape[0] - 1
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        labels = np.full((nq, k), -1, dtype=np.int64)
        if self.exact_stage == "tables":
            pair = self._exact_tables(qv, q_offsets, s1, sel_offsets, sel_docs)
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
                                                       self.codec.id_bytes, self.scales)
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


def _nibble_table(table: NDArray[np.float32]) -> NDArray[np.float32] | None:
    """The byte table (residual bytes, 256, dims per byte) as half-byte tables (2 x residual bytes, 16,
    dims per half): the high half of byte ``b`` at row ``2b``, the low half at ``2b + 1``. None when a
    byte holds one dimension (8-bit residuals) or its halves do not each decode their own dimensions."""
    n_res, _, per_byte = table.shape
    if n_res == 0 or per_byte % 2:
        return None
    half = per_byte // 2
    values = np.arange(256)
    high, low = table[:, (values >> 4) << 4, :half], table[:, values & 15, half:]
    if not (np.array_equal(table[:, :, :half], high) and np.array_equal(table[:, :, half:], low)):
        return None  # the bits of a dimension are not where MSB-first packing puts them
    out = np.stack([table[:, ::16, :half], table[:, :16, half:]], axis=1)  # (n_res, 2, 16, half)
    return np.ascontiguousarray(out.reshape(2 * n_res, 16, half), dtype=np.float32)


class _Stage1(NamedTuple):
    """Stage 1's centroid scores, read by every later stage: ``st`` (K, ld) holds query vector
    i's score against centroid c at ``[c, i]`` (columns past the batch's vectors are zero) and is
    a view of ``flat``, which has a lane width of padding after it (the kernels read whole lane
    widths from a row)."""

    st: NDArray[np.float32]
    flat: NDArray[np.float32]


def _best(exact: NDArray[np.float32], docs: NDArray[np.int32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The top ``k`` of one query's exact scores of ``docs``: (scores, rows), ``-inf`` / ``-1`` padded."""
    s, local = top_k(exact[None, :], k)
    return s[0], np.where(local[0] >= 0, docs[np.maximum(local[0], 0)], -1)


# Below these sizes a kernel runs on the calling thread alone: waking the pool costs more than it saves.
# Every stage runs on Numba's pool, stage 1's matmul included: when it was a BLAS call, OpenBLAS's
# workers kept spinning after it and the next parallel region waited for the cores they held, so
# batch-1 searches had to stay on one thread (docs/BENCHMARKS.md section 4).
_PARALLEL_DOCS = 256  # (query, document) pairs in a centroid interaction
_PARALLEL_EXACT = 32  # (query, document) pairs scored exactly from tables
_PARALLEL_FLOPS = 1 << 21  # multiply-adds of stage 1's matmul
#: Stage-1 scores of one pass through the stages at most (K x query vectors x 4 bytes).
SCORES_BYTES = 16 << 20


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

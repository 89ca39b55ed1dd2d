"""K-means quantization of token / patch vectors into 1- or 2-byte centroid ids, with optional residual bits."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval._native_log import native_stderr_to_log
from retrieval._optional import require
from retrieval.compress.base import Codec
from retrieval.errors import ConfigError, IndexFormatError, ShapeError

__all__ = ["PatchKMeans", "corpus_k"]

logger = logging.getLogger(__name__)

_ASSIGN_CHUNK = 65536
MAX_K = 65536  # 2-byte centroid ids
#: From this many centroids on, k-means trains in two levels and vectors are assigned through
#: cells of centroids (see :func:`_two_level_kmeans`, :class:`_CellAssigner`).
TWO_LEVEL_K = 8192
#: Cells of centroids probed per vector when assigning (out of ~sqrt(K), see :class:`_CellAssigner`).
ASSIGN_NPROBE = 16
#: Lloyd iterations over all centroids after the two levels (see :func:`_refine`).
REFINE_ITERS = 8
#: Training vectors whose lengths all lie within this of 1 are unit-length data (see ``PatchKMeans.unit``).
UNIT_TOLERANCE = 1e-2  # float16-stored unit vectors are within about 1e-3


def corpus_k(n_vectors: int) -> int:
    """Centroids for a corpus of ``n_vectors`` token vectors: ``2**floor(log2(16 * sqrt(n)))``.

    PLAID's rule (about 16 * sqrt(T) centroids, rounded down to a power of two), capped at
    65,536 (2-byte ids) and at the largest power of two not above ``n`` (k-means needs at least
    one vector per centroid). 1M vectors: 8,192; 10M: 32,768; 100M: 65,536.

    Examples
    --------
    >>> corpus_k(1_000_000), corpus_k(10_000_000), corpus_k(10**9), corpus_k(100)
    (8192, 32768, 65536, 64)
    """
    if isinstance(n_vectors, bool) or not isinstance(n_vectors, (int, np.integer)) or n_vectors < 2:
        raise ConfigError(f"sizing k-means to the corpus needs at least 2 vectors; got {n_vectors!r}.")
    k = 1 << int(np.floor(np.log2(16 * np.sqrt(float(n_vectors)))))
    return int(min(k, MAX_K, 1 << int(np.floor(np.log2(n_vectors)))))


class PatchKMeans(Codec):
    """Nearest-centroid id per vector, optionally plus a b-bit residual per dimension.

    The codebook is FAISS k-means (spherical: centroids are re-normalised, suited to the
    unit-length token vectors of ColBERT / ColPali models). Each vector is stored as the id
    of its nearest centroid by inner product: one byte when ``k <= 256``, two bytes
    (little-endian) up to 65,536. With ``residual_bits = b > 0`` the residual
    ``x - c[id]`` is also kept, each dimension quantized to ``2**b`` levels with cut-offs at
    that dimension's residual quantiles (ColBERTv2 / PLAID use the same idea with cut-offs
    shared by all dimensions). A vector then costs ``id_bytes + ceil(d * b / 8)`` bytes.

    When the training vectors are unit length (as token vectors of these models are) and codes
    carry residuals, ``unit`` is set and decoding scales each vector back to unit length, as
    ColBERTv2 does: the codes are the same, the reconstruction is closer (on the 1M synthetic
    token set of docs/BENCHMARKS.md section 4, the exhaustive recall@10 of ``KMeans4096r4``
    codes rises from 0.948 to 0.963, of ``r2`` from 0.891 to 0.920). It is saved with the
    codec; indexes saved before it existed decode as they always did.

    Parameters
    ----------
    dim : int
        Vector dimension ``d``.
    k : int or None
        Number of centroids ``K`` (2 ... 65,536). The HPC-ColPali paper uses 128 / 256 / 512.
        ``None`` (spec ``"KMeans"`` / ``"KMeansr<b>"``) sizes it to the vectors ``fit`` is given:
        ``K = corpus_k(T)``, PLAID's ``~16 * sqrt(T)`` rounded down to a power of two, at most
        65,536 (see :func:`corpus_k`). Until then the codec counts 2-byte ids; once fitted, ``k``
        and ``spec`` give the K chosen (a saved index records it), and refitting sizes it again.
    residual_bits : int
        Bits per dimension for the residual (0, 1, 2, 4 or 8). ColBERTv2 calls it ``nbits``.
    niter : int
        K-means iterations. From ``K = TWO_LEVEL_K`` (8,192) on, flat k-means costs
        ``sample x K x d`` per iteration (66 TFLOP in all for K=16,384, d=384, 20 iterations), so
        it trains in two levels instead (``~sqrt(K)`` cells, each clustered into its share of
        K, ``niter`` iterations each), then :data:`REFINE_ITERS` Lloyd passes over all K, and
        assigns vectors through cells of centroids (:data:`ASSIGN_NPROBE` of ``~sqrt(K)``
        probed: 97% of vectors get their exact nearest centroid on the 1M synthetic set, the
        rest a near one). On that set (K=4,096, forced) the codes' ceiling was unchanged
        (recall@10 0.945 against 0.949 flat) and the PLAID defaults gave 0.938 against 0.945.
    max_train_points : int
        Training sample size (drawn with the seed); FAISS's own default is 256 per centroid.
        The sample bounds k-means' memory (``max_train_points x d`` floats) whatever the corpus.
    seed : int

    References
    ----------
    - Santhanam et al., "ColBERTv2: Effective and Efficient Retrieval via Lightweight Late
      Interaction", NAACL 2022 (centroid + residual compression).
    - Bach, "Hierarchical Patch Compression for ColPali", 2025 (1-byte K-means patch codes).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.eye(4, dtype=np.float32)          # 4 distinct points, 4 centroids: lossless
    >>> q = PatchKMeans(4, k=4, niter=5).fit(x)
    >>> codes = q.encode(x)
    >>> codes.shape, bool(np.allclose(q.decode(codes), x, atol=1e-5))
    ((4, 1), True)
    """

    kind = "kmeans"

    def __init__(
        self, dim: int, *, k: int | None = 256, residual_bits: int = 0, niter: int = 20,
        max_train_points: int = 262144, seed: int = 0,
    ) -> None:
        super().__init__(dim)
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= MAX_K):
            raise ConfigError(f"PatchKMeans k must be an integer in [2, 65536], or None to size it to the corpus; "
                              f"got {k!r}.")
        if residual_bits not in (0, 1, 2, 4, 8):
            raise ConfigError(f"residual_bits must be one of 0, 1, 2, 4, 8; got {residual_bits!r}.")
        #: K sized to the training vectors by ``fit`` (``k=None``); ``k`` is 0 until then.
        self.auto_k = k is None
        self.k = 0 if k is None else int(k)
        self.residual_bits = int(residual_bits)
        self.niter = int(niter)
        self.max_train_points = int(max_train_points)
        self.seed = int(seed)
        self.centroids: NDArray[np.float32] | None = None  # (K, d)
        self.cutoffs: NDArray[np.float32] | None = None  # (d, 2**b - 1) residual bucket boundaries
        self.levels: NDArray[np.float32] | None = None  # (d, 2**b) residual value of each bucket
        #: decoded vectors are scaled to unit length (set by ``fit`` for unit-length data with residuals)
        self.unit = False
        self._assigner: Any = None
        self._table: NDArray[np.float32] | None = None  # residual decoding table, built on first decode

    # ------------------------------------------------------------------ description
    @property
    def spec(self) -> str:
        return f"KMeans{self.k or ''}" + (f"r{self.residual_bits}" if self.residual_bits else "")

    @property
    def id_bytes(self) -> int:
        return 1 if 0 < self.k <= 256 else 2  # an unsized K (0) may need 2 bytes

    @property
    def residual_bytes(self) -> int:
        return (self.dim * self.residual_bits + 7) // 8

    @property
    def code_size(self) -> int:
        return self.id_bytes + self.residual_bytes

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None

    # ------------------------------------------------------------------ fit / encode / decode
    def fit(self, vectors: NDArray[np.floating], *, corpus_size: int | None = None) -> PatchKMeans:
        """Train on ``vectors``; an unsized K is sized to ``corpus_size`` vectors (default: these,
        but a sample drawn from a larger corpus should pass the corpus's count)."""
        faiss = require("faiss", extra="cpu", feature="PatchKMeans")
        x = self._check_vectors(vectors)
        if self.auto_k:
            n = x.shape[0] if corpus_size is None else corpus_size
            # never more centroids than sample vectors: the largest power of two not above them
            self.k = min(corpus_k(n), 1 << int(np.log2(max(2, x.shape[0]))))
            logger.info("k-means sized to %d vectors: K = %d", n, self.k)
        if x.shape[0] < self.k:
            raise ConfigError(
                f"PatchKMeans with k={self.k} needs at least {self.k} training vectors; got {x.shape[0]}. "
                "Use a smaller k or more documents."
            )
        rng = np.random.default_rng(self.seed)
        sample = x if x.shape[0] <= self.max_train_points else x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        if self.k >= TWO_LEVEL_K:
            centroids = _two_level_kmeans(faiss, sample, self.k, self.niter, self.seed)
        else:
            centroids = _spherical_kmeans(faiss, sample, self.k, self.niter, self.seed)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._assigner, self._table = None, None
        norms = np.linalg.norm(sample, axis=1)
        self.unit = bool(self.residual_bits) and bool(np.all(np.abs(norms - 1.0) <= UNIT_TOLERANCE))
        if self.residual_bits:
            ids = self._assign(sample)
            residuals = sample - self.centroids[ids]
            levels = 1 << self.residual_bits
            # Per-dimension quantiles: equal-mass buckets; each bucket decodes to its mid-quantile.
            self.cutoffs = np.ascontiguousarray(
                np.quantile(residuals, np.arange(1, levels) / levels, axis=0).T, dtype=np.float32)
            self.levels = np.ascontiguousarray(
                np.quantile(residuals, (np.arange(levels) + 0.5) / levels, axis=0).T, dtype=np.float32)
        logger.info("fitted %s on %d vectors", self.spec, sample.shape[0])
        return self

    def assign(self, vectors: NDArray[np.floating]) -> NDArray[np.int64]:
        """Nearest-centroid id (by inner product) of each vector, shape (T,)."""
        self._require_trained()
        return self._assign(self._check_vectors(vectors))

    def encode(self, vectors: NDArray[np.floating]) -> NDArray[np.uint8]:
        self._require_trained()
        x = self._check_vectors(vectors)
        out = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        for start in range(0, x.shape[0], _ASSIGN_CHUNK):
            chunk = x[start : start + _ASSIGN_CHUNK]
            ids = self._assign(chunk)
            out[start : start + chunk.shape[0], : self.id_bytes] = (
                ids.astype("<u2").view(np.uint8).reshape(-1, 2) if self.id_bytes == 2 else ids.astype(np.uint8)[:, None]
            )
            if self.residual_bits:
                assert self.cutoffs is not None and self.centroids is not None
                residual = chunk - self.centroids[ids]
                buckets = np.empty(residual.shape, dtype=np.uint8)
                for j in range(self.dim):  # d searchsorted calls on long columns: cheap next to k-means
                    buckets[:, j] = np.searchsorted(self.cutoffs[j], residual[:, j])
                out[start : start + chunk.shape[0], self.id_bytes :] = _pack(buckets, self.residual_bits)
        return out

    def ids(self, codes: NDArray[np.uint8]) -> NDArray[np.int64]:
        """Centroid id of each code, shape (T,)."""
        c = self._check_codes(codes)
        if self.id_bytes == 1:
            return c[:, 0].astype(np.int64)
        return np.ascontiguousarray(c[:, :2]).view("<u2").reshape(-1).astype(np.int64)

    def decode(self, codes: NDArray[np.uint8]) -> NDArray[np.float32]:
        self._require_trained()
        assert self.centroids is not None
        c = self._check_codes(codes)
        out = self.centroids[self.ids(c)]
        if self.residual_bits:
            # One gather through a per-byte table: byte j of a residual code holds 8 / b
            # dimensions, so table[j, byte] is their decoded values (no bit unpacking).
            table = self.byte_table()
            packed = c[:, self.id_bytes :]
            values = table[np.arange(packed.shape[1])[None, :], packed]  # (T, bytes, 8 / b)
            out += values.reshape(c.shape[0], -1)[:, : self.dim]
        if self.unit:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)
        return out

    def byte_table(self) -> NDArray[np.float32]:
        """``(residual_bytes, 256, 8 // b)``: the residual values every byte value decodes to."""
        if self._table is None:
            assert self.levels is not None
            per_byte = 8 // self.residual_bits
            all_bytes = np.arange(256, dtype=np.uint8)[:, None]
            buckets = _unpack(all_bytes, self.residual_bits, per_byte)  # (256, per_byte)
            padded = np.zeros((self.residual_bytes * per_byte, self.levels.shape[1]), dtype=np.float32)
            padded[: self.dim] = self.levels  # the last byte may hold padding dimensions
            dims = np.arange(self.residual_bytes * per_byte).reshape(self.residual_bytes, 1, per_byte)
            self._table = np.ascontiguousarray(padded[dims, buckets[None, :, :]], dtype=np.float32)
        return self._table

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, NDArray[Any]]:
        self._require_trained()
        assert self.centroids is not None
        out: dict[str, NDArray[Any]] = {"centroids": self.centroids}
        if self.residual_bits:
            assert self.cutoffs is not None and self.levels is not None
            out.update(cutoffs=self.cutoffs, levels=self.levels)
        if self.unit:
            out["unit"] = np.ones(1, dtype=np.float32)
        return out

    def load_state(self, arrays: dict[str, NDArray[Any]]) -> None:
        levels = 1 << self.residual_bits
        if self.auto_k:  # an unsized codec takes K from the saved centroids
            k = np.shape(arrays.get("centroids", ()))
            self.k = int(k[0]) if len(k) == 2 and 2 <= k[0] <= MAX_K else self.k
        expected: dict[str, tuple[int, ...]] = {"centroids": (self.k, self.dim)}
        if self.residual_bits:
            expected.update(cutoffs=(self.dim, levels - 1), levels=(self.dim, levels))
        if "unit" in arrays:  # absent in codecs saved before it existed: they decode without scaling
            expected["unit"] = (1,)
        state = self._checked_state(arrays, expected)
        unit = state.get("unit")
        if unit is not None and (unit[0] != 1.0 or not self.residual_bits):
            raise IndexFormatError(f"{self.spec} codec array 'unit' must be [1.0] and only with residual bits; "
                                   f"got {unit!r}.")
        self.centroids = state["centroids"]
        self.cutoffs, self.levels = state.get("cutoffs"), state.get("levels")
        self.unit = unit is not None
        self._assigner, self._table = None, None

    # ------------------------------------------------------------------ internals
    def _assign(self, x: NDArray[np.float32]) -> NDArray[np.int64]:
        if self._assigner is None:
            faiss = require("faiss", extra="cpu", feature="PatchKMeans")
            assert self.centroids is not None
            self._assigner = _assigner(faiss, self.centroids, self.seed)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        _, ids = self._assigner.search(x, 1)
        return ids[:, 0].astype(np.int64)


def _spherical_kmeans(faiss: Any, x: NDArray[np.float32], k: int, niter: int, seed: int,
                      per_centroid: int | None = None) -> NDArray[np.float32]:
    """FAISS spherical k-means of ``x`` into ``k`` centroids, on every point or on a sample of
    ``per_centroid`` points per centroid."""
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True,
                      max_points_per_centroid=per_centroid or max(1, x.shape[0] // k + 1), verbose=False)
    with native_stderr_to_log(logger):  # FAISS prints its "too few points" warning from C++
        km.train(x)
    return np.asarray(km.centroids, dtype=np.float32)


def _coarse_k(k: int) -> int:
    """Cells of the first level for ``k`` centroids: the power of two nearest ``sqrt(k)``."""
    return 1 << round(np.log2(np.sqrt(k)))


def _two_level_kmeans(faiss: Any, x: NDArray[np.float32], k: int, niter: int, seed: int) -> NDArray[np.float32]:
    """``k`` centroids in two levels: ``~sqrt(k)`` coarse cells, then each cell's points clustered
    into a share of ``k`` proportional to its size (largest remainders, never more than its points).

    Each iteration then costs ``n * 2 * sqrt(k) * d`` instead of ``n * k * d``: 64x less at K=16,384.
    The coarse level trains on 256 points per cell (FAISS's own default); the cells are
    clustered side by side, one thread each (FAISS's OpenMP threads cost more than they give on
    a few thousand points, and much more when the cores are shared).
    """
    coarse = _spherical_kmeans(faiss, x, _coarse_k(k), niter, seed, per_centroid=256)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(coarse)
    cell = flat.search(x, 1)[1][:, 0]
    sizes = np.bincount(cell, minlength=coarse.shape[0])
    share = sizes * (k / x.shape[0])
    alloc = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - alloc), kind="stable")[: k - int(alloc.sum())]
    alloc[extra] += 1  # a cell gains at most 1, and share < size unless k == n (then no remainder)
    order = np.argsort(cell, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])

    def cluster(c: int) -> NDArray[np.float32]:
        points = x[order[bounds[c] : bounds[c + 1]]]
        if alloc[c] >= points.shape[0]:  # as many centroids as points: the points, on the unit sphere
            return points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
        faiss.omp_set_num_threads(1)  # this worker thread's own OpenMP setting
        return _spherical_kmeans(faiss, points, int(alloc[c]), niter, seed + c)

    cells = [int(c) for c in np.flatnonzero(alloc)]
    with ThreadPoolExecutor(max_workers=max(1, faiss.omp_get_max_threads())) as pool:
        centroids = np.concatenate(list(pool.map(cluster, cells)))
    return _refine(faiss, x, centroids, REFINE_ITERS, seed)


def _refine(faiss: Any, x: NDArray[np.float32], centroids: NDArray[np.float32], niter: int,
            seed: int) -> NDArray[np.float32]:
    """Lloyd iterations over all ``k`` centroids at once (spherical: means re-normalised), each
    vector assigned through cells (:class:`_CellAssigner`): the two-level start leaves cell
    borders that cut through clusters, and these passes move centroids across them."""
    k = centroids.shape[0]
    for _ in range(niter):
        ids = _CellAssigner(centroids, _spherical_kmeans(faiss, centroids, _coarse_k(k), 5, seed),
                            ASSIGN_NPROBE).search(x, 1)[1][:, 0]
        order = np.argsort(ids, kind="stable")
        present, starts = np.unique(ids[order], return_index=True)
        sums = np.zeros_like(centroids)
        sums[present] = np.add.reduceat(x[order], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        used = norms[:, 0] > 0
        centroids = centroids.copy()
        centroids[used] = sums[used] / norms[used]  # an empty centroid stays where it was
    return centroids


def _assigner(faiss: Any, centroids: NDArray[np.float32], seed: int) -> Any:
    """An object whose ``search(x, 1)`` gives each vector's centroid, as FAISS indexes do: exact
    below :data:`TWO_LEVEL_K` centroids, a :class:`_CellAssigner` from there on."""
    k, d = centroids.shape
    if k < TWO_LEVEL_K:
        index = faiss.IndexFlatIP(d)
        index.add(centroids)
        return index
    coarse = _spherical_kmeans(faiss, centroids, _coarse_k(k), 10, seed)
    return _CellAssigner(centroids, coarse, ASSIGN_NPROBE)


class _CellAssigner:
    """Nearest centroid through cells, in matrix products only.

    The K centroids are grouped into ``~sqrt(K)`` cells (k-means of the centroids). Each vector
    probes its ``nprobe`` best cells; then, cell by cell, every vector probing that cell is
    scored against the cell's centroids in one matmul, and each keeps its best centroid over
    its cells. That is ``sqrt(K) + nprobe * sqrt(K)`` products per vector instead of ``K``
    (K=32,768, nprobe 16: 14x fewer), at BLAS's speed, which a per-vector scan of an IVF over
    the centroids does not reach.
    """

    def __init__(self, centroids: NDArray[np.float32], coarse: NDArray[np.float32], nprobe: int) -> None:
        self.centroids, self.coarse = centroids, np.ascontiguousarray(coarse, dtype=np.float32)
        self.nprobe = min(nprobe, len(coarse))
        cell = np.argmax(centroids @ self.coarse.T, axis=1)
        members = np.argsort(cell, kind="stable")
        bounds = np.searchsorted(cell[members], np.arange(len(coarse) + 1))
        self.members = [members[bounds[c] : bounds[c + 1]] for c in range(len(coarse))]
        self.blocks = [np.ascontiguousarray(centroids[m].T) for m in self.members]  # (d, members) each

    def search(self, x: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        assert k == 1
        n = x.shape[0]
        probe = np.argpartition(-(x @ self.coarse.T), self.nprobe - 1, axis=1)[:, : self.nprobe].reshape(-1)
        order = np.argsort(probe, kind="stable")
        bounds = np.searchsorted(probe[order], np.arange(len(self.coarse) + 1))
        scores = np.full((n, 1), -np.inf, dtype=np.float32)
        ids = np.zeros((n, 1), dtype=np.int64)
        for c in np.flatnonzero(np.diff(bounds) > 0):
            if not len(self.members[c]):
                continue
            rows = order[bounds[c] : bounds[c + 1]] // self.nprobe  # each row probes a cell once
            sims = x[rows] @ self.blocks[c]
            pick = np.argmax(sims, axis=1)
            best = sims[np.arange(len(rows)), pick]
            better = best > scores[rows, 0]
            scores[rows[better], 0] = best[better]
            ids[rows[better], 0] = self.members[c][pick[better]]
        return scores, ids


def _pack(values: NDArray[np.uint8], bits: int) -> NDArray[np.uint8]:
    """Pack ``(T, d)`` values < 2**bits into ``(T, ceil(d * bits / 8))`` bytes, big-endian bit order."""
    if bits == 8:
        return values
    t, d = values.shape
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint8)
    bit_planes = (values[:, :, None] >> shifts) & 1  # (T, d, bits), most significant first
    return np.packbits(bit_planes.reshape(t, d * bits), axis=1)


def _unpack(packed: NDArray[np.uint8], bits: int, dim: int) -> NDArray[np.intp]:
    """Inverse of :func:`_pack`: ``(T, dim)`` integer values."""
    if bits == 8:
        return packed.astype(np.intp)
    t = packed.shape[0]
    flat = np.unpackbits(packed, axis=1, count=dim * bits).reshape(t, dim, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    values = (flat * weights).sum(axis=2, dtype=np.intp) if bits > 1 else flat[:, :, 0].astype(np.intp)
    if values.shape != (t, dim):
        raise ShapeError(f"residual codes unpack to {values.shape}, expected {(t, dim)}.")
    return values

"""K-means quantization of token / patch vectors into 1- or 2-byte centroid ids, with optional residual bits."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval._native_log import native_stderr_to_log
from retrieval._optional import require
from retrieval.compress.base import Codec
from retrieval.errors import ConfigError, ShapeError

__all__ = ["PatchKMeans", "corpus_k"]

logger = logging.getLogger(__name__)

_ASSIGN_CHUNK = 65536
MAX_K = 65536  # 2-byte centroid ids


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
        K-means iterations.
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
    def fit(self, vectors: NDArray[np.floating]) -> PatchKMeans:
        faiss = require("faiss", extra="cpu", feature="PatchKMeans")
        x = self._check_vectors(vectors)
        if self.auto_k:
            self.k = corpus_k(x.shape[0])
            logger.info("k-means sized to %d vectors: K = %d", x.shape[0], self.k)
        if x.shape[0] < self.k:
            raise ConfigError(
                f"PatchKMeans with k={self.k} needs at least {self.k} training vectors; got {x.shape[0]}. "
                "Use a smaller k or more documents."
            )
        rng = np.random.default_rng(self.seed)
        sample = x if x.shape[0] <= self.max_train_points else x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        km = faiss.Kmeans(self.dim, self.k, niter=self.niter, seed=self.seed, spherical=True,
                          max_points_per_centroid=max(1, sample.shape[0] // self.k + 1), verbose=False)
        with native_stderr_to_log(logger):  # FAISS prints its "too few points" warning from C++
            km.train(sample)
        self.centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        self._assigner, self._table = None, None
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
        return out

    def load_state(self, arrays: dict[str, NDArray[Any]]) -> None:
        levels = 1 << self.residual_bits
        if self.auto_k:  # an unsized codec takes K from the saved centroids
            k = np.shape(arrays.get("centroids", ()))
            self.k = int(k[0]) if len(k) == 2 and 2 <= k[0] <= MAX_K else self.k
        expected: dict[str, tuple[int, ...]] = {"centroids": (self.k, self.dim)}
        if self.residual_bits:
            expected.update(cutoffs=(self.dim, levels - 1), levels=(self.dim, levels))
        state = self._checked_state(arrays, expected)
        self.centroids = state["centroids"]
        self.cutoffs, self.levels = state.get("cutoffs"), state.get("levels")
        self._assigner, self._table = None, None

    # ------------------------------------------------------------------ internals
    def _assign(self, x: NDArray[np.float32]) -> NDArray[np.int64]:
        if self._assigner is None:
            faiss = require("faiss", extra="cpu", feature="PatchKMeans")
            assert self.centroids is not None
            self._assigner = faiss.IndexFlatIP(self.dim)
            self._assigner.add(self.centroids)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        _, ids = self._assigner.search(x, 1)
        return ids[:, 0].astype(np.int64)


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

"""Binary codes: one sign bit per dimension, optionally after a learned ITQ rotation."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from retrieval.compress.base import Codec
from retrieval.errors import ConfigError

__all__ = ["BinaryQuantizer"]

logger = logging.getLogger(__name__)


class BinaryQuantizer(Codec):
    """Sign bits of the centred (and optionally rotated) vectors, packed 8 per byte.

    ``encode`` computes ``y = (x - mean) @ R`` and keeps the sign bit of each ``y_j``
    (``R`` is the identity unless ``rotation="itq"``). The codes are what FAISS binary
    indexes search by Hamming distance. ``decode`` returns ``mean + (scale * sign(y)) @ R.T``,
    where ``scale_j`` is the mean ``|y_j|`` over the training vectors: the least-squares
    reconstruction from the signs, so that MaxSim over decoded vectors (float query against
    binary document, the asymmetric scoring that keeps most of the float accuracy) is
    possible without storing anything but the bits.

    Parameters
    ----------
    dim : int
        Vector dimension ``d`` (any size; the last byte is zero-padded).
    rotation : {None, "itq"}
        ``"itq"`` learns an orthogonal rotation that balances variance across bits
        (Iterative Quantization), lowering the sign-quantization error.
    n_iter : int
        ITQ iterations.
    max_train_points : int
        Training sample size.
    seed : int

    References
    ----------
    Gong and Lazebnik, "Iterative Quantization: A Procrustean Approach to Learning Binary
    Codes", CVPR 2011.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
    >>> b = BinaryQuantizer(2).fit(x)
    >>> b.encode(x)[:, 0].tolist()   # bits 10, 01, 11, 00 in the high bits of one byte
    [128, 64, 192, 0]
    >>> b.decode(b.encode(x)).tolist() == x.tolist()
    True
    """

    kind = "binary"

    def __init__(
        self, dim: int, *, rotation: Literal["itq"] | None = None, n_iter: int = 30,
        max_train_points: int = 65536, seed: int = 0,
    ) -> None:
        super().__init__(dim)
        if rotation not in (None, "itq"):
            raise ConfigError(f"BinaryQuantizer rotation must be None or 'itq'; got {rotation!r}.")
        self.rotation: Literal["itq"] | None = rotation
        self.n_iter = int(n_iter)
        self.max_train_points = int(max_train_points)
        self.seed = int(seed)
        self.mean: NDArray[np.float32] | None = None  # (d,)
        self.scale: NDArray[np.float32] | None = None  # (d,)
        self.matrix: NDArray[np.float32] | None = None  # (d, d) rotation R, only for ITQ

    @property
    def spec(self) -> str:
        return "BinaryITQ" if self.rotation == "itq" else "Binary"

    @property
    def code_size(self) -> int:
        return (self.dim + 7) // 8

    @property
    def is_trained(self) -> bool:
        return self.mean is not None

    def fit(self, vectors: NDArray[np.floating]) -> BinaryQuantizer:
        x = self._check_vectors(vectors)
        if x.shape[0] == 0:
            raise ConfigError(f"{self.spec} needs at least one training vector; got none.")
        rng = np.random.default_rng(self.seed)
        if x.shape[0] > self.max_train_points:
            x = x[np.sort(rng.choice(x.shape[0], self.max_train_points, replace=False))]
        mean = x.mean(axis=0).astype(np.float32)
        centred = x - mean
        matrix = None
        if self.rotation == "itq":
            # Start from a random orthogonal matrix; alternate B = sign(VR) and the Procrustes
            # solution R = U W^T of V^T B = U S W^T.
            r, _ = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
            for _ in range(self.n_iter):
                b = np.where(centred @ r >= 0, 1.0, -1.0)
                u, _, wt = np.linalg.svd(centred.T.astype(np.float64) @ b, full_matrices=False)
                r = u @ wt
            matrix = np.ascontiguousarray(r, dtype=np.float32)
            centred = centred @ matrix
        self.mean, self.matrix = mean, matrix
        self.scale = np.abs(centred).mean(axis=0).astype(np.float32)
        logger.info("fitted %s on %d vectors", self.spec, x.shape[0])
        return self

    def project(self, vectors: NDArray[np.floating]) -> NDArray[np.float32]:
        """``(x - mean) @ R``: the values whose signs are the bits, shape (T, d)."""
        self._require_trained()
        assert self.mean is not None
        y = self._check_vectors(vectors) - self.mean
        return np.asarray(y @ self.matrix if self.matrix is not None else y, dtype=np.float32)

    def encode(self, vectors: NDArray[np.floating]) -> NDArray[np.uint8]:
        return np.packbits(self.project(vectors) >= 0, axis=1)

    def decode(self, codes: NDArray[np.uint8]) -> NDArray[np.float32]:
        self._require_trained()
        assert self.mean is not None and self.scale is not None
        c = self._check_codes(codes)
        signs = np.unpackbits(c, axis=1, count=self.dim).astype(np.float32) * 2.0 - 1.0
        y = signs * self.scale
        return np.asarray((y @ self.matrix.T if self.matrix is not None else y) + self.mean, dtype=np.float32)

    def state(self) -> dict[str, NDArray[Any]]:
        self._require_trained()
        assert self.mean is not None and self.scale is not None
        out: dict[str, NDArray[Any]] = {"mean": self.mean, "scale": self.scale}
        if self.matrix is not None:
            out["rotation"] = self.matrix
        return out

    def load_state(self, arrays: dict[str, NDArray[Any]]) -> None:
        expected: dict[str, tuple[int, ...]] = {"mean": (self.dim,), "scale": (self.dim,)}
        if self.rotation == "itq":
            expected["rotation"] = (self.dim, self.dim)
        state = self._checked_state(arrays, expected)
        self.mean, self.scale, self.matrix = state["mean"], state["scale"], state.get("rotation")

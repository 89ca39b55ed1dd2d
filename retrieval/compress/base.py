"""The :class:`Codec` base class, the float codecs and the spec-string parser."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from retrieval.errors import ConfigError, IndexFormatError, NotTrainedError, ShapeError

__all__ = ["Codec", "FloatCodec"]


class Codec(ABC):
    """Float vectors ``(T, d)`` to bytes ``(T, code_size)`` and back.

    Subclasses set :attr:`spec` (a string :func:`parse_codec` turns back into an equal,
    untrained codec) and store their fitted parameters as named arrays (:meth:`state`), which
    is how indexes save them.
    """

    #: Codec kind name used in saved manifests.
    kind: ClassVar[str]

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ConfigError(f"dim must be a positive integer; got {dim!r}.")
        self.dim = int(dim)

    @property
    @abstractmethod
    def spec(self) -> str:
        """Spec string, e.g. ``"KMeans256r2"``."""

    @property
    @abstractmethod
    def code_size(self) -> int:
        """Bytes per encoded vector."""

    @property
    def is_trained(self) -> bool:
        return True

    def fit(self, vectors: NDArray[np.floating]) -> Codec:
        """Learn the codec's parameters from representative vectors; returns ``self``."""
        return self

    @abstractmethod
    def encode(self, vectors: NDArray[np.floating]) -> NDArray[np.uint8]:
        """Encode ``(T, d)`` float vectors as a ``(T, code_size)`` uint8 matrix."""

    @abstractmethod
    def decode(self, codes: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Approximate float32 vectors ``(T, d)`` from ``(T, code_size)`` codes."""

    def state(self) -> dict[str, NDArray[Any]]:
        """Fitted parameters as named arrays (empty for codecs that learn nothing)."""
        return {}

    def load_state(self, arrays: dict[str, NDArray[Any]]) -> None:  # noqa: B027 - stateless codecs need nothing
        """Restore the parameters written by :meth:`state`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, spec={self.spec!r})"

    # ------------------------------------------------------------------ helpers
    def _check_vectors(self, vectors: Any) -> NDArray[np.float32]:
        x = np.asarray(vectors)
        if x.ndim != 2 or x.dtype.kind != "f" or x.shape[1] != self.dim:
            raise ShapeError(
                f"{self.spec} expects float vectors of shape (T, {self.dim}); got {x.dtype} shape {x.shape}."
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_codes(self, codes: Any) -> NDArray[np.uint8]:
        c = np.asarray(codes)
        if c.ndim != 2 or c.dtype != np.uint8 or c.shape[1] != self.code_size:
            raise ShapeError(
                f"{self.spec} decodes uint8 codes of shape (T, {self.code_size}); got {c.dtype} shape {c.shape}."
            )
        return c

    def _checked_state(
        self, arrays: dict[str, NDArray[Any]], expected: dict[str, tuple[int, ...]]
    ) -> dict[str, NDArray[np.float32]]:
        """The ``expected`` float32 arrays of ``arrays``, contiguous; IndexFormatError names a bad one."""
        out = {}
        for name, shape in expected.items():
            arr = arrays.get(name)
            if arr is None or arr.shape != shape or arr.dtype != np.float32:
                got = "missing" if arr is None else f"{arr.dtype} {arr.shape}"
                raise IndexFormatError(f"{self.spec} codec array {name!r} must be float32 {shape}; got {got}.")
            out[name] = np.ascontiguousarray(arr)
        return out

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"{self.spec} must be fitted before encode(); call fit(vectors) first.")


class FloatCodec(Codec):
    """Uncompressed storage as float32 (``"Flat"``) or float16 (``"FP16"``).

    Examples
    --------
    >>> import numpy as np
    >>> c = FloatCodec(2, dtype="float16")
    >>> codes = c.encode(np.array([[1.0, -0.5]]))
    >>> codes.shape, c.decode(codes).tolist()
    ((1, 4), [[1.0, -0.5]])
    """

    kind = "float"

    def __init__(self, dim: int, *, dtype: str = "float32") -> None:
        super().__init__(dim)
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"FloatCodec dtype must be 'float32' or 'float16'; got {dtype!r}.")
        self.dtype = np.dtype(dtype)

    @property
    def spec(self) -> str:
        return "Flat" if self.dtype == np.float32 else "FP16"

    @property
    def code_size(self) -> int:
        return self.dim * self.dtype.itemsize

    def encode(self, vectors: NDArray[np.floating]) -> NDArray[np.uint8]:
        x = self._check_vectors(vectors).astype(self.dtype, copy=False)
        return np.ascontiguousarray(x).view(np.uint8).reshape(x.shape[0], self.code_size)

    def decode(self, codes: NDArray[np.uint8]) -> NDArray[np.float32]:
        c = np.ascontiguousarray(self._check_codes(codes))
        return c.view(self.dtype).reshape(c.shape[0], self.dim).astype(np.float32, copy=False)

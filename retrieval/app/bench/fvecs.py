"""Read and write the TEXMEX ``.fvecs`` / ``.ivecs`` formats used by ANN benchmarks.

Each vector is stored as a little-endian int32 dimension ``d`` followed by ``d`` float32
(``fvecs``) or int32 (``ivecs``) values; every vector of a file has the same ``d``.

References
----------
Jégou, Douze and Schmid, "Product Quantization for Nearest Neighbor Search", TPAMI 2011
(the INRIA TEXMEX corpus introduced the format).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from retrieval.errors import DataError

__all__ = ["read_fvecs", "read_ivecs", "write_fvecs", "write_ivecs"]


def _read(path: str | os.PathLike[str], dtype: type[np.generic]) -> NDArray[np.generic]:
    file = Path(path)
    try:
        raw = np.fromfile(file, dtype="<i4")
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc}") from exc
    if raw.size == 0:
        raise DataError(f"{file} is empty; expected vectors as int32 dimension + values.")
    d = int(raw[0])
    if d < 1 or raw.size % (d + 1):
        raise DataError(
            f"{file}: first dimension field is {d}, but the file holds {raw.size * 4} bytes, not a multiple of "
            f"{(d + 1) * 4} (4 + 4*d). Is this really a .fvecs / .ivecs file?"
        )
    rows = raw.reshape(-1, d + 1)
    if not (rows[:, 0] == d).all():
        bad = int(np.flatnonzero(rows[:, 0] != d)[0])
        raise DataError(f"{file}: vector {bad} has dimension {int(rows[bad, 0])}, vector 0 has {d}; all must match.")
    return rows[:, 1:].copy().view(dtype)


def read_fvecs(path: str | os.PathLike[str]) -> NDArray[np.float32]:
    """Read an ``.fvecs`` file into a float32 array of shape ``(n, d)``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_fvecs(f"{tmp}/x.fvecs", np.eye(2, 3, dtype=np.float32))
    ...     read_fvecs(f"{tmp}/x.fvecs")
    array([[1., 0., 0.],
           [0., 1., 0.]], dtype=float32)
    """
    return _read(path, np.float32)  # type: ignore[return-value]


def read_ivecs(path: str | os.PathLike[str]) -> NDArray[np.int32]:
    """Read an ``.ivecs`` file (e.g. ground-truth neighbour ids) into int32 ``(n, d)``."""
    return _read(path, np.int32)  # type: ignore[return-value]


def _write(path: str | os.PathLike[str], x: NDArray[np.generic], dtype: str) -> None:
    if x.ndim != 2 or x.shape[1] < 1:
        raise DataError(f"expected a 2-d array with at least one column to write to {path}; got shape {x.shape}.")
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype="<i4")
    out[:, 0] = x.shape[1]
    out[:, 1:] = np.ascontiguousarray(x, dtype=dtype).view("<i4")
    out.tofile(Path(path))


def write_fvecs(path: str | os.PathLike[str], x: NDArray[np.floating]) -> None:
    """Write float vectors ``(n, d)`` as ``.fvecs`` (converted to float32)."""
    _write(path, x, "<f4")


def write_ivecs(path: str | os.PathLike[str], x: NDArray[np.integer]) -> None:
    """Write integer vectors ``(n, d)`` as ``.ivecs`` (converted to int32)."""
    _write(path, x, "<i4")

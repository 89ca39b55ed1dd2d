"""Build a FAISS index from a stream of batches in bounded memory.

A corpus larger than RAM cannot be stacked into one array before ``train`` and ``add``.
:func:`build_from_batches` instead

1. appends every incoming batch to a float32 *spill file* on disk (raw rows, readable as a
   read-only ``np.memmap`` through :class:`SpillFile`) while keeping a uniform *reservoir
   sample* of ``train_size`` rows in memory (Vitter's algorithm R, vectorised per batch);
2. trains the index on the sample once the stream ends (so the sample represents the whole
   corpus, not just its first batches);
3. adds the spilled rows back in chunks of ``add_chunk`` rows, read with plain file reads.

Memory is then the sample, one batch, one chunk, the ids and the index itself (for
``IVF,PQ`` specs: the codes), independent of the raw vector size. The spill file is read
with ``readinto`` rather than through the memory map on purpose: pages of a mapped file
that have been touched count towards the process's resident set until the kernel evicts
them, so a mapped pass over 1.5 GB would *look* like 1.5 GB of RSS.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexes.base import Metric, check_new_ids
from retrieval.errors import ConfigError, ShapeError
from retrieval.types import Embeddings, as_float32_matrix

__all__ = ["SpillFile", "build_from_batches"]

logger = logging.getLogger(__name__)


class SpillFile:
    """An append-only file of float32 rows of width ``dim``.

    Parameters
    ----------
    path : path-like
        File to create (truncated if it exists).
    dim : int
        Row width.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self.rows = 0
        self._file: Any = open(self.path, "wb")

    def append(self, vectors: NDArray[np.float32]) -> None:
        """Append rows, shape (n, dim), float32."""
        self._file.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.rows += vectors.shape[0]

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def chunks(self, size: int) -> Iterable[tuple[int, NDArray[np.float32]]]:
        """Yield ``(first_row, rows)`` blocks of at most ``size`` rows, reusing one buffer."""
        self.close()
        buffer = np.empty((size, self.dim), dtype=np.float32)
        with open(self.path, "rb") as f:
            start = 0
            while start < self.rows:
                n = min(size, self.rows - start)
                view = buffer[:n]
                if f.readinto(view.data.cast("B")) != view.nbytes:
                    raise OSError(f"{self.path} is shorter than the {self.rows} rows written to it")
                yield start, view
                start += n

    def memmap(self) -> np.memmap:
        """All rows as a read-only memory map, shape (rows, dim)."""
        self.close()
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.rows, self.dim))


def _batches(stream: Iterable[Any]) -> Iterable[tuple[list[str], Any]]:
    for i, batch in enumerate(stream):
        if isinstance(batch, Embeddings):
            yield list(batch.ids), batch.vectors
        elif isinstance(batch, tuple) and len(batch) == 2:
            ids, vectors = batch
            if isinstance(ids, str):
                raise ConfigError(f"batch {i}: ids must be a sequence of strings, not one string.")
            yield list(ids), vectors
        else:
            raise ConfigError(
                f"batch {i} must be an (ids, vectors) tuple or Embeddings; got {type(batch).__name__}."
            )


def build_from_batches(
    batches: Iterable[tuple[Sequence[str], Any]] | Iterable[Embeddings],
    *,
    dim: int,
    spec: str,
    metric: Metric = "ip",
    train_size: int = 65_536,
    add_chunk: int = 65_536,
    spill_dir: str | os.PathLike[str] | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> Any:
    """Build a :class:`~indexes.FaissIndex` from batches without holding all vectors in RAM.

    Parameters
    ----------
    batches : iterable of (ids, vectors) or Embeddings
        ``vectors`` has shape (n, dim), float; ``ids`` holds n unique string ids. Batches
        are consumed once, in order; row order in the index follows them.
    dim : int
        Vector dimension.
    spec : str
        FAISS factory string, e.g. ``"IVF1024,PQ48x8"``.
    metric : {"ip", "l2"}
        As for :class:`~indexes.FaissIndex`.
    train_size : int
        Rows of the uniform reservoir sample the index is trained on (IVF with K lists
        wants at least ~39 K; PQ with 8 bits at least ~10k).
    add_chunk : int
        Rows read back from the spill file and added per step.
    spill_dir : path-like, optional
        Directory for the spill file (default: the system temporary directory). It needs
        ``4 * dim`` bytes per vector of free space; the file is removed afterwards.
    nprobe : int, optional
        IVF lists probed per query, stored on the index.
    seed : int
        Seed of the reservoir sample.

    Returns
    -------
    FaissIndex
        Trained, holding every row.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> stream = ((["d%d" % (10 * b + i) for i in range(10)], rng.standard_normal((10, 8))) for b in range(30))
    >>> index = build_from_batches(stream, dim=8, spec="IVF4,Flat", metric="l2", train_size=200)
    >>> len(index), index.is_trained
    (300, True)
    """
    from indexes.faiss_index import FaissIndex

    for name, value in (("train_size", train_size), ("add_chunk", add_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int; got {value!r}.")
    index = FaissIndex(dim, spec=spec, metric=metric, nprobe=nprobe)  # validates dim / spec / metric first
    rng = np.random.default_rng(seed)
    sample = np.empty((0, index.dim), dtype=np.float32)
    ids: list[str] = []
    seen: set[str] = set()
    workdir = Path(tempfile.mkdtemp(prefix="densezip-spill-", dir=spill_dir))
    spill = SpillFile(workdir / "vectors.f32", index.dim)
    try:
        for b, (batch_ids, raw) in enumerate(_batches(batches)):
            vectors = as_float32_matrix(raw, name=f"batch {b} vectors", dim=index.dim)
            if len(batch_ids) != vectors.shape[0]:
                raise ShapeError(f"batch {b} has {len(batch_ids)} ids for {vectors.shape[0]} vectors.")
            check_new_ids(batch_ids, seen)
            seen.update(batch_ids)
            ids.extend(batch_ids)
            first = spill.rows
            spill.append(vectors)
            sample = _reservoir(sample, vectors, first, train_size, rng)
        if not ids:
            raise ConfigError("build_from_batches received no vectors; the batch stream was empty.")
        del seen
        logger.info("spilled %d x %d vectors to %s; training %s on %d", len(ids), index.dim, spill.path, spec,
                    sample.shape[0])
        index.train(sample)
        del sample
        for start, chunk in spill.chunks(add_chunk):
            index.add(chunk, ids=ids[start : start + chunk.shape[0]])
        return index
    finally:
        spill.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _reservoir(
    sample: NDArray[np.float32], batch: NDArray[np.float32], first: int, size: int, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Algorithm R over one batch: row ``first + i`` replaces a random slot with prob ``size / (first + i + 1)``."""
    fill = min(size - sample.shape[0], batch.shape[0])
    if fill > 0:
        sample = np.concatenate([sample, batch[:fill]])
    rest = batch[fill:]
    if rest.shape[0]:
        seen_before = first + fill + np.arange(rest.shape[0])  # rows streamed before each of these
        slots = rng.integers(0, seen_before + 1)
        keep = slots < size
        sample[slots[keep]] = rest[keep]
    return sample

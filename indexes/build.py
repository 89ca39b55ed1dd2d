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

__all__ = ["SpillFile", "build_from_batches", "build_multivector_from_batches"]

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

    def read(self, start: int, out: NDArray[np.float32]) -> NDArray[np.float32]:
        """Rows ``start : start + len(out)`` read into ``out`` (a plain file read, see the module docstring)."""
        self.close()
        if start < 0 or start + out.shape[0] > self.rows:
            raise ValueError(f"rows {start}:{start + out.shape[0]} are outside the {self.rows} rows of {self.path}")
        with open(self.path, "rb") as f:
            f.seek(start * self.dim * 4)
            if f.readinto(out.data.cast("B")) != out.nbytes:
                raise OSError(f"{self.path} is shorter than the {self.rows} rows written to it")
        return out

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

    _check_sizes(train_size, add_chunk)
    index = FaissIndex(dim, spec=spec, metric=metric, nprobe=nprobe)  # validates dim / spec / metric first
    with _Spill(spill_dir, index.dim, train_size, seed) as stream:
        for b, (batch_ids, raw) in enumerate(_batches(batches)):
            vectors = as_float32_matrix(raw, name=f"batch {b} vectors", dim=index.dim)
            if len(batch_ids) != vectors.shape[0]:
                raise ShapeError(f"batch {b} has {len(batch_ids)} ids for {vectors.shape[0]} vectors.")
            stream.take(batch_ids, vectors)
        if not stream.ids:
            raise ConfigError("build_from_batches received no vectors; the batch stream was empty.")
        sample = stream.end()
        logger.info("spilled %d x %d vectors to %s; training %s on %d", len(stream.ids), index.dim,
                    stream.file.path, spec, sample.shape[0])
        index.train(sample)
        del sample
        for start, chunk in stream.file.chunks(add_chunk):
            index.add(chunk, ids=stream.ids[start : start + chunk.shape[0]])
        return index


def _check_sizes(train_size: Any, add_chunk: Any) -> None:
    for name, value in (("train_size", train_size), ("add_chunk", add_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int; got {value!r}.")


class _Spill:
    """A stream being spilled: the spill file in its own temporary directory (removed on exit),
    the ids seen so far (checked unique across batches) and the reservoir sample of the rows."""

    def __init__(self, spill_dir: str | os.PathLike[str] | None, dim: int, train_size: int, seed: int) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="densezip-spill-", dir=spill_dir))
        self.file = SpillFile(self.workdir / "vectors.f32", dim)
        self.train_size, self.rng = train_size, np.random.default_rng(seed)
        self.sample = np.empty((0, dim), dtype=np.float32)
        self.ids: list[Any] = []
        self._seen: set[Any] = set()

    def take(self, batch_ids: list[Any], vectors: NDArray[np.float32]) -> None:
        """Check and record a batch's ids, spill its rows and draw them into the sample."""
        check_new_ids(batch_ids, self._seen)
        self._seen.update(batch_ids)
        self.ids.extend(batch_ids)
        first = self.file.rows
        self.file.append(vectors)
        self.sample = _reservoir(self.sample, vectors, first, self.train_size, self.rng)

    def end(self) -> NDArray[np.float32]:
        """The stream is over: the sample, handed over (the stream keeps no reference to it), and
        the set of seen ids freed."""
        sample, self.sample, self._seen = self.sample, np.empty((0, 0), np.float32), set()
        return sample

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


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


def build_multivector_from_batches(
    batches: Iterable[Any],
    *,
    dim: int,
    spec: str,
    train_size: int = 262_144,
    add_chunk: int = 1 << 20,
    spill_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> Any:
    """Build a :class:`~indexes.MultiVectorIndex` from batches of documents in bounded memory.

    The token-vector counterpart of :func:`build_from_batches`: each batch is pruned as the
    spec says, its vectors spilled to a float32 file on disk while a uniform reservoir sample
    of ``train_size`` of them is kept; the codec is trained on the sample once the stream
    ends; then the spilled documents are read back, about ``add_chunk`` vectors at a time, and
    encoded into codes allocated once for the whole stream (no copy of the codes so far per
    chunk). Memory is the sample, one batch, one chunk and the index (codes, offsets, ids),
    never all the float vectors: a 10M x 128-d stream spills 5.1 GB to disk and holds the
    134 MB sample (freed before encoding), a 512 MB chunk of floats and the codes (66 B per
    vector with 4-bit residuals; docs/BENCHMARKS.md section 4).

    Parameters
    ----------
    batches : iterable of MultiVectorEmbeddings
        Consumed once, in order; document order in the index follows them. Ids must be unique
        across the whole stream.
    dim, spec, **options
        As for :class:`~indexes.MultiVectorIndex` (e.g. ``spec="KMeansr4"``, ``first_stage=...``).
    train_size : int
        Vectors in the sample the codec is fitted on (k-means samples at most its own
        ``max_train_points`` of them).
    add_chunk : int
        Vectors read back and encoded per step (whole documents: a step may hold more when a
        document is longer).
    spill_dir : path-like, optional
        Directory for the spill file (default: the system temporary directory); it needs
        ``4 * dim`` bytes per kept vector and is removed afterwards.
    seed : int
        Seed of the reservoir sample.

    Examples
    --------
    >>> from retrieval.types import MultiVectorEmbeddings
    >>> rng = np.random.default_rng(0)
    >>> def batch(b):
    ...     x = rng.standard_normal((40, 8)).astype(np.float32)
    ...     return MultiVectorEmbeddings(x, np.arange(0, 41, 4), [f"d{b}-{i}" for i in range(10)])
    >>> index = build_multivector_from_batches((batch(b) for b in range(5)), dim=8, spec="KMeans16r2", train_size=100)
    >>> len(index), index.num_vectors, index.is_trained
    (50, 200, True)
    """
    from indexes.multivector import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    _check_sizes(train_size, add_chunk)
    index = MultiVectorIndex(dim, spec=spec, **options)  # validates dim / spec / options first
    lengths: list[NDArray[np.int64]] = []
    with _Spill(spill_dir, index.dim, train_size, seed) as stream:
        for b, batch in enumerate(batches):
            if not isinstance(batch, MultiVectorEmbeddings):
                raise ConfigError(f"batch {b} must be MultiVectorEmbeddings (e.g. from "
                                  f"MultiVectorEncoder.encode_documents); got {type(batch).__name__}.")
            mv = index._prepare(batch)  # checks width and values, prunes as the spec says
            batch_ids = mv.ids.tolist() if isinstance(mv.ids, np.ndarray) else list(mv.ids)
            if stream.ids and batch_ids and isinstance(batch_ids[0], str) != isinstance(stream.ids[0], str):
                raise ConfigError(f"batch {b} has {type(batch_ids[0]).__name__} ids after batches of "
                                  f"{type(stream.ids[0]).__name__} ids; use one kind of id for the whole stream.")
            stream.take(batch_ids, np.asarray(mv.vectors, dtype=np.float32))
            lengths.append(np.diff(mv.offsets))
        if not stream.ids:
            raise ConfigError("build_multivector_from_batches received no documents; the batch stream was empty.")
        sample = stream.end()
        if sample.shape[0] == 0:
            raise ConfigError("build_multivector_from_batches received documents but no vectors to train on.")
        logger.info("spilled %d vectors of %d documents to %s; training %s on %d", stream.file.rows,
                    len(stream.ids), stream.file.path, spec, sample.shape[0])
        index.train_vectors(sample, corpus_size=stream.file.rows)  # K sized to the corpus, not to the sample
        del sample
        _add_spilled(index, stream.file, np.concatenate(lengths), stream.ids, add_chunk)
        return index


def _add_spilled(index: Any, spill: SpillFile, lengths: NDArray[np.int64], ids: list[Any], add_chunk: int) -> None:
    """Add the spilled documents (already pruned and checked) in one step: the index encodes them,
    read back in blocks of about ``add_chunk`` vectors (whole documents), into codes it allocates
    once for all of them (:meth:`~indexes.MultiVectorIndex._add_blocks`), so memory is the codes
    plus one block of floats, not twice the codes as appending block by block would copy them."""
    ends = np.cumsum(lengths)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    steps, doc = [], 0  # (first document, end document) of each block
    while doc < len(ids):
        # the documents ending within add_chunk vectors of the block's first vector, at least one
        last = max(doc + 1, int(np.searchsorted(ends, int(starts[doc]) + add_chunk, side="right")))
        steps.append((doc, last))
        doc = last
    widest = max(int(ends[last - 1] - starts[first]) for first, last in steps)

    def blocks() -> Iterable[NDArray[np.float32]]:
        buffer = np.empty((widest, index.dim), dtype=np.float32)  # one buffer: the index copies each block's codes
        for first, last in steps:
            start = int(starts[first])
            yield spill.read(start, buffer[: int(ends[last - 1]) - start])

    offsets = np.concatenate([[0], ends]).astype(np.int64)
    as_ints = bool(ids) and isinstance(ids[0], int)
    index._add_blocks(np.asarray(ids, dtype=np.int64) if as_ints else ids, offsets, blocks())

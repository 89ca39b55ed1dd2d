"""The binary engine: ``first_stage="binary"`` of a :class:`~indexes.multivector.MultiVectorIndex`.

Every stored vector has a sign code (the ``Binary`` / ``BinaryITQ`` codes themselves, or a
separate :class:`~retrieval.compress.binary.BinaryQuantizer`'s). One query batch goes through:

1. **Token neighbours.** Each query vector's sign code asks a FAISS binary index for its
   ``token_k`` nearest codes by Hamming distance; their documents are the query's candidates.
   The index is an IVF (``IndexBinaryIVF``: ``nlist`` Hamming centroids, ``nprobe`` lists
   searched), an HNSW graph (``IndexBinaryHNSW``, ``ef_search``) or a flat scan.
   With ``token_k`` at least the number of stored vectors, every document is a candidate.
2. **Asymmetric MaxSim through byte tables.** A document vector decodes to
   ``mean + (scale * s) @ R.T`` with ``s`` its signs (:class:`BinaryQuantizer`), so its inner
   product with a float query vector ``x`` is ``x . mean + sum_j w_j s_j`` with
   ``w = (x @ R) * scale``. Per query vector and byte position the 256 possible partial sums
   are tabulated once per batch (``code_size x 256`` entries); a document vector's score is
   then ``code_size`` table reads (:mod:`indexes._binary_kernels`), never a decode.
   Every candidate is scored; the best ``k`` are returned (or the best ``ndocs`` when the
   index re-scores them with codes of its own).

A ``subset`` / ``where`` mask applies in both stages: HNSW and flat searches only visit allowed
vectors (a FAISS ID selector); IVF lists, which FAISS cannot filter, have their hits dropped
before scoring; the index completes rows left short by exact MaxSim over the allowed documents.
When the mask admits at most ``ndocs`` documents they are all scored directly.

The engine is derived from the stored codes (the IVF centroids are trained on a seeded sample
of them). A saved index keeps its FAISS index as ``binary.token_index.npy`` (the bytes of
``faiss.serialize_index_binary``, uint8, checksummed in the manifest like every file) with a
description in ``params.binary_token_index`` (:data:`TOKEN_INDEX_FORMAT`, kind, vector count,
code size, seed, nlist / M); a load whose description matches the index reads it back instead of
rebuilding (:func:`restore_engine`). Indexes saved without it, or with a description that does
not match, rebuild it on their first search (logged); an edit (add / delete) drops it and the
next search or save builds it again, so a saved token index always covers the saved codes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from indexes._io import file_sha256, load_array, save_array
from indexes._paths import member
from indexes.plaid import updated_params
from retrieval._native_log import native_stderr_to_log
from retrieval._optional import require
from retrieval.compress.binary import BinaryQuantizer
from retrieval.errors import ConfigError, IndexFormatError
from retrieval.scores import top_k

__all__ = ["BINARY_INDEXES", "TOKEN_INDEX_ARRAY", "TOKEN_INDEX_FORMAT", "BinaryEngine", "BinaryIndexKind", "BinaryParams",
           "ivf_nlist", "lookup_tables", "per_query_tables", "restore_engine", "save_token_index"]

BinaryIndexKind = Literal["ivf", "hnsw", "flat"]
BINARY_INDEXES = ("ivf", "hnsw", "flat")
logger = logging.getLogger(__name__)

_HNSW_M = 16  # links per vector: 128 bytes of graph per vector at level 0 (int32)
_HNSW_EF_CONSTRUCTION = 40
_TRAIN_PER_LIST = 64  # IVF training sample: this many codes per centroid at most
#: Version of the saved token index (``params.binary_token_index.format``); a load that finds
#: another one rebuilds the index from the codes instead of reading it.
TOKEN_INDEX_FORMAT = 1
#: Manifest array name (and file stem) of the saved token index.
TOKEN_INDEX_ARRAY = "binary.token_index"
_FAISS_TYPES = {"ivf": "IndexBinaryIVF", "hnsw": "IndexBinaryHNSW", "flat": "IndexBinaryFlat"}


@dataclass(frozen=True)
class BinaryParams:
    """Search settings of the binary engine (per index, overridable per ``search`` call).

    Parameters
    ----------
    token_k : int
        Hamming neighbours per query vector in stage 1.
    nprobe : int
        IVF lists searched per query vector (``binary_index="ivf"``).
    ef_search : int
        HNSW search breadth (``binary_index="hnsw"``; at least ``token_k`` is used).
    ndocs : int
        Candidates kept by the table scoring when the index re-scores them with codes of its own
        (a codec that is not binary), and the filter size below which every allowed document
        is scored directly.
    """

    # Picked by the sweep in docs/BENCHMARKS.md section 4 (1M synthetic token vectors, k=10).
    token_k: int = 32
    nprobe: int = 16
    ef_search: int = 64
    ndocs: int = 256

    def __post_init__(self) -> None:
        for name in ("token_k", "nprobe", "ef_search", "ndocs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive int; got {value!r}.")

    def updated(self, params: BinaryParams | Mapping[str, Any] | None) -> BinaryParams:
        """These settings with ``params`` (a BinaryParams, or a dict of some of its fields) applied."""
        return updated_params(self, params, "the binary engine")


def ivf_nlist(n_vectors: int) -> int:
    """IVF lists for ``n_vectors`` codes: the power of two at most ``sqrt(n)`` (1 for tiny sets).

    Few, long lists: scanning a list costs one popcount per 64 bits, so lists of ~2,000 codes
    (1M vectors: 512 lists) are cheap to search, and the k-means that trains them (at most
    64 codes per list) takes seconds, which matters for indexes saved without their token index
    (they rebuild it on load) and after every edit.
    """
    return 1 << max(0, int(np.floor(np.log2(max(1.0, np.sqrt(n_vectors))))))


def lookup_tables(quantizer: BinaryQuantizer, qv: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``(table, const)`` of query vectors ``qv`` (Tq, d) for asymmetric scoring of ``quantizer``'s codes.

    ``table`` is (code_size, 256, Tq) float32: entry ``[b, v, i]`` is query vector i's inner
    product with the 8 dimensions byte b holds when its value is v (bit set: ``+scale``,
    clear: ``-scale``, after the rotation); ``const`` (Tq,) is ``qv @ mean``. The score of a
    code c is ``const[i] + sum_b table[b, c[b], i]``, equal to ``qv[i] @ quantizer.decode(c)``.
    """
    assert quantizer.mean is not None and quantizer.scale is not None
    x = np.asarray(qv, dtype=np.float32)
    rotated = x @ quantizer.matrix if quantizer.matrix is not None else x
    w = np.zeros((x.shape[0], quantizer.code_size * 8), dtype=np.float32)
    w[:, : quantizer.dim] = rotated * quantizer.scale  # padding bits weigh nothing
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2 - 1  # (256, 8)
    table = np.einsum("tbi,vi->bvt", w.reshape(x.shape[0], quantizer.code_size, 8), bits, optimize=True)
    return np.ascontiguousarray(table, dtype=np.float32), np.ascontiguousarray(x @ quantizer.mean, dtype=np.float32)


def per_query_tables(table: NDArray[np.float32], q_offsets: NDArray[np.int64]) -> NDArray[np.float32]:
    """``table`` (code_size, 256, Tq) re-laid flat, one (code_size, 256, W) block per query, in order:
    the layout :func:`indexes._binary_kernels.lut_maxsim` reads. ``W`` is the longest query's length
    rounded up to a multiple of :data:`indexes._binary_kernels.LANES`; a shorter query's extra
    columns are zero (a query's rows stay contiguous, and every row is whole vector steps)."""
    from indexes._binary_kernels import table_width

    lengths = np.diff(q_offsets)
    width = table_width(q_offsets)
    out = np.zeros((lengths.shape[0], table.shape[0], table.shape[1], width), dtype=np.float32)
    for q in range(lengths.shape[0]):
        out[q, :, :, : lengths[q]] = table[:, :, q_offsets[q] : q_offsets[q + 1]]
    return out.reshape(-1)


class BinaryEngine:
    """A FAISS binary index over every stored vector's sign code, and the two-stage search.

    Parameters
    ----------
    quantizer : BinaryQuantizer
        The trained quantizer the sign codes were made with.
    codes : array, shape (T, code_size), uint8
        Every stored vector's sign code (may be memory-mapped; FAISS keeps a copy).
    offsets : array, shape (n + 1,), int64
        Document i owns ``codes[offsets[i]:offsets[i + 1]]``.
    kind : {"ivf", "hnsw", "flat"}
    seed : int
        Seed of the IVF training sample and k-means.
    index : faiss.IndexBinary, optional
        A FAISS index already built over exactly these codes (read back from a save by
        :func:`restore_engine`); None builds one.
    """

    def __init__(self, quantizer: BinaryQuantizer, codes: NDArray[np.uint8], offsets: NDArray[np.int64],
                 kind: BinaryIndexKind = "ivf", seed: int = 0, index: Any = None) -> None:
        from indexes import _binary_kernels

        if kind not in BINARY_INDEXES:
            raise ConfigError(f"binary_index must be one of {BINARY_INDEXES}; got {kind!r}.")
        if not quantizer.is_trained:
            raise ConfigError("the binary engine needs a trained binary quantizer.")
        self._kernels = _binary_kernels
        self.quantizer, self.kind = quantizer, kind
        self.codes = np.asarray(codes)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.n_docs, self.n_vectors = self.offsets.shape[0] - 1, int(self.codes.shape[0])
        self.lengths = np.diff(self.offsets)
        self.seed = seed
        self.index = index if index is not None or not self.n_vectors else self._build(seed)

    def describe(self) -> dict[str, Any]:
        """What the token index was built from and with: the manifest's ``params.binary_token_index``."""
        nlist = int(self.index.nlist) if self.kind == "ivf" and self.index is not None else None
        return _description(self.kind, self.n_vectors, self.quantizer.code_size, self.seed, nlist)

    def _build(self, seed: int) -> Any:
        faiss = require("faiss", extra="cpu", feature="MultiVectorIndex(first_stage='binary')")
        bits = self.quantizer.code_size * 8
        codes = np.ascontiguousarray(self.codes)
        if self.kind == "flat":
            index = faiss.IndexBinaryFlat(bits)
        elif self.kind == "hnsw":
            index = faiss.IndexBinaryHNSW(bits, _HNSW_M)
            index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
        else:
            nlist = ivf_nlist(self.n_vectors)
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
            index.cp.seed = seed
            index.cp.max_points_per_centroid = _TRAIN_PER_LIST
            n_train = min(self.n_vectors, _TRAIN_PER_LIST * nlist)
            rng = np.random.default_rng(seed)
            sample = codes if n_train == self.n_vectors else codes[np.sort(rng.choice(self.n_vectors, n_train, False))]
            with native_stderr_to_log(logger):  # FAISS warns from C++ about few training points
                index.train(sample)
            self._quantizer_index = index.quantizer  # FAISS does not own it: keep it alive
        index.add(codes)
        return index

    def memory_bytes(self) -> int:
        """Bytes of the FAISS index: its copy of the codes plus its ids (IVF) or graph (HNSW)."""
        if self.index is None:
            return 0
        size = self.n_vectors * self.quantizer.code_size
        if self.kind == "ivf":
            return int(size + 8 * self.n_vectors + self.index.nlist * self.quantizer.code_size)
        if self.kind == "hnsw":
            hnsw = self.index.hnsw
            return int(size + 4 * hnsw.neighbors.size() + 4 * hnsw.levels.size() + 8 * hnsw.offsets.size())
        return size

    # ------------------------------------------------------------------ search
    def search(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], k: int, params: BinaryParams,
               allowed: NDArray[np.bool_] | None = None) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-``k`` (scores, rows) of each query of a CSR batch by table MaxSim; ``-inf`` / ``-1`` pad."""
        qv = np.ascontiguousarray(qv, dtype=np.float32)
        q_offsets = np.ascontiguousarray(q_offsets, dtype=np.int64)
        cand_offsets, cand_docs = self.candidates(qv, q_offsets, params, allowed)
        return self.score_candidates(qv, q_offsets, cand_offsets, cand_docs, k)

    def candidates(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], params: BinaryParams,
                   allowed: NDArray[np.bool_] | None = None) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
        """Stage 1: each query's candidate documents as CSR (``offsets`` (nq + 1,), ascending ``docs``)."""
        nq = q_offsets.shape[0] - 1
        live = self.lengths > 0 if allowed is None else allowed & (self.lengths > 0)
        if (self.index is None or params.token_k >= self.n_vectors
                or (allowed is not None and int(np.count_nonzero(live)) <= params.ndocs)):
            docs = np.flatnonzero(live).astype(np.int32)  # the budget covers every (allowed) document
            q_live = np.diff(q_offsets) > 0
            counts = np.where(q_live, docs.size, 0)
            return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.tile(docs, int(q_live.sum()))
        token_k = min(params.token_k, self.n_vectors)
        _, hits = self.index.search(self.quantizer.encode(qv), token_k, params=self._search_params(params, allowed))
        owner = np.repeat(np.arange(nq, dtype=np.int64), np.diff(q_offsets) * token_k)
        hits = hits.reshape(-1)
        found = hits >= 0
        doc = np.searchsorted(self.offsets, hits[found], side="right") - 1
        owner = owner[found]
        if allowed is not None:  # IVF lists are not filtered by FAISS: drop the hits here
            owner, doc = owner[allowed[doc]], doc[allowed[doc]]
        pairs = np.unique(owner * max(self.n_docs, 1) + doc)  # sorted by query, then document
        offsets = np.searchsorted(pairs // max(self.n_docs, 1), np.arange(nq + 1)).astype(np.int64)
        return offsets, (pairs % max(self.n_docs, 1)).astype(np.int32)

    def score_candidates(self, qv: NDArray[np.float32], q_offsets: NDArray[np.int64], cand_offsets: NDArray[np.int64],
                         cand_docs: NDArray[np.int32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Stage 2: table MaxSim of every candidate, the best ``k`` per query (rows, ``-1`` padded)."""
        nq = q_offsets.shape[0] - 1
        table, const = lookup_tables(self.quantizer, qv)
        scores = self._kernels.lut_maxsim(per_query_tables(table, q_offsets), const, q_offsets, cand_offsets, cand_docs,
                                          self.codes, self.offsets)
        counts = np.diff(cand_offsets)
        width = max(int(counts.max(initial=0)), 1)
        owner = np.repeat(np.arange(nq), counts)
        col = np.arange(cand_docs.size) - cand_offsets[owner]
        dense = np.full((nq, width), -np.inf, dtype=np.float32)
        rows = np.full((nq, width), -1, dtype=np.int64)
        dense[owner, col], rows[owner, col] = scores, cand_docs
        best, local = top_k(dense, min(k, width))
        labels = np.where(local >= 0, np.take_along_axis(rows, np.maximum(local, 0), axis=1), -1)
        labels[~np.isfinite(best)] = -1
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_l = np.full((nq, k), -1, dtype=np.int64)
        out_s[:, : best.shape[1]], out_l[:, : best.shape[1]] = np.where(labels >= 0, best, -np.inf), labels
        return out_s, out_l

    def _search_params(self, params: BinaryParams, allowed: NDArray[np.bool_] | None) -> Any:
        faiss = require("faiss", extra="cpu", feature="MultiVectorIndex(first_stage='binary')")
        assert self.index is not None
        if self.kind == "ivf":
            p = faiss.SearchParametersIVF()
            p.nprobe = min(params.nprobe, self.index.nlist)
            return p
        p = faiss.SearchParametersHNSW() if self.kind == "hnsw" else faiss.SearchParameters()
        if self.kind == "hnsw":
            p.efSearch = max(params.ef_search, params.token_k)
        if allowed is not None:  # only allowed vectors are visited; FAISS reads the bitmap during the search
            bitmap = np.packbits(np.repeat(allowed, self.lengths), bitorder="little")
            p.sel = faiss.IDSelectorBitmap(self.n_vectors, faiss.swig_ptr(bitmap))
            p._keep = (bitmap, p.sel)  # the selector points into the array: keep both alive with p
        return p


def _description(kind: str, n_vectors: int, code_size: int, seed: int, nlist: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"format": TOKEN_INDEX_FORMAT, "kind": kind, "vectors": n_vectors, "code_size": code_size,
                           "seed": seed}
    if kind == "ivf":
        out["nlist"] = nlist if nlist is not None else ivf_nlist(n_vectors)
    if kind == "hnsw":
        out["m"], out["ef_construction"] = _HNSW_M, _HNSW_EF_CONSTRUCTION
    return out


def save_token_index(engine: BinaryEngine, directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``engine``'s FAISS index as ``binary.token_index.npy``; returns (array entry, description)."""
    faiss = require("faiss", extra="cpu", feature="MultiVectorIndex(first_stage='binary')")
    blob = faiss.serialize_index_binary(engine.index) if engine.index is not None else np.zeros(0, np.uint8)
    return save_array(directory, TOKEN_INDEX_ARRAY, np.asarray(blob, dtype=np.uint8)), engine.describe()


def restore_engine(directory: Path, manifest: Any, quantizer: BinaryQuantizer, codes: NDArray[np.uint8],
                   offsets: NDArray[np.int64], kind: BinaryIndexKind, seed: int, *, mmap: bool) -> BinaryEngine | None:
    """The engine over ``codes`` with the token index a save left in ``directory``, or None to rebuild it.

    None (with the reason logged) when the directory holds no token index (saved before it was
    kept) or its description (``params.binary_token_index``) does not match this index: another
    format version, kind, vector count, code size or seed. The bytes are checked against the
    manifest's sha256 here even when the load skips hashing (``verify=False``), so FAISS never
    reads a file other than the one saved.

    Raises
    ------
    IndexFormatError
        If the file fails its checksum, cannot be read by FAISS, or holds an index of another
        type, width or size than its description says.
    """
    entry, recorded = manifest.arrays.get(TOKEN_INDEX_ARRAY), manifest.params.get("binary_token_index")
    if entry is None:
        logger.info("%s holds no saved binary token index (saved by an older version); the %s index is built "
                    "from the codes on the first search", directory, kind)
        return None
    expected = _description(kind, int(codes.shape[0]), quantizer.code_size, seed)  # what a rebuild would make
    if not isinstance(recorded, dict) or recorded != expected:
        logger.warning("%s: the saved binary token index does not match this index (saved %r, expected %r); it is "
                       "rebuilt from the codes on the first search", directory, recorded, expected)
        return None
    path = member(directory, entry.get("file") if isinstance(entry, dict) else None, what=f"arrays.{TOKEN_INDEX_ARRAY}.file")
    listed = manifest.files.get(path.name)
    size = path.stat().st_size
    if not isinstance(listed, dict) or listed.get("bytes") != size or file_sha256(path, limit=size) != listed.get("sha256"):
        raise IndexFormatError(f"{path} fails its sha256 check against the manifest; the saved binary token index is "
                               "corrupt. Restore the index, or delete the file and its manifest entries to rebuild it.")
    blob = load_array(directory, entry, name=TOKEN_INDEX_ARRAY, mmap=mmap)
    if blob.ndim != 1 or blob.dtype != np.uint8:
        raise IndexFormatError(f"{path} must hold a 1-D uint8 array (serialized FAISS index); got {blob.dtype} {blob.shape}.")
    if not codes.shape[0]:
        return BinaryEngine(quantizer, codes, offsets, kind, seed)
    faiss = require("faiss", extra="cpu", feature="MultiVectorIndex(first_stage='binary')")
    try:
        index = faiss.deserialize_index_binary(np.ascontiguousarray(blob))
    except RuntimeError as exc:
        raise IndexFormatError(f"{path} cannot be read by FAISS as a binary index ({str(exc)[-160:]}); the file is "
                               "damaged. Restore the index, or delete the file and its manifest entries to rebuild it.") from exc
    got = (type(index).__name__, int(index.d), int(index.ntotal))
    want = (_FAISS_TYPES[kind], quantizer.code_size * 8, int(codes.shape[0]))
    if got != want or (kind == "ivf" and int(index.nlist) != expected["nlist"]):
        raise IndexFormatError(f"{path} holds a FAISS {got[0]} of {got[1]} bits over {got[2]} codes; this index needs "
                               f"{want[0]} of {want[1]} bits over {want[2]} codes (nlist {recorded.get('nlist')}). "
                               "The file does not belong to this index.")
    logger.info("%s: read the saved binary %s token index (%d codes)", directory, kind, got[2])
    return BinaryEngine(quantizer, codes, offsets, kind, seed, index=index)

"""Multi-vector embeddings on disk: :func:`save_embeddings` / :func:`load_embeddings` (CSR layout,
the manifest, checksums and atomic write of every saved index)."""

from __future__ import annotations

import os
from pathlib import Path

from indexes._ids import read_id_list, write_id_list
from indexes._io import atomic_directory, file_table, load_array, save_array
from indexes._paths import load_pinned
from indexes.base import format_errors, open_manifest
from indexes.manifest import Manifest, write_manifest
from retrieval.errors import ConfigError, IndexFormatError, ShapeError
from retrieval.types import MultiVectorEmbeddings

__all__ = ["load_embeddings", "save_embeddings"]


def save_embeddings(mv: MultiVectorEmbeddings, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save multi-vector embeddings in CSR layout (``vectors.npy``, ``offsets.npy``, ``saliency.npy``)
    with their ids as arrays (str: ``ids_utf8.npy`` + ``ids_offsets.npy``; int64: ``ids_int64.npy``).

    The directory has the same manifest, checksums and atomic write as a saved index
    (``index_type`` ``"MultiVectorEmbeddings"``), so a half-written copy is never mistaken
    for a complete one. Reload with :func:`load_embeddings`, memory-mapped by default.
    """
    if not isinstance(mv, MultiVectorEmbeddings):
        raise ConfigError(f"save_embeddings takes MultiVectorEmbeddings; got {type(mv).__name__}.")
    target = Path(path)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        arrays = {"vectors": save_array(tmp, "vectors", mv.vectors), "offsets": save_array(tmp, "offsets", mv.offsets)}
        if mv.saliency is not None:
            arrays["saliency"] = save_array(tmp, "saliency", mv.saliency)
        write_id_list(tmp, mv.ids, arrays)
        write_manifest(tmp, Manifest(index_type="MultiVectorEmbeddings", dim=mv.dim, metric="ip", count=len(mv),
                                     arrays=arrays, files=file_table(tmp)))
    return target


def load_embeddings(path: str | os.PathLike[str], *, mmap: bool = True, verify: bool = True) -> MultiVectorEmbeddings:
    """Load embeddings written by :func:`save_embeddings`; ``mmap=True`` maps the vectors read-only."""
    with format_errors(path):
        return load_pinned(path, lambda d: _load_embeddings(d, mmap=mmap, verify=verify))


def _load_embeddings(directory: Path, *, mmap: bool, verify: bool) -> MultiVectorEmbeddings:
    manifest = open_manifest(directory, "MultiVectorEmbeddings", verify=verify, other="not saved MultiVectorEmbeddings")
    vectors = load_array(directory, manifest.arrays.get("vectors"), name="vectors", mmap=mmap)
    offsets = load_array(directory, manifest.arrays.get("offsets"), name="offsets")
    saliency = None
    if "saliency" in manifest.arrays:
        saliency = load_array(directory, manifest.arrays["saliency"], name="saliency", mmap=mmap)
    ids = read_id_list(directory, manifest)
    try:
        return MultiVectorEmbeddings(vectors=vectors, offsets=offsets, ids=ids, saliency=saliency)
    except ShapeError as exc:
        raise IndexFormatError(f"{directory}: the saved arrays are inconsistent ({exc}).") from exc

"""Multi-vector embeddings on disk: :func:`save_embeddings` / :func:`load_embeddings` (CSR layout,
the manifest, checksums and atomic write of every saved index)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexes._ids import IDS_FILE, check_storable_ids, read_checked
from indexes._idstore import decode_rows, encode
from indexes._io import atomic_directory, file_table, load_array, read_lines, save_array
from indexes._paths import load_pinned
from indexes.base import format_errors, open_manifest
from indexes.manifest import Manifest, write_manifest
from retrieval.errors import ConfigError, IndexFormatError, ShapeError
from retrieval.types import MultiVectorEmbeddings

__all__ = ["LIST_ARRAYS", "load_embeddings", "read_id_list", "save_embeddings", "write_id_list"]

#: Arrays of a plain id list in row order (saved raw embeddings, whose ids may repeat and are
#: never looked up): UTF-8 buffer + int64 offsets for str ids, or the int64 ids.
LIST_ARRAYS = ("ids_utf8", "ids_offsets", "ids_int64")


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


def write_id_list(directory: Path, ids: Any, arrays: dict[str, Any]) -> None:
    """Save ``ids`` (a list of str, or an int64 array) in row order as :data:`LIST_ARRAYS`; their
    entries go into ``arrays``. No lookup structure: for data that is read whole (raw embeddings).

    Raises
    ------
    ConfigError
        For a str id that UTF-8 cannot store (:func:`check_storable_ids`).
    """
    if isinstance(ids, np.ndarray):
        arrays["ids_int64"] = save_array(directory, "ids_int64", ids.astype(np.int64, copy=False))
        return
    ids = [str(i) for i in ids]
    check_storable_ids(ids)
    buf, offsets = encode(ids)
    arrays["ids_utf8"] = save_array(directory, "ids_utf8", buf)
    arrays["ids_offsets"] = save_array(directory, "ids_offsets", offsets)


def read_id_list(directory: Path, manifest: Manifest) -> list[str] | NDArray[np.int64]:
    """The ids :func:`write_id_list` saved for ``manifest.count`` rows: a list of str, or the int64
    array memory-mapped; a directory saved before them holds ``doc_ids.txt`` lines instead.

    Raises
    ------
    IndexFormatError
        For an array of the wrong dtype or length, offsets that do not run from 0 up to the
        buffer's end, or a buffer that is not UTF-8.
    """
    n, entries = manifest.count, manifest.arrays
    if LIST_ARRAYS[2] in entries:
        return read_checked(directory, entries, "ids_int64", n, (np.int64,))
    if LIST_ARRAYS[0] not in entries:
        return read_lines(directory / IDS_FILE, expected=n)
    buf = read_checked(directory, entries, "ids_utf8", None, (np.uint8,))
    offsets = read_checked(directory, entries, "ids_offsets", n + 1, (np.int64,))
    if int(offsets[0]) != 0 or int(offsets[-1]) != len(buf) or (np.diff(offsets) < 0).any():
        raise IndexFormatError(f"{directory}: the saved ids are damaged: the offsets must rise from 0 to the "
                               f"buffer's length {len(buf)}. Run `densezip check` on it, then save it again.")
    try:
        return decode_rows(buf, offsets, np.arange(n, dtype=np.int64))
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{directory}: the saved ids are damaged: not valid UTF-8 ({exc}).") from exc

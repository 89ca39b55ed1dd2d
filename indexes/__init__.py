"""Index structures and their on-disk format.

``FlatIndex`` (exact, NumPy) and ``FaissIndex`` (any FAISS factory string) share the
:class:`VectorIndex` API: ``train`` / ``add`` / ``delete`` / ``search`` / ``save`` /
``load``. :func:`load_index` opens any saved index; :func:`read_manifest` peeks at one.
FAISS is imported only when a ``FaissIndex`` is built or loaded. ``MultiVectorIndex`` holds
several compressed vectors per document and ranks by MaxSim (late interaction);
``ShardedIndex`` and ``ShardedMultiVectorIndex`` split either kind into hash-routed shards.
:func:`make_index` turns a spec string (``"exact"``, a FAISS factory string, or a
multi-vector spec) into the matching empty index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexes.base import Index, VectorIndex, load_index, register_index
from indexes.factory import make_index
from indexes.flat import FlatIndex
from indexes.manifest import FORMAT_VERSION, Manifest, read_manifest

if TYPE_CHECKING:
    from indexes.faiss_index import FaissIndex
    from indexes.multivector import MultiVectorIndex
    from indexes.sharded import ShardedIndex
    from indexes.sharded_multivector import ShardedMultiVectorIndex

__all__ = [
    "FORMAT_VERSION",
    "FaissIndex",
    "FlatIndex",
    "Index",
    "Manifest",
    "MultiVectorIndex",
    "ShardedIndex",
    "ShardedMultiVectorIndex",
    "VectorIndex",
    "load_index",
    "make_index",
    "read_manifest",
    "register_index",
]


def __getattr__(name: str) -> object:
    if name == "FaissIndex":
        from indexes.faiss_index import FaissIndex

        return FaissIndex
    if name == "MultiVectorIndex":
        from indexes.multivector import MultiVectorIndex

        return MultiVectorIndex
    if name == "ShardedIndex":
        from indexes.sharded import ShardedIndex

        return ShardedIndex
    if name == "ShardedMultiVectorIndex":
        from indexes.sharded_multivector import ShardedMultiVectorIndex

        return ShardedMultiVectorIndex
    raise AttributeError(f"module 'indexes' has no attribute {name!r}")

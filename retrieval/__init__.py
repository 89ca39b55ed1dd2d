"""densezip: dense retrieval with compressed indexes.

``import retrieval as rt`` is cheap: the public names below are loaded on first use, so
neither torch nor faiss is imported until an encoder or a FAISS index is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from retrieval._version import __version__

if TYPE_CHECKING:
    from retrieval.beir import BEIRDataset, load_beir
    from retrieval.encode.base import Encoder
    from retrieval.encode.colpali import ColPaliEncoder
    from retrieval.encode.dense import DenseEncoder
    from retrieval.encode.multivector import MultiVectorEncoder
    from retrieval.errors import (
        ConfigError,
        DataError,
        IndexFormatError,
        LockTimeoutError,
        MissingDependencyError,
        NotTrainedError,
        RetrievalError,
        ShapeError,
        ShardError,
        UnknownIdError,
    )
    from retrieval.evaluate import evaluate
    from retrieval.pipeline import Retriever
    from retrieval.rag import RetrievalComponent
    from retrieval.rerank.maxsim import MaxSimReranker
    from retrieval.types import Embeddings, Hit, MultiVectorEmbeddings, SearchResult

_LAZY: dict[str, str] = {
    "BEIRDataset": "retrieval.beir",
    "ColPaliEncoder": "retrieval.encode.colpali",
    "ConfigError": "retrieval.errors",
    "DataError": "retrieval.errors",
    "DenseEncoder": "retrieval.encode.dense",
    "Embeddings": "retrieval.types",
    "Encoder": "retrieval.encode.base",
    "Hit": "retrieval.types",
    "IndexFormatError": "retrieval.errors",
    "LockTimeoutError": "retrieval.errors",
    "MaxSimReranker": "retrieval.rerank.maxsim",
    "MissingDependencyError": "retrieval.errors",
    "MultiVectorEmbeddings": "retrieval.types",
    "MultiVectorEncoder": "retrieval.encode.multivector",
    "NotTrainedError": "retrieval.errors",
    "RetrievalComponent": "retrieval.rag",
    "RetrievalError": "retrieval.errors",
    "Retriever": "retrieval.pipeline",
    "SearchResult": "retrieval.types",
    "ShapeError": "retrieval.errors",
    "ShardError": "retrieval.errors",
    "UnknownIdError": "retrieval.errors",
    "evaluate": "retrieval.evaluate",
    "load_beir": "retrieval.beir",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

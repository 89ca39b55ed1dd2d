"""Encoders: text in, float vectors out.

Importing this package does not import torch or sentence-transformers; models are
loaded on first use. :func:`encoder_from_description` re-creates any encoder from the
description an index manifest stores.
"""

from __future__ import annotations

from retrieval.encode.base import Encoder
from retrieval.encode.dense import DEFAULT_MODEL, DenseEncoder, default_cache_dir, fingerprint_model_dir
from retrieval.encode.registry import encoder_from_description

__all__ = [
    "DEFAULT_MODEL",
    "DenseEncoder",
    "Encoder",
    "default_cache_dir",
    "encoder_from_description",
    "fingerprint_model_dir",
]

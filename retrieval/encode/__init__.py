"""Encoders: text in, float vectors out.

Importing this package does not import torch or sentence-transformers; models are
loaded on first use.
"""

from __future__ import annotations

from retrieval.encode.base import Encoder
from retrieval.encode.dense import DEFAULT_MODEL, DenseEncoder, default_cache_dir, fingerprint_model_dir

__all__ = ["DEFAULT_MODEL", "DenseEncoder", "Encoder", "default_cache_dir", "fingerprint_model_dir"]

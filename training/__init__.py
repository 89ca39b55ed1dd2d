"""Training procedures: JPQ (joint query-encoder and PQ-centroid training)."""

from __future__ import annotations

__all__ = ["JPQTrainer", "JPQTrainingArgs", "load_jpq"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from training import jpq

        return getattr(jpq, name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")

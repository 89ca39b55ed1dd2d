"""The one place where optional dependencies are imported."""

from __future__ import annotations

import importlib
from types import ModuleType

from retrieval.errors import MissingDependencyError

__all__ = ["has_faiss_gpu", "require"]


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the extra.

    Parameters
    ----------
    module : str
        Importable module name, e.g. ``"faiss"``.
    extra : str
        The ``densezip`` extra that installs it, e.g. ``"cpu"``.
    feature : str
        What needs it, used in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the optional package {module!r}, which is not installed "
            f"({exc}).\nInstall it with:  pip install 'densezip[{extra}]'"
        ) from exc


def has_faiss_gpu() -> bool:
    """True when the installed faiss is a GPU build and at least one CUDA device is visible."""
    try:
        faiss = importlib.import_module("faiss")
    except ImportError:
        return False
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(hasattr(faiss, "StandardGpuResources") and get_num_gpus and get_num_gpus() > 0)

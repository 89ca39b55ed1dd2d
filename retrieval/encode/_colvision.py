"""Loading and checking the ColVision checkpoints behind :class:`~retrieval.encode.colpali.ColPaliEncoder`.

Two checkpoint formats, two backends:

- ``"transformers"``: the transformers-native checkpoints (``model_type`` ``"colpali"`` or
  ``"colqwen2"`` in ``config.json``, the ``-hf`` repositories such as
  ``vidore/colpali-v1.3-hf``), loaded with transformers' own ``ColPaliForRetrieval`` /
  ``ColQwen2ForRetrieval`` and the Pillow image-processing backend. Works on CPU-only machines.
- ``"colpali-engine"``: checkpoints in colpali-engine's format (``vidore/colpali-v1.3``,
  ``vidore/colqwen2-v1.0``: a PEFT adapter on a ColPali / ColQwen2 base, or merged weights;
  ``architectures`` ``["ColPali"]`` / ``["ColQwen2"]`` in the base's ``config.json``), loaded
  with ``colpali_engine.models.ColPali`` / ``ColQwen2`` and their processors. That needs the
  ``colpali-engine`` package (extra ``colpali``, GPU only: its dependencies include a CUDA
  build of torchvision, so it does not import beside a CPU-only torch).

:func:`select_backend` makes the choice from the checkpoint's config alone; no weights are
read. The colpali-engine path is not exercised on this project's CPU-only CI: its test
(``tests/gpu/test_colpali_engine.py``) runs only where colpali-engine imports and a CUDA device
is present. torch and transformers are passed in by the caller, so importing this module
imports nothing optional.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "ARCHITECTURES",
    "BACKENDS",
    "DEFAULT_COLPALI_MODEL",
    "ENGINE_ARCHITECTURES",
    "check_model_and_processor",
    "engine_available",
    "load_checkpoint",
    "model_backend",
    "select_backend",
]

#: The transformers-native ColPali checkpoint (PaliGemma-3B backbone, ``d = 128``).
DEFAULT_COLPALI_MODEL = "vidore/colpali-v1.3-hf"

#: ``model_type`` in config.json -> (model class, processor class), both in transformers.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "colpali": ("ColPaliForRetrieval", "ColPaliProcessor"),
    "colqwen2": ("ColQwen2ForRetrieval", "ColQwen2Processor"),
}

#: ``architectures[0]`` of a colpali-engine checkpoint -> (model class, processor class in
#: ``colpali_engine.models``, architecture name as in :data:`ARCHITECTURES`).
ENGINE_ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "ColPali": ("ColPali", "ColPaliProcessor", "colpali"),
    "ColQwen2": ("ColQwen2", "ColQwen2Processor", "colqwen2"),
}

BACKENDS = ("transformers", "colpali-engine")
_ENGINE = "colpali_engine"


def engine_available() -> bool:
    """True when the ``colpali_engine`` package is installed (it is imported only to load a model)."""
    return importlib.util.find_spec(_ENGINE) is not None


def select_backend(config: Any, path: str, *, engine_installed: bool) -> tuple[str, str]:
    """``(backend, architecture)`` for a checkpoint whose (base) config is ``config``.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The checkpoint's config; for a PEFT adapter, its base model's.
    path : str
        The checkpoint, named in messages.
    engine_installed : bool
        Whether colpali-engine is installed (:func:`engine_available`).

    Returns
    -------
    tuple of str
        ``("transformers", "colpali" | "colqwen2")`` for a ``-hf`` checkpoint,
        ``("colpali-engine", "colpali" | "colqwen2")`` for one in colpali-engine's format.

    Raises
    ------
    MissingDependencyError
        A colpali-engine checkpoint without colpali-engine installed.
    ConfigError
        Any other checkpoint: not a ColPali-family model.
    """
    model_type = getattr(config, "model_type", None)
    if model_type in ARCHITECTURES:
        return "transformers", str(model_type)
    names = [a for a in (getattr(config, "architectures", None) or []) if a in ENGINE_ARCHITECTURES]
    if names:
        architecture = ENGINE_ARCHITECTURES[names[0]][2]
        if not engine_installed:
            raise MissingDependencyError(
                f"model {path!r} is a {names[0]} checkpoint in colpali-engine's format, which needs the "
                "colpali-engine package (a CUDA machine: pip install 'densezip[colpali]'). Without it, use the "
                f"transformers-native checkpoint of the same model instead (e.g. {DEFAULT_COLPALI_MODEL!r} or "
                "'vidore/colqwen2-v1.0-hf'), which runs on CPU too."
            )
        return "colpali-engine", architecture
    raise ConfigError(
        f"model {path!r} is not a ColPali-family checkpoint: its config has model_type {model_type!r} and "
        f"architectures {getattr(config, 'architectures', None)!r}. ColPaliEncoder (and `densezip index-pages "
        f"--model`) needs a ColPali / ColQwen2 retrieval model: a transformers-native one (model_type "
        f"{' or '.join(map(repr, sorted(ARCHITECTURES)))}, e.g. {DEFAULT_COLPALI_MODEL!r} or "
        "'vidore/colqwen2-v1.0-hf'), or, with colpali-engine installed, one in its format (architectures "
        f"{sorted(ENGINE_ARCHITECTURES)}, e.g. 'vidore/colpali-v1.3')."
    )


def load_checkpoint(
    path: str, *, torch: ModuleType, transformers: ModuleType, device: str, dtype_name: str, eager: bool
) -> tuple[Any, Any, str, str]:
    """Load a ColVision model and its processor onto ``device``, with the backend its format needs.

    Parameters
    ----------
    path : str
        Local directory or hub name.
    torch, transformers : module
        The imported modules.
    device : str
        A concrete torch device (see :func:`~retrieval.encode._device.resolve_device`).
    dtype_name : {"float32", "bfloat16", "float16"}
        Weight dtype.
    eager : bool
        Load with eager attention, the only kernel that returns attention weights.

    Returns
    -------
    tuple
        ``(model, processor, architecture, backend)``: architecture a key of
        :data:`ARCHITECTURES`, backend one of :data:`BACKENDS` (see :func:`select_backend`).

    Raises
    ------
    ConfigError
        If the checkpoint cannot be found or read, or is not a ColPali-family model.
    MissingDependencyError
        For a colpali-engine checkpoint where colpali-engine is not installed or cannot be imported.
    """
    config = _checkpoint_config(transformers, path)
    backend, architecture = select_backend(config, path, engine_installed=engine_available())
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name)}
    if eager:
        kwargs["attn_implementation"] = "eager"
    processor_kwargs: dict[str, Any] = {}
    if backend == "transformers":
        model_cls_name, processor_cls_name = ARCHITECTURES[architecture]
        classes: Any = transformers
        # The Pillow backend gives the same pixels with or without torchvision installed.
        processor_kwargs["backend"] = "pil"
    else:  # untested here: needs colpali-engine, which needs a CUDA build of torch / torchvision
        model_cls_name, processor_cls_name, _ = next(v for v in ENGINE_ARCHITECTURES.values() if v[2] == architecture)
        classes = _import_engine(path)
    try:
        model = getattr(classes, model_cls_name).from_pretrained(path, **kwargs)
        processor = getattr(classes, processor_cls_name).from_pretrained(path, **processor_kwargs)
    except OSError as exc:
        raise ConfigError(
            f"could not load the {architecture} weights or processor of {path!r} ({backend}): {exc}\n"
            "Check that the folder (or the Hugging Face cache) holds the complete model: config.json (or "
            "adapter_config.json and its base model), the *.safetensors weights, the processor / preprocessor "
            "config and the tokenizer files."
        ) from exc
    model.to(device)
    return model, processor, architecture, backend


def _import_engine(path: str) -> ModuleType:
    try:
        return importlib.import_module(f"{_ENGINE}.models")
    except Exception as exc:  # an ImportError, or torchvision's RuntimeError beside a CPU-only torch
        raise MissingDependencyError(
            f"model {path!r} needs colpali-engine, which is installed but cannot be imported here "
            f"({type(exc).__name__}: {exc}). It needs a CUDA build of torch and torchvision (pip install "
            f"'densezip[colpali]' on a GPU machine); on CPU use the transformers-native '-hf' checkpoint "
            f"(e.g. {DEFAULT_COLPALI_MODEL!r})."
        ) from exc


def _checkpoint_config(transformers: ModuleType, path: str) -> Any:
    """The config that decides the backend: the checkpoint's own, or a PEFT adapter's base model's."""
    directory = Path(path)
    if directory.is_dir() and not (directory / "config.json").exists() and (directory / "adapter_config.json").exists():
        return _adapter_base_config(transformers, path, directory / "adapter_config.json")
    try:
        return _load_config(transformers, path)
    except ConfigError:
        if directory.is_dir():
            raise
        found = _find_adapter(transformers, path)  # a hub adapter repository has no config.json
        if found is None:
            raise
        return _adapter_base_config(transformers, path, Path(found))


def _find_adapter(transformers: ModuleType, path: str) -> str | None:
    finder = getattr(getattr(transformers, "utils", None), "find_adapter_config_file", None)
    if finder is None:  # pragma: no cover - transformers without PEFT helpers
        return None
    try:
        found = finder(path)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, str) else None


def _adapter_base_config(transformers: ModuleType, path: str, adapter_file: Path) -> Any:
    try:
        adapter = json.loads(adapter_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{adapter_file} (the PEFT adapter config of {path!r}) cannot be read: {exc}") from exc
    base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{adapter_file} names no base model ('base_model_name_or_path'); {path!r} cannot be "
                          "loaded. Pass a complete checkpoint, or fix the adapter config.")
    return _load_config(transformers, base)


def _load_config(transformers: ModuleType, path: str) -> Any:
    """Read ``config.json`` from a directory, the Hugging Face cache or the hub, or explain why not."""
    is_dir = Path(path).is_dir()
    looks_like_path = path.startswith((".", "~", os.sep)) or path.count("/") > 1 or os.path.isabs(path)
    if not is_dir and looks_like_path:
        raise ConfigError(
            f"model directory {path!r} does not exist or is not a directory. Pass the folder that holds "
            f"config.json and the weights, or a hub name such as {DEFAULT_COLPALI_MODEL!r}."
        )
    try:
        return transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:  # ValueError: a folder without config.json / model_type
        if is_dir:
            raise ConfigError(
                f"model directory {path!r} holds no readable ColPali model ({exc}). It needs config.json, "
                "the *.safetensors weights, processor_config.json and the tokenizer files, as written by "
                "save_pretrained() or downloaded from the hub."
            ) from exc
        raise ConfigError(
            f"the weights of {path!r} could not be found locally (it is not a directory, and it is not in the "
            f"Hugging Face cache), and downloading them failed: {exc}\n"
            f"Download the model on a machine with internet access (hf download {path}) and copy it here, "
            "either the whole Hugging Face cache (~/.cache/huggingface/hub) or the downloaded folder; then "
            "pass that folder as model=... (HF_HUB_OFFLINE=1 forbids downloads)."
        ) from exc


def _image_token_id_of_config(config: Any) -> int | None:
    # transformers' ColVision configs wrap the VLM's (vlm_config); colpali-engine's models use the VLM's own.
    vlm_config = getattr(config, "vlm_config", None) or config
    value = getattr(vlm_config, "image_token_id", None)
    if value is None:
        value = getattr(vlm_config, "image_token_index", None)
    return int(value) if isinstance(value, int) else None


def model_backend(model: Any) -> tuple[str, str] | None:
    """``(backend, architecture)`` of a built ColVision model, or None for any other model."""
    architecture = getattr(getattr(model, "config", None), "model_type", None)
    if architecture in ARCHITECTURES:
        return "transformers", str(architecture)
    for cls in type(model).__mro__:  # colpali-engine's ColPali / ColQwen2, or a subclass of one
        engine = ENGINE_ARCHITECTURES.get(cls.__name__)
        if engine is not None and cls.__module__.startswith(_ENGINE):
            return "colpali-engine", engine[2]
    return None


def check_model_and_processor(model: Any, processor: Any, *, owner: str, saliency: bool) -> int:
    """Check that a ColVision model and processor fit together (and the attention kernel); return ``dim``.

    Parameters
    ----------
    model : ColPaliForRetrieval or ColQwen2ForRetrieval (or colpali-engine's ColPali / ColQwen2)
    processor : ColPaliProcessor or ColQwen2Processor (transformers' or colpali-engine's)
    owner : str
        The caller (``"ColPaliEncoder.from_model"``), named in messages.
    saliency : bool
        Whether attention weights are needed (then the model must use eager attention).

    Returns
    -------
    int
        The model's ``embedding_dim``.

    Raises
    ------
    ConfigError
        If the processor lacks the ColVision methods, marks image patches with another token
        than the model expects, the config has no ``embedding_dim``, or ``saliency`` is asked
        of a model whose attention kernel returns no weights.
    """
    for attr in ("process_images", "process_queries", "image_token_id"):
        if not hasattr(processor, attr):
            raise ConfigError(
                f"{owner} needs a ColPaliProcessor or ColQwen2Processor; got {type(processor).__name__}, "
                f"which has no {attr!r}."
            )
    model_token = _image_token_id_of_config(model.config)
    if model_token is not None and int(processor.image_token_id) != model_token:
        raise ConfigError(
            f"{owner}: the processor marks image patches with token id {processor.image_token_id}, but the "
            f"model expects {model_token}. Load processor and model from the same checkpoint."
        )
    dim = getattr(model.config, "embedding_dim", None)
    if dim is None:  # colpali-engine's models keep the projection size on the model
        dim = getattr(model, "dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"{owner}: model config has no positive embedding_dim (got {dim!r}).")
    if saliency:
        impl = getattr(model.config, "_attn_implementation", None)
        if impl != "eager":
            raise ConfigError(
                f"{owner}(saliency=True) needs attention weights, but the model uses attn_implementation={impl!r}, "
                "which returns none. Load it with attn_implementation='eager' "
                "(or call model.set_attn_implementation('eager')), or pass saliency=False."
            )
    return dim

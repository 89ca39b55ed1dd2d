"""Loading and checking the ColVision checkpoints behind :class:`~retrieval.encode.colpali.ColPaliEncoder`.

The transformers-native ColPali / ColQwen2 checkpoints (``model_type`` ``"colpali"`` or
``"colqwen2"``) are read from a local directory or the Hugging Face cache, with the Pillow
image-processing backend. torch and transformers are passed in by the caller, so importing
this module imports nothing optional.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["ARCHITECTURES", "DEFAULT_COLPALI_MODEL", "check_model_and_processor", "load_checkpoint"]

#: The transformers-native ColPali checkpoint (PaliGemma-3B backbone, ``d = 128``).
DEFAULT_COLPALI_MODEL = "vidore/colpali-v1.3-hf"

#: ``model_type`` in config.json -> (model class, processor class), both in transformers.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "colpali": ("ColPaliForRetrieval", "ColPaliProcessor"),
    "colqwen2": ("ColQwen2ForRetrieval", "ColQwen2Processor"),
}


def load_checkpoint(
    path: str, *, torch: ModuleType, transformers: ModuleType, device: str, dtype_name: str, eager: bool
) -> tuple[Any, Any, str]:
    """Load a ColVision model and its processor onto ``device``.

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
        ``(model, processor, architecture)``, architecture being a key of :data:`ARCHITECTURES`.

    Raises
    ------
    ConfigError
        If the checkpoint cannot be found or read, or is not a supported architecture.
    """
    config = _load_config(transformers, path)
    architecture = getattr(config, "model_type", None)
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"model {path!r} has model_type {architecture!r}; ColPaliEncoder supports "
            f"{sorted(ARCHITECTURES)} (the transformers-native '-hf' checkpoints, e.g. {DEFAULT_COLPALI_MODEL!r} "
            "or 'vidore/colqwen2-v1.0-hf'). Checkpoints in the colpali-engine format are not supported."
        )
    model_cls_name, processor_cls_name = ARCHITECTURES[str(architecture)]
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name)}
    if eager:
        kwargs["attn_implementation"] = "eager"
    try:
        model = getattr(transformers, model_cls_name).from_pretrained(path, **kwargs)
        # The Pillow backend gives the same pixels with or without torchvision installed.
        processor = getattr(transformers, processor_cls_name).from_pretrained(path, backend="pil")
    except OSError as exc:
        raise ConfigError(
            f"could not load the {architecture} weights or processor of {path!r}: {exc}\n"
            "Check that the folder (or the Hugging Face cache) holds the complete model: config.json, "
            "the *.safetensors weights, processor_config.json and the tokenizer files."
        ) from exc
    model.to(device)
    return model, processor, str(architecture)


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
    vlm_config = getattr(config, "vlm_config", None)
    value = getattr(vlm_config, "image_token_id", None)
    if value is None:
        value = getattr(vlm_config, "image_token_index", None)
    return int(value) if isinstance(value, int) else None


def check_model_and_processor(model: Any, processor: Any, *, owner: str, saliency: bool) -> int:
    """Check that a ColVision model and processor fit together (and the attention kernel); return ``dim``.

    Parameters
    ----------
    model : ColPaliForRetrieval or ColQwen2ForRetrieval
    processor : ColPaliProcessor or ColQwen2Processor
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

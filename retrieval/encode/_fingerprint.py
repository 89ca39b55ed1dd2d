"""Model fingerprints: a short identity of a model's weights and configuration.

A fingerprint is stored in every encoder description (and so in every index manifest)
and is part of the embedding-cache key, so queries are never encoded by a different model
than the documents were, and stale cached vectors are never served.

Three kinds, by what is known about the model:

* ``"dir-sha256:..."`` -- a local model directory, hashed from its files without loading
  it (:func:`fingerprint_model_dir`);
* ``"params-sha256:..."`` -- a loaded model, hashed from its configuration and every
  parameter (:func:`fingerprint_sentence_transformer`, :func:`fingerprint_transformers_model`);
* ``"hub:<name>@<commit>"`` -- written by the ColPali encoder for hub checkpoints.

The byte streams hashed here must never change: saved indexes store these strings and
compare them at load time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

    from sentence_transformers import SentenceTransformer

__all__ = ["fingerprint_model_dir", "fingerprint_sentence_transformer", "fingerprint_transformers_model"]

# Files up to 2 * _CHUNK are hashed whole, larger ones by their first and last _CHUNK
# bytes plus their size.
_CHUNK = 1 << 20
# transformers config entries that say how a model was loaded, not what it computes.
_LOAD_TIME_CONFIG_KEYS = ("_name_or_path", "_attn_implementation", "_commit_hash", "transformers_version", "dtype",
                          "torch_dtype")


def fingerprint_model_dir(path: str | os.PathLike[str]) -> str:
    """Fingerprint a local model directory from its file contents, cheaply.

    Every regular file under ``path`` (recursively, skipping hidden files and
    directories such as ``.git`` or ``.cache``) contributes its relative path, its size
    and its bytes: whole when at most 2 MiB (configs, tokenizer, vocabulary), else the
    first and last MiB (weights). About 2 MiB are read per large file, so a 1 GB model is
    fingerprinted in milliseconds, and any change to a config file, a resized or
    re-saved weight file, or a fine-tune (which rewrites the first tensors) changes the
    result. File times and the absolute path are ignored on purpose: a copied or
    reinstalled model keeps its fingerprint, on any machine.

    Parameters
    ----------
    path : str or os.PathLike
        A sentence-transformers model directory.

    Returns
    -------
    str
        ``"dir-sha256:"`` followed by 32 hex digits.

    Raises
    ------
    ConfigError
        If ``path`` is not a directory or holds no files.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"model directory {str(root)!r} does not exist or is not a directory.")
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fname in filenames:
            if not fname.startswith("."):
                full = Path(dirpath) / fname
                files.append((full.relative_to(root).as_posix(), full))
    if not files:
        raise ConfigError(f"model directory {str(root)!r} contains no files; is the model downloaded?")
    digest = hashlib.sha256(b"densezip-model-dir-v1\0")
    for rel, full in sorted(files):
        size = full.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with full.open("rb") as fh:
            if size <= 2 * _CHUNK:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_CHUNK))
                fh.seek(-_CHUNK, os.SEEK_END)
                digest.update(fh.read(_CHUNK))
    return "dir-sha256:" + digest.hexdigest()[:32]


def _update_with_parameters(digest: Any, model: Any, torch: ModuleType) -> None:
    """Feed every tensor of ``model.state_dict()`` (name, dtype, shape, bytes) to ``digest``."""
    for key, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())


def fingerprint_sentence_transformer(model: SentenceTransformer, torch: ModuleType) -> str:
    """Fingerprint a loaded sentence-transformers model from its module configs, prompts and parameters.

    Used for hub names, whose files are not located here. Reads all weights once (about
    0.2 s per 100 MB). ``max_seq_length`` is left out because the caller sets it and it is
    part of the embedding-cache key on its own.

    Returns
    -------
    str
        ``"params-sha256:"`` followed by 32 hex digits.
    """
    digest = hashlib.sha256(b"densezip-model-params-v1\0")
    for module in model:
        get_config = getattr(module, "get_config_dict", None)
        config = dict(get_config()) if callable(get_config) else {}
        config.pop("max_seq_length", None)
        digest.update(type(module).__name__.encode() + b"\0")
        digest.update(json.dumps(config, sort_keys=True, default=str).encode() + b"\0")
    digest.update(json.dumps(getattr(model, "prompts", {}), sort_keys=True, default=str).encode() + b"\0")
    _update_with_parameters(digest, model, torch)
    return "params-sha256:" + digest.hexdigest()[:32]


def fingerprint_transformers_model(model: Any, torch: ModuleType) -> str:
    """Fingerprint a loaded transformers model (ColPali / ColQwen2) from its config and parameters.

    Config entries that only record how the model was loaded (path, attention kernel,
    dtype, library version) are left out. Reads all weights once.

    Returns
    -------
    str
        ``"params-sha256:"`` followed by 32 hex digits.
    """
    digest = hashlib.sha256(b"densezip-colpali-params-v1\0")
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else {}
    for key in _LOAD_TIME_CONFIG_KEYS:
        config.pop(key, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode() + b"\0")
    _update_with_parameters(digest, model, torch)
    return "params-sha256:" + digest.hexdigest()[:32]

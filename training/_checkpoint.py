"""The JPQ trainer's resume checkpoint as one safetensors file: tensors + JSON, no pickle.

A checkpoint is a nested structure (the model's and the optimizer's state dicts, the
scheduler state, the RNG state, the history) of dicts, lists, numbers, strings and torch
tensors. :func:`write_checkpoint` stores every tensor under a path-like key in a safetensors
file and the rest as JSON in the file's metadata, where each tensor is replaced by
``{"__tensor__": key}``. Reading it back (:func:`read_checkpoint`) parses a fixed binary
layout and JSON only: a checkpoint file cannot run code, unlike ``torch.load`` of a pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from retrieval._optional import require
from retrieval.errors import ConfigError

__all__ = ["CHECKPOINT_FILE", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FILE = "checkpoint.safetensors"
_TAG = "__tensor__"
_STATE_KEY = "densezip.jpq.state"


def _split(obj: Any, key: str, tensors: dict[str, Any], torch: Any) -> Any:
    """``obj`` with every tensor moved into ``tensors`` (under ``key``-derived names)."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().clone().contiguous()  # own storage: safetensors refuses shared memory
        return {_TAG: key}
    if isinstance(obj, dict):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"checkpoint keys must be str or int; got {sorted(map(type, obj), key=str)}")
        # int keys (optimizer state is keyed by parameter number) are kept as such via a marker list
        return {"__dict__": [[k, _split(v, f"{key}.{k}", tensors, torch)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{key}.{i}", tensors, torch) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (at {key})")


def _join(obj: Any, tensors: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TAG}:
            return tensors.get_tensor(obj[_TAG])
        return {k: _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def write_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/checkpoint.safetensors`` atomically (temporary file + rename)."""
    torch = require("torch", extra="cpu", feature="JPQ checkpoints")
    save_file = require("safetensors.torch", extra="cpu", feature="JPQ checkpoints").save_file
    tensors: dict[str, Any] = {}
    skeleton = _split(state, "state", tensors, torch)
    final = directory / CHECKPOINT_FILE
    tmp = directory / f".{CHECKPOINT_FILE}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={_STATE_KEY: json.dumps(skeleton)})
    os.replace(tmp, final)
    return final


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_checkpoint`; never unpickles anything.

    Raises
    ------
    ConfigError
        If the file is not such a checkpoint (damaged, or another format such as a pickle).
    """
    safe_open = require("safetensors", extra="cpu", feature="JPQ checkpoints").safe_open
    if not path.is_file():
        raise ConfigError(f"the JPQ checkpoint {path} is not a regular file; delete it to start over.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            text = (f.metadata() or {}).get(_STATE_KEY)
            if text is None:
                raise ValueError("no densezip state in its metadata")
            state = _join(json.loads(text), f)
    except Exception as exc:  # safetensors / json raise many types for a damaged or foreign file
        raise ConfigError(
            f"cannot read the JPQ checkpoint {path} ({type(exc).__name__}); it is damaged or "
            "not a densezip checkpoint. Delete it to start over."
        ) from exc
    if not isinstance(state, dict):
        raise ConfigError(f"the JPQ checkpoint {path} holds no state object; delete it to start over.")
    return state

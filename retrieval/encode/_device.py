"""The ``device`` option of the encoders: checked at construction, resolved at model load.

Only ``"auto"`` may fall back to the CPU (logged at INFO); an explicit device that cannot
be honoured raises :class:`~retrieval.errors.MissingDependencyError` naming the encoder
(``owner``) that asked for it. Constructing an encoder never probes the hardware: torch is
passed in by the caller when the model is loaded.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from retrieval.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["check_device", "resolve_device"]

logger = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(device: object) -> str:
    """Return ``device`` if it is a valid ``device`` option, else raise ConfigError.

    Examples
    --------
    >>> check_device("cuda:1")
    'cuda:1'
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    retrieval.errors.ConfigError: device must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'; got 'gpu'.
    """
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ConfigError(f"device must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'; got {device!r}.")
    return device


def resolve_device(spec: str, torch: ModuleType, *, owner: str) -> str:
    """Turn a checked ``device`` option into a concrete torch device string, or raise.

    Parameters
    ----------
    spec : str
        A value accepted by :func:`check_device`.
    torch : module
        The imported torch module.
    owner : str
        The encoder class asking (``"DenseEncoder"``), named in messages.

    Returns
    -------
    str
        ``"cpu"``, ``"mps"``, ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    MissingDependencyError
        If an explicit ``"cuda"``, ``"cuda:N"`` or ``"mps"`` is not available.
    """
    if spec == "cpu":
        return "cpu"
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if mps_available:
            return "mps"
        logger.info("%s(device='auto'): no CUDA or MPS device available; using the CPU.", owner)
        return "cpu"
    if spec == "mps":
        if not mps_available:
            raise MissingDependencyError(
                f"{owner}(device='mps') needs Apple's Metal backend, which torch {torch.__version__} "
                "reports as unavailable on this machine. Use device='auto' to fall back to the CPU, or device='cpu'."
            )
        return "mps"
    # "cuda" or "cuda:N" (the pattern was checked by check_device).
    if not torch.cuda.is_available():
        cuda_build = getattr(torch.version, "cuda", None) or "none (CPU-only build)"
        raise MissingDependencyError(
            f"{owner}(device={spec!r}) needs a CUDA device, but torch {torch.__version__} "
            f"(CUDA version: {cuda_build}) sees none. Use device='auto' to fall back to the CPU, "
            "device='cpu', or install a CUDA build of torch on a machine with an NVIDIA GPU."
        )
    if ":" in spec:
        index, count = int(spec.split(":", 1)[1]), torch.cuda.device_count()
        if index >= count:
            raise MissingDependencyError(
                f"{owner}(device={spec!r}) asks for CUDA device {index}, but only {count} "
                f"device(s) are visible (cuda:0 .. cuda:{count - 1}). Check CUDA_VISIBLE_DEVICES."
            )
    return spec

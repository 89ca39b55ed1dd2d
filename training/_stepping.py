"""Small torch helpers of the trainers: the device check and a pair of optimizers stepped as one."""

from __future__ import annotations

from typing import Any

from retrieval.errors import ConfigError

__all__ = ["Stepped", "check_device"]


def check_device(torch: Any, device: str) -> str:
    """``device`` if torch can use it: "cpu", "cuda" or "cuda:<n>"; a ConfigError otherwise.

    Examples
    --------
    >>> import torch
    >>> check_device(torch, "cpu")
    'cpu'
    """
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:<n>'; got {device!r}.")
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for, but torch sees no CUDA device (torch "
                          f"{torch.__version__}); use device='cpu', or install a CUDA build of torch on a GPU machine.")
    if ":" in device:
        number = device.split(":", 1)[1]
        if not number.isdigit() or int(number) >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered 0..{torch.cuda.device_count() - 1}.")
    return device


class Stepped:
    """Several optimizers (or learning-rate schedules) that step, zero and checkpoint together.

    Used when the encoder and the centroids need different optimizer kinds (AdamW and SGD).
    """

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self.parts for group in part.param_groups]

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad()

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts = state.get("parts") if isinstance(state, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ConfigError(f"the checkpoint holds state for a different optimizer setup ({type(state).__name__}); "
                              "use another checkpoint_dir or delete the checkpoint.")
        for part, part_state in zip(self.parts, parts, strict=True):
            part.load_state_dict(part_state)

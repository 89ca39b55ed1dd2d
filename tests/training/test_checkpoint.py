"""The JPQ resume checkpoint is tensors + JSON: it round-trips, and a planted pickle never runs."""

from __future__ import annotations

import os
import pickle

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from retrieval.errors import ConfigError  # noqa: E402
from training._checkpoint import CHECKPOINT_FILE, read_checkpoint, write_checkpoint  # noqa: E402


class _Payload:
    """Unpickling this creates ``marker``: proof that a load ran stored code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_round_trip_keeps_tensors_int_keys_and_numbers(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"epoch": 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "rng": torch.get_rng_state(), "history": {"losses": [0.5, 0.25], "dev": None}}
    path = write_checkpoint(tmp_path, state)
    assert path.name == CHECKPOINT_FILE and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    back = read_checkpoint(path)
    assert back["epoch"] == 1 and back["history"] == state["history"]
    assert torch.equal(back["model"]["weight"], model.weight.detach())
    assert set(back["optimizer"]["state"]) == {0, 1}  # the optimizer's int keys survive
    assert torch.equal(back["rng"], state["rng"])
    opt.load_state_dict(back["optimizer"])  # accepted by torch as is


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_planted_pickle_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(pickle.dumps({"model": _Payload(str(marker))}, protocol=protocol))
    with pytest.raises(ConfigError, match="not a densezip checkpoint") as info:
        read_checkpoint(path)
    assert not marker.exists()
    assert "mkdir" not in str(info.value)  # no bytes of the file are echoed


def test_a_torch_save_pickle_renamed_as_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"x": _Payload(str(marker))}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ConfigError):
        read_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert not marker.exists()


def test_a_fifo_checkpoint_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_checkpoint(tmp_path / CHECKPOINT_FILE)

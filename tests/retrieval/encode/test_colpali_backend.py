"""ColPaliEncoder: which backend loads a checkpoint, and the ``max_image_side`` control (offline, CPU).

colpali-engine cannot be imported beside this project's CPU-only torch (it needs a CUDA build
of torchvision), so its path is exercised here with a stand-in ``colpali_engine.models`` module
whose ``ColPali`` behaves like colpali-engine's (a PaliGemma config, ``dim`` on the model, the
``(B, L, d)`` tensor as output) around the tiny transformers model. The real package runs in
tests/gpu/test_colpali_engine.py where it is installed and a CUDA device is present.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.encode import _colvision
from retrieval.encode.colpali import ColPaliEncoder
from retrieval.errors import ConfigError, MissingDependencyError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    from test_colpali import _one_torch_thread, _pages, _tiny_colpali, _tiny_colqwen2  # noqa: F401 (fixture)
finally:
    sys.path.pop(0)


def _config(model_type: str, architectures: list[str] | None = None) -> Any:
    return types.SimpleNamespace(model_type=model_type, architectures=architectures)


def test_select_backend_by_checkpoint_format() -> None:
    select = _colvision.select_backend
    for installed in (True, False):  # a transformers-native checkpoint never needs colpali-engine
        assert select(_config("colpali"), "m", engine_installed=installed) == ("transformers", "colpali")
        assert select(_config("colqwen2"), "m", engine_installed=installed) == ("transformers", "colqwen2")
    assert select(_config("paligemma", ["ColPali"]), "m", engine_installed=True) == ("colpali-engine", "colpali")
    assert select(_config("qwen2_vl", ["ColQwen2"]), "m", engine_installed=True) == ("colpali-engine", "colqwen2")
    with pytest.raises(MissingDependencyError, match=r"ColQwen2 checkpoint in colpali-engine's format.*"
                                                     r"densezip\[colpali\].*'vidore/colqwen2-v1.0-hf'"):
        select(_config("qwen2_vl", ["ColQwen2"]), "vidore/colqwen2-v1.0", engine_installed=False)
    for config in (_config("paligemma", ["PaliGemmaForConditionalGeneration"]), _config("bert"), _config("x", None)):
        with pytest.raises(ConfigError, match=r"not a ColPali-family checkpoint.*vidore/colpali-v1.3-hf"):
            select(config, "m", engine_installed=True)


# --------------------------------------------------------------------------- a stand-in colpali-engine


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = _tiny_colpali()
    path = tmp_path_factory.mktemp("tiny-colpali-hf")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine_dirs(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A merged colpali-engine-style checkpoint (config only) and a PEFT adapter pointing at it."""
    vlm_config = transformers.AutoConfig.from_pretrained(hf_dir).vlm_config
    vlm_config.architectures = ["ColPali"]
    merged = tmp_path_factory.mktemp("engine-merged")
    vlm_config.save_pretrained(merged)
    adapter = tmp_path_factory.mktemp("engine-adapter")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(merged)}))
    return merged, adapter


def _fake_engine(hf_dir: Path, calls: list[tuple[str, str, dict[str, Any]]]) -> types.ModuleType:
    class ColPali(torch.nn.Module):  # colpali-engine's interface: VLM config, .dim, tensor output
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.vlm = inner.vlm
            self.embedding_proj_layer = inner.embedding_proj_layer
            self.config = inner.config.vlm_config
            self.dim = inner.config.embedding_dim
            self._inner = [inner]

        @property
        def dtype(self) -> Any:
            return next(self.parameters()).dtype

        def forward(self, **kwargs: Any) -> Any:
            return self._inner[0](**kwargs).embeddings * kwargs["attention_mask"].unsqueeze(-1)

        @classmethod
        def from_pretrained(cls, path: str, **kwargs: Any) -> ColPali:
            calls.append(("model", path, kwargs))
            return cls(transformers.ColPaliForRetrieval.from_pretrained(hf_dir, **kwargs))

    class ColPaliProcessor:
        @classmethod
        def from_pretrained(cls, path: str, **kwargs: Any) -> Any:
            calls.append(("processor", path, kwargs))
            return transformers.ColPaliProcessor.from_pretrained(hf_dir)

    ColPali.__module__ = "colpali_engine.models.paligemma.colpali.modeling_colpali"
    models = types.ModuleType("colpali_engine.models")
    models.ColPali = ColPali  # type: ignore[attr-defined]
    models.ColPaliProcessor = ColPaliProcessor  # type: ignore[attr-defined]
    return models


def test_engine_checkpoint_loads_with_engine_classes(hf_dir: Path, engine_dirs: tuple[Path, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []
    package = types.ModuleType("colpali_engine")
    package.models = _fake_engine(hf_dir, calls)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "colpali_engine", package)
    monkeypatch.setitem(sys.modules, "colpali_engine.models", package.models)  # type: ignore[attr-defined]
    monkeypatch.setattr(_colvision, "engine_available", lambda: True)

    pages = _pages()
    reference = ColPaliEncoder(hf_dir, device="cpu")
    expected = reference.encode_documents(pages)
    assert reference.backend == "transformers"
    for checkpoint in engine_dirs:
        calls.clear()
        encoder = ColPaliEncoder(checkpoint, device="cpu")
        out = encoder.encode_documents(pages)
        assert encoder.backend == "colpali-engine" and encoder.architecture == "colpali"
        assert [(kind, path) for kind, path, _ in calls] == [("model", str(checkpoint)), ("processor", str(checkpoint))]
        assert calls[0][2] == {"dtype": torch.float32, "attn_implementation": "eager"}
        assert calls[1][2] == {}  # no transformers-only processor options
        np.testing.assert_allclose(out.vectors, expected.vectors, atol=1e-5)
        assert out.lengths.tolist() == expected.lengths.tolist() and out.dim == expected.dim
        assert out.saliency is not None and expected.saliency is not None
        np.testing.assert_allclose(out.saliency, expected.saliency, atol=1e-6)
        queries = encoder.encode_queries(["revenue"])
        np.testing.assert_allclose(queries.vectors, reference.encode_queries(["revenue"]).vectors, atol=1e-5)
    wrapped = ColPaliEncoder.from_model(package.models.ColPali.from_pretrained(str(hf_dir)),  # type: ignore[attr-defined]
                                        transformers.ColPaliProcessor.from_pretrained(hf_dir), saliency=False)
    assert wrapped.backend == "colpali-engine" and wrapped.dim == expected.dim


def test_engine_checkpoint_without_engine_is_a_clear_error(engine_dirs: tuple[Path, Path],
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    merged, adapter = engine_dirs
    monkeypatch.setattr(_colvision, "engine_available", lambda: False)
    for checkpoint in (merged, adapter):
        with pytest.raises(MissingDependencyError, match=r"ColPali checkpoint in colpali-engine's format.*-hf"):
            ColPaliEncoder(checkpoint, device="cpu").encode_queries(["x"])
    monkeypatch.setattr(_colvision, "engine_available", lambda: True)
    monkeypatch.setitem(sys.modules, "colpali_engine", None)  # installed, but its import fails
    with pytest.raises(MissingDependencyError, match=r"installed but cannot be imported here.*CUDA build"):
        ColPaliEncoder(merged, device="cpu").encode_queries(["x"])

    plain = tmp_path / "paligemma"
    config = transformers.AutoConfig.from_pretrained(merged)
    config.architectures = ["PaliGemmaForConditionalGeneration"]
    config.save_pretrained(plain)
    with pytest.raises(ConfigError, match=r"not a ColPali-family checkpoint.*'paligemma'"):
        ColPaliEncoder(plain, device="cpu").encode_queries(["x"])
    headless = tmp_path / "adapter"
    headless.mkdir()
    (headless / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="names no base model"):
        ColPaliEncoder(headless, device="cpu").encode_queries(["x"])


# --------------------------------------------------------------------------- max_image_side


def test_max_image_side_is_validated_and_described(hf_dir: Path) -> None:
    for bad in (0, 15, 20_001, True, 64.0, "512"):
        with pytest.raises(ConfigError, match="max_image_side must be None"):
            ColPaliEncoder(max_image_side=bad)  # type: ignore[arg-type]
    encoder = ColPaliEncoder(hf_dir, device="cpu", max_image_side=24)
    assert encoder.max_image_side == 24 and "max_image_side=24" in repr(encoder)
    description = encoder.describe()
    assert description["max_image_side"] == 24
    assert ColPaliEncoder.from_description(description).max_image_side == 24
    assert ColPaliEncoder.from_description(description, max_image_side=40).max_image_side == 40
    assert "max_image_side" not in ColPaliEncoder(hf_dir, device="cpu").describe()  # old descriptions stay equal


def test_max_image_side_bounds_colqwen2_patches_without_touching_the_callers_image() -> None:
    model, processor = _tiny_colqwen2()
    page = _pages()[0].resize((84, 56))
    full = ColPaliEncoder.from_model(model, processor).encode_documents([page])
    capped_encoder = ColPaliEncoder.from_model(model, processor, max_image_side=42)
    capped = capped_encoder.encode_documents([page])
    assert page.size == (84, 56)  # the caller's image is not resized in place
    assert full.lengths.tolist() == [6] and capped.lengths.tolist() == [2]  # 42 x 28 px: 2 x 1 merged patches
    by_hand = ColPaliEncoder.from_model(model, processor).encode_documents(
        [page.resize((42, 28), Image.Resampling.BICUBIC, reducing_gap=3.0)])
    np.testing.assert_allclose(capped.vectors, by_hand.vectors, atol=1e-5)
    small = Image.new("RGB", (28, 28), (0, 0, 255))  # already within the limit: unchanged
    np.testing.assert_allclose(capped_encoder.encode_documents([small]).vectors,
                               ColPaliEncoder.from_model(model, processor).encode_documents([small]).vectors)

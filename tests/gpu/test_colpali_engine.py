"""ColPaliEncoder with the colpali-engine backend on a CUDA device.

Skipped unless colpali-engine imports and torch sees a GPU. Written without either available
(colpali-engine needs a CUDA build of torchvision), so it has not been run yet; the same
plumbing is exercised on CPU with a stand-in module in
tests/retrieval/encode/test_colpali_backend.py.

Tiny random colpali-engine ColPali / ColQwen2 models are built from the configs, tokenizers and
image processors of the tiny transformers models of tests/retrieval/encode/test_colpali.py,
saved in colpali-engine's format (``architectures: ["ColPali"]`` on a PaliGemma config) and
loaded by path, so ``select_backend`` picks colpali-engine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")


def _engine_importable() -> bool:
    if not torch.cuda.is_available():  # never half-import colpali-engine (and torchvision) beside a CPU torch
        return False
    try:
        import colpali_engine.models  # noqa: F401
    except Exception:  # ImportError, or torchvision failing beside a CPU-only torch
        return False
    return True


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: [a CUDA device visible to torch]"),
    pytest.mark.skipif(not _engine_importable(), reason="Requires: [colpali-engine (pip install 'densezip[colpali]')]"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval" / "encode"))
try:
    import test_colpali
finally:
    sys.path.pop(0)


def _engine_checkpoint(kind: str, path: Path) -> tuple[Any, Any]:
    from colpali_engine.models import ColPali, ColPaliProcessor, ColQwen2, ColQwen2Processor

    if kind == "colpali":
        hf_model, hf_processor = test_colpali._tiny_colpali()
        model_cls, processor_cls = ColPali, ColPaliProcessor
    else:
        hf_model, hf_processor = test_colpali._tiny_colqwen2()
        model_cls, processor_cls = ColQwen2, ColQwen2Processor
    extra: dict[str, Any] = {}
    if kind == "colqwen2":  # Qwen2VLProcessor has a video processor too (it needs torchvision: present here)
        extra["video_processor"] = transformers.Qwen2VLVideoProcessor()
    torch.manual_seed(0)
    model = model_cls(hf_model.config.vlm_config)
    processor = processor_cls(image_processor=hf_processor.image_processor, tokenizer=hf_processor.tokenizer, **extra)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    loaded = model_cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").to("cuda").eval()
    return loaded, processor_cls.from_pretrained(path)


@pytest.mark.parametrize("kind", ["colpali", "colqwen2"])
def test_engine_checkpoint_on_cuda_matches_the_engine_model(kind: str, tmp_path: Path) -> None:
    from retrieval.encode.colpali import ColPaliEncoder

    model, processor = _engine_checkpoint(kind, tmp_path / kind)
    encoder = ColPaliEncoder(tmp_path / kind, device="cuda", dtype="float32", batch_size=2)
    pages = test_colpali._pages()
    out = encoder.encode_documents(pages)
    assert encoder.backend == "colpali-engine" and encoder.architecture == kind
    assert encoder.device is not None and encoder.device.startswith("cuda")
    assert out.dim == model.dim and len(out) == len(pages)
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-4)
    assert out.saliency is not None and np.isfinite(out.saliency).all()
    assert (out.saliency >= 0).all() and (out.saliency <= 1).all()

    batch = processor.process_images([p.convert("RGB") for p in pages]).to("cuda")
    with torch.inference_mode():
        embeddings = model(**batch)
    keep = ((batch["input_ids"] == processor.image_token_id) & batch["attention_mask"].bool()).cpu().numpy()
    np.testing.assert_allclose(out.vectors, embeddings.float().cpu().numpy()[keep], atol=1e-4)

    queries = encoder.encode_queries(["revenue 2023", "a figure"])
    assert queries.dim == model.dim and np.isfinite(queries.vectors).all()
    description = encoder.describe()
    assert description["architecture"] == kind and description["fingerprint"].startswith("dir-sha256:")

"""ColPaliEncoder against tiny, randomly initialised ColPali / ColQwen2 models (offline, CPU).

The models are built from small configs (2 layers, hidden size 32) with a character-level
tokenizer made in memory, so nothing is downloaded and a forward pass takes milliseconds.
Shape legend: ``n`` pages, ``L_i`` image tokens of page ``i``, ``T = sum L_i``, ``d = 16``.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.encode.colpali import ColPaliEncoder
from retrieval.errors import ConfigError, MissingDependencyError, ShapeError
from retrieval.types import MultiVectorEmbeddings

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

REPO = Path(__file__).resolve().parents[3]
DIM = 16
PAGE_PX = 32  # ColPali: 32 px pages, 16 px patches -> 2 x 2 = 4 image tokens per page
COLPALI_TOKENS = (PAGE_PX // 16) ** 2


# --------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (tests/conftest.py)."""


def _tiny_colpali(attn_implementation: str = "eager") -> tuple[Any, Any]:
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in [*string.ascii_letters, *string.digits, *string.punctuation, "▁", "\n"]:
        vocab.setdefault(ch, len(vocab))
    tokenizer = transformers.GemmaTokenizer(vocab=vocab, merges=[])
    image_processor = SiglipImageProcessorPil(
        size={"height": PAGE_PX, "width": PAGE_PX}, image_seq_length=COLPALI_TOKENS
    )
    processor = transformers.ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab_size = len(tokenizer)  # the processor adds <image> and 1152 <locXXXX> / <segXXX> tokens
    torch.manual_seed(0)
    config = transformers.ColPaliConfig(
        vlm_config={
            "model_type": "paligemma",
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": PAGE_PX,
                "patch_size": 16,
                "vision_use_head": False,
            },
            "text_config": {
                "model_type": "gemma",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "vocab_size": vocab_size,
            },
            "image_token_index": processor.image_token_id,
            "vocab_size": vocab_size,
            "projection_dim": 32,
            "hidden_size": 32,
        },
        embedding_dim=DIM,
    )
    model = transformers.ColPaliForRetrieval(config)
    model.set_attn_implementation(attn_implementation)
    return model.eval(), processor


def _tiny_colqwen2() -> tuple[Any, Any]:
    from tokenizers import pre_tokenizers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {"<|endoftext|>": 0}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch, len(vocab))
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=[], extra_special_tokens=specials)
    start, end, pad = tokenizer.convert_tokens_to_ids(specials[2:])
    # 28 px units (14 px patches merged 2 x 2); at most 56 x 84 px -> 2 x 3 = 6 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 84)
    processor = transformers.ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(0)
    config = transformers.ColQwen2Config(
        vlm_config={
            "model_type": "qwen2_vl",
            "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2},
            "text_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "vocab_size": len(tokenizer),
                "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            },
            "image_token_id": pad,
            "vision_start_token_id": start,
            "vision_end_token_id": end,
        },
        embedding_dim=DIM,
    )
    model = transformers.ColQwen2ForRetrieval(config)
    model.set_attn_implementation("eager")
    return model.eval(), processor


@pytest.fixture(scope="module")
def colpali() -> tuple[Any, Any]:
    return _tiny_colpali()


@pytest.fixture(scope="module")
def encoder(colpali: tuple[Any, Any]) -> ColPaliEncoder:
    return ColPaliEncoder.from_model(*colpali, batch_size=2)


def _pages() -> list[Any]:
    rng = np.random.default_rng(1338)
    noise = Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    return [noise, Image.new("RGB", (20, 30), (255, 0, 0)), Image.new("L", (64, 64), 200), Image.new("RGBA", (32, 32))]


def _maxsim(queries: MultiVectorEmbeddings, pages: MultiVectorEmbeddings) -> np.ndarray:
    """(nq, n) late-interaction scores: sum over query tokens of the max dot product over patches."""
    scores = np.zeros((len(queries), len(pages)), dtype=np.float64)
    for qi in range(len(queries)):
        q = queries.doc(qi).astype(np.float64)
        for pi in range(len(pages)):
            scores[qi, pi] = (q @ pages.doc(pi).astype(np.float64).T).max(axis=1).sum()
    return scores


# --------------------------------------------------------------------------- cheap, no model


def test_import_is_lazy() -> None:
    code = (
        "import sys, retrieval.encode.colpali as c; e = c.ColPaliEncoder(device='cpu'); repr(e); "
        "bad = sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules); assert not bad, bad"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def test_constructor_validates_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device must be one of"):
        ColPaliEncoder(device="gpu")
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        ColPaliEncoder(batch_size=0)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        ColPaliEncoder(dtype="int8")
    with pytest.raises(ConfigError, match="saliency must be True or False"):
        ColPaliEncoder(saliency="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not exist"):
        ColPaliEncoder(tmp_path / "missing-model")
    with pytest.raises(ConfigError, match="hub name or a local directory"):
        ColPaliEncoder(3)  # type: ignore[arg-type]
    assert "not loaded" in repr(ColPaliEncoder())


def test_explicit_cuda_without_gpu_raises() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path cannot be exercised")
    enc = ColPaliEncoder(device="cuda")  # constructing never probes the device
    with pytest.raises(
        MissingDependencyError, match=r"ColPaliEncoder\(device='cuda'\) needs a CUDA device.*device='auto'"
    ):
        enc.encode_queries(["x"])


def test_model_missing_offline_says_how_to_fix(tmp_path: Path) -> None:
    # tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported.
    enc = ColPaliEncoder("densezip-tests/no-such-colpali-model", device="cpu")
    with pytest.raises(
        ConfigError,
        match=r"weights of 'densezip-tests/no-such-colpali-model' could not be found locally"
        r"(.|\n)*machine with internet access(.|\n)*pass that folder as model=",
    ):
        enc.encode_queries(["x"])
    missing = str(tmp_path / "no" / "model")
    with pytest.raises(ConfigError, match=r"model directory .* does not exist or is not a directory"):
        ColPaliEncoder(missing, device="cpu").encode_queries(["x"])
    with pytest.raises(ConfigError, match="holds no readable ColPali model"):
        ColPaliEncoder(tmp_path, device="cpu").encode_queries(["x"])


# --------------------------------------------------------------------------- tiny ColPali


def test_encode_documents_end_to_end(encoder: ColPaliEncoder, colpali: tuple[Any, Any]) -> None:
    pages = _pages()
    out = encoder.encode_documents(pages, ids=["noise", "red", "grey", "clear"])
    assert isinstance(out, MultiVectorEmbeddings)
    assert out.ids == ["noise", "red", "grey", "clear"]
    assert out.lengths.tolist() == [COLPALI_TOKENS] * 4 and out.dim == DIM == encoder.dim
    assert out.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    assert out.saliency is not None and out.saliency.shape == (out.num_vectors,)
    assert np.isfinite(out.saliency).all() and (out.saliency >= 0).all() and (out.saliency <= 1).all()
    for i in range(len(out)):  # image tokens receive part of the attention, never more than all of it
        assert 0 < out.saliency[out.offsets[i] : out.offsets[i + 1]].sum() <= 1 + 1e-5
    assert not np.allclose(out.doc(0), out.doc(1))  # different pages, different vectors
    white = encoder.encode_documents([Image.new("RGB", (32, 32), (255, 255, 255))])
    np.testing.assert_allclose(white.vectors, out.doc(3), atol=1e-5)  # transparent -> white, as transformers does

    # Reference: the model's own embeddings at the image-token positions, and the
    # saliency recomputed from output_attentions (checks the forward-hook shortcut).
    model, processor = colpali
    batch = processor.process_images(pages)
    batch.pop("labels")
    with torch.inference_mode():
        ref = model(**batch, output_attentions=True)
    is_image = (batch["input_ids"] == processor.image_token_id).numpy()
    np.testing.assert_allclose(out.vectors, ref.embeddings.numpy()[is_image], atol=1e-5)
    received = ref.attentions[-1].mean(dim=1).mean(dim=1).numpy()  # no padding: every position is a query
    np.testing.assert_allclose(out.saliency, received[is_image], atol=1e-6)


def test_file_paths_and_batch_size_give_the_same_vectors(encoder: ColPaliEncoder, tmp_path: Path) -> None:
    pages = _pages()[:2]
    paths = []
    for i, page in enumerate(pages):
        paths.append(tmp_path / f"page{i}.png")
        page.save(paths[-1])
    from_images = encoder.encode_documents(pages)
    from_paths = encoder.encode_documents([str(paths[0]), paths[1]], batch_size=1)
    assert from_paths.ids == ["0", "1"]
    np.testing.assert_allclose(from_paths.vectors, from_images.vectors, atol=1e-5)
    assert from_paths.saliency is not None and from_images.saliency is not None
    np.testing.assert_allclose(from_paths.saliency, from_images.saliency, atol=1e-6)


def test_queries_and_maxsim(encoder: ColPaliEncoder, colpali: tuple[Any, Any]) -> None:
    texts = ["red page", "What is the total revenue in 2023?", ""]
    queries = encoder.encode_queries(texts, ids=["q1", "q2", "q3"])
    _, processor = colpali
    real_tokens = processor.process_queries(texts)["attention_mask"].sum(dim=1).tolist()
    assert queries.lengths.tolist() == real_tokens  # padding dropped, augmentation tokens kept
    assert queries.ids == ["q1", "q2", "q3"] and queries.dim == DIM and queries.saliency is None
    np.testing.assert_allclose(np.linalg.norm(queries.vectors, axis=1), 1.0, atol=1e-5)

    pages = encoder.encode_documents(_pages())
    scores = _maxsim(queries, pages)
    assert scores.shape == (3, 4) and np.isfinite(scores).all()
    assert (np.abs(scores) <= queries.lengths[:, None] + 1e-4).all()  # each term is a cosine
    again = _maxsim(encoder.encode_queries(texts), encoder.encode_documents(_pages()))
    np.testing.assert_array_equal(scores, again)
    # Same numbers as the processor's own late-interaction scorer.
    ref = processor.score_retrieval(
        [torch.from_numpy(queries.doc(i).copy()) for i in range(3)],
        [torch.from_numpy(pages.doc(i).copy()) for i in range(4)],
    )
    np.testing.assert_allclose(scores, ref.numpy(), atol=1e-4)


def test_bad_inputs_say_what_was_expected(encoder: ColPaliEncoder, tmp_path: Path) -> None:
    page = _pages()[1]
    with pytest.raises(ConfigError, match="empty sequence"):
        encoder.encode_documents([])
    with pytest.raises(ConfigError, match=r"single Image\. Wrap it in a list"):
        encoder.encode_documents(page)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"PIL\.Image\.Image objects or image file paths.*item 1 is int"):
        encoder.encode_documents([page, 7])  # type: ignore[list-item]
    with pytest.raises(
        ConfigError,
        match=r"item 0 is ndarray of shape \(8, 8, 3\), dtype uint8\. Convert an array with PIL\.Image\.fromarray",
    ):
        encoder.encode_documents([np.zeros((8, 8, 3), np.uint8)])  # type: ignore[list-item]
    missing = tmp_path / "missing.png"
    with pytest.raises(ConfigError, match=f"image file '{missing}' .*does not exist"):
        encoder.encode_documents([missing])
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    with pytest.raises(ConfigError, match=f"could not read item 0, '{not_image}', as an image"):
        encoder.encode_documents([not_image])
    with pytest.raises(ShapeError, match="one id per image; got 1 ids for 2 images"):
        encoder.encode_documents([page, page], ids=["a"])
    with pytest.raises(ConfigError, match="single str"):
        encoder.encode_queries("what")
    with pytest.raises(ConfigError, match="empty sequence"):
        encoder.encode_queries([])
    with pytest.raises(ConfigError, match="item 1 is int"):
        encoder.encode_queries(["ok", 3])  # type: ignore[list-item]


def test_from_model_checks_attention_and_processor(colpali: tuple[Any, Any]) -> None:
    sdpa_model, processor = _tiny_colpali(attn_implementation="sdpa")
    with pytest.raises(ConfigError, match=r"attn_implementation='sdpa'.*'eager'.*saliency=False"):
        ColPaliEncoder.from_model(sdpa_model, processor)
    no_saliency = ColPaliEncoder.from_model(sdpa_model, processor, saliency=False)
    out = no_saliency.encode_documents(_pages()[:1])
    assert out.saliency is None and out.lengths.tolist() == [COLPALI_TOKENS]
    with pytest.raises(ConfigError, match="ColPaliForRetrieval or ColQwen2ForRetrieval"):
        ColPaliEncoder.from_model(torch.nn.Linear(2, 2), processor)
    with pytest.raises(ConfigError, match="ColPaliProcessor or ColQwen2Processor"):
        ColPaliEncoder.from_model(colpali[0], processor.tokenizer)


def test_local_directory_and_describe(encoder: ColPaliEncoder, colpali: tuple[Any, Any], tmp_path: Path) -> None:
    model, processor = colpali
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = ColPaliEncoder(tmp_path, device="cpu")
    assert loaded.device is None  # lazy
    pages = _pages()[:2]
    a, b = loaded.encode_documents(pages), encoder.encode_documents(pages)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    assert a.saliency is not None and b.saliency is not None
    np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-6)
    assert loaded.device == "cpu" and loaded.architecture == "colpali"

    description = loaded.describe()
    assert json.loads(json.dumps(description)) == description
    assert description["type"] == "ColPaliEncoder" and description["model"] == str(tmp_path)
    assert description["dim"] == DIM and description["architecture"] == "colpali"
    assert description["fingerprint"].startswith("dir-sha256:")
    wrapped = encoder.describe()
    assert wrapped["fingerprint"].startswith("params-sha256:") and wrapped["dim"] == DIM


def test_describe_from_description_round_trip(colpali: tuple[Any, Any], tmp_path: Path) -> None:
    from retrieval.encode import encoder_from_description

    model, processor = colpali
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    for saliency in (True, False):
        original = ColPaliEncoder(tmp_path / "model", device="cpu", saliency=saliency, dtype="float32")
        description = json.loads(json.dumps(original.describe()))
        again = encoder_from_description(description, device="cpu", batch_size=1)
        assert isinstance(again, ColPaliEncoder) and again.describe() == description
        assert again._saliency is saliency and again._batch_size == 1
    pages = _pages()[:1]
    np.testing.assert_allclose(again.encode_documents(pages).vectors, original.encode_documents(pages).vectors)

    with pytest.raises(ConfigError, match="fingerprint"):
        ColPaliEncoder.from_description({**description, "fingerprint": "dir-sha256:" + "0" * 32})
    with pytest.raises(ConfigError, match="saliency 'attention-v0'"):
        ColPaliEncoder.from_description({**description, "saliency": "attention-v0"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pooling'\]"):
        ColPaliEncoder.from_description({**description, "pooling": "mean"})
    in_memory = ColPaliEncoder.from_model(*colpali).describe()
    with pytest.raises(ConfigError, match=r"names no loadable model.*from_model"):
        encoder_from_description(in_memory)


# --------------------------------------------------------------------------- tiny ColQwen2


def test_colqwen2_variable_page_sizes() -> None:
    model, processor = _tiny_colqwen2()
    enc = ColPaliEncoder.from_model(model, processor, batch_size=3)
    # 28 x 28 -> 1 x 1 token, 84 x 56 (w x h) -> 2 x 3 tokens; mixed in one batch, so the
    # shorter prompt is padded and the padding must not leak into vectors or saliency.
    pages = [Image.new("RGB", (28, 28), (0, 0, 255)), _pages()[0].resize((84, 56)), Image.new("RGB", (28, 28))]
    out = enc.encode_documents(pages)
    grid = processor.image_processor(pages, return_tensors="pt")["image_grid_thw"]
    assert out.lengths.tolist() == (grid.prod(dim=1) // 4).tolist() == [1, 6, 1]
    assert out.saliency is not None and np.isfinite(out.saliency).all() and (out.saliency >= 0).all()
    single = enc.encode_documents(pages[1:2])
    np.testing.assert_allclose(single.vectors, out.doc(1), atol=1e-4)
    queries = enc.encode_queries(["blue", "a longer query"])
    assert queries.lengths[0] < queries.lengths[1] and np.isfinite(_maxsim(queries, out)).all()


def test_pages_pruned_compressed_indexed_searched_saved_and_loaded(encoder: ColPaliEncoder, tmp_path: Path) -> None:
    """The whole ColPali path of the library on the tiny model: images in, ranked pages out."""
    from indexes import MultiVectorIndex, load_index
    from retrieval.compress import AttentionPruner
    from retrieval.rerank import maxsim_csr

    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, size=(PAGE_PX, PAGE_PX, 3), dtype=np.uint8)) for _ in range(12)]
    pages = encoder.encode_documents(images, ids=[f"page{i}" for i in range(12)])
    assert pages.lengths.tolist() == [COLPALI_TOKENS] * 12 and pages.saliency is not None
    queries = encoder.encode_queries(["a table of results", "figure 3"], ids=["q1", "q2"])
    for spec, first_stage in (("Prune0.5,KMeans8r2", "centroid"), ("Prune0.5,BinaryITQ", "binary")):
        index = MultiVectorIndex(DIM, spec=spec, first_stage=first_stage, nprobe=8, token_k=1000).add(pages)
        assert index.num_vectors == 12 * COLPALI_TOKENS // 2  # the most salient half of every page
        kept = AttentionPruner(0.5)(pages)
        decoded = type(pages)(index.codec.decode(index._codes), kept.offsets, kept.ids)
        expected = maxsim_csr(queries, decoded)
        result = index.search(queries, k=3)
        assert result.query_ids == ["q1", "q2"]
        np.testing.assert_allclose(result.scores, -np.sort(-expected, axis=1)[:, :3], rtol=1e-5, atol=1e-5)
        index.save(tmp_path / first_stage)
        again = load_index(tmp_path / first_stage).search(queries, k=3)
        assert again.doc_ids == result.doc_ids
        np.testing.assert_allclose(again.scores, result.scores, rtol=1e-6)

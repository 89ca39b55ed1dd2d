"""The LangChain and LlamaIndex adapters, against the real installed frameworks (extra ``rag``)."""

from __future__ import annotations

import asyncio

import pytest

from retrieval.rag.component import RetrievalComponent
from retrieval.rag.ingest import Document
from retrieval.rag.passages import build_collection

pytest.importorskip("langchain_core", reason="needs the 'rag' extra")
pytest.importorskip("llama_index.core", reason="needs the 'rag' extra")

DOCS = [
    Document("smoking", "Tobacco smoking is the main cause of lung cancer.", source="smoking.md",
             metadata={"topic": "cancer"}),
    Document("vitamin", "Vitamin D supplements reduce bone fractures in the elderly.", source="vitamin.md",
             metadata={"topic": "bones"}),
    Document("exercise", "Regular aerobic exercise lowers blood pressure.", source="exercise.md",
             metadata={"topic": "heart"}),
    Document("coffee", "Moderate coffee drinking is not linked to heart disease.", metadata={"topic": "heart"}),
]


class _Words:
    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=True):
        import re

        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return {"input_ids": list(range(len(spans))), "offset_mapping": spans}


@pytest.fixture
def component(tmp_path, fake_encoder) -> RetrievalComponent:
    path = build_collection(DOCS, tmp_path / "c", encoder=fake_encoder, spec="exact", tokenizer=_Words(),
                            max_tokens=64, overlap=0)
    return RetrievalComponent.open(path, encoder=fake_encoder, tokenizer=_Words())


def test_langchain_retriever_returns_langchain_documents(component):
    from langchain_core.documents import Document as LCDocument
    from langchain_core.retrievers import BaseRetriever

    retriever = component.as_langchain_retriever(k=2)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("smoking lung cancer")
    assert len(docs) == 2 and all(isinstance(d, LCDocument) for d in docs)
    top = docs[0]
    assert top.page_content == DOCS[0].text and top.id == "smoking#0"
    assert top.metadata["source"] == "smoking.md" and top.metadata["topic"] == "cancer"
    assert top.metadata["doc_id"] == "smoking" and top.metadata["rank"] == 1
    assert top.metadata["score"] >= docs[1].metadata["score"]
    assert (top.metadata["start"], top.metadata["end"]) == (0, len(DOCS[0].text))
    # async path and batch, as LCEL chains call them
    again = asyncio.run(retriever.ainvoke("smoking lung cancer"))
    assert [d.id for d in again] == [d.id for d in docs]
    assert [len(b) for b in retriever.batch(["coffee", "vitamin"])] == [2, 2]


def test_langchain_filter_and_chain(component):
    from langchain_core.runnables import RunnableLambda

    retriever = component.as_langchain_retriever(k=5, where={"topic": "heart"})
    assert {d.metadata["doc_id"] for d in retriever.invoke("heart")} == {"exercise", "coffee"}
    assert component.as_langchain_retriever(k=3, where={"topic": "none"}).invoke("heart") == []
    chain = retriever | RunnableLambda(lambda docs: "\n".join(d.page_content for d in docs))
    assert "blood pressure" in chain.invoke("blood pressure")
    with pytest.raises(ValueError):
        component.as_langchain_retriever(k=0)


def test_llama_index_retriever_returns_nodes_with_scores(component):
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, TextNode

    retriever = component.as_llama_index_retriever(k=3)
    assert isinstance(retriever, BaseRetriever)
    nodes = retriever.retrieve("Does vitamin D reduce fractures?")
    assert len(nodes) == 3 and all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    top = nodes[0]
    assert top.node.node_id == "vitamin#0" and top.node.get_content() == DOCS[1].text
    assert top.score == pytest.approx(component.retrieve("Does vitamin D reduce fractures?", k=1)[0].score)
    assert top.node.metadata["source"] == "vitamin.md" and top.node.metadata["topic"] == "bones"
    assert (top.node.start_char_idx, top.node.end_char_idx) == (0, len(DOCS[1].text))
    assert top.node.relationships[NodeRelationship.SOURCE].node_id == "vitamin"
    llm_text = top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "passage_id" not in llm_text and "topic: bones" in llm_text
    again = asyncio.run(retriever.aretrieve("Does vitamin D reduce fractures?"))
    assert [n.node.node_id for n in again] == [n.node.node_id for n in nodes]


def test_llama_index_filter_and_query_engine(component):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText

    retriever = component.as_llama_index_retriever(k=4, where={"topic": "heart"})
    assert {n.node.metadata["doc_id"] for n in retriever.retrieve("heart")} == {"exercise", "coffee"}
    assert component.as_llama_index_retriever(where={"topic": "none"}).retrieve("heart") == []
    # No LLM weights here: the "no text" synthesizer returns the retrieved nodes only. (Text modes would
    # count tokens with tiktoken, which downloads its vocabulary on first use.)
    engine = RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()))
    response = engine.query("blood pressure")
    assert response.source_nodes[0].node.node_id == "exercise#0"
    with pytest.raises(ValueError, match="k must be a positive integer"):
        component.as_llama_index_retriever(k=0)

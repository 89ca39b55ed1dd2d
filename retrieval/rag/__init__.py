"""Retrieval-augmented generation on top of an index: ingestion, passage collections, the
:class:`RetrievalComponent`, answer generation and the LangChain / LlamaIndex adapters.

Modules, in the order a question flows through them: :mod:`~retrieval.rag.ingest` (files ->
token-window passages), :mod:`~retrieval.rag.passages` (an index plus its passage texts, saved
as one collection), :mod:`~retrieval.rag.component` (question -> passages -> cited context),
:mod:`~retrieval.rag.generate` (context -> answer), and the framework adapters
:mod:`~retrieval.rag.langchain` and :mod:`~retrieval.rag.llama_index` (extra ``rag``; each
imports its framework, so import the submodule you need).

Visual documents take a parallel path: :mod:`~retrieval.rag.pages` (PDFs and images -> page
images, streamed), :mod:`~retrieval.rag.page_collection` (pages -> ColPali patch index + page
store, updates and deletes by source file), :mod:`~retrieval.rag.page_store` (the store and
:class:`~retrieval.rag.page_store.RetrievedPage`); :meth:`RetrievalComponent.open` on a page
collection returns a :class:`~retrieval.rag.component.PageRetrievalComponent`.

The component's public names are re-exported here; importing them loads neither torch nor faiss.
"""

from __future__ import annotations

from retrieval.rag.component import (
    DEFAULT_PROMPT,
    Context,
    PageRetrievalComponent,
    RetrievalComponent,
    RetrievedPage,
    RetrievedPassage,
    build_context,
    build_prompt,
)

__all__ = ["DEFAULT_PROMPT", "Context", "PageRetrievalComponent", "RetrievalComponent", "RetrievedPage",
           "RetrievedPassage", "build_context", "build_prompt"]

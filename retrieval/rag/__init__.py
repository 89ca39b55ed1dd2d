"""Retrieval-augmented generation on top of an index: ingestion, passage collections, the
:class:`RetrievalComponent`, answer generation and the LangChain / LlamaIndex adapters.

Modules, in the order a question flows through them: :mod:`~retrieval.rag.ingest` (files ->
token-window passages), :mod:`~retrieval.rag.passages` (an index plus its passage texts, saved
as one collection), :mod:`~retrieval.rag.component` (question -> passages -> cited context),
:mod:`~retrieval.rag.generate` (context -> answer), and the framework adapters
:mod:`~retrieval.rag.langchain` and :mod:`~retrieval.rag.llama_index` (extra ``rag``; each
imports its framework, so import the submodule you need).

The component's public names are re-exported here and loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrieval.rag.component import (
        DEFAULT_PROMPT,
        Context,
        RetrievalComponent,
        RetrievedPassage,
        build_context,
        build_prompt,
    )

_LAZY: dict[str, str] = {
    "Context": "retrieval.rag.component",
    "DEFAULT_PROMPT": "retrieval.rag.component",
    "RetrievalComponent": "retrieval.rag.component",
    "RetrievedPassage": "retrieval.rag.component",
    "build_context": "retrieval.rag.component",
    "build_prompt": "retrieval.rag.component",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval.rag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

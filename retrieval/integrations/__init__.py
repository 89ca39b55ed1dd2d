"""Adapters to RAG frameworks (extra ``rag``): LangChain and LlamaIndex retrievers.

Import the submodule you need; each imports its framework, so ``import retrieval`` stays
free of both. :meth:`retrieval.rag.RetrievalComponent.as_langchain_retriever` and
:meth:`~retrieval.rag.RetrievalComponent.as_llama_index_retriever` do it for you.
"""

from __future__ import annotations

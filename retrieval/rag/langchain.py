"""A LangChain retriever (``langchain_core.retrievers.BaseRetriever``) over a RetrievalComponent.

Needs ``pip install 'densezip[rag]'``. The retriever returns LangChain ``Document`` objects
whose ``metadata`` holds the passage's own metadata plus ``passage_id``, ``doc_id``,
``source`` (when known), ``start`` / ``end`` character offsets, ``score`` and ``rank``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval._optional import require

require("langchain_core", extra="rag", feature="The LangChain retriever")

from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import Field  # noqa: E402

if TYPE_CHECKING:  # the component imports this module on demand; no circle at run time
    from retrieval.rag.component import RetrievedPassage

__all__ = ["DensezipRetriever", "to_langchain_document"]


def to_langchain_document(hit: RetrievedPassage) -> Document:
    """A LangChain ``Document`` for one retrieved passage."""
    metadata: dict[str, Any] = {
        **hit.metadata, "passage_id": hit.id, "doc_id": hit.doc_id, "start": hit.passage.start,
        "end": hit.passage.end, "score": hit.score, "rank": hit.rank,
    }
    if hit.source is not None:
        metadata["source"] = hit.source
    return Document(page_content=hit.text, metadata=metadata, id=hit.id)


class DensezipRetriever(BaseRetriever):
    """LangChain retriever backed by a :class:`~retrieval.rag.component.RetrievalComponent`.

    Attributes
    ----------
    component : RetrievalComponent
    k : int
        Documents per query.
    where : dict, optional
        Metadata equality filter applied to every query.

    Examples
    --------
    >>> retriever = DensezipRetriever(component=RetrievalComponent.open("runs/docs"), k=3)  # doctest: +SKIP
    >>> retriever.invoke("What lowers blood pressure?")[0].metadata["passage_id"]          # doctest: +SKIP
    'exercise.md#0'
    """

    component: Any
    k: int = Field(default=4, ge=1)
    where: dict[str, Any] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.component.retrieve(query, self.k, where=self.where)
        return [to_langchain_document(h) for h in hits]

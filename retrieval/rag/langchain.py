"""A LangChain retriever (``langchain_core.retrievers.BaseRetriever``) over a RetrievalComponent.

Needs ``pip install 'densezip[rag]'``. The retriever returns LangChain ``Document`` objects
whose ``metadata`` holds the passage's own metadata plus ``passage_id``, ``doc_id``,
``source`` (when known), ``start`` / ``end`` character offsets, ``score`` and ``rank``.

For a page collection each ``Document`` is a page: ``page_content`` is its caption
(``"report.pdf, page 3"``) and ``metadata`` holds the page's metadata plus ``page_id``,
``doc_id``, ``source``, ``page`` (from 1), ``image_path`` (``None`` without stored images),
``score`` and ``rank``; pass the images to a vision-language model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval._optional import require

require("langchain_core", extra="rag", feature="The LangChain retriever")

from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import Field  # noqa: E402

from retrieval.rag.page_store import RetrievedPage  # noqa: E402

if TYPE_CHECKING:  # the component imports this module on demand; no circle at run time
    from retrieval.rag.component import RetrievedPassage

__all__ = ["DensezipRetriever", "to_langchain_document"]


def to_langchain_document(hit: RetrievedPassage | RetrievedPage) -> Document:
    """A LangChain ``Document`` for one retrieved passage or page."""
    if isinstance(hit, RetrievedPage):
        page_meta: dict[str, Any] = {
            **hit.metadata, "page_id": hit.id, "doc_id": hit.doc_id, "source": hit.source, "page": hit.page,
            "image_path": str(hit.image_path) if hit.image_path is not None else None, "score": hit.score,
            "rank": hit.rank,
        }
        return Document(page_content=hit.text, metadata=page_meta, id=hit.id)
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

"""A LlamaIndex retriever (``llama_index.core.retrievers.BaseRetriever``) over a RetrievalComponent.

Needs ``pip install 'densezip[rag]'``. It returns ``NodeWithScore`` objects holding a
``TextNode`` per passage: ``id_`` is the passage id, ``start_char_idx`` / ``end_char_idx``
its character offsets in the source document, the SOURCE relationship names the document,
and ``metadata`` holds the passage's metadata plus ``doc_id`` and ``source``.

For a page collection each node is an ``ImageNode``: ``image_path`` is the stored page image
(a ``TextNode`` when the collection stores no images), ``text`` the caption
(``"report.pdf, page 3"``), and ``metadata`` the page's metadata plus ``doc_id``, ``source``,
``page`` (from 1) and ``rank``; multi-modal LlamaIndex query engines read the image.

Nothing here downloads anything: the retriever uses no LlamaIndex tokenizer (tiktoken) and
no NLTK data, so it works offline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval._optional import require

require("llama_index.core", extra="rag", feature="The LlamaIndex retriever")

from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import (  # noqa: E402
    ImageNode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from retrieval.errors import ConfigError  # noqa: E402
from retrieval.rag.page_store import RetrievedPage  # noqa: E402

if TYPE_CHECKING:  # the component imports this module on demand; no circle at run time
    from retrieval.rag.component import RetrievedPassage

__all__ = ["DensezipLlamaRetriever", "to_node_with_score"]

# Bookkeeping keys that should not be pasted into the LLM prompt or the embedding text.
_HIDDEN = ["passage_id", "doc_id", "start", "end", "rank"]
_PAGE_HIDDEN = ["doc_id", "rank", "sha256"]


def _page_node(hit: RetrievedPage) -> TextNode:
    metadata: dict[str, Any] = {**hit.metadata, "doc_id": hit.doc_id, "source": hit.source, "page": hit.page,
                                "rank": hit.rank}
    common: dict[str, Any] = {
        "id_": hit.id, "text": hit.text, "metadata": metadata, "excluded_llm_metadata_keys": list(_PAGE_HIDDEN),
        "excluded_embed_metadata_keys": list(_PAGE_HIDDEN),
        "relationships": {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},
    }
    if hit.image_path is None:
        return TextNode(**common)
    return ImageNode(image_path=str(hit.image_path), **common)


def to_node_with_score(hit: RetrievedPassage | RetrievedPage) -> NodeWithScore:
    """A LlamaIndex ``NodeWithScore`` for one retrieved passage (``TextNode``) or page (``ImageNode``)."""
    if isinstance(hit, RetrievedPage):
        return NodeWithScore(node=_page_node(hit), score=hit.score)
    metadata: dict[str, Any] = {**hit.metadata, "passage_id": hit.id, "doc_id": hit.doc_id,
                                "start": hit.passage.start, "end": hit.passage.end, "rank": hit.rank}
    if hit.source is not None:
        metadata["source"] = hit.source
    node = TextNode(
        id_=hit.id, text=hit.text, metadata=metadata,
        start_char_idx=hit.passage.start, end_char_idx=hit.passage.end,
        excluded_llm_metadata_keys=list(_HIDDEN), excluded_embed_metadata_keys=list(_HIDDEN),
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},
    )
    return NodeWithScore(node=node, score=hit.score)


class DensezipLlamaRetriever(BaseRetriever):
    """LlamaIndex retriever backed by a :class:`~retrieval.rag.component.RetrievalComponent`.

    Parameters
    ----------
    component : RetrievalComponent
    k : int
        Nodes per query (LlamaIndex calls it ``similarity_top_k``).
    where : mapping, optional
        Metadata equality filter applied to every query.

    Examples
    --------
    >>> retriever = DensezipLlamaRetriever(RetrievalComponent.open("runs/docs"), k=3)  # doctest: +SKIP
    >>> retriever.retrieve("What lowers blood pressure?")[0].node.node_id             # doctest: +SKIP
    'exercise.md#0'
    """

    def __init__(self, component: Any, *, k: int = 4, where: Any = None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer; got {k!r}.")
        super().__init__()
        self.component = component
        self.k = k
        self.where = dict(where) if where else None

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.component.retrieve(query_bundle.query_str, self.k, where=self.where)
        return [to_node_with_score(h) for h in hits]

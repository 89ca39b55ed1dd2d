"""The :class:`RetrievalComponent`: retrieval for RAG, with passages, filters, reranking and cited context.

Open a collection written by :func:`retrieval.rag.passages.build_collection` (or ``densezip index
FOLDER --out DIR``) and ask it questions::

    component = RetrievalComponent.open("runs/docs")
    hits = component.retrieve("What lowers blood pressure?", k=5, where={"lang": "en"})
    context = component.context("What lowers blood pressure?", k=5, max_tokens=1024)
    prompt = build_prompt("What lowers blood pressure?", context)

Everything a question needs is in memory after :meth:`RetrievalComponent.open`: the index,
the encoder and the passage texts, so the hot path reads no file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import ConfigError, IndexFormatError
from retrieval.pipeline import Retriever
from retrieval.rag.ingest import Passage, Tokenizer, encoder_tokenizer, token_counter
from retrieval.rag.page_store import (
    PAGES_DIR,
    PageStore,
    RetrievedPage,
    is_page_collection,
    load_page_collection,
)
from retrieval.rag.pages import RenderOptions
from retrieval.rag.passages import INDEX_DIR, PassageStore, load_collection

if TYPE_CHECKING:
    from indexes.base import VectorIndex
    from indexes.multivector import MultiVectorIndex
    from retrieval.pipeline import Reranker

__all__ = [
    "DEFAULT_PROMPT",
    "Context",
    "PageRetrievalComponent",
    "RetrievalComponent",
    "RetrievedPage",
    "RetrievedPassage",
    "build_context",
    "build_prompt",
]

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Answer the question using only the numbered context passages below. "
    "Cite the passages you use as [n].\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"
)
_DEFAULT_TEMPLATE = "[{n}] {text}"
_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class RetrievedPassage:
    """A passage returned for a question, with its score and rank (1 = best)."""

    passage: Passage
    score: float
    rank: int

    @property
    def id(self) -> str:
        return self.passage.id

    @property
    def text(self) -> str:
        return self.passage.text

    @property
    def metadata(self) -> dict[str, Any]:
        return self.passage.metadata

    @property
    def doc_id(self) -> str:
        return self.passage.doc_id

    @property
    def source(self) -> str | None:
        return self.passage.source

    def cite(self) -> str:
        """``"source (passage id, characters start-end)"``."""
        return f"{self.source or self.doc_id} ({self.id}, characters {self.passage.start}-{self.passage.end})"


@dataclass(frozen=True)
class Context:
    """A context string for a generator, with its numbered citations.

    Attributes
    ----------
    text : str
        The passages that fit, each formatted by the template (``"[n] text"`` by default),
        separated by blank lines. ``""`` when nothing was retrieved.
    citations : list of RetrievedPassage (or RetrievedPage)
        ``citations[n - 1]`` is the passage cited as ``[n]``.
    tokens : int
        Tokens of ``text`` as counted by the budget's counter.
    max_tokens : int
        The budget.
    left_out : list of RetrievedPassage
        Retrieved passages that did not fit in the budget.
    """

    text: str
    citations: list[RetrievedPassage]
    tokens: int
    max_tokens: int
    left_out: list[RetrievedPassage] = field(default_factory=list)

    def sources(self) -> list[str]:
        """One line per citation: ``"[n] source (passage id, characters start-end)"``, or
        ``"[n] source, page p"`` for pages."""
        return [f"[{n}] {c.cite()}" for n, c in enumerate(self.citations, 1)]


def build_context(
    passages: Sequence[RetrievedPassage],
    *,
    max_tokens: int,
    count_tokens: Callable[[str], int],
    template: str = _DEFAULT_TEMPLATE,
) -> Context:
    """Number passages in rank order and keep those that fit in ``max_tokens``.

    Passages are added best first; one that would overflow the budget is left out and the
    next (shorter) ones are still tried. The whole string is re-counted after each addition,
    so the budget holds exactly for tokenizers whose counts are not additive.

    Parameters
    ----------
    passages : sequence of RetrievedPassage
        Best first.
    max_tokens : int
        Budget for the whole context string.
    count_tokens : callable
        ``count_tokens(text) -> int``, normally the generator's tokenizer.
    template : str
        Format of one passage; fields ``n``, ``text``, ``id``, ``doc_id``, ``source``.

    Raises
    ------
    ConfigError
        If passages were given but not even the smallest fits in ``max_tokens``.

    Examples
    --------
    >>> p = [RetrievedPassage(Passage(f"d{i}#0", t, f"d{i}", 0, len(t)), 1.0 - i / 10, i + 1)
    ...      for i, t in enumerate(["short one", "a much longer passage here", "tiny"])]
    >>> ctx = build_context(p, max_tokens=8, count_tokens=lambda s: len(s.split()))
    >>> print(ctx.text)
    [1] short one
    <BLANKLINE>
    [2] tiny
    >>> [c.id for c in ctx.left_out]
    ['d1#0']
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer; got {max_tokens!r}.")
    chosen: list[RetrievedPassage] = []
    left_out: list[RetrievedPassage] = []
    text, used = "", 0
    for p in passages:
        block = template.format(n=len(chosen) + 1, text=p.text, id=p.id, doc_id=p.doc_id, source=p.source or "")
        candidate = block if not chosen else text + _SEPARATOR + block
        n = count_tokens(candidate)
        if n <= max_tokens:
            chosen.append(p)
            text, used = candidate, n
        else:
            left_out.append(p)
    if passages and not chosen:
        smallest = min(count_tokens(template.format(n=1, text=p.text, id=p.id, doc_id=p.doc_id, source=p.source or ""))
                       for p in passages)
        raise ConfigError(
            f"a context budget of {max_tokens} tokens cannot hold even one of the {len(passages)} retrieved "
            f"passages (the smallest needs {smallest} tokens). Raise max_tokens, or build the collection with "
            "shorter passages (max_tokens at ingestion)."
        )
    return Context(text=text, citations=chosen, tokens=used, max_tokens=max_tokens, left_out=left_out)


def build_prompt(question: str, context: Context, *, template: str = DEFAULT_PROMPT) -> str:
    """Fill ``template`` (fields ``question`` and ``context``) for a generator."""
    return template.format(question=question.strip(), context=context.text)


class RetrievalComponent:
    """Retrieval for RAG over a collection: top-k passages with text, id, score and metadata.

    Encoding the question, searching the index and reranking are done by a
    :class:`~retrieval.pipeline.Retriever` (:attr:`retriever`); the component adds the
    passages, the filters on passage ids and metadata, and the context for a generator.

    Parameters
    ----------
    index : VectorIndex or MultiVectorIndex
        Holds one entry per passage, keyed by passage id.
    encoder : Encoder
        Encodes questions the way the index's passages were encoded.
    store : PassageStore
        The passages; its ids must equal the index's ids.
    reranker : Reranker, optional
        Re-scores the first stage's ``candidates`` best passages (e.g. MaxSimReranker).
    candidates : int, optional
        First-stage depth when a reranker is set (default ``max(100, k)``, the Retriever's
        :data:`~retrieval.pipeline.DEFAULT_CANDIDATES`).
    tokenizer : Tokenizer, optional
        Counts context tokens; defaults to the encoder's tokenizer (loaded on first use).
    count_tokens : callable, optional
        ``count_tokens(text) -> int``; overrides ``tokenizer`` (use the generator's tokenizer).

    Examples
    --------
    >>> rc = RetrievalComponent.open("runs/docs")                      # doctest: +SKIP
    >>> [(h.id, round(h.score, 2)) for h in rc.retrieve("blood pressure", k=2)]  # doctest: +SKIP
    [('exercise.md#0', 0.61), ('diet.md#1', 0.47)]
    >>> print(rc.context("blood pressure", k=2, max_tokens=512).text)  # doctest: +SKIP
    [1] Regular aerobic exercise lowers blood pressure ...
    """

    def __init__(
        self,
        index: VectorIndex | MultiVectorIndex,
        encoder: Any,
        store: PassageStore,
        *,
        reranker: Reranker | None = None,
        candidates: int | None = None,
        tokenizer: Tokenizer | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        # Checked here too (the Retriever raises ShapeError): a collection opened with the wrong
        # encoder has always been a ConfigError for RAG users.
        if encoder.dim != index.dim:
            raise ConfigError(f"encoder {encoder.name!r} returns {encoder.dim}-d vectors but the index holds "
                              f"{index.dim}-d vectors; use the encoder the collection was built with.")
        if reranker is not None and not callable(getattr(reranker, "rerank", None)):
            raise ConfigError(f"reranker must have rerank(queries, result, k); got {type(reranker).__name__}.")
        # A MultiVectorIndex has the VectorIndex search signature the Retriever calls.
        self.retriever = Retriever(encoder, index, reranker=reranker, candidates=candidates)  # type: ignore[arg-type]
        self.store = store
        self._tokenizer = tokenizer
        self._count_tokens = count_tokens

    def __repr__(self) -> str:
        return (f"RetrievalComponent(index={self.index!r}, encoder={self.encoder.name!r}, passages={len(self.store)}, "
                f"reranker={self.reranker!r})")

    def __len__(self) -> int:
        return len(self.store)

    # The search settings live in the Retriever; these views keep the component's attributes.
    @property
    def index(self) -> VectorIndex | MultiVectorIndex:
        """The index searched (one entry per passage)."""
        return self.retriever.index

    @property
    def encoder(self) -> Any:
        """The question encoder."""
        return self.retriever.encoder

    @encoder.setter
    def encoder(self, encoder: Any) -> None:
        self.retriever.encoder = encoder

    @property
    def reranker(self) -> Reranker | None:
        """Re-scores the first stage's candidates, if set."""
        return self.retriever.reranker

    @reranker.setter
    def reranker(self, reranker: Reranker | None) -> None:
        self.retriever.reranker = reranker

    @property
    def candidates(self) -> int | None:
        """First-stage depth when a reranker is set; ``None`` for ``max(100, k)``."""
        return self.retriever.candidates

    @candidates.setter
    def candidates(self, candidates: int | None) -> None:
        self.retriever.candidates = candidates

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: Any = None,
        device: str = "auto",
        verify: bool = True,
        mmap: bool = False,
        reranker: Reranker | None = None,
        candidates: int | None = None,
        tokenizer: Tokenizer | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> RetrievalComponent:
        """Open a collection directory (``index/`` + ``passages/``) of any index kind.

        Works for FlatIndex / FaissIndex (PQ, IVF-PQ, HNSW, ...) collections, JPQ exports
        with attached passages (the query encoder under ``query_encoder/``) and
        MultiVectorIndex collections. The encoder recorded in the index manifest is
        re-created unless ``encoder`` is given. A page collection (``index/`` + ``pages/``,
        from ``densezip index-pages``) opens as a :class:`PageRetrievalComponent`.

        Raises
        ------
        IndexFormatError
            If the directory, its index or its passage store is missing, corrupt (checksums,
            shapes, counts) or the two do not hold the same ids.
        """

        root = _collection_root(path)
        if is_page_collection(root):
            return PageRetrievalComponent.open(root, encoder=encoder, device=device, verify=verify, mmap=mmap,
                                               reranker=reranker, candidates=candidates, count_tokens=count_tokens)
        index, store = load_collection(root, verify=verify, mmap=mmap)
        encoder = encoder if encoder is not None else _recorded_encoder(index, root, device)
        return cls(index, encoder, store, reranker=reranker, candidates=candidates, tokenizer=tokenizer,
                   count_tokens=count_tokens)

    # ------------------------------------------------------------------ retrieval
    def retrieve(
        self,
        question: str,
        k: int = 5,
        *,
        ids: Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[RetrievedPassage]:
        """The ``k`` best passages for ``question``, best first.

        Parameters
        ----------
        question : str
            Non-empty text.
        k : int
            Passages to return; fewer when fewer passages pass the filters.
        ids : iterable of str, optional
            Only these passage ids may be returned (unknown ids raise UnknownIdError).
        where : mapping, optional
            Only passages whose metadata equals every given ``key: value`` (JSON equality), or,
            with operators, matches the predicate (``{"year": {"$gte": 2024}}``, ``$in``, ``$or``,
            ...: see :mod:`indexes._predicates`; a passage lacking a named key matches nothing).

        Returns
        -------
        list of RetrievedPassage
            Empty when the filters match no passage (nothing is encoded or searched then).

        Raises
        ------
        ConfigError
            For an empty or non-string question, or a bad ``k``.
        """
        passages = self.store.passages
        return [RetrievedPassage(passages[row], score, rank) for rank, (row, score) in
                enumerate(self._ranked(question, k, ids=ids, where=where), 1)]

    def _ranked(self, question: str, k: int, *, ids: Iterable[str] | None,
                where: Mapping[str, Any] | None) -> list[tuple[int, float]]:
        """``(store row, score)`` of the best ``k`` entries passing the filters, best first."""
        text = self._check_question(question)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer; got {k!r}.")
        subset: list[str] | None = None
        if where is not None and not where:
            where = None  # an empty filter allows everything
        if ids is not None or where is not None:
            if ids is None:
                rows = self._rows_where(where or {})
            else:
                rows = self.store.rows_of(ids)
                if where is not None:
                    rows = np.intersect1d(rows, self._rows_where(where), assume_unique=True)
            if rows.size == 0:
                return []
            subset = self.store.ids_at(rows.tolist())
        result = self.retriever.search([text], k, subset=subset)
        found = result.doc_ids[0]
        rows = self.store.find_rows(found)
        if (rows < 0).any():
            raise ConfigError(
                f"the index returned {int((rows < 0).sum())} id(s) that the store does not hold, e.g. "
                f"{[i for i, r in zip(found, rows.tolist(), strict=True) if r < 0][:3]}; the index and the store "
                "do not belong together. Open a collection with RetrievalComponent.open(path), or pass the store "
                "built with the index.")
        scores = result.scores[0][result.labels[0] >= 0]  # aligned with doc_ids, which omit padding
        return [(row, float(scores[i])) for i, row in enumerate(rows.tolist())]

    __call__ = retrieve

    def context(
        self,
        question: str,
        k: int = 5,
        *,
        max_tokens: int = 1024,
        ids: Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        template: str = _DEFAULT_TEMPLATE,
    ) -> Context:
        """Retrieve ``k`` passages and number the ones that fit in ``max_tokens`` (see :func:`build_context`).

        A filter that matches nothing gives an empty context (``text == ""``, no citations).
        """
        hits = self.retrieve(question, k, ids=ids, where=where)
        return build_context(hits, max_tokens=max_tokens, count_tokens=self.count_tokens, template=template)

    @property
    def count_tokens(self) -> Callable[[str], int]:
        """The token counter of context budgets (the encoder's tokenizer unless one was given)."""
        if self._count_tokens is None:
            tokenizer = self._tokenizer if self._tokenizer is not None else encoder_tokenizer(self.encoder)[0]
            self._count_tokens = token_counter(tokenizer)
        return self._count_tokens

    # ------------------------------------------------------------------ framework adapters
    def as_langchain_retriever(self, k: int = 4, *, where: Mapping[str, Any] | None = None) -> Any:
        """A LangChain ``BaseRetriever`` over this component (needs ``densezip[rag]``)."""
        from retrieval.rag.langchain import DensezipRetriever

        return DensezipRetriever(component=self, k=k, where=dict(where) if where else None)

    def as_llama_index_retriever(self, k: int = 4, *, where: Mapping[str, Any] | None = None) -> Any:
        """A LlamaIndex ``BaseRetriever`` over this component (needs ``densezip[rag]``)."""
        from retrieval.rag.llama_index import DensezipLlamaRetriever

        return DensezipLlamaRetriever(self, k=k, where=where)

    def _rows_where(self, where: Mapping[str, Any]) -> np.ndarray:
        """Rows of the passages ``where`` allows: JSON equality, or a predicate with operators."""
        from indexes._predicates import evaluate_records, uses_operators

        if not uses_operators(where):
            return self.store.rows_where(where)
        return np.flatnonzero(evaluate_records(dict(where), [p.metadata for p in self.store.passages]))

    @staticmethod
    def _check_question(question: Any) -> str:
        if not isinstance(question, str):
            raise ConfigError(f"question must be a str; got {type(question).__name__}.")
        if not question.strip():
            raise ConfigError("question is empty; ask a question with at least one word.")
        return question


def _collection_root(path: str | os.PathLike[str]) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise IndexFormatError(f"{root} is not a collection directory (it does not exist or is a file). Build one "
                               "with `densezip index FOLDER --out DIR` or retrieval.rag.passages.build_collection().")
    if not (root / INDEX_DIR).is_dir():
        hint = (" It is a bare index: it holds vectors but no passage texts; rebuild it from the documents, or "
                "save it as index/ beside a passage store (retrieval.rag.passages.attach_passages)."
                if (root / "manifest.json").is_file() else "")
        raise IndexFormatError(f"{root} has no {INDEX_DIR}/ directory, so it is not a collection.{hint}")
    return root


def _recorded_encoder(index: Any, root: Path, device: str) -> Any:
    from retrieval.encode.registry import encoder_from_description

    description = index.metadata.get("encoder")
    if not isinstance(description, dict):
        raise ConfigError(f"{root / INDEX_DIR} records no encoder (metadata.encoder); pass encoder=... to open().")
    return encoder_from_description(description, device=device, base_dir=root / INDEX_DIR)


def _count_words(text: str) -> int:
    return len(text.split())


class PageRetrievalComponent(RetrievalComponent):
    """Retrieval over a page collection: the top-k pages (source, page number, image, score) for a question.

    Opened by :meth:`RetrievalComponent.open` on a directory written by
    :func:`~retrieval.rag.page_collection.index_pages` (``densezip index-pages``). Questions
    are encoded by the ColPali / ColQwen2 model recorded in the collection, and pages ranked
    by MaxSim over their stored patch codes. :meth:`retrieve` returns :class:`RetrievedPage`
    objects; :meth:`context` numbers the pages that fit (``"[1] report.pdf, page 3"``), for a
    vision-language model that is given the pages' images in the same order.

    Parameters
    ----------
    index : MultiVectorIndex
        One entry per page, keyed by page id.
    encoder : ColPaliEncoder
        Encodes questions as the pages were encoded.
    store : PageStore
        The page records; its ids must equal the index's ids.
    images_dir : Path, optional
        The collection's ``pages/`` directory, against which stored image paths are resolved.
    reranker, candidates
        As for :class:`RetrievalComponent`.
    count_tokens : callable, optional
        Counts context tokens; default: whitespace-separated words of the page captions.

    Examples
    --------
    >>> rc = RetrievalComponent.open("runs/reports")                  # doctest: +SKIP
    >>> [(h.doc_id, h.page, round(h.score, 1)) for h in rc.retrieve("2023 revenue", k=2)]  # doctest: +SKIP
    [('annual-report.pdf', 14, 11.3), ('q4-slides.pdf', 3, 10.8)]
    """

    store: PageStore  # type: ignore[assignment]

    def __init__(
        self,
        index: MultiVectorIndex,
        encoder: Any,
        store: PageStore,
        *,
        images_dir: Path | None = None,
        reranker: Reranker | None = None,
        candidates: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        super().__init__(index, encoder, store, reranker=reranker, candidates=candidates,  # type: ignore[arg-type]
                         count_tokens=count_tokens if count_tokens is not None else _count_words)
        self.images_dir = images_dir
        try:
            self.render: RenderOptions | None = RenderOptions(**store.settings.get("render", {}))
        except (ConfigError, TypeError):  # an older or damaged record: render_page's defaults then
            self.render = None

    def __repr__(self) -> str:
        return (f"PageRetrievalComponent(index={self.index!r}, encoder={self.encoder.name!r}, pages={len(self.store)}, "
                f"documents={len(self.store.doc_ids())})")

    @classmethod
    def open(  # type: ignore[override]
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: Any = None,
        device: str = "auto",
        verify: bool = True,
        mmap: bool = False,
        reranker: Reranker | None = None,
        candidates: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> PageRetrievalComponent:
        """Open a page collection (``index/`` + ``pages/``); the recorded model is re-created unless given.

        Raises
        ------
        IndexFormatError
            If the directory is not a page collection, or a part is missing or corrupt
            (checksums of the records and images, shapes, counts, mismatched ids).
        """
        root = _collection_root(path)
        index, store = load_page_collection(root, verify=verify, mmap=mmap)
        encoder = encoder if encoder is not None else _recorded_encoder(index, root, device)
        return cls(index, encoder, store, images_dir=root.resolve() / PAGES_DIR, reranker=reranker,
                   candidates=candidates, count_tokens=count_tokens)

    def retrieve(  # type: ignore[override]
        self,
        question: str,
        k: int = 5,
        *,
        ids: Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[RetrievedPage]:
        """The ``k`` best pages for ``question``, best first (filters as in :meth:`RetrievalComponent.retrieve`)."""
        pages = self.store.pages
        out = []
        for rank, (row, score) in enumerate(self._ranked(question, k, ids=ids, where=where), 1):
            page = pages[row]
            image = self.images_dir / page.image if page.image is not None and self.images_dir is not None else None
            out.append(RetrievedPage(page, score, rank, image, self.render))
        return out

    __call__ = retrieve  # type: ignore[assignment]

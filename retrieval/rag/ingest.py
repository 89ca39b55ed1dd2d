"""Ingestion for RAG: read documents, split them into token windows, keep where each passage came from.

Inputs (:func:`load_documents`)::

    folder/                 every *.txt / *.md / *.markdown file below it (sorted, recursive);
                            the document id is the path relative to the folder
    file.jsonl[.gz]         one JSON object per line: "id" (or "_id") and "text" are required,
    folder/*.jsonl          "title" and "metadata" (an object) are optional; any other keys
                            are kept as metadata too

:func:`split_documents` cuts each document into passages of at most ``max_tokens`` tokens of
the encoder's own tokenizer, consecutive passages sharing ``overlap`` tokens. Each
:class:`Passage` keeps its document id, source path, character offsets into the document
text and the document's metadata, so answers can cite their source.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retrieval.errors import ConfigError, DataError

__all__ = [
    "TEXT_SUFFIXES",
    "Document",
    "Passage",
    "Tokenizer",
    "encoder_tokenizer",
    "load_documents",
    "split_documents",
    "token_counter",
]

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# A window end that falls inside a word (WordPiece "##" pieces, BPE fragments) is moved back
# to the word start, but never by more than this many tokens (very long "words" such as URLs).
_MAX_BACKOFF = 16


@dataclass(frozen=True)
class Document:
    """A text to ingest.

    Attributes
    ----------
    id : str
        Unique document id (no newline).
    text : str
        The full text; passages are character ranges of it.
    source : str or None
        Where it came from (a file path), cited with its passages.
    metadata : dict
        JSON-serialisable user metadata, copied onto every passage of the document.
    """

    id: str
    text: str
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Passage:
    """One retrievable unit: a token window of a :class:`Document`.

    Attributes
    ----------
    id : str
        ``"<doc_id>#<n>"`` with ``n`` counting the document's passages from 0.
    text : str
        ``document.text[start:end]``.
    doc_id : str
        Id of the document the passage was cut from.
    start, end : int
        Character offsets of the passage in the document text.
    source : str or None
        The document's source path.
    metadata : dict
        The document's metadata.
    """

    id: str
    text: str
    doc_id: str
    start: int
    end: int
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "doc_id": self.doc_id, "start": self.start, "end": self.end,
                "source": self.source, "metadata": self.metadata}


class Tokenizer(Protocol):
    """A Hugging Face fast tokenizer, or anything called the same way.

    ``tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)`` must return a
    mapping with ``"input_ids"`` and ``"offset_mapping"`` (one ``(start, end)`` character
    range per token).
    """

    def __call__(self, text: str, *, add_special_tokens: bool = ..., return_offsets_mapping: bool = ...) -> Any: ...


# ---------------------------------------------------------------------------- tokenizers
def encoder_tokenizer(encoder: Any) -> tuple[Tokenizer, int | None]:
    """The tokenizer an encoder uses, and its window in tokens without special tokens.

    Works for :class:`~retrieval.encode.dense.DenseEncoder` (the sentence-transformers
    model's tokenizer and ``max_seq_length``), :class:`~retrieval.encode.multivector.MultiVectorEncoder`
    (``document_length``), and any object with ``tokenizer`` (and optionally
    ``max_seq_length``) attributes.

    Raises
    ------
    ConfigError
        If the encoder exposes no tokenizer; pass ``tokenizer=`` explicitly then.
    """
    from retrieval.encode.dense import DenseEncoder
    from retrieval.encode.multivector import MultiVectorEncoder

    if isinstance(encoder, DenseEncoder):
        model = encoder._get_model()
        tokenizer, window = model.tokenizer, getattr(model, "max_seq_length", None)
    elif isinstance(encoder, MultiVectorEncoder):
        _, tokenizer = encoder._load()
        window = encoder.document_length
    elif getattr(encoder, "tokenizer", None) is not None:
        tokenizer, window = encoder.tokenizer, getattr(encoder, "max_seq_length", None)
    else:
        raise ConfigError(
            f"cannot find the tokenizer of encoder {type(encoder).__name__}; pass tokenizer=... (a Hugging Face fast "
            "tokenizer) and max_tokens=... explicitly."
        )
    if window is not None:
        # [CLS] and [SEP] (or <s> </s>) take two of the model's positions.
        special = tokenizer.num_special_tokens_to_add() if hasattr(tokenizer, "num_special_tokens_to_add") else 2
        window = int(window) - int(special)
    return tokenizer, window


def token_counter(tokenizer: Tokenizer) -> Callable[[str], int]:
    """A function returning the number of tokens of a text (no special tokens)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["input_ids"])

    return count


# ---------------------------------------------------------------------------- splitting
def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}.")
    return value


def _windows(offsets: Sequence[tuple[int, int]], max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges ``[lo, hi)`` covering every token, each at most ``max_tokens`` long."""

    def inside_word(i: int) -> bool:
        # Token i continues the previous one (no character between them): cutting here splits a word.
        return 0 < i < len(offsets) and offsets[i][0] == offsets[i - 1][1]

    n = len(offsets)
    out: list[tuple[int, int]] = []
    lo = 0
    while lo < n:
        hi = min(lo + max_tokens, n)
        if hi < n:
            cut = hi
            while cut > lo + 1 and hi - cut < _MAX_BACKOFF and inside_word(cut):
                cut -= 1
            if not inside_word(cut):
                hi = cut
        out.append((lo, hi))
        if hi >= n:
            break
        nxt = max(hi - overlap, lo + 1)
        while nxt > lo + 1 and hi - nxt < overlap + _MAX_BACKOFF and inside_word(nxt):
            nxt -= 1
        lo = nxt
    return out


def split_documents(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    *,
    max_tokens: int,
    overlap: int = 32,
) -> list[Passage]:
    """Cut documents into passages of at most ``max_tokens`` tokens, overlapping by ``overlap``.

    A document that fits is one passage (its whole text, stripped). Longer ones become
    windows; a window end that would split a word is moved back to the word's start (by at
    most 16 tokens). Documents without any token (empty or whitespace) give no passage.

    Parameters
    ----------
    documents : iterable of Document
    tokenizer : Tokenizer
        The encoder's own tokenizer (see :func:`encoder_tokenizer`), so a passage never
        exceeds what the encoder reads.
    max_tokens : int
        Passage length in tokens, special tokens excluded (254 for all-MiniLM-L6-v2's
        256-position window).
    overlap : int
        Tokens shared by consecutive passages of a document (0 <= overlap < max_tokens).

    Returns
    -------
    list of Passage
        In document order; ids ``"<doc_id>#0"``, ``"<doc_id>#1"``, ...

    Examples
    --------
    >>> class Words:  # a toy tokenizer: one token per space-separated word
    ...     def __call__(self, text, add_special_tokens=False, return_offsets_mapping=True):
    ...         import re
    ...         spans = [m.span() for m in re.finditer(r"\\S+", text)]
    ...         return {"input_ids": list(range(len(spans))), "offset_mapping": spans}
    >>> doc = Document("d", "one two three four five")
    >>> [p.text for p in split_documents([doc], Words(), max_tokens=3, overlap=1)]
    ['one two three', 'three four five']
    """
    max_tokens = _check_positive("max_tokens", max_tokens)
    overlap = _check_positive("overlap", overlap, allow_zero=True)
    if overlap >= max_tokens:
        raise ConfigError(f"overlap must be smaller than max_tokens; got overlap={overlap}, max_tokens={max_tokens}.")
    passages: list[Passage] = []
    seen: set[str] = set()
    # transformers warns that a long document exceeds the model's window; here that is the point.
    hf_logger = logging.getLogger("transformers.tokenization_utils_base")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        for doc in documents:
            _split_one(doc, tokenizer, max_tokens, overlap, seen, passages)
    finally:
        hf_logger.setLevel(level)
    return passages


def _split_one(doc: Document, tokenizer: Tokenizer, max_tokens: int, overlap: int, seen: set[str],
               passages: list[Passage]) -> None:
    if not isinstance(doc, Document):
        raise ConfigError(f"documents must be Document objects; got {type(doc).__name__}.")
    if doc.id in seen:
        raise DataError(f"duplicate document id {doc.id!r} (source {doc.source!r}); document ids must be unique.")
    seen.add(doc.id)
    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    if not offsets:
        logger.info("document %r has no tokens; skipped", doc.id)
        return
    for n, (lo, hi) in enumerate(_windows(offsets, max_tokens, overlap)):
        start, end = offsets[lo][0], offsets[hi - 1][1]
        passages.append(Passage(id=f"{doc.id}#{n}", text=doc.text[start:end], doc_id=doc.id, start=start,
                                end=end, source=doc.source, metadata=doc.metadata))


# ---------------------------------------------------------------------------- reading
def _is_jsonl(path: Path) -> bool:
    return path.name.endswith(_JSONL_SUFFIXES)


def load_documents(path: str | os.PathLike[str]) -> list[Document]:
    """Read documents from a folder of text / Markdown files, a JSONL file, or a folder of JSONL files.

    A BEIR data set folder (with ``corpus.jsonl[.gz]``) is read from its corpus only. Any other
    folder holding a ``*.jsonl`` / ``*.jsonl.gz`` file is read as JSONL (every such file
    below it, sorted); otherwise every ``.txt`` / ``.md`` / ``.markdown`` file below it is
    one document whose id is its path relative to the folder (``/``-separated), with
    metadata ``{"file_name", "extension"}``.

    Raises
    ------
    DataError
        If the path does not exist, holds no document file, a file is not UTF-8, or a JSONL
        line is malformed (the message names the file and line).
    """
    root = Path(path)
    if root.is_file():
        if _is_jsonl(root):
            return _read_jsonl_files([root], root.parent)
        if root.suffix.lower() in TEXT_SUFFIXES:
            return [_read_text_file(root, root.parent)]
        raise DataError(f"{root} is neither a .jsonl file nor a {'/'.join(TEXT_SUFFIXES)} file.")
    if not root.is_dir():
        raise DataError(f"{root} does not exist; pass a folder of .txt/.md files, a .jsonl file or a folder of them.")
    beir = [root / name for name in ("corpus.jsonl", "corpus.jsonl.gz") if (root / name).is_file()]
    if beir:  # a BEIR data set directory: only the corpus holds documents (not queries.jsonl)
        return _read_jsonl_files(beir[:1], root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                        p.relative_to(root).parts))
    jsonl = [p for p in files if _is_jsonl(p)]
    if jsonl:
        return _read_jsonl_files(jsonl, root)
    texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
    if not texts:
        raise DataError(f"{root} holds no .jsonl, .txt, .md or .markdown file; nothing to ingest.")
    return [_read_text_file(p, root) for p in texts]


def _read_text_file(file: Path, root: Path) -> Document:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc}); convert it or leave it out.") from exc
    rel = file.relative_to(root).as_posix()
    return Document(id=rel, text=text, source=str(file),
                    metadata={"file_name": file.name, "extension": file.suffix.lower().lstrip(".")})


def _read_jsonl_files(files: list[Path], root: Path) -> list[Document]:
    docs: list[Document] = []
    for file in files:
        opener = gzip.open if file.name.endswith(".gz") else open
        try:
            with opener(file, "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise DataError(f"{file} cannot be read as UTF-8 JSONL ({exc}).") from exc
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                docs.append(_json_document(line, file, lineno))
    return docs


def _json_document(line: str, file: Path, lineno: int) -> Document:
    where = f"{file}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc}).") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{where} must hold a JSON object; got {type(obj).__name__}.")
    doc_id = obj.pop("id", obj.pop("_id", None))
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id or "\n" in doc_id or "\r" in doc_id:
        raise DataError(f"{where} needs a non-empty string \"id\" (or \"_id\") without newlines; got {doc_id!r}.")
    text = obj.pop("text", None)
    if not isinstance(text, str):
        raise DataError(f"{where} needs a string \"text\"; got {type(text).__name__}.")
    title = obj.pop("title", "")
    if not isinstance(title, str):
        raise DataError(f"{where}: \"title\" must be a string; got {type(title).__name__}.")
    metadata = obj.pop("metadata", {})
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: \"metadata\" must be a JSON object; got {type(metadata).__name__}.")
    metadata = {**obj, **metadata}  # remaining top-level keys are metadata too
    if title.strip():
        metadata.setdefault("title", title)
        text = (title + " " + text).strip()  # BEIR's title + text convention (retrieval.beir.corpus_texts)
    return Document(id=doc_id, text=text, source=f"{file}:{lineno}", metadata=metadata)

"""The passage store saved beside an index, and RAG collections (index + passages) on disk.

A collection is a directory::

    collection/
      index/            any saved index: FlatIndex, FaissIndex (PQ, IVF-PQ, ...) or MultiVectorIndex
      passages/         the passage store, saved atomically on its own:
        manifest.json     format "densezip-passages", count, chunking settings, checksums (written last)
        passages.jsonl    one passage per line: id, text, doc_id, start, end, source, metadata
      query_encoder/    JPQ exports only: the trained query encoder that index/ refers to

:func:`build_collection` writes all of it in one atomic step. A JPQ export (``index/`` plus
``query_encoder/``) becomes a collection with :func:`attach_passages`. Every passage id must
be a document id of the index and vice versa; :class:`~retrieval.rag.component.RetrievalComponent`
checks this when it opens a collection.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from indexes._ids import IdTable
from indexes._io import atomic_directory, file_table, verify_checksums
from indexes._paths import load_pinned, member, open_member
from indexes.manifest import MANIFEST_NAME, read_json, write_json
from retrieval._version import __version__
from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError
from retrieval.rag.ingest import Document, Passage, encoder_tokenizer, load_documents, split_documents

if TYPE_CHECKING:
    from indexes.base import VectorIndex
    from indexes.check import CheckReport
    from indexes.multivector import MultiVectorIndex

__all__ = [
    "INDEX_DIR",
    "PASSAGES_DIR",
    "PassageStore",
    "RecordStore",
    "attach_passages",
    "build_collection",
    "check_collection",
    "is_collection",
    "load_collection",
    "read_store_manifest",
    "rows_where",
]

logger = logging.getLogger(__name__)

INDEX_DIR = "index"
PASSAGES_DIR = "passages"
STORE_FORMAT = "densezip-passages"
STORE_FORMAT_VERSION = 1
_FILE = "passages.jsonl"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def rows_where(records: Sequence[Any], where: Mapping[str, Any],
               cache: dict[str, dict[str, NDArray[np.int64]]]) -> NDArray[np.int64]:
    """Rows of ``records`` (objects with a ``metadata`` dict) whose metadata equals ``where`` on every key.

    ``cache`` maps a metadata key to its canonical JSON values and their rows; it is filled per
    key on first use and belongs to the store that owns ``records``.
    """
    if not isinstance(where, Mapping) or not all(isinstance(k, str) for k in where):
        raise ConfigError(f"where must be a mapping of metadata key (str) to value; got {where!r:.100}.")
    rows: NDArray[np.int64] | None = None
    for key, value in where.items():
        table = cache.get(key)
        if table is None:
            groups: dict[str, list[int]] = {}
            for i, r in enumerate(records):
                if key in r.metadata:
                    groups.setdefault(_canonical(r.metadata[key]), []).append(i)
            table = {v: np.array(g, dtype=np.int64) for v, g in groups.items()}
            cache[key] = table
        try:
            match = table.get(_canonical(value), np.zeros(0, dtype=np.int64))
        except TypeError as exc:
            raise ConfigError(f"where[{key!r}] must be a JSON value; got {type(value).__name__}.") from exc
        rows = match if rows is None else np.intersect1d(rows, match, assume_unique=True)
        if rows.size == 0:
            break
    return rows if rows is not None else np.arange(len(records), dtype=np.int64)


class RecordStore:
    """What the passage and page stores share: the records in a list, looked up by id through
    a compact :class:`~indexes._ids.IdTable` (the ids as one UTF-8 buffer with offsets and
    sorted 64-bit hashes, as every index kind keeps them: no dict of str per record).

    Subclasses call :meth:`_index_ids` with their records (objects with ``id`` and
    ``metadata``) and set :attr:`_what` (``"passage"``) and :attr:`_hint` (what ids look like).
    """

    _what: ClassVar[str] = "record"
    _hint: ClassVar[str] = ""
    _records: list[Any]

    def _index_ids(self, records: list[Any]) -> None:
        """Keep ``records`` and index their ids; raises ConfigError for a duplicate or non-str id."""
        ids = [r.id for r in records]
        bad = next((n for n, i in enumerate(ids) if not isinstance(i, str)), -1)
        if bad >= 0:
            raise ConfigError(f"{self._what} ids must be str; got {type(ids[bad]).__name__} {ids[bad]!r:.100} "
                              f"(number {bad + 1}).")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ConfigError(f"duplicate {self._what} id {dup!r}; {self._what} ids must be unique.")
        self._records = records
        self._table = IdTable(tombstones=False)
        self._table.append(ids)
        # metadata key -> canonical JSON value -> rows; built per key on first use.
        self._by_value: dict[str, dict[str, NDArray[np.int64]]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._table

    def __getitem__(self, record_id: str) -> Any:
        row = int(self.find_rows([record_id])[0])
        if row < 0:
            raise UnknownIdError(f"{self._what} id {record_id!r} is not in the store.")
        return self._records[row]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self._records]

    @property
    def row_of(self) -> Mapping[str, int]:
        """A read-only id -> row mapping, answered by the id table (no dict is built)."""
        return _RowView(self)

    def ids_at(self, rows: Iterable[int]) -> list[str]:
        return [self._records[r].id for r in rows]

    def ids_memory_bytes(self) -> int:
        """Bytes held by the id lookup (:meth:`indexes._ids.IdTable.memory_bytes`); the records
        themselves (texts, metadata) are Python objects and are not counted."""
        return self._table.memory_bytes()

    def find_rows(self, ids: Sequence[Any]) -> NDArray[np.int64]:
        """The row of each of ``ids`` in order, -1 for an id that is not in the store (one batched lookup)."""
        return np.array(self._table.rows_of(list(ids)), dtype=np.int64)

    def rows_of(self, ids: Iterable[str]) -> NDArray[np.int64]:
        """Rows of the given ids (sorted, unique); unknown ids raise UnknownIdError."""
        items = [ids] if isinstance(ids, str) else list(ids)
        rows = self.find_rows(items)
        if (rows < 0).any():
            missing = [i for i, r in zip(items, rows.tolist(), strict=True) if r < 0]
            raise UnknownIdError(f"ids holds {len(missing)} {self._what} id(s) that are not in the collection, "
                                 f"e.g. {missing[:3]}. {self._hint}")
        return np.unique(rows)

    def rows_where(self, where: Mapping[str, Any]) -> NDArray[np.int64]:
        """Rows of the records whose metadata equals ``where`` on every key (JSON equality)."""
        return rows_where(self._records, where, self._by_value)


class _RowView(Mapping[str, int]):
    """``store.row_of``: id -> row through the store's id table; KeyError for an unknown id."""

    __slots__ = ("_store",)

    def __init__(self, store: RecordStore) -> None:
        self._store = store

    def __getitem__(self, record_id: str) -> int:
        row = int(self._store.find_rows([record_id])[0])
        if row < 0:
            raise KeyError(record_id)
        return row

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.ids)

    def __len__(self) -> int:
        return len(self._store)


class PassageStore(RecordStore):
    """Passages in memory, looked up by id and filtered by metadata equality.

    Parameters
    ----------
    passages : sequence of Passage
        Unique ids.
    chunking : dict, optional
        How the passages were cut (tokenizer, ``max_tokens``, ``overlap``); saved as is.
    """

    _what = "passage"
    _hint = "Passage ids look like '<doc_id>#<n>'."

    def __init__(self, passages: Sequence[Passage], *, chunking: Mapping[str, Any] | None = None) -> None:
        self.passages: list[Passage] = list(passages)
        self.chunking: dict[str, Any] = dict(chunking or {})
        self._index_ids(self.passages)

    def __repr__(self) -> str:
        return f"PassageStore(passages={len(self)}, chunking={self.chunking!r})"

    def __getitem__(self, passage_id: str) -> Passage:
        return super().__getitem__(passage_id)  # type: ignore[no-any-return]

    def rows_where(self, where: Mapping[str, Any]) -> NDArray[np.int64]:
        """Rows of the passages whose metadata equals ``where`` on every key (JSON equality).

        Examples
        --------
        >>> store = PassageStore([Passage("a#0", "x", "a", 0, 1, metadata={"lang": "en"}),
        ...                       Passage("b#0", "y", "b", 0, 1, metadata={"lang": "de"})])
        >>> store.rows_where({"lang": "de"}).tolist(), store.rows_where({"lang": "fr"}).tolist()
        ([1], [])
        """
        return super().rows_where(where)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``passages.jsonl`` and a checksummed manifest atomically into directory ``path``."""
        target = Path(path)
        with atomic_directory(target, overwrite=overwrite) as tmp:
            with open(tmp / _FILE, "w", encoding="utf-8", newline="\n") as f:
                for p in self.passages:
                    f.write(json.dumps(p.to_json(), ensure_ascii=False, allow_nan=False))
                    f.write("\n")
            manifest = {
                "format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION, "library_version": __version__,
                "count": len(self), "chunking": self.chunking, "files": file_table(tmp),
            }
            write_json(tmp / MANIFEST_NAME, manifest)  # the same layout as an index manifest, written last
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> PassageStore:
        """Read a store written by :meth:`save`, checking its manifest, checksum and every line.

        The directory is read as one save (:func:`indexes._paths.load_pinned`), and only
        regular files inside it are read.
        """
        return load_pinned(path, lambda d: cls._load(d, verify=verify))

    @classmethod
    def _load(cls, directory: Path, *, verify: bool) -> PassageStore:
        manifest, files, count = read_store_manifest(
            directory, fmt=STORE_FORMAT, version=STORE_FORMAT_VERSION, file_name=_FILE, what="passage store",
            hint="`densezip index FOLDER --out DIR` or retrieval.rag.passages.build_collection()")
        file = directory / MANIFEST_NAME
        chunking = manifest.get("chunking")
        if chunking is not None and not isinstance(chunking, dict):
            raise IndexFormatError(f"{file}: 'chunking' must be an object; got {chunking!r:.80}. The manifest is damaged.")
        verify_checksums(directory, files, hashes=verify)
        passages: list[Passage] = []
        with open_member(member(directory, _FILE)) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                passages.append(_passage_from_line(line, directory / _FILE, lineno))
        if len(passages) != count:
            raise IndexFormatError(
                f"{directory / _FILE} holds {len(passages)} passages, but its manifest says {count}; the store is "
                "truncated or does not belong here."
            )
        try:
            return cls(passages, chunking=chunking or {})
        except ConfigError as exc:
            raise IndexFormatError(f"{directory / _FILE}: {exc}") from exc


def read_store_manifest(directory: Path, *, fmt: str, version: int, file_name: str, what: str,
                        hint: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(manifest, files table, count)`` of a record store (passages, pages) after checking its header.

    Raises
    ------
    IndexFormatError
        If the manifest is missing, of another format, of a newer format version, or lacks
        ``files.<file_name>`` or ``count``.
    """
    file = directory / MANIFEST_NAME
    if not os.path.lexists(file):
        raise IndexFormatError(f"{file} is missing: {directory} is not a saved {what}. Build the collection with {hint}.")
    manifest = read_json(file, what=f"the {what}")
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise IndexFormatError(f"{file} is not a densezip {what} manifest (format {fmt!r}).")
    found = manifest.get("format_version")
    if not isinstance(found, int) or found > version:
        raise IndexFormatError(
            f"{file} uses {what} format version {found!r}; this densezip {__version__} reads up to "
            f"{version}. Upgrade with:  pip install -U densezip"
        )
    files, count = manifest.get("files"), manifest.get("count")
    if not isinstance(files, dict) or file_name not in files or type(count) is not int:
        raise IndexFormatError(f"{file} lacks 'files.{file_name}' or 'count'; the manifest is damaged.")
    return manifest, files, count


def _passage_from_line(line: str, file: Path, lineno: int) -> Passage:
    try:
        obj = json.loads(line)
        passage = Passage(id=obj["id"], text=obj["text"], doc_id=obj["doc_id"], start=obj["start"], end=obj["end"],
                          source=obj.get("source"), metadata=obj.get("metadata") or {})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{file}:{lineno} is not a valid passage record ({exc}); the store is corrupt.") from exc
    problem = _record_problem(passage)
    if problem:
        raise IndexFormatError(f"{file}:{lineno}: {problem}; the store is corrupt.")
    return passage


def _record_problem(p: Passage) -> str | None:
    """What is wrong with a passage read back from a store, or None."""
    if not isinstance(p.id, str) or not p.id or not isinstance(p.doc_id, str) or not isinstance(p.text, str):
        return "id (non-empty), doc_id and text must be strings"
    if type(p.start) is not int or type(p.end) is not int or not 0 <= p.start <= p.end:
        return f"start and end must be character offsets with 0 <= start <= end; got {p.start!r}, {p.end!r}"
    if p.source is not None and not isinstance(p.source, str):
        return f"source must be a string or null; got {p.source!r}"
    if not isinstance(p.metadata, dict):
        return f"metadata must be an object; got {type(p.metadata).__name__}"
    return None


# ---------------------------------------------------------------------------- collections
def build_collection(
    source: str | os.PathLike[str] | Iterable[Document] | Iterable[Passage],
    out: str | os.PathLike[str],
    *,
    encoder: Any,
    spec: str = "Flat",
    index: VectorIndex | MultiVectorIndex | None = None,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    overlap: int = 32,
    overwrite: bool = False,
    batch_size: int | None = None,
) -> Path:
    """Ingest documents, encode their passages, build an index and save index + passages atomically.

    Parameters
    ----------
    source : path, iterable of Document, or iterable of Passage
        A folder of .txt/.md files, a .jsonl file or folder (see
        :func:`~retrieval.rag.ingest.load_documents`), documents to split, or passages already cut.
    out : path-like
        Collection directory to write (``index/`` and ``passages/``).
    encoder : Encoder
        Encodes the passages; its ``describe()`` is recorded so the collection can be
        reopened without naming the encoder again.
    spec : str
        Index to build when ``index`` is not given (see :func:`indexes.make_index`): ``"exact"``
        (NumPy FlatIndex) or a FAISS factory string (``"Flat"``, ``"PQ48x8"``, ``"IVF64,PQ48x8"``,
        ...) for a single-vector encoder; a :class:`~indexes.MultiVectorIndex` spec (``"FP16"``,
        ``"Prune0.6,KMeans256r2"``, ...) for a
        :class:`~retrieval.encode.multivector.MultiVectorEncoder`.
    index : VectorIndex or MultiVectorIndex, optional
        An empty index to fill instead (trained on the passages if it needs training).
    tokenizer : Tokenizer, optional
        Defaults to the encoder's own (:func:`~retrieval.rag.ingest.encoder_tokenizer`).
    max_tokens : int, optional
        Passage length in tokens; defaults to the encoder's window (254 for all-MiniLM-L6-v2).
    overlap : int
        Tokens shared by consecutive passages of a long document.
    overwrite : bool
        Replace an existing ``out``.
    batch_size : int, optional
        Encoder batch size.

    Returns
    -------
    Path
        ``out``.
    """
    items: list[Any]
    if isinstance(source, (str, os.PathLike)):
        items = list(load_documents(source))
    else:
        items = list(source)
    chunking: dict[str, Any]
    if items and all(isinstance(x, Passage) for x in items):
        passages: list[Passage] = items
        chunking = {"split": "given"}
    else:
        if tokenizer is None or max_tokens is None:
            found, window = encoder_tokenizer(encoder)
            tokenizer = tokenizer if tokenizer is not None else found
            max_tokens = max_tokens if max_tokens is not None else window
        if max_tokens is None:
            raise ConfigError("the encoder reports no window length; pass max_tokens=...")
        passages = split_documents(items, tokenizer, max_tokens=max_tokens, overlap=overlap)
        chunking = {"split": "tokens", "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
                    "max_tokens": max_tokens, "overlap": overlap, "documents": len(items)}
    if not passages:
        raise ConfigError("no passages to index: the documents are empty. Check the input folder or file.")
    store = PassageStore(passages, chunking=chunking)
    texts, ids = [p.text for p in passages], store.ids
    if batch_size is None:
        vectors = encoder.encode_documents(texts, ids=ids)
    else:
        vectors = encoder.encode_documents(texts, ids=ids, batch_size=batch_size)
    if index is None:
        from indexes.factory import make_index
        from retrieval.encode.multivector import MultiVectorEncoder

        index = make_index(vectors.dim, spec, multivector=isinstance(encoder, MultiVectorEncoder))
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    describe = getattr(encoder, "describe", None)
    if describe is not None:
        index.metadata["encoder"] = describe()
    target = Path(out)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        index.save(tmp / INDEX_DIR)
        store.save(tmp / PASSAGES_DIR)
    logger.info("saved a collection of %d passages to %s", len(store), target)
    return target


def attach_passages(
    collection: str | os.PathLike[str], passages: Sequence[Passage], *, overwrite: bool = False,
    chunking: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``passages`` as ``collection/passages`` beside an existing ``collection/index``.

    Turns a JPQ export (``index/`` + ``query_encoder/``) or any directory holding a saved
    index under ``index/`` into a collection. The passage ids must equal the index's ids.
    """
    from indexes.base import load_index

    root = Path(collection)
    index = load_index(root / INDEX_DIR, verify=False)
    store = PassageStore(passages, chunking=chunking)
    check_same_ids(index.doc_ids, store, root)
    return store.save(root / PASSAGES_DIR, overwrite=overwrite)


def load_collection(root: Path, *, verify: bool = True, mmap: bool = False) -> tuple[Any, PassageStore]:
    """``(index, passage store)`` of the collection ``root``, both from the same save of it.

    The collection directory is opened once and both parts are read from it
    (:func:`indexes._paths.load_pinned`), so a concurrent ``build_collection(...,
    overwrite=True)`` cannot pair the index of one build with the passages of another.
    """
    from indexes.base import load_index

    def both(directory: Path) -> tuple[Any, PassageStore]:
        index = load_index(directory / INDEX_DIR, verify=verify, mmap=mmap)
        store = PassageStore.load(directory / PASSAGES_DIR, verify=verify)
        check_same_ids(index.doc_ids, store, directory)
        return index, store

    return load_pinned(root, both)


def check_same_ids(index_ids: Collection[Any], store: Any, root: Path) -> None:
    """Raise IndexFormatError unless the index (its live, unique ``index_ids``) and the store
    (a :class:`RecordStore`) hold the same ids; one batched lookup in the store's id table."""
    ids = list(index_ids)
    unknown = store.find_rows(ids) < 0
    if len(ids) == len(store) and not unknown.any():
        return
    no_text = [i for i, u in zip(ids, unknown.tolist(), strict=True) if u]
    indexed = set(ids)
    not_indexed = [i for i in store.ids if i not in indexed]
    raise IndexFormatError(
        f"{root}: the index and the passage store do not match: {len(no_text)} indexed id(s) have no passage "
        f"(e.g. {no_text[:3]}) and {len(not_indexed)} passage(s) are not indexed (e.g. {not_indexed[:3]}). "
        "Rebuild the collection, or attach the passages the index was built from."
    )


def is_collection(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is laid out as a RAG collection (``index/`` + ``passages/``, no top manifest)."""
    directory = Path(path)
    return (not (directory / MANIFEST_NAME).exists() and (directory / INDEX_DIR).is_dir()
            and (directory / PASSAGES_DIR).is_dir())


def check_collection(path: str | os.PathLike[str], *, verify: bool = True, load: bool = True,
                     store_dir: str = PASSAGES_DIR, load_store: Callable[..., Any] | None = None) -> CheckReport:
    """``densezip check`` for a RAG collection: check ``index/`` with :func:`indexes.check.check_index`,
    then load ``passages/`` and compare the two id sets (problem code ``bad-passages``).

    A page collection passes ``store_dir="pages"`` and its store's ``load`` (problem code
    ``bad-pages``)."""
    from indexes.base import load_index
    from indexes.check import CheckReport, check_index, merge_report

    directory = Path(path)
    sub = check_index(directory / INDEX_DIR, verify=verify, load=load)
    report = CheckReport(path=str(directory), index_type=sub.index_type, count=sub.count,
                         hashes_verified=verify, loaded=sub.loaded)
    merge_report(report, sub, INDEX_DIR)
    try:
        store = (load_store or PassageStore.load)(directory / store_dir, verify=verify)
        report.files_checked += 2
        if sub.loaded:
            check_same_ids(load_index(directory / INDEX_DIR, verify=False, mmap=True).doc_ids, store, directory)
    except Exception as exc:  # whatever is wrong with the store is what the user needs to see
        report.add("error", f"bad-{store_dir}", store_dir, f"{type(exc).__name__}: {exc}")
    return report

"""Load retrieval benchmarks stored in the BEIR layout.

A BEIR data set is a directory::

    corpus.jsonl[.gz]     one {"_id", "title", "text"} JSON object per line
    queries.jsonl[.gz]    one {"_id", "text"} JSON object per line
    qrels/<split>.tsv     tab-separated "query-id  corpus-id  score", header line optional

:func:`load_beir` reads such a directory (or a data set bundled with the package, see
:mod:`retrieval.datasets`) into a :class:`BEIRDataset`, checking it strictly: every
problem raises :class:`~retrieval.errors.DataError` naming the file and line.

References
----------
Thakur et al., "BEIR: A Heterogeneous Benchmark for Zero-shot Evaluation of Information
Retrieval Models", NeurIPS 2021 Datasets and Benchmarks.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from retrieval.datasets import available_datasets, dataset_path
from retrieval.errors import ConfigError, DataError

V = TypeVar("V")

__all__ = ["BEIRDataset", "corpus_file", "corpus_texts", "has_qrels", "load_beir", "load_corpus", "read_fields"]


@dataclass(frozen=True, repr=False)
class BEIRDataset:
    """A corpus, its queries and the relevance judgments of one split.

    Attributes
    ----------
    name : str
        Data set name (the directory name for :func:`load_beir`).
    corpus : dict of str to dict of str to str
        ``doc_id -> {"title": ..., "text": ...}`` in file order. Titles may be empty.
    queries : dict of str to str
        ``query_id -> text`` in file order; holds every query of ``queries.jsonl``,
        including those without judgments in this split.
    qrels : dict of str to dict of str to int
        ``query_id -> {doc_id: grade}`` for this split. Grade 0 means judged
        non-relevant; graded sets use higher numbers for more relevant documents.
    split : str
        The qrels split, e.g. ``"test"``.

    Notes
    -----
    Build instances with :func:`load_beir` or :meth:`subset`; they check that every
    qrels id exists in ``corpus`` and ``queries``. Ids are always strings.
    """

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str

    def __repr__(self) -> str:
        # The default dataclass repr would print the whole corpus.
        n_judgments = sum(len(v) for v in self.qrels.values())
        return (
            f"BEIRDataset(name={self.name!r}, split={self.split!r}, docs={len(self.corpus)}, "
            f"queries={len(self.qrels)} judged of {len(self.queries)}, judgments={n_judgments})"
        )

    def doc_ids(self) -> list[str]:
        """Document ids in corpus file order."""
        return list(self.corpus)

    def doc_texts(self, sep: str = " ") -> list[str]:
        """Document strings to encode, aligned with :meth:`doc_ids`.

        Follows the BEIR / sentence-transformers convention: ``(title + sep + text).strip()``,
        or just ``text.strip()`` when the title is empty.

        Parameters
        ----------
        sep : str, default " "
            Placed between title and text.

        Returns
        -------
        list of str
            One string per document; empty documents give ``""``.
        """
        return corpus_texts(self.corpus, sep)

    def query_ids(self) -> list[str]:
        """Ids of the queries judged in this split, in ``queries.jsonl`` order."""
        return [qid for qid in self.queries if qid in self.qrels]

    def query_texts(self) -> list[str]:
        """Texts of the judged queries, aligned with :meth:`query_ids`."""
        return [self.queries[qid] for qid in self.query_ids()]

    def subset(self, n_docs: int, *, seed: int = 0) -> BEIRDataset:
        """Return a smaller copy for fast tests that still evaluates meaningfully.

        Rule: the judged queries are visited in a random order (``seed``); a query is
        kept if all of its judged documents (any grade, so its qrels stay complete) fit
        in the ``n_docs`` budget together with those already kept. The remaining slots are
        filled with other documents drawn at random from the corpus. Documents keep corpus
        order; ``queries`` and ``qrels`` keep only the kept queries, with their qrels
        unchanged. The result is deterministic for a given ``seed``.

        Parameters
        ----------
        n_docs : int
            Number of documents in the result (at least 1). If it is not smaller than the
            corpus, ``self`` is returned.
        seed : int, default 0
            Seed for the query order and the filler documents.

        Returns
        -------
        BEIRDataset
            Named ``"<name>-subset<n_docs>"``.

        Raises
        ------
        ConfigError
            If ``n_docs`` is not a positive integer, or is too small to hold the judged
            documents of even one query.
        """
        if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 1:
            raise ConfigError(f"subset() needs n_docs as a positive int; got {n_docs!r}.")
        if n_docs >= len(self.corpus):
            return self
        rng = random.Random(seed)
        qids = self.query_ids()
        rng.shuffle(qids)
        keep_docs: set[str] = set()
        keep_queries: set[str] = set()
        for qid in qids:
            new = set(self.qrels[qid]) - keep_docs
            if len(keep_docs) + len(new) <= n_docs:
                keep_docs |= new
                keep_queries.add(qid)
        if not keep_queries:
            smallest = min(len(self.qrels[qid]) for qid in qids)
            raise ConfigError(
                f"subset(n_docs={n_docs}) cannot keep any query of {self.name!r}: the smallest "
                f"query needs {smallest} judged documents. Use n_docs >= {smallest}."
            )
        others = [doc_id for doc_id in self.corpus if doc_id not in keep_docs]
        keep_docs.update(rng.sample(others, n_docs - len(keep_docs)))
        return BEIRDataset(
            name=f"{self.name}-subset{n_docs}",
            corpus={d: doc for d, doc in self.corpus.items() if d in keep_docs},
            queries={q: t for q, t in self.queries.items() if q in keep_queries},
            qrels={q: dict(j) for q, j in self.qrels.items() if q in keep_queries},
            split=self.split,
        )


def load_beir(path: str | os.PathLike[str], split: str = "test") -> BEIRDataset:
    """Load a BEIR-layout data set directory.

    Parameters
    ----------
    path : str or os.PathLike
        Directory holding ``corpus.jsonl`` or ``corpus.jsonl.gz``, ``queries.jsonl`` (or
        ``.gz``) and ``qrels/<split>.tsv``. If no such path exists and ``path`` is the
        name of a bundled data set (see :func:`retrieval.datasets.available_datasets`),
        that one is loaded, so ``load_beir("scifact")`` works anywhere. An existing path
        always wins over a bundled name. When both ``corpus.jsonl`` and
        ``corpus.jsonl.gz`` exist, the plain file is read (same for queries).
    split : str, default "test"
        Qrels file to read: ``qrels/<split>.tsv``.

    Returns
    -------
    BEIRDataset
        Ids are strings (JSON numbers are converted with ``str``), with surrounding
        whitespace dropped in the corpus, the queries and the qrels alike, so they compare
        equal wherever they appear; missing titles become ``""``; extra fields such as
        ``metadata`` are dropped.

    Raises
    ------
    DataError
        For a missing directory or file (a missing split lists the splits that exist),
        an unreadable gzip file, a line that is not a JSON object, a record without
        ``_id`` or with a non-string ``title``/``text``, duplicate document or query ids,
        an empty corpus, a qrels row without three tab-separated columns or with a
        non-integer score, the same (query, document) pair judged twice with different
        grades, and qrels rows naming unknown documents or queries. Every message names
        the file, and the line where there is one.
    ConfigError
        If ``split`` is not a plain name.

    Examples
    --------
    >>> ds = load_beir("scifact", split="test")
    >>> len(ds.corpus), len(ds.query_ids())
    (5183, 300)
    """
    root = _resolve_root(path)
    _check_split(split)
    corpus_file = _find_file(root, "corpus")
    queries_file = _find_file(root, "queries")
    qrels_file = _find_qrels(root, split)

    corpus = _read_corpus(corpus_file)
    queries = _read_queries(queries_file)
    qrels = _read_qrels(qrels_file, corpus, queries, corpus_file, queries_file)
    return BEIRDataset(name=root.name, corpus=corpus, queries=queries, qrels=qrels, split=split)


def load_corpus(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Read only the corpus of a BEIR-layout directory (no queries or qrels needed).

    Returns ``{doc_id: {"title": ..., "text": ...}}`` in file order, checked as in
    :func:`load_beir`. Use :func:`corpus_texts` for the texts to encode.

    Examples
    --------
    >>> len(load_corpus("scifact"))
    5183
    """
    return _read_corpus(_find_file(_resolve_root(path), "corpus"))


def has_qrels(path: str | os.PathLike[str], split: str) -> bool:
    """Whether the BEIR directory (or bundled data set) ``path`` has judgments ``qrels/<split>.tsv``
    and a queries file, i.e. whether ``load_beir(path, split)`` can find everything it reads.

    Examples
    --------
    >>> has_qrels("scifact", "train"), has_qrels("scifact", "dev")
    (True, False)
    """
    root = _resolve_root(path)
    _check_split(split)
    queries = any((root / f"queries.jsonl{ext}").is_file() for ext in ("", ".gz"))
    return queries and (root / "qrels" / f"{split}.tsv").is_file()


def corpus_file(path: str | os.PathLike[str]) -> Path:
    """The ``corpus.jsonl[.gz]`` of a BEIR-layout directory or bundled data set name (DataError if none)."""
    return _find_file(_resolve_root(path), "corpus")


def read_fields(
    file: str | os.PathLike[str], fields: Sequence[str] | None = None
) -> dict[str, tuple[int, dict[str, Any]]]:
    """``{_id: (line number, {field: value})}`` of a JSONL file of records keyed by ``_id``.

    ``fields`` names the fields to read; each is looked up at the top level of a record, then
    under its ``metadata`` object (BEIR's place for extra fields), and a record without one is
    a DataError naming the file and line. ``None`` reads every top-level field but ``_id``.
    Ids follow :func:`load_beir`'s rules (numbers as str, whitespace dropped, no duplicates).
    """
    path = Path(file)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a JSONL file with one {{\"_id\": ...}} object per line.")

    def pick(obj: dict[str, Any], lineno: int) -> tuple[int, dict[str, Any]]:
        if fields is None:
            return lineno, {key: value for key, value in obj.items() if key != "_id"}
        meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
        missing = [f for f in fields if f not in obj and f not in meta]
        if missing:
            raise DataError(f"{path}, line {lineno}: record {obj.get('_id')!r:.60} has no field {missing[0]!r} "
                            f"(at the top level or under \"metadata\"); found {sorted(obj)[:10]}. Every record "
                            "needs every field named.")
        return lineno, {f: obj[f] if f in obj else meta[f] for f in fields}

    return _read_records(path, "record", pick)


def corpus_texts(corpus: dict[str, dict[str, str]], sep: str = " ") -> list[str]:
    """Texts to encode, in corpus order: ``title + sep + text`` (just ``text`` without a title)."""
    return [
        (doc["title"] + sep + doc["text"]).strip() if doc["title"].strip() else doc["text"].strip()
        for doc in corpus.values()
    ]


# --------------------------------------------------------------------------- locating files


def _check_split(split: object) -> None:
    if not isinstance(split, str) or not split or split != Path(split).name or split.startswith("."):
        raise ConfigError(
            f"split must be a plain name such as 'test' or 'train' (the qrels/<split>.tsv "
            f"stem); got {split!r}."
        )


def _resolve_root(path: str | os.PathLike[str]) -> Path:
    try:
        root = Path(path)
    except TypeError:
        raise ConfigError(
            f"load_beir() needs a directory path or a bundled data set name; got {path!r}."
        ) from None
    if root.exists():
        if not root.is_dir():
            raise DataError(
                f"BEIR data set path {root} is a file; expected the directory that holds "
                "corpus.jsonl(.gz), queries.jsonl and qrels/."
            )
        return root
    name = os.fspath(path)
    if name in available_datasets():
        return dataset_path(name)
    raise DataError(
        f"BEIR data set directory not found: {root.resolve()}. Pass a directory holding "
        "corpus.jsonl(.gz), queries.jsonl and qrels/<split>.tsv, or one of the bundled "
        f"data set names {available_datasets()}."
    )


def _find_file(root: Path, stem: str) -> Path:
    candidates = [root / f"{stem}.jsonl", root / f"{stem}.jsonl.gz"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in root.iterdir())
    raise DataError(
        f"missing {stem} file in {root}: expected {candidates[0].name} or {candidates[1].name}; "
        f"the directory holds {present}."
    )


def _find_qrels(root: Path, split: str) -> Path:
    qrels_dir = root / "qrels"
    qrels_file = qrels_dir / f"{split}.tsv"
    if qrels_file.is_file():
        return qrels_file
    if not qrels_dir.is_dir():
        raise DataError(
            f"missing qrels directory {qrels_dir}: expected qrels/{split}.tsv "
            "(tab-separated query-id, corpus-id, score)."
        )
    splits = sorted(p.stem for p in qrels_dir.glob("*.tsv"))
    raise DataError(
        f"missing qrels file {qrels_file} for split {split!r}; splits available in "
        f"{qrels_dir}: {splits}. Pass one of them as split=."
    )


# --------------------------------------------------------------------------- parsing


def _read_lines(file: Path) -> list[bytes]:
    r"""Whole file as raw lines, split on b"\n" only.

    Splitting bytes (not ``str.splitlines``) matters: JSON strings may contain U+2028 or
    a form feed, which ``splitlines`` would treat as line breaks.
    """
    try:
        if file.suffix == ".gz":
            with gzip.open(file, "rb") as fh:
                data = fh.read()
        else:
            data = file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read {file}: {exc}. Is the file complete and, if .gz, gzipped?"
        ) from exc
    return data.split(b"\n")


def _iter_json(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of a JSONL file."""
    for lineno, raw in enumerate(_read_lines(file), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise DataError(
                f"{file}, line {lineno}: invalid JSON ({exc}). Each line must hold one JSON "
                'object such as {"_id": "1", "text": "..."}.'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{file}, line {lineno}: expected a JSON object; got {type(obj).__name__}."
            )
        yield lineno, obj


def _record_id(obj: dict[str, Any], file: Path, lineno: int) -> str:
    if "_id" not in obj:
        raise DataError(
            f'{file}, line {lineno}: record has no "_id" field; found keys {sorted(obj)}.'
        )
    value = obj["_id"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f'{file}, line {lineno}: "_id" must be a string or a number; got {value!r:.100}.')
    # One whitespace rule for every id of a data set: surrounding whitespace is dropped here as
    # in the qrels columns, so a corpus id " 12" and a qrels id "12" are the same document.
    stripped = value.strip()
    try:
        stripped.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape such as "\ud800": no index can store it
        raise DataError(
            f'{file}, line {lineno}: "_id" {value!r:.60} holds the lone surrogate {value[exc.start]!r}, which is '
            "not valid Unicode and cannot be stored in an index. Fix the id in the file."
        ) from None
    if not stripped:
        raise DataError(f'{file}, line {lineno}: "_id" is empty or only whitespace ({value!r:.40}).')
    return stripped


def _text_field(obj: dict[str, Any], key: str, file: Path, lineno: int, *, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(f'{file}, line {lineno}: record has no "{key}" string.')
        return ""
    if not isinstance(value, str):
        raise DataError(
            f'{file}, line {lineno}: "{key}" must be a string; got {type(value).__name__}.'
        )
    return value


def _read_records(file: Path, kind: str, value: Callable[[dict[str, Any], int], V]) -> dict[str, V]:
    """Read ``{_id: value(record, lineno)}`` from a JSONL file, rejecting duplicate ids."""
    records: dict[str, V] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in _iter_json(file):
        record_id = _record_id(obj, file, lineno)
        if record_id in records:
            raise DataError(
                f"{file}, line {lineno}: duplicate {kind} id {record_id!r} (first seen on line "
                f"{first_line[record_id]}). {kind.capitalize()} ids must be unique."
            )
        first_line[record_id] = lineno
        records[record_id] = value(obj, lineno)
    return records


def _read_corpus(file: Path) -> dict[str, dict[str, str]]:
    corpus = _read_records(file, "document", lambda obj, lineno: {
        "title": _text_field(obj, "title", file, lineno, required=False),
        "text": _text_field(obj, "text", file, lineno, required=False),
    })
    if not corpus:
        raise DataError(f"{file}: the corpus is empty; expected one JSON document per line.")
    return corpus


def _read_queries(file: Path) -> dict[str, str]:
    return _read_records(file, "query", lambda obj, lineno: _text_field(obj, "text", file, lineno, required=True))


def _is_header(fields: list[str]) -> bool:
    # A header is a first line whose score column is not a number ("score"); a first
    # line with a non-integer number such as "0.5" is data and fails the integer check.
    if len(fields) != 3:
        return False
    try:
        float(fields[2])
    except ValueError:
        return True
    return False


def _read_qrels(
    file: Path,
    corpus: dict[str, dict[str, str]],
    queries: dict[str, str],
    corpus_file: Path,
    queries_file: Path,
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    unknown_docs: list[tuple[int, str]] = []
    unknown_queries: list[tuple[int, str]] = []
    for lineno, raw in enumerate(_read_lines(file), start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DataError(f"{file}, line {lineno}: not valid UTF-8 ({exc}).") from None
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark from some editors
        if not line.strip():
            continue
        fields = line.split("\t")
        if lineno == 1 and _is_header(fields):
            continue
        if len(fields) != 3:
            hint = ""
            if len(line.split()) == 4:
                hint = (
                    " This looks like a 4-column TREC qrels line; convert it to BEIR's 3 columns."
                )
            raise DataError(
                f"{file}, line {lineno}: expected 3 tab-separated columns (query-id, corpus-id, "
                f"score); got {len(fields)}: {line!r}.{hint}"
            )
        qid, doc_id, score_text = (f.strip() for f in fields)
        try:
            grade = int(score_text)
        except ValueError:
            raise DataError(
                f"{file}, line {lineno}: score must be an integer relevance grade; got "
                f"{score_text!r}."
            ) from None
        judged = qrels.setdefault(qid, {})
        if judged.get(doc_id, grade) != grade:
            raise DataError(
                f"{file}, line {lineno}: query {qid!r} judges document {doc_id!r} twice with "
                f"different grades ({judged[doc_id]} and {grade})."
            )
        judged[doc_id] = grade
        if doc_id not in corpus:
            unknown_docs.append((lineno, doc_id))
        if qid not in queries:
            unknown_queries.append((lineno, qid))
    if unknown_docs:
        lineno, doc_id = unknown_docs[0]
        raise DataError(
            f"{file}: {len(unknown_docs)} qrels row(s) point at documents missing from "
            f"{corpus_file.name} (first: line {lineno}, corpus-id {doc_id!r}). The corpus and "
            "qrels files do not belong together, or the corpus is truncated."
        )
    if unknown_queries:
        lineno, qid = unknown_queries[0]
        raise DataError(
            f"{file}: {len(unknown_queries)} qrels row(s) point at queries missing from "
            f"{queries_file.name} (first: line {lineno}, query-id {qid!r}). The queries and "
            "qrels files do not belong together."
        )
    if not qrels:
        raise DataError(f"{file}: no judgments; expected rows 'query-id<TAB>corpus-id<TAB>score'.")
    return qrels

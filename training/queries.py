"""Training queries without relevance judgments: pseudo-queries cut from the corpus, or a query file.

Label-free JPQ (:mod:`training.distill`) needs query *texts* only; the uncompressed retriever
supplies the target ranking. Two sources:

* :func:`pseudo_queries` cuts a sentence (or a window of words) out of sampled documents, as in
  the inverse cloze task (Lee, Chang, Toutanova, ACL 2019): a span of a document is a query to
  which that document, and its neighbours in the embedding space, are the answers.
* :func:`read_queries` reads real queries without judgments: a plain text file (one query per
  line) or JSON Lines (``{"_id": ..., "text": ...}`` per line, BEIR's ``queries.jsonl``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

from retrieval.errors import ConfigError, DataError

__all__ = ["DEFAULT_PSEUDO_QUERIES", "pseudo_queries", "read_queries"]

logger = logging.getLogger(__name__)

#: Pseudo-queries ``densezip train-jpq`` cuts from a corpus without judgments (capped by the
#: distinct sentences the corpus has). On SciFact, 32,768 instead of 8,192 lifted label-free JPQ
#: at M=16 from about a third to over half of OPQ+PQ's loss recovered (docs/BENCHMARKS.md 3c):
#: the teacher can label as many queries as the corpus gives, and the adapter overfits fewer.
DEFAULT_PSEUDO_QUERIES = 32768

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MAX_QUERY_FILE_BYTES = 1 << 30


def pseudo_queries(
    texts: Sequence[str], n: int, *, seed: int = 0, min_words: int = 5, max_words: int = 24, prefix: str = "pseudo-"
) -> dict[str, str]:
    """``n`` distinct pseudo-queries cut from ``texts``, by id (``pseudo-0``, ``pseudo-1``, ...).

    Documents are visited in a shuffled round-robin, so every document gives a query before any
    gives a second. From each, one sentence with at least ``min_words`` words is drawn at random;
    a longer sentence is cut to a random window of ``max_words`` words, and a document without
    such a sentence gives a random window of its words. Returns fewer than ``n`` queries (with a
    log line) when the corpus cannot supply that many distinct ones.

    Examples
    --------
    >>> qs = pseudo_queries(["Vitamin D lowers the risk of fractures in older adults. It was tested."], 1)
    >>> qs
    {'pseudo-0': 'Vitamin D lowers the risk of fractures in older adults.'}
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of pseudo-queries must be a positive integer; got {n!r}.")
    if not 1 <= min_words <= max_words:
        raise ConfigError(f"need 1 <= min_words <= max_words; got min_words={min_words}, max_words={max_words}.")
    rng = random.Random(seed)
    words_of = [str(t).split() for t in texts]
    usable = [i for i, words in enumerate(words_of) if len(words) >= min_words]
    if not usable:
        raise DataError(f"no document has {min_words} or more words to cut a pseudo-query from "
                        f"({len(words_of)} documents); index real text, or pass real queries with --queries.")
    sentences: dict[int, list[list[str]]] = {}
    out: dict[str, str] = {}
    seen: set[str] = set()
    tries = 0
    while len(out) < n and tries < 4 * n + 4 * len(usable):
        order = list(usable)
        rng.shuffle(order)
        for row in order:
            if len(out) >= n:
                break
            tries += 1
            if row not in sentences:
                split = (s.split() for s in _SENTENCE_END.split(" ".join(words_of[row])))
                sentences[row] = [s for s in split if len(s) >= min_words]
            candidates = sentences[row] or [words_of[row]]
            words = rng.choice(candidates)
            if len(words) > max_words:
                start = rng.randrange(len(words) - max_words + 1)
                words = words[start : start + max_words]
            text = " ".join(words)
            if text not in seen:
                seen.add(text)
                out[f"{prefix}{len(out)}"] = text
    if len(out) < n:
        logger.info("the corpus gave %d distinct pseudo-queries of the %d asked for", len(out), n)
    return out


def read_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """Queries without judgments from a file, by id, in file order.

    A file whose first non-blank line starts with ``{`` (or named ``*.jsonl``) is JSON Lines:
    each line an object with ``"text"`` (or ``"query"``) and optionally ``"_id"`` / ``"id"``.
    Anything else is plain text, one query per line; the id is ``line-<number>``. Blank lines are
    skipped. Raises ConfigError for a missing or unreadable file and DataError for a file
    without queries, a malformed line or a repeated query (say which lines, and how to fix it).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"query file {file} does not exist or is not a regular file; pass a text file with one "
                          "query per line, or a JSONL file of {\"_id\", \"text\"} objects.")
    if file.stat().st_size > _MAX_QUERY_FILE_BYTES:
        raise DataError(f"query file {file} is over {_MAX_QUERY_FILE_BYTES >> 20} MiB; sample it first.")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"query file {file} is not UTF-8 text (byte {exc.start}); convert it with iconv.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read query file {file}: {exc.strerror}") from None
    numbered = [(no, line.strip()) for no, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise DataError(f"query file {file} holds no queries (it is empty or blank); put one query per line.")
    jsonl = file.suffix == ".jsonl" or numbered[0][1].startswith("{")
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for no, line in numbered:
        qid, text = _parse_line(file, no, line) if jsonl else (f"line-{no}", line)
        if not text:
            continue
        if text in first_line:
            repeats.append((no, first_line[text]))
            continue
        if qid in queries:
            raise DataError(f"{file}:{no}: query id {qid!r} is used twice; give every query its own id.")
        first_line[text] = no
        queries[qid] = text
    if repeats:
        shown = ", ".join(f"line {a} repeats line {b}" for a, b in repeats[:3])
        raise DataError(f"{file}: {len(repeats)} repeated {'query' if len(repeats) == 1 else 'queries'} ({shown}"
                        f"{', ...' if len(repeats) > 3 else ''}); a repeated query would count twice in training. "
                        "Remove the repeats, e.g. awk '!seen[$0]++' FILE > FILE.unique")
    if not queries:
        raise DataError(f"query file {file} holds no query text; each JSON line needs a non-empty \"text\".")
    return queries


def _parse_line(file: Path, no: int, line: str) -> tuple[str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}:{no}: not a JSON object ({exc.msg}); write one {{\"_id\", \"text\"}} object "
                        "per line, or use a plain text file with one query per line.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{file}:{no}: expected a JSON object with a \"text\" field; got {type(obj).__name__}.")
    text = obj.get("text", obj.get("query"))
    if not isinstance(text, str):
        raise DataError(f"{file}:{no}: the object has no string \"text\" (or \"query\") field.")
    qid = obj.get("_id", obj.get("id", f"line-{no}"))
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise DataError(f"{file}:{no}: \"_id\" must be a string or an integer; got {qid!r}.")
    return str(qid).strip(), text.strip()

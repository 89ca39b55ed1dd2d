"""Tests for retrieval.beir (BEIR loader) and retrieval.datasets (bundled data)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from retrieval.beir import BEIRDataset, load_beir
from retrieval.datasets import available_datasets, dataset_path
from retrieval.errors import ConfigError, DataError

# --------------------------------------------------------------------------- helpers

DOCS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr."},
    {"_id": "d2", "title": "", "text": "Dogs bark."},
    {"_id": "d3", "title": "Fish", "text": "Fish swim."},
    {"_id": 4, "text": "Birds fly."},  # numeric id, no title
]
QUERIES = [
    {"_id": "q1", "text": "what purrs"},
    {"_id": "q2", "text": "what barks"},
    {"_id": 3, "text": "what flies"},  # numeric id
    {"_id": "q4", "text": "unjudged in test"},
]
QRELS = {
    "test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n3\t4\t1\n",
    "train": "q4\td3\t1\n",  # no header line
}


def _jsonl(records: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def make_beir(
    root: Path,
    *,
    docs: str | None = None,
    queries: str | None = None,
    qrels: dict[str, str] | None = None,
    gz: bool = False,
) -> Path:
    """Write a tiny BEIR directory; ``docs`` / ``queries`` override the file text."""
    root.mkdir(parents=True, exist_ok=True)
    corpus_text = _jsonl(DOCS) if docs is None else docs
    if gz:
        with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.write(corpus_text)
    else:
        (root / "corpus.jsonl").write_text(corpus_text, encoding="utf-8")
    (root / "queries.jsonl").write_text(
        _jsonl(QUERIES) if queries is None else queries, encoding="utf-8"
    )
    (root / "qrels").mkdir(exist_ok=True)
    for split, text in (QRELS if qrels is None else qrels).items():
        (root / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def scifact() -> BEIRDataset:
    return load_beir("scifact", split="test")


# --------------------------------------------------------------------------- bundled data


def test_available_datasets() -> None:
    assert available_datasets() == ["cranfield", "scifact"]
    for name in available_datasets():
        path = dataset_path(name)
        assert (path / "README.md").is_file()
        assert (path / "queries.jsonl").is_file()
        assert (path / "corpus.jsonl.gz").is_file()


def test_dataset_path_unknown_name_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"(?s)'msmarco'.*cranfield.*scifact"):
        dataset_path("msmarco")


def test_bundled_scifact_test(scifact: BEIRDataset) -> None:
    assert scifact.name == "scifact" and scifact.split == "test"
    assert len(scifact.corpus) == 5183
    assert len(scifact.queries) == 1109
    assert len(scifact.query_ids()) == 300
    assert sum(len(j) for j in scifact.qrels.values()) == 339
    assert scifact.doc_ids()[0] == "4983"  # file order
    texts = scifact.doc_texts()
    assert len(texts) == 5183
    first = scifact.corpus["4983"]
    assert texts[0] == f"{first['title']} {first['text']}".strip()
    qids, qtexts = scifact.query_ids(), scifact.query_texts()
    assert [scifact.queries[q] for q in qids] == qtexts
    assert all(d in scifact.corpus for judged in scifact.qrels.values() for d in judged)


def test_bundled_scifact_train() -> None:
    train = load_beir("scifact", split="train")
    assert len(train.query_ids()) == 809
    assert len(train.corpus) == 5183


def test_bundled_cranfield_splits() -> None:
    ds = load_beir("cranfield", split="all")
    assert len(ds.corpus) == 1400 and len(ds.query_ids()) == 225
    assert len(load_beir("cranfield", "train").query_ids()) == 113
    assert len(load_beir("cranfield", "test").query_ids()) == 112
    assert {g for judged in ds.qrels.values() for g in judged.values()} == {1, 2, 3, 4}


def test_repr_is_short(scifact: BEIRDataset) -> None:
    text = repr(scifact)
    assert len(text) < 200 and "docs=5183" in text


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("gz", [False, True])
def test_load_plain_and_gz(tmp_path: Path, gz: bool) -> None:
    ds = load_beir(make_beir(tmp_path / "tiny", gz=gz))
    assert ds.name == "tiny"
    assert ds.doc_ids() == ["d1", "d2", "d3", "4"]  # numeric id -> str
    assert ds.corpus["4"] == {"title": "", "text": "Birds fly."}
    assert ds.doc_texts() == ["Cats Cats purr.", "Dogs bark.", "Fish Fish swim.", "Birds fly."]
    assert ds.doc_texts(sep=". ")[0] == "Cats. Cats purr."
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}, "3": {"4": 1}}
    assert ds.query_ids() == ["q1", "q2", "3"]  # q4 has no test judgments
    assert ds.query_texts() == ["what purrs", "what barks", "what flies"]
    assert ds.queries["q4"] == "unjudged in test"


def test_load_gz_queries_and_string_path(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "tiny")
    text = (root / "queries.jsonl").read_text(encoding="utf-8")
    (root / "queries.jsonl").unlink()
    with gzip.open(root / "queries.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(text)
    ds = load_beir(str(root), split="train")  # train qrels have no header line
    assert ds.qrels == {"q4": {"d3": 1}}


def test_crlf_blank_lines_and_unicode_line_separator(tmp_path: Path) -> None:
    # U+2028 inside a JSON string must not split the record (str.splitlines would).
    docs = '{"_id": "d1", "text": "a\u2028b"}\r\n\r\n' + _jsonl(DOCS[1:])
    qrels = {"test": "\ufeffquery-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n"}  # BOM + CRLF
    ds = load_beir(make_beir(tmp_path / "x", docs=docs, qrels=qrels))
    assert ds.corpus["d1"]["text"] == "a\u2028b"
    assert ds.qrels == {"q1": {"d1": 1}}


def test_bundled_name_only_used_when_path_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_beir(tmp_path / "scifact")
    monkeypatch.chdir(tmp_path)
    assert len(load_beir("scifact").corpus) == 4  # the local directory wins


# --------------------------------------------------------------------------- errors


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*nowhere.*scifact"):
        load_beir(tmp_path / "nowhere")


def test_path_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "corpus.jsonl"
    file.write_text("{}\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl is a file"):
        load_beir(file)


@pytest.mark.parametrize("stem", ["corpus", "queries"])
def test_missing_corpus_or_queries(tmp_path: Path, stem: str) -> None:
    root = make_beir(tmp_path / "x")
    (root / f"{stem}.jsonl").unlink()
    with pytest.raises(DataError, match=rf"missing {stem} file .*{stem}\.jsonl\.gz"):
        load_beir(root)


def test_missing_qrels_split_lists_existing(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "x")
    with pytest.raises(DataError, match=r"dev\.tsv.*'test', 'train'"):
        load_beir(root, split="dev")


def test_missing_qrels_directory(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "x", qrels={})
    (root / "qrels").rmdir()
    with pytest.raises(DataError, match=r"missing qrels directory .*qrels"):
        load_beir(root)


def test_bad_split_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain name"):
        load_beir(make_beir(tmp_path / "x"), split="../test")


@pytest.mark.parametrize(
    ("docs", "pattern"),
    [
        (
            '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n',
            r"corpus\.jsonl, line 2: invalid JSON",
        ),
        ('{"_id": "d1", "text": "ok"}\n["d2"]\n', r"corpus\.jsonl, line 2: expected a JSON object"),
        (
            '{"_id": "d1", "text": "ok"}\n\n{"text": "no id"}\n',
            r"corpus\.jsonl, line 3: record has no \"_id\"",
        ),
        (
            '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n',
            r"corpus\.jsonl, line 2: duplicate document id 'd1' \(first seen on line 1\)",
        ),
        (
            '{"_id": "d1", "title": 5, "text": "a"}\n',
            r"corpus\.jsonl, line 1: \"title\" must be a string",
        ),
        ("\n\n", r"corpus\.jsonl: the corpus is empty"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path: Path, docs: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_beir(make_beir(tmp_path / "x", docs=docs))


def test_errors_in_gz_corpus_name_the_gz_file(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "x", docs='{"_id": "d1"}\n{bad\n', gz=True)
    with pytest.raises(DataError, match=r"corpus\.jsonl\.gz, line 2: invalid JSON"):
        load_beir(root)


def test_corrupt_gzip(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "x")
    (root / "corpus.jsonl").unlink()
    (root / "corpus.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read .*corpus\.jsonl\.gz"):
        load_beir(root)


@pytest.mark.parametrize(
    ("queries", "pattern"),
    [
        (
            '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n',
            r"queries\.jsonl, line 2: duplicate query id 'q1'",
        ),
        ('{"_id": "q1"}\n', r"queries\.jsonl, line 1: record has no \"text\""),
        ('{"id": "q1", "text": "a"}\n', r"queries\.jsonl, line 1: record has no \"_id\""),
    ],
)
def test_queries_errors(tmp_path: Path, queries: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_beir(make_beir(tmp_path / "x", queries=queries))


@pytest.mark.parametrize(
    ("qrels", "pattern"),
    [
        (
            "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n",
            r"test\.tsv, line 2: score must be an integer.*'0\.5'",
        ),
        ("q1\td1\t1\nq2\td2\tyes\n", r"test\.tsv, line 2: score must be an integer"),  # no header
        ("q1\td1\n", r"test\.tsv, line 1: expected 3 tab-separated columns"),
        ("q1 0 d1 1\n", r"test\.tsv, line 1: expected 3 .*4-column TREC"),
        ("q1\td1\t1\nq1\td1\t2\n", r"test\.tsv, line 2: .*twice with different grades"),
        (
            "q1\td1\t1\nq1\tnope\t1\nq2\tnope2\t1\n",
            r"test\.tsv: 2 qrels row\(s\) point at documents missing from corpus\.jsonl "
            r"\(first: line 2, corpus-id 'nope'\)",
        ),
        (
            "q1\td1\t1\nq9\td1\t1\n",
            r"test\.tsv: 1 qrels row\(s\) point at queries missing from queries\.jsonl "
            r"\(first: line 2, query-id 'q9'\)",
        ),
        ("query-id\tcorpus-id\tscore\n", r"test\.tsv: no judgments"),
    ],
)
def test_qrels_errors(tmp_path: Path, qrels: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_beir(make_beir(tmp_path / "x", qrels={"test": qrels}))


def test_repeated_identical_qrels_row_is_fine(tmp_path: Path) -> None:
    ds = load_beir(make_beir(tmp_path / "x", qrels={"test": "q1\td1\t1\nq1\td1\t1\n"}))
    assert ds.qrels == {"q1": {"d1": 1}}


# --------------------------------------------------------------------------- subset


def test_subset_keeps_judged_docs(scifact: BEIRDataset) -> None:
    small = scifact.subset(400, seed=0)
    assert len(small.corpus) == 400
    assert small.name == "scifact-subset400" and small.split == "test"
    assert set(small.queries) == set(small.qrels) and small.qrels
    for qid, judged in small.qrels.items():
        assert judged == scifact.qrels[qid]  # qrels of kept queries unchanged
        assert all(doc_id in small.corpus for doc_id in judged)
    # documents keep corpus order
    order = {d: i for i, d in enumerate(scifact.doc_ids())}
    assert small.doc_ids() == sorted(small.doc_ids(), key=order.__getitem__)


def test_subset_drops_queries_that_do_not_fit(scifact: BEIRDataset) -> None:
    small = scifact.subset(30, seed=1)
    assert len(small.corpus) == 30
    assert 0 < len(small.qrels) < len(scifact.qrels)
    assert all(d in small.corpus for judged in small.qrels.values() for d in judged)


def test_subset_is_deterministic(scifact: BEIRDataset) -> None:
    assert scifact.subset(100, seed=3).doc_ids() == scifact.subset(100, seed=3).doc_ids()
    assert scifact.subset(100, seed=3).doc_ids() != scifact.subset(100, seed=4).doc_ids()


def test_subset_edge_cases(tmp_path: Path) -> None:
    ds = load_beir(make_beir(tmp_path / "x"))
    assert ds.subset(10) is ds
    with pytest.raises(ConfigError, match="positive int"):
        ds.subset(0)
    two = load_beir(make_beir(tmp_path / "y", qrels={"test": "q1\td1\t1\nq1\td2\t1\n"}))
    with pytest.raises(ConfigError, match="n_docs >= 2"):
        two.subset(1)

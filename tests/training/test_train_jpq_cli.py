"""`densezip train-jpq` end to end on a tiny BEIR directory with a TOML config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.app.cli import main
from retrieval.beir import load_beir
from retrieval.errors import ConfigError
from training.jpq import JPQTrainingArgs


def _write_beir(root, data_train, data_test) -> None:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for doc_id, doc in data_train.corpus.items():
            f.write(json.dumps({"_id": doc_id, **doc}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for qid, text in data_train.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, data in (("train", data_train), ("test", data_test)):
        rows = [f"{q}\t{d}\t{g}" for q, judged in data.qrels.items() for d, g in judged.items() if d in data_train.corpus]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")


def test_train_jpq_command(tmp_path, capsys):
    train = load_beir("scifact", split="train").subset(100, seed=2)
    test = load_beir("scifact", split="test")
    test_sub = type(test)(name="t", corpus=train.corpus, queries=train.queries,
                          qrels={q: j for q, j in list(train.qrels.items())[:10]}, split="test")
    _write_beir(tmp_path / "data", train, test_sub)
    config = tmp_path / "jpq.toml"
    config.write_text("[jpq]\nm = 8\nnbits = 4\nopq = false\nepochs = 1\nbatch_size = 16\ntop_n = 20\n"
                      "dev_fraction = 0.0\n")
    out = tmp_path / "run"
    assert main(["train-jpq", str(tmp_path / "data"), "--out", str(out), "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["spec"] == "PQ8x4" and report["steps"] >= 1 and 0 <= report["metrics"]["nDCG@10"] <= 1
    assert main(["search", str(out / "index"), "vitamin D", "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"][0]["hits"]) == 3


def test_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[jpq]\nm = 8\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match="unknown JPQ option"):
        JPQTrainingArgs.from_toml(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[jpq\n")
    with pytest.raises(ConfigError, match="cannot read"):
        JPQTrainingArgs.from_toml(broken)
    import training

    shipped = Path(training.__file__).parent / "configs" / "jpq_scifact.toml"
    assert JPQTrainingArgs.from_toml(shipped).m == 24


def _write_corpus_only(root, data) -> None:
    root.mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for doc_id, doc in data.corpus.items():
            f.write(json.dumps({"_id": doc_id, **doc}) + "\n")


def test_train_jpq_without_judgments(tmp_path, capsys):
    """A corpus-only directory: the teacher is picked, pseudo-queries and a query file train it."""
    data = load_beir("scifact", split="train").subset(100, seed=2)
    _write_corpus_only(tmp_path / "corpus", data)
    queries = tmp_path / "log.txt"
    queries.write_text("vitamin d and bone health\nsmoking and lung cancer\n")
    config = tmp_path / "jpq.toml"
    config.write_text("[jpq]\nopq = false\nepochs = 1\nbatch_size = 16\nteacher_dev = 8\ntrain_encoder = false\n"
                      "distill_top_n = 10\ndistill_negatives = 10\n")
    out = tmp_path / "run"
    assert main(["train-jpq", str(tmp_path / "corpus"), "--out", str(out), "--config", str(config), "--m", "8",
                 "--nbits", "4", "--pseudo-queries", "40", "--queries", str(queries), "--fast-scan", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["teacher"] == "exact" and report["queries"] == 42 and report["spec"] == "PQ8x4fs"
    assert report["selected"]["by"] == "teacher" and "metrics" not in report
    assert main(["search", str(out / "index"), "vitamin D", "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"][0]["hits"]) == 3


@pytest.mark.parametrize(("extra", "match"), [
    (["--teacher", "none"], "has no judged 'train' split"),
    (["--nbits", "8", "--fast-scan"], "--fast-scan serves 4-bit codes"),
    (["--teacher", "exact", "--queries", "MISSING"], "does not exist"),
    (["--teacher", "exact", "--queries", "EMPTY"], "holds no queries"),
    (["--teacher", "exact", "--queries", "DUP"], "repeated quer"),
    (["--m", "7"], "must divide"),
    (["--nbits", "8"], "60 documents cannot train 256 centroids per sub-quantizer"),
])
def test_train_jpq_bad_input(tmp_path, capsys, extra, match):
    data = load_beir("scifact", split="train").subset(60, seed=2)
    _write_corpus_only(tmp_path / "corpus", data)
    (tmp_path / "EMPTY").write_text("\n")
    (tmp_path / "DUP").write_text("a b c\nd e f\na b c\n")
    extra = [str(tmp_path / e) if e in ("MISSING", "EMPTY", "DUP") else e for e in extra]
    code = main(["train-jpq", str(tmp_path / "corpus"), "--out", str(tmp_path / "run"), "--nbits", "4",
                 "--pseudo-queries", "20", *extra])
    assert code != 0
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_shipped_label_free_config_matches_the_cli_defaults():
    import training
    from training._args import LABEL_FREE_DEFAULTS

    shipped = JPQTrainingArgs.from_toml(Path(training.__file__).parent / "configs" / "jpq_label_free.toml")
    assert shipped.m == 16
    assert {k: getattr(shipped, k) for k in LABEL_FREE_DEFAULTS} == LABEL_FREE_DEFAULTS


def test_teacher_with_judgments_trains_on_judged_train_queries_only(tmp_path, monkeypatch):
    """queries.jsonl holds every query, test ones too: only the judged train queries may train."""
    train = load_beir("scifact", split="train").subset(100, seed=2)
    judged = dict(list(train.qrels.items())[:6])
    held = dict(list(train.qrels.items())[6:12])
    splits = type(train)(name="t", corpus=train.corpus, queries=train.queries, qrels=judged, split="train")
    test = type(train)(name="t", corpus=train.corpus, queries=train.queries, qrels=held, split="test")
    _write_beir(tmp_path / "data", splits, test)
    seen = {}

    class Stop(Exception):
        pass

    def capture(settings, **kwargs):
        seen.update(kwargs["queries"])
        raise Stop

    monkeypatch.setattr("training.jpq.JPQTrainer", capture)
    with pytest.raises(Stop):
        main(["train-jpq", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--teacher", "exact",
              "--pseudo-queries", "5"])
    assert {q for q in seen if not q.startswith("pseudo-")} == set(judged)
    assert not set(seen) & set(held) and len(seen) == len(judged) + 5

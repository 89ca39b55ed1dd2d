"""Tests for retrieval.evaluate against hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from retrieval.errors import ConfigError, DataError
from retrieval.evaluate import DEFAULT_METRICS, evaluate, evaluate_per_query

QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}}


def test_default_metrics() -> None:
    assert DEFAULT_METRICS == ("nDCG@10", "MRR@10", "Recall@100")


def test_perfect_run_scores_one() -> None:
    run = {"q1": {"d1": 0.9, "x": 0.1}, "q2": {"d2": 0.8, "y": 0.7}}
    assert evaluate(run, QRELS) == {"nDCG@10": 1.0, "MRR@10": 1.0, "Recall@100": 1.0}


def test_relevant_doc_at_rank_two() -> None:
    run = {"q1": {"x": 0.9, "d1": 0.5, "y": 0.1}}
    result = evaluate(run, {"q1": {"d1": 1}})
    assert result["nDCG@10"] == pytest.approx(1 / math.log2(3))
    assert result["MRR@10"] == pytest.approx(0.5)
    assert result["Recall@100"] == pytest.approx(1.0)


def test_graded_ndcg_uses_grade_as_gain() -> None:
    # ranking d2 (grade 1), d1 (grade 2): DCG = 1/log2(2) + 2/log2(3); IDCG = 2 + 1/log2(3)
    run = {"q": {"d2": 2.0, "d1": 1.0}}
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert evaluate(run, {"q": {"d1": 2, "d2": 1}}, ["nDCG@10"])["nDCG@10"] == pytest.approx(
        expected
    )


def test_missing_query_counts_as_zero() -> None:
    run = {"q1": {"d1": 1.0}}  # q2 judged but not retrieved
    assert evaluate(run, QRELS) == {"nDCG@10": 0.5, "MRR@10": 0.5, "Recall@100": 0.5}
    per_query = evaluate_per_query(run, QRELS)
    assert per_query == {
        "q1": {"nDCG@10": 1.0, "MRR@10": 1.0, "Recall@100": 1.0},
        "q2": {"nDCG@10": 0.0, "MRR@10": 0.0, "Recall@100": 0.0},
    }


def test_empty_ranking_counts_as_zero() -> None:
    assert evaluate({"q1": {"d1": 1.0}, "q2": {}}, QRELS, ["MRR@10", "Judged@10"]) == {
        "MRR@10": 0.5,
        "Judged@10": 0.5,
    }


def test_unjudged_run_queries_are_ignored() -> None:
    run = {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}, "extra": {"d1": float("nan")}}
    assert evaluate(run, QRELS)["nDCG@10"] == 1.0
    assert set(evaluate_per_query(run, QRELS)) == {"q1", "q2"}


def test_cutoffs_are_respected() -> None:
    run = {"q1": {f"x{i:02d}": 100.0 - i for i in range(10)} | {"d1": 1.0}}  # d1 at rank 11
    result = evaluate(run, {"q1": {"d1": 1}}, ["nDCG@10", "MRR@10", "Recall@100", "Recall@10"])
    assert result == {"nDCG@10": 0.0, "MRR@10": 0.0, "Recall@100": 1.0, "Recall@10": 0.0}


def test_keys_keep_the_callers_spelling() -> None:
    run = {"q1": {"x": 2.0, "d1": 1.0}}
    result = evaluate(
        run, {"q1": {"d1": 1}}, ["MRR@10", "RR@10", "mrr@10", "ndcg@10", "R@100", "P@2"]
    )
    assert list(result) == ["MRR@10", "RR@10", "mrr@10", "ndcg@10", "R@100", "P@2"]
    assert result["MRR@10"] == result["RR@10"] == result["mrr@10"] == 0.5
    assert result["P@2"] == 0.5
    assert evaluate(run, {"q1": {"d1": 1}}, "MRR@10") == {"MRR@10": 0.5}  # a single string


def test_ties_broken_by_doc_id_descending_for_every_metric() -> None:
    # trec_eval ranks "b" before "a" on equal scores; RR@10 (msmarco backend) must agree.
    run = {"q": {"a": 1.0, "b": 1.0}}
    result = evaluate(run, {"q": {"a": 1}}, ["RR@10", "RR", "P@1"])
    assert result == {"RR@10": 0.5, "RR": 0.5, "P@1": 0.0}


def test_identical_ids_kept_unless_asked() -> None:
    run = {"7": {"7": 2.0, "d1": 1.0}}
    qrels = {"7": {"d1": 1}}
    assert evaluate(run, qrels, ["MRR@10"]) == {"MRR@10": 0.5}
    assert evaluate(run, qrels, ["MRR@10"], ignore_identical_ids=True) == {"MRR@10": 1.0}


def test_non_string_ids_are_converted() -> None:
    assert evaluate({1: {2: 1.0}}, {"1": {"2": 1}}, ["nDCG@10"]) == {"nDCG@10": 1.0}


def test_agrees_with_pytrec_eval_on_bundled_scifact() -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from retrieval.beir import load_beir

    qrels = load_beir("scifact").qrels
    doc_ids = sorted({d for judged in qrels.values() for d in judged})
    # deterministic pseudo-random scores, no ties
    run = {
        q: {d: ((i * 7919 + j * 104729) % 1000003) / 1e6 for j, d in enumerate(doc_ids[:150])}
        for i, q in enumerate(qrels)
    }
    ours = evaluate(run, qrels, ["nDCG@10", "Recall@100"])
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert ours["nDCG@10"] == pytest.approx(
        sum(r["ndcg_cut_10"] for r in ref.values()) / len(qrels)
    )
    assert ours["Recall@100"] == pytest.approx(
        sum(r["recall_100"] for r in ref.values()) / len(qrels)
    )


# --------------------------------------------------------------------------- errors


def test_empty_qrels() -> None:
    with pytest.raises(DataError, match="qrels is empty"):
        evaluate({"q1": {"d1": 1.0}}, {})
    with pytest.raises(DataError, match="qrels is empty"):
        evaluate({"q1": {"d1": 1.0}}, {"q1": {}})


def test_non_integer_grade() -> None:
    with pytest.raises(DataError, match=r"qrels\['q1'\]\['d1'\] must be an integer"):
        evaluate({"q1": {"d1": 1.0}}, {"q1": {"d1": 0.5}})


def test_unknown_metric_lists_supported() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown or unsupported metric 'Foo@10'.*'nDCG@10', 'MRR@10', 'Recall@100'",
    ):
        evaluate({"q1": {"d1": 1.0}}, QRELS, ["nDCG@10", "Foo@10"])


@pytest.mark.parametrize("name", ["nDCG@0", "nDCG@1.5", "nDCG@", ""])
def test_bad_metric_spellings(name: str) -> None:
    with pytest.raises(ConfigError, match="metric"):
        evaluate({"q1": {"d1": 1.0}}, QRELS, [name])


def test_empty_metric_list() -> None:
    with pytest.raises(ConfigError, match="metrics is empty"):
        evaluate({"q1": {"d1": 1.0}}, QRELS, [])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "high", None])
def test_non_finite_scores(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"run\['q1'\]\['d2'\] must be a finite number"):
        evaluate({"q1": {"d1": 1.0, "d2": bad}}, QRELS)


def test_import_does_not_load_ir_measures() -> None:
    code = "import sys, retrieval.evaluate; sys.exit('ir_measures' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------- a run that matches no judgment
def test_a_run_with_no_judged_document_warns() -> None:
    """Zeros because the index and the qrels belong to different data sets: said, not silently printed."""
    from retrieval.evaluate import UnjudgedRunWarning

    run = {"q1": {"x1": 0.9, "x2": 0.1}, "q2": {"x3": 0.5}}
    with pytest.warns(UnjudgedRunWarning, match=r"none of the 3 documents in the run is judged"):
        assert evaluate(run, QRELS) == {"nDCG@10": 0.0, "MRR@10": 0.0, "Recall@100": 0.0}
    with pytest.warns(UnjudgedRunWarning):
        evaluate_per_query(run, QRELS, ["MRR@10"])


def test_one_judged_document_or_an_empty_run_does_not_warn() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate({"q1": {"x1": 0.9}, "q2": {"d1": 0.1}}, QRELS)  # d1 is judged (for q1): a plausible run
        evaluate({"q1": {}}, QRELS)  # nothing retrieved: no data set mix-up to report


def test_corpus_queries_and_qrels_ids_follow_one_whitespace_rule(tmp_path) -> None:
    """Surrounding whitespace is dropped from every id, so a corpus id " d1" is the qrels' "d1"."""
    import json

    from retrieval.beir import load_beir

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(json.dumps({"_id": " d1\t", "text": "a"}) + "\n"
                                       + json.dumps({"_id": "d2", "text": "b"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1 ", "text": "a"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("q1\t d1 \t1\n")
    data = load_beir(root, split="test")
    assert data.doc_ids() == ["d1", "d2"] and data.query_ids() == ["q1"] and data.qrels == {"q1": {"d1": 1}}
    assert evaluate({"q1": {"d1": 1.0}}, data.qrels, ["MRR@10"]) == {"MRR@10": 1.0}
    (root / "corpus.jsonl").write_text(json.dumps({"_id": "   ", "text": "a"}) + "\n")
    with pytest.raises(DataError, match="empty or only whitespace"):
        load_beir(root, split="test")

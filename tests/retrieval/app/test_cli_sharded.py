"""``densezip index --shards N``: sharded builds from the command line, then search / evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.app.cli import main

DOCS = {
    "d1": "Tobacco smoking is the main cause of lung cancer.",
    "d2": "Vitamin D supplements reduce the risk of bone fractures in the elderly.",
    "d3": "Regular aerobic exercise lowers blood pressure.",
    "d4": "Moderate coffee drinking is not linked to heart disease.",
    "d5": "Short sleep duration is associated with obesity in children.",
    "d6": "Statins lower LDL cholesterol and cardiovascular events.",
}


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "Does smoking cause lung cancer?"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_index_with_shards_and_threads_then_search_and_evaluate(tmp_path, capsys):
    data = write_corpus(tmp_path / "beir")
    out = tmp_path / "ix"
    built = run_json(capsys, "index", str(data), "--out", str(out), "--spec", "exact", "--shards", "3",
                     "--ray", "off", "--device", "cpu")
    assert built["backend"] == "threads" and sum(built["shard_sizes"]) == 6 and built["documents"] == 6
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000", "shard-001", "shard-002"]
    found = run_json(capsys, "search", str(out), "What causes lung cancer?", "-k", "2")
    assert found["results"][0]["hits"][0]["doc_id"] == "d1"
    metrics = run_json(capsys, "evaluate", str(out), str(data), "-k", "6")
    assert metrics["metrics"]["nDCG@10"] == pytest.approx(1.0)

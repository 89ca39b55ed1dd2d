"""The densezip command line, end to end on a tiny BEIR directory with the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.app.cli import main

DOCS = {
    "d1": ("Smoking", "Tobacco smoking is the main cause of lung cancer."),
    "d2": ("Vitamin D", "Vitamin D supplements reduce the risk of bone fractures in the elderly."),
    "d3": ("Exercise", "Regular aerobic exercise lowers blood pressure."),
    "d4": ("Coffee", "Moderate coffee drinking is not linked to heart disease."),
    "d5": ("Sleep", "Short sleep duration is associated with obesity in children."),
    "d6": ("Statins", "Statins lower LDL cholesterol and cardiovascular events."),
}
QUERIES = {"q1": "Does smoking cause lung cancer?", "q2": "Do statins reduce cholesterol?", "q3": "sleep and obesity"}
QRELS = [("q1", "d1"), ("q2", "d6"), ("q3", "d5")]


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-beir")
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in DOCS.items())
    )
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in QRELS)
    )
    return root


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("spec", ["exact", "HNSW8"])
def test_index_search_evaluate(beir_dir, tmp_path, capsys, spec):
    out = tmp_path / "ix"
    built = run_json(capsys, "index", str(beir_dir), "--out", str(out), "--spec", spec, "--device", "cpu")
    assert built["documents"] == 6 and built["dim"] == 384 and built["bytes_per_doc"] > 0
    found = run_json(capsys, "search", str(out), "What causes lung cancer?", "-k", "2")
    assert found["results"][0]["hits"][0]["doc_id"] == "d1"
    metrics = run_json(capsys, "evaluate", str(out), str(beir_dir), "-k", "6")
    assert metrics["queries"] == 3 and metrics["metrics"]["nDCG@10"] > 0.9
    # text output too
    assert main(["search", str(out), "statins"]) == 0
    assert "d6" in capsys.readouterr().out


def test_demo_on_a_tiny_dataset(beir_dir, capsys):
    report = run_json(capsys, "demo", "--data", str(beir_dir), "--spec", "exact", "--spec", "Flat")
    assert [r["spec"] for r in report["results"]] == ["exact", "Flat"]
    assert report["results"][0]["nDCG@10"] == pytest.approx(report["results"][1]["nDCG@10"])
    assert report["results"][0]["qps_batch64"] > 0


def test_errors_exit_2_with_one_line(beir_dir, tmp_path, capsys):
    assert main(["search", str(tmp_path / "missing"), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an index directory" in err
    assert main(["index", str(beir_dir), "--out", str(tmp_path / "bad"), "--spec", "Nonsense12"]) == 2
    assert "factory string" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "no-data"), "--out", str(tmp_path / "o")]) == 2
    assert "error: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["search", str(tmp_path), "x", "-k", "0"])
    assert info.value.code == 2
    assert "expected an integer from 1 to 2147483647, got 0" in capsys.readouterr().err


def test_refuses_to_overwrite(beir_dir, tmp_path, capsys):
    out = tmp_path / "ix"
    run_json(capsys, "index", str(beir_dir), "--out", str(out), "--spec", "exact")
    assert main(["index", str(beir_dir), "--out", str(out), "--spec", "exact"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    run_json(capsys, "index", str(beir_dir), "--out", str(out), "--spec", "Flat", "--overwrite")


def test_overwrite_never_replaces_a_folder_that_is_not_an_index(beir_dir, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["index", str(beir_dir), "--out", str(folder), "--spec", "exact", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and str(folder) in err and "nothing in it was touched" in err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left beside it


def test_index_needs_only_a_corpus(beir_dir, tmp_path, capsys):
    corpus_only = tmp_path / "corpus-only"
    corpus_only.mkdir()
    (corpus_only / "corpus.jsonl").write_text((beir_dir / "corpus.jsonl").read_text())
    built = run_json(capsys, "index", str(corpus_only), "--out", str(tmp_path / "ix"), "--spec", "exact")
    assert built["documents"] == len(DOCS)


# ---------------------------------------------------------------------- bad arguments: one line, exit 2
@pytest.mark.parametrize("argv", [
    ["search", "IDX", "q", "-k", "0"], ["search", "IDX", "q", "-k", "-3"], ["search", "IDX", "q", "-k", str(10**30)],
    ["search", "IDX", "q", "-k", "2147483648"], ["evaluate", "IDX", "DATA", "-k", "1e3"],
    ["index", "DATA", "--out", "o", "--ef-search", str(2**63)], ["index", "DATA", "--out", "o", "--nprobe", "-1"],
    ["index", "DATA", "--out", "o", "--batch-size", str(10**9)], ["index", "DATA", "--out", "o", "--overlap", "-5"],
    ["index", "DATA", "--out", "o", "--shards", "0"], ["demo", "--ef-search", "9" * 5000],
    ["train-jpq", "DATA", "--out", "o", "--m", "99999"],
], ids=lambda a: " ".join(a)[:40])
def test_absurd_numeric_flags_are_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "expected an integer from" in err and "Traceback" not in err


def _index_args(beir_dir: Path, out: str) -> list[str]:
    return ["index", str(beir_dir), "--out", out, "--model", "/nonexistent-model-never-loaded"]


@pytest.mark.parametrize("where", ["under-a-file", "proc", "sys", "cwd", "parent-of-cwd", "existing-file"])
def test_bad_output_paths_fail_before_encoding(where, beir_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain.txt").write_text("x")
    out = {"under-a-file": str(tmp_path / "plain.txt" / "ix"), "proc": "/proc/densezip-ix", "sys": "/sys/densezip-ix",
           "cwd": ".", "parent-of-cwd": "..", "existing-file": str(tmp_path / "plain.txt")}[where]
    assert main(_index_args(beir_dir, out)) == 2  # the model path is never touched: the check comes first
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1, err
    assert (tmp_path / "plain.txt").read_text() == "x"


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_existing_user_folder_fails_before_encoding(overwrite, beir_dir, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    argv = _index_args(beir_dir, str(folder)) + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2  # the model path is never touched: the check comes first
    err = capsys.readouterr().err
    expected = "is not a densezip index" if overwrite else "already exists; pass --overwrite"
    assert err.startswith("error: --out") and expected in err and err.count("\n") == 1, err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_unwritable_output_directory_fails_before_encoding(beir_dir, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: every directory is writable, so mode 0o500 cannot be tested")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(_index_args(beir_dir, str(locked / "ix"))) == 2
        assert "not writable by this user" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_lone_surrogate_corpus_id_is_refused_before_encoding(tmp_path, capsys):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "ok", "text": "a"}\n{"_id": "bad\\ud800", "text": "b"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q", "text": "a"}\n')
    (root / "qrels" / "test.tsv").write_text("q\tok\t1\n")
    assert main(_index_args(root, str(tmp_path / "ix"))) == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl, line 2" in err and "lone surrogate" in err and err.count("\n") == 1


def test_warnings_and_errors_print_as_one_line(tmp_path, capsys):
    """A warning (e.g. evaluate's UnjudgedRunWarning) is one "warning:" line; an error echoing a name
    with a newline is still one "error:" line."""
    from retrieval.app.cli import _show_warning
    from retrieval.evaluate import UnjudgedRunWarning

    _show_warning(UnjudgedRunWarning("none of the 3 documents\nis judged"), UnjudgedRunWarning, "x.py", 1)
    assert capsys.readouterr().err == "warning: none of the 3 documents is judged\n"
    assert main(["search", str(tmp_path / "a\nb"), "q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

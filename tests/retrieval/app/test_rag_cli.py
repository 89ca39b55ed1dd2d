"""``densezip index`` on a folder of Markdown / text files and on JSONL, then ``search`` and the Python API."""

from __future__ import annotations

import json

import pytest

from retrieval.app.cli import main
from retrieval.rag.component import RetrievalComponent

NOTES = {
    "heart/exercise.md": "# Exercise\n\nRegular aerobic exercise lowers blood pressure in adults.",
    "heart/coffee.md": "# Coffee\n\nModerate coffee drinking is not linked to heart disease.",
    "smoking.txt": "Tobacco smoking is the main cause of lung cancer. " * 40,  # long: several passages
}


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_index_folder_then_search(tmp_path, capsys):
    docs = tmp_path / "notes"
    for name, text in NOTES.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    out = tmp_path / "collection"
    built = run_json(capsys, "index", str(docs), "--out", str(out), "--spec", "exact", "--max-tokens", "64",
                     "--overlap", "8")
    assert built["documents"] == 3 and built["passages"] > 3 and built["dim"] == 384
    found = run_json(capsys, "search", str(out), "What lowers blood pressure?", "-k", "2")
    top = found["results"][0]["hits"][0]
    assert top["passage_id"] == "heart/exercise.md#0" and top["source"] == str(docs / "heart" / "exercise.md")
    assert top["text"].startswith("# Exercise") and top["metadata"]["extension"] == "md"
    rc = RetrievalComponent.open(out, device="cpu")  # the encoder comes back from the manifest
    assert rc.store.chunking["max_tokens"] == 64
    assert {h.doc_id for h in rc.retrieve("lung cancer", k=3)} == {"smoking.txt"}
    assert main(["index", str(docs), "--out", str(out), "--device", "cpu"]) == 2  # exists: needs --overwrite
    assert "already exists" in capsys.readouterr().err


def test_index_jsonl_with_metadata(tmp_path, capsys):
    rows = [{"id": "a", "title": "Statins", "text": "Statins lower LDL cholesterol.", "metadata": {"year": 2001}},
            {"id": "b", "text": "Vitamin D reduces fractures.", "lang": "en"}]
    file = tmp_path / "docs.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "c"
    assert run_json(capsys, "index", str(file), "--out", str(out), "--spec", "Flat")["passages"] == 2
    rc = RetrievalComponent.open(out, device="cpu")
    [hit] = rc.retrieve("cholesterol", k=1, where={"year": 2001})
    assert (hit.id, hit.text, hit.metadata) == ("a#0", "Statins Statins lower LDL cholesterol.",
                                                {"year": 2001, "title": "Statins"})
    assert rc.retrieve("cholesterol", k=1, where={"lang": "en"})[0].id == "b#0"


@pytest.mark.parametrize("bad", ["missing", "empty"])
def test_index_bad_input_is_a_clear_error(tmp_path, capsys, bad):
    src = tmp_path / "src"
    if bad == "empty":
        src.mkdir()
    assert main(["index", str(src), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("does not exist" in err or "nothing to ingest" in err)

"""``densezip index --attributes / --attribute-fields``, then ``densezip search --where``: filtering from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.app.cli import main

DOCS = {
    "d1": ("Tobacco smoking is the main cause of lung cancer.", 2019, "review", "2019-03-01"),
    "d2": ("Vitamin D supplements reduce the risk of bone fractures in the elderly.", 2021, "trial", "2021-06-15"),
    "d3": ("Regular aerobic exercise lowers blood pressure.", 2022, "trial", "2022-01-10"),
    "d4": ("Smoking cessation lowers the risk of lung cancer within ten years.", 2024, "review", "2024-02-29"),
    "d5": ("Short sleep duration is associated with obesity in children.", 2024, "cohort", "2024-11-30"),
    "d6": ("Statins lower LDL cholesterol and cardiovascular events.", 2018, "trial", "2018-09-09"),
}


def write_corpus(root: Path, *, metadata: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for doc, (text, year, kind, _published) in DOCS.items():
        record: dict = {"_id": doc, "text": text}
        if metadata:
            record["metadata"] = {"year": year, "type": kind}
        lines.append(json.dumps(record) + "\n")
    (root / "corpus.jsonl").write_text("".join(lines))
    return root


def write_attributes(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def good_records() -> list[dict]:
    return [{"_id": doc, "year": year, "type": kind, "published": published, "score": float(year % 7), "open": year > 2020}
            for doc, (_, year, kind, published) in DOCS.items()]


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def search(capsys: pytest.CaptureFixture[str], index: Path, where: dict, k: int = 10) -> list[str]:
    found = run_json(capsys, "search", str(index), "lung cancer and smoking", "-k", str(k), "--where", json.dumps(where))
    return [h["doc_id"] for h in found["results"][0]["hits"]]


def test_attribute_file_then_search_where(tmp_path, capsys):
    data = write_corpus(tmp_path / "beir")
    attrs = write_attributes(tmp_path / "attrs.jsonl", good_records()[::-1])  # any order
    out = tmp_path / "ix"
    built = run_json(capsys, "index", str(data), "--out", str(out), "--spec", "HNSW32", "--device", "cpu",
                     "--attributes", str(attrs), "--attribute-type", "published=timestamp")
    assert built["attributes"] == {"open": "bool", "published": "timestamp", "score": "float", "type": "str",
                                   "year": "int"}
    assert search(capsys, out, {"type": "review"})[0] == "d1"
    assert sorted(search(capsys, out, {"type": "review"})) == ["d1", "d4"]  # k = 10: every match, no more
    assert sorted(search(capsys, out, {"year": {"$gte": 2022}, "type": {"$ne": "trial"}})) == ["d4", "d5"]
    assert sorted(search(capsys, out, {"published": {"$lt": "2020-01-01"}})) == ["d1", "d6"]
    assert sorted(search(capsys, out, {"$or": [{"open": True}, {"score": 3.0}]})) == \
        sorted(d for d, (_, y, _k, _p) in DOCS.items() if y > 2020 or y % 7 == 3)
    assert search(capsys, out, {"year": 1990}) == []
    assert main(["search", str(out), "x", "--where", '{"colour": "red"}']) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: ") and "field 'colour', which this index does not store" in err


def test_search_where_is_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    data = write_corpus(tmp_path / "beir")
    attrs = write_attributes(tmp_path / "attrs.jsonl", good_records())
    out = tmp_path / "ix"
    run_json(capsys, "index", str(data), "--out", str(out), "--spec", "Flat", "--device", "cpu", "--attributes", str(attrs))
    import retrieval.encode.registry as registry

    def no_model(*args, **kwargs):
        raise AssertionError("the encoder was built before the predicate was checked")

    monkeypatch.setattr(registry, "encoder_from_description", no_model)
    for where, message in (('{"colour": "red"}', "field 'colour', which this index does not store"),
                           ('{"year": {"$gte": "soon"}}', "year")):
        assert main(["search", str(out), "x", "--where", where]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_corpus_metadata_fields_on_a_sharded_index(tmp_path, capsys):
    data = write_corpus(tmp_path / "beir", metadata=True)
    out = tmp_path / "ix"
    built = run_json(capsys, "index", str(data), "--out", str(out), "--spec", "exact", "--shards", "2",
                     "--ray", "off", "--device", "cpu", "--attribute-fields", "year,type")
    assert built["attributes"] == {"type": "str", "year": "int"} and built["documents"] == 6
    assert sorted(search(capsys, out, {"type": {"$in": ["review", "cohort"]}})) == ["d1", "d4", "d5"]
    assert search(capsys, out, {"year": {"$lt": 2020}}, k=1) == ["d1"]


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda r: r.append({"_id": "d9", "year": 2020, "type": "x", "published": "2020-01-01", "score": 1.0,
                         "open": True}), ["line 7", "'d9' is not in the corpus"]),
    (lambda r: r.pop(2), ["no attributes for 1 of the 6 documents", "d3"]),
    (lambda r: r[3].update(year="2024"), ["line 4", "field 'year' of document 'd4' is str", "int on line 1"]),
    (lambda r: r[1].update(type=None), ["line 2", "'type' of document 'd2' is null"]),
    (lambda r: r[4].pop("open"), ["line 5", "same fields"]),
    (lambda r: r[0].update(year=[2019]), ["line 1", "is list"]),
    (lambda r: r.append(dict(r[0])), ["line 7", "duplicate record id 'd1'"]),
])
def test_bad_attribute_files_fail_before_encoding(change, fragments, tmp_path, capsys, monkeypatch):
    import retrieval.encode.dense as dense

    monkeypatch.setattr(dense.DenseEncoder, "encode_documents",
                        lambda *a, **k: pytest.fail("encoded before checking the attributes"))
    data = write_corpus(tmp_path / "beir")
    records = good_records()
    change(records)
    attrs = write_attributes(tmp_path / "attrs.jsonl", records)
    _fails(capsys, ["index", str(data), "--out", str(tmp_path / "ix"), "--attributes", str(attrs)],
           "attrs.jsonl", *fragments)
    assert not (tmp_path / "ix").exists()


def test_bad_attribute_options(tmp_path, capsys):
    data = write_corpus(tmp_path / "beir", metadata=True)
    attrs = write_attributes(tmp_path / "attrs.jsonl", good_records())
    ix = ["index", str(data), "--out", str(tmp_path / "ix"), "--device", "cpu"]
    _fails(capsys, [*ix, "--attribute-fields", "year,colour"], "corpus.jsonl, line 1", "no field 'colour'")
    _fails(capsys, [*ix, "--attribute-fields", "year", "--attributes", str(attrs)], "'year'", "both")
    _fails(capsys, [*ix, "--attribute-type", "year=int"], "give the attributes too")
    _fails(capsys, [*ix, "--attributes", str(attrs), "--attribute-type", "colour=int"], "'colour'", "not an attribute")
    _fails(capsys, [*ix, "--attributes", str(attrs), "--attribute-type", "type=int"], "type=int", "str values")
    _fails(capsys, [*ix, "--attributes", str(attrs), "--attribute-type", "type=timestamp"], "'type'", "ISO 8601")
    _fails(capsys, [*ix, "--attributes", str(tmp_path / "none.jsonl")], "none.jsonl", "no such file")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\nsome text\n")
    _fails(capsys, ["index", str(docs), "--out", str(tmp_path / "c"), "--attributes", str(attrs)],
           "BEIR-format corpora", "metadata")
    with pytest.raises(SystemExit) as info:
        main([*ix, "--attribute-type", "year=decimal"])
    assert info.value.code == 2 and "KIND one of int, float, str, bool, timestamp" in capsys.readouterr().err

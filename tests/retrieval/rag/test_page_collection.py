"""Page collections end to end on the tiny random ColPali / ColQwen2 models (offline, CPU).

A folder of generated PDFs and images -> ``index_pages`` -> ``RetrievalComponent.open`` ->
ranked pages with page numbers and stored images; updates, deletes, the CLI and the
framework adapters. Shape legend as in tests/retrieval/encode/test_colpali.py.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from page_fixtures import make_damaged_pdf, make_pdf, tiny_colvision

from retrieval.app.cli import main
from retrieval.errors import ConfigError, DataError, IndexFormatError, UnknownIdError
from retrieval.rag import RetrievalComponent
from retrieval.rag.component import PageRetrievalComponent
from retrieval.rag.page_collection import delete_sources, index_pages
from retrieval.rag.page_store import RetrievedPage, load_page_collection
from retrieval.rag.pages import RenderOptions

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pypdfium2")
Image = pytest.importorskip("PIL.Image")

FAST = RenderOptions(dpi=36)  # 306 x 396 px pages: the tiny processors resize to 32 px anyway


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (tests/conftest.py)."""


def _folder(root: Path) -> Path:
    (root / "slides").mkdir(parents=True)
    make_pdf(root / "report.pdf", [["Revenue 2023", "grew 12%"], ["Figure 3: churn by region"], ["Appendix"]])
    make_pdf(root / "slides" / "deck.pdf", [["Roadmap 2024"], ["Team and hiring"]])
    Image.new("RGB", (240, 320), (0, 128, 0)).save(root / "scan.png")
    make_damaged_pdf(root / "broken.pdf")
    make_pdf(root / "locked.pdf", [["secret"]], user_password="pw")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _folder(tmp_path / "docs")


def _build(folder: Path, out: Path, model: Any, **kw: Any) -> Any:
    kw.setdefault("options", FAST)
    return index_pages(folder, out, model=model, device="cpu", batch_size=2, train_pages=4, **kw)


def test_folder_to_pages_to_answers(folder: Path, colpali_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "col"
    build = _build(folder, out, colpali_dir)
    assert (build.pages, build.documents, build.added, build.removed) == (6, 3, 6, 0)
    assert {Path(p).name for p, _ in build.report.errors} == {"broken.pdf", "locked.pdf"}
    assert sorted(os.listdir(out)) == ["index", "pages"]

    rc = RetrievalComponent.open(out, device="cpu")
    assert isinstance(rc, PageRetrievalComponent) and len(rc) == 6
    hits = rc.retrieve("revenue in 2023", k=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4] and all(isinstance(h, RetrievedPage) for h in hits)
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    by_id = {p.id: p for p in load_page_collection(out)[1].pages}
    for h in hits:
        assert h.page == by_id[h.id].page and h.doc_id + f"#p{h.page}" == h.id
        assert Path(h.source).is_file() and h.image_path is not None and h.image_path.is_file()
        assert h.image().size == (by_id[h.id].width, by_id[h.id].height)
    # The component ranks exactly as the index does for the encoded question.
    result = rc.index.search(rc.encoder.encode_queries(["revenue in 2023"]), k=4)
    assert result.doc_ids[0] == [h.id for h in hits]
    np.testing.assert_allclose(result.scores[0], [h.score for h in hits], rtol=1e-6)

    deck = rc.retrieve("roadmap", k=10, where={"file_name": "deck.pdf"})
    assert [(h.doc_id, h.page) for h in deck] and {h.doc_id for h in deck} == {"slides/deck.pdf"}
    assert sorted(h.page for h in deck) == [1, 2]
    context = rc.context("roadmap", k=2, max_tokens=100)
    assert context.sources()[0].startswith("[1] ") and ", page " in context.sources()[0]
    assert context.text.startswith("[1] ") and len(context.citations) == 2


def test_load_is_checked_and_repeatable(folder: Path, colpali_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "col"
    _build(folder, out, colpali_dir)
    assert main(["check", str(out)]) == 0
    a_index, a_store = load_page_collection(out)
    b_index, b_store = load_page_collection(out, verify=False)
    assert a_store.ids == b_store.ids and a_index.doc_ids == b_index.doc_ids
    manifest = json.loads((out / "pages" / "manifest.json").read_text())
    assert manifest["format"] == "densezip-pages" and len(manifest["images"]) >= 5
    image = out / "pages" / next(p.image for p in a_store.pages if p.image)
    data = bytearray(image.read_bytes())
    data[-3] ^= 0xFF
    image.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="sha256"):
        RetrievalComponent.open(out, device="cpu")
    capsys.readouterr()
    assert main(["check", str(out), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p["code"] for p in problems] == ["bad-pages"] and "sha256" in problems[0]["message"]
    with pytest.raises(IndexFormatError, match="not a page collection"):
        load_page_collection(tmp_path)


def test_update_replaces_changed_files_and_delete_removes_sources(folder: Path, colpali_dir: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "col"
    _build(folder, out, colpali_dir)
    again = _build(folder, out, None, update=True)  # nothing changed: the recorded model, nothing rewritten
    assert (again.added, again.removed, again.pages) == (0, 0, 6)
    assert sorted(again.report.unchanged) == ["report.pdf", "scan.png", "slides/deck.pdf"]

    make_pdf(folder / "report.pdf", [["Revenue 2024"], ["Outlook"]])  # 3 pages -> 2
    make_pdf(folder / "new.pdf", [["Brand new"]])
    update = _build(folder, out, colpali_dir, update=True)
    assert (update.added, update.removed, update.pages, update.documents) == (3, 3, 6, 4)
    assert sorted(update.report.unchanged) == ["scan.png", "slides/deck.pdf"]
    index, store = load_page_collection(out)
    assert "report.pdf#p3" not in store.row_of and "new.pdf#p1" in store.row_of and set(index.doc_ids) == set(store.ids)
    assert store["report.pdf#p1"].metadata["sha256"] != store["slides/deck.pdf#p1"].metadata["sha256"]

    with pytest.raises(UnknownIdError, match=r"nothing\.pdf"):
        delete_sources(out, ["nothing.pdf"])
    assert len(load_page_collection(out)[1]) == 6  # the failed delete changed nothing
    gone = delete_sources(out, ["slides/deck.pdf", str(folder / "scan.png")])
    assert (gone.removed, gone.pages, gone.documents) == (3, 3, 2)
    rc = RetrievalComponent.open(out, device="cpu")
    assert {h.doc_id for h in rc.retrieve("roadmap", k=10)} == {"report.pdf", "new.pdf"}
    assert all(h.image_path is not None and h.image_path.is_file() for h in rc.retrieve("roadmap", k=10))
    left = {p.name for p in (out / "pages" / "images").iterdir()}
    assert left == {Path(p.image).name for p in rc.store.pages if p.image}


def test_update_with_another_model_or_spec_is_refused(folder: Path, colpali_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "col"
    _build(folder, out, colpali_dir)
    model, processor = tiny_colvision("colqwen2")
    other = tmp_path / "qwen"
    model.save_pretrained(other)
    processor.save_pretrained(other)
    with pytest.raises(ConfigError, match="fingerprint"):
        _build(folder, out, other, update=True)
    with pytest.raises(ConfigError, match="cannot change it"):
        _build(folder, out, colpali_dir, update=True, spec="FP16")


def test_colqwen2_pages_with_webp_images(folder: Path, tmp_path: Path) -> None:
    from retrieval.encode.colpali import ColPaliEncoder

    encoder = ColPaliEncoder.from_model(*tiny_colvision("colqwen2"), batch_size=2)
    out = tmp_path / "qwen-col"
    build = _build(folder, out, encoder, images="webp", spec="Prune0.5,FP16")
    assert build.pages == 6
    rc = RetrievalComponent.open(out, encoder=encoder)
    hits = rc.retrieve("figure 3 churn", k=6)
    assert sorted((h.doc_id, h.page) for h in hits) == [("report.pdf", 1), ("report.pdf", 2), ("report.pdf", 3),
                                                         ("scan.png", 1), ("slides/deck.pdf", 1),
                                                         ("slides/deck.pdf", 2)]
    assert all(h.image_path is not None and h.image_path.suffix == ".webp" for h in hits)
    assert rc.index.spec == "Prune0.5,FP16"


def test_without_images_pages_are_rendered_from_the_source(folder: Path, colpali_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "col"
    _build(folder, out, colpali_dir, images=None)
    assert not list((out / "pages" / "images").iterdir())
    hit = RetrievalComponent.open(out, device="cpu").retrieve("appendix", k=1)[0]
    assert hit.image_path is None and hit.image().size == (hit.record.width, hit.record.height)


def test_nothing_readable_writes_nothing(tmp_path: Path, colpali_dir: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    make_damaged_pdf(root / "broken.pdf")
    with pytest.raises(DataError, match=r"(?s)no page could be read.*broken.pdf"):
        _build(root, tmp_path / "col", colpali_dir)
    assert not (tmp_path / "col").exists()


def test_cli_index_pages_search_and_delete(folder: Path, colpali_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "col"
    args = ["index-pages", str(folder), "--model", str(colpali_dir), "--out", str(out), "--device", "cpu",
            "--dpi", "36", "--batch-size", "3"]
    assert main([*args, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["pages"] == 6 and len(payload["report"]["errors"]) == 2 and payload["bytes"] > 0

    assert main(["search", str(out), "churn by region", "-k", "3", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("query: churn by region") and text.count(" page ") == 3
    assert main(["search", str(out), "churn", "-k", "2", "--device", "cpu", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"][0]["hits"]
    assert [set(h) >= {"source", "page", "score", "image_path"} for h in hits] == [True, True]

    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*args[:-2], "--update"]) == 0
    assert "3 unchanged file(s) kept" in capsys.readouterr().out
    assert main(["delete-pages", str(out), "report.pdf"]) == 0
    assert "removed 3 pages; 3 pages of 2 documents remain" in capsys.readouterr().out


def test_cli_binary_first_stage_options_reach_the_saved_index(folder: Path, colpali_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "col"
    args = ["index-pages", str(folder), "--model", str(colpali_dir), "--out", str(out), "--device", "cpu",
            "--dpi", "36", "--spec", "Binary", "--first-stage", "binary"]
    assert main([*args, "--binary-index", "hnsw"]) == 0
    capsys.readouterr()
    index, _ = load_page_collection(out)
    assert (index.first_stage, index.binary_index) == ("binary", "hnsw")
    assert index._binary is not None  # the saved token index was read back, not rebuilt
    assert main(["search", str(out), "churn by region", "-k", "2", "--device", "cpu"]) == 0
    assert main([*args[:-4], "--binary-index", "flat", "--overwrite"]) == 2
    assert "binary_index='flat' is the token index of first_stage='binary'" in capsys.readouterr().err


def test_cli_kmeans_spec_gets_the_plaid_engine_by_default(folder: Path, colpali_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "col"
    args = ["index-pages", str(folder), "--model", str(colpali_dir), "--out", str(out), "--device", "cpu",
            "--dpi", "36", "--spec", "KMeans16r2"]
    assert main(args) == 0
    capsys.readouterr()
    index, _ = load_page_collection(out)
    assert index.first_stage == "plaid" and index.spec == "KMeans16r2"
    assert main(["search", str(out), "churn by region", "-k", "2", "--device", "cpu", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"][0]["hits"]) == 2
    assert main([*args, "--first-stage", "exhaustive", "--overwrite"]) == 0
    capsys.readouterr()
    assert load_page_collection(out)[0].first_stage == "exhaustive"


def test_cli_bad_model_is_a_clear_error(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["index-pages", str(folder), "--out", str(tmp_path / "col"), "--device", "cpu"]
    assert main([*base, "--model", str(tmp_path / "missing-model")]) == 2
    assert "does not exist or is not a directory" in capsys.readouterr().err
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main([*base, "--model", str(bert)]) == 2
    err = capsys.readouterr().err
    assert "is not a ColPali-family checkpoint" in err and "model_type 'bert'" in err
    assert main(base) == 2
    assert "needs model=" in capsys.readouterr().err
    assert not (tmp_path / "col").exists() and not (tmp_path / ".col.lock").exists()  # nothing written


def test_framework_adapters_carry_pages(folder: Path, colpali_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import ImageNode

    out = tmp_path / "col"
    _build(folder, out, colpali_dir)
    rc = RetrievalComponent.open(out, device="cpu")
    docs = rc.as_langchain_retriever(k=2).invoke("revenue")
    assert [d.id for d in docs] == [h.id for h in rc.retrieve("revenue", k=2)]
    meta = docs[0].metadata
    assert isinstance(meta["page"], int) and Path(meta["image_path"]).is_file() and meta["source"].endswith(
        (".pdf", ".png"))
    assert docs[0].page_content == f"{meta['doc_id']}, page {meta['page']}"
    nodes = rc.as_llama_index_retriever(k=2).retrieve("revenue")
    assert all(isinstance(n.node, ImageNode) for n in nodes)
    assert nodes[0].node.image_path == meta["image_path"] and nodes[0].node.metadata["page"] == meta["page"]
    assert nodes[0].score == pytest.approx(meta["score"])


def test_max_image_side_from_the_cli_and_the_api(folder: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from retrieval.encode.colpali import ColPaliEncoder

    model, processor = tiny_colvision("colqwen2")
    qwen = tmp_path / "qwen"
    model.save_pretrained(qwen)
    processor.save_pretrained(qwen)
    out = tmp_path / "col"
    args = ["index-pages", str(folder), "--model", str(qwen), "--out", str(out), "--device", "cpu", "--dpi", "36",
            "--spec", "FP16"]
    assert main([*args, "--max-image-side", "28"]) == 0
    index, store = load_page_collection(out)
    assert index.metadata["encoder"]["max_image_side"] == 28
    assert index.num_vectors == len(store) == 6  # one 28 x 28 patch group per page (6 without the cap)
    assert max(max(p.width, p.height) for p in store.pages) > 28  # stored images keep the render size
    make_pdf(folder / "new.pdf", [["new page"]])
    assert main(["index-pages", str(folder), "--out", str(out), "--device", "cpu", "--update",
                 "--max-image-side", "42"]) == 0  # the recorded model, with another cap
    index, store = load_page_collection(out)
    assert index.metadata["encoder"]["max_image_side"] == 42 and index.num_vectors == 6 + 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--overwrite", "--max-image-side", "8"])
    assert "--max-image-side: expected an integer from 16 to 20000, got 8" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="applies to a model given by path"):
        _build(folder, tmp_path / "other", ColPaliEncoder.from_model(model, processor), max_image_side=28)
    with pytest.raises(ConfigError, match="max_image_side must be None"):
        _build(folder, tmp_path / "other", qwen, max_image_side=True)

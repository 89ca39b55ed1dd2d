"""Page ingestion (retrieval.rag.pages) on PDFs written byte by byte: rendering, streaming, hostile folders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from page_fixtures import make_damaged_pdf, make_pdf

from retrieval.errors import ConfigError, DataError
from retrieval.rag.pages import (
    PageIngestReport,
    RenderOptions,
    find_page_files,
    iter_page_batches,
    iter_pages,
    render_page,
)

pdfium = pytest.importorskip("pypdfium2")
Image = pytest.importorskip("PIL.Image")

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    make_pdf(root / "report.pdf", [["Revenue 2023", "grew 12%"], ["Figure 3: churn"], ["Appendix A"]])
    make_pdf(root / "sub" / "deck.pdf", [["Roadmap"], ["Team"]])
    Image.new("RGB", (300, 200), (0, 128, 0)).save(root / "scan.png")
    Image.new("RGB", (120, 90), (200, 0, 0)).save(root / "photo.JPG")
    make_damaged_pdf(root / "broken.pdf")
    make_pdf(root / "sub" / "locked.pdf", [["secret"]], user_password="s3cret")
    (root / "notes.txt").write_text("not a page file")
    return root


def test_pdf_pages_render_with_text_and_shapes(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", [["Quarterly revenue"], ["Churn"]])
    pages = list(iter_pages(pdf, options=RenderOptions(dpi=72)))
    assert [p.page.id for p in pages] == ["a.pdf#p1", "a.pdf#p2"]
    assert [p.page.page for p in pages] == [1, 2]
    first = pages[0]
    assert first.image.mode == "RGB" and first.image.size == (612, 792)  # 72 dpi: one pixel per point
    assert (first.page.width, first.page.height) == first.image.size
    pixels = np.asarray(first.image)
    assert (pixels.reshape(-1, 3) == [255, 255, 255]).all(axis=1).mean() > 0.5  # mostly white paper
    assert ((pixels[..., 2] > 150) & (pixels[..., 0] < 100)).any()  # the blue banner (a filled rectangle)
    assert (pixels.max(axis=2) < 60).any()  # black text
    assert first.page.source == str(pdf) and first.page.doc_id == "a.pdf"
    meta = first.page.metadata
    assert meta["file_name"] == "a.pdf" and meta["extension"] == "pdf" and len(meta["sha256"]) == 64
    # The two pages differ (different text and number of shapes).
    assert not np.array_equal(np.asarray(pages[1].image), pixels)


def test_dpi_and_max_side_bound_the_image(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", [["x"]])
    assert next(iter_pages(pdf, options=RenderOptions(dpi=144, max_side=2000))).image.size == (1224, 1584)
    width, height = next(iter_pages(pdf, options=RenderOptions(dpi=144, max_side=400))).image.size
    assert height == 400 and width in (309, 310)  # 612 * 400 / 792 = 309.1; PDFium rounds up
    # A page claiming 200 x 200 inches is rendered at max_side, never at its nominal size.
    huge = make_pdf(tmp_path / "huge.pdf", [["big"]], size=(14400, 14400))
    assert next(iter_pages(huge)).image.size == (1400, 1400)


def test_folder_reads_everything_readable_and_lists_the_rest(folder: Path) -> None:
    report = PageIngestReport()
    pages = list(iter_pages(folder, report=report, metadata={"collection": "q4"}))
    ids = [p.page.id for p in pages]
    assert ids == ["photo.JPG#p1", "report.pdf#p1", "report.pdf#p2", "report.pdf#p3", "scan.png#p1",
                   "sub/deck.pdf#p1", "sub/deck.pdf#p2"]
    assert report.pages == 7 and report.files == 4
    errors = dict(report.errors)
    assert set(errors) == {str(folder / "broken.pdf"), str(folder / "sub" / "locked.pdf")}
    assert "damaged or is not a PDF" in errors[str(folder / "broken.pdf")]
    assert "encrypted and needs a password" in errors[str(folder / "sub" / "locked.pdf")]
    assert all(p.page.metadata["collection"] == "q4" for p in pages)
    scan = next(p for p in pages if p.page.doc_id == "scan.png")
    assert scan.image.size == (300, 200) and scan.page.page == 1 and scan.page.metadata["extension"] == "png"
    summary = report.summary()
    assert summary.startswith("7 page(s) from 4 file(s); 2 error(s), 0 skipped") and "locked.pdf" in summary


def test_the_encrypted_fixture_is_really_encrypted(tmp_path: Path) -> None:
    locked = make_pdf(tmp_path / "locked.pdf", [["secret text"]], user_password="s3cret")
    with pytest.raises(pdfium.PdfiumError, match="password"):
        pdfium.PdfDocument(str(locked))
    pdf = pdfium.PdfDocument(str(locked), password="s3cret")
    assert pdf[0].get_textpage().get_text_range().strip() == "secret text"
    pdf.close()


def test_metadata_callable_and_bad_metadata(folder: Path) -> None:
    pages = list(iter_pages(folder / "sub", metadata=lambda path: {"stem": path.stem}))
    assert [p.page.metadata["stem"] for p in pages] == ["deck", "deck"]
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        list(iter_pages(folder / "sub", metadata={"when": object()}))


def test_batches_are_bounded_and_lazy(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", [[f"page {i}"] for i in range(5)])
    report = PageIngestReport()
    batches = iter_page_batches(pdf, 2, report=report)
    first = next(batches)
    assert len(first) == 2 and report.pages == 2  # nothing beyond the first batch was rendered yet
    assert [len(b) for b in batches] == [2, 1] and report.pages == 5
    with pytest.raises(ConfigError, match="batch_size"):
        next(iter_page_batches(pdf, 0))


def test_max_pages_refuses_the_file_not_the_run(folder: Path) -> None:
    report = PageIngestReport()
    pages = list(iter_pages(folder, options=RenderOptions(max_pages=2), report=report))
    assert "report.pdf#p1" not in {p.page.id for p in pages} and "sub/deck.pdf#p2" in {p.page.id for p in pages}
    assert "has 3 pages, more than max_pages=2" in dict(report.errors)[str(folder / "report.pdf")]


def test_hostile_folder_entries_are_skipped(tmp_path: Path) -> None:
    outside = make_pdf(tmp_path / "outside.pdf", [["elsewhere"]])
    root = tmp_path / "docs"
    root.mkdir()
    make_pdf(root / "a.pdf", [["inside"]])
    (root / "escape.pdf").symlink_to(outside)
    (root / "alias.pdf").symlink_to(root / "a.pdf")
    (root / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    (root / ".hidden.pdf").write_bytes((root / "a.pdf").read_bytes())
    (root / "bad\nname.pdf").write_bytes((root / "a.pdf").read_bytes())
    os.mkfifo(root / "pipe.pdf")
    report = PageIngestReport()
    pages = list(iter_pages(root, report=report))  # a FIFO opened for reading would block here
    assert [p.page.id for p in pages] == ["a.pdf#p1", "alias.pdf#p1"]
    assert pages[1].page.source == str(root.resolve() / "alias.pdf")  # the link's own path
    skipped = dict(report.skipped)
    assert "leading outside the folder" in skipped[str(root.resolve() / "escape.pdf")]
    assert "FIFO" in skipped[str(root.resolve() / "pipe.pdf")]
    assert "not followed" in skipped[str(root.resolve() / "linked_dir")]
    assert "line break" in skipped[str(root.resolve() / "bad\nname.pdf")]
    assert not report.errors


def test_bad_inputs_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(iter_pages(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds no \.pdf"):
        list(iter_pages(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"not a folder, a \.pdf file"):
        list(iter_pages(tmp_path / "empty" / "a.txt"))
    for bad in ({"dpi": 5}, {"dpi": True}, {"max_side": 10}, {"max_pages": 0}):
        with pytest.raises(ConfigError):
            RenderOptions(**bad)  # type: ignore[arg-type]


def test_images_larger_than_max_side_are_scaled_and_broken_images_reported(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (3000, 1000), (10, 20, 30)).save(root / "wide.jpg")
    (root / "fake.png").write_bytes(b"\x89PNG not really")
    report = PageIngestReport()
    pages = list(iter_pages(root, options=RenderOptions(max_side=600), report=report))
    assert [p.image.size for p in pages] == [(600, 200)]
    assert "cannot read the image" in dict(report.errors)[str(root.resolve() / "fake.png")]


def test_render_page_shows_one_page(folder: Path) -> None:
    image = render_page(folder / "report.pdf", 2, options=RenderOptions(dpi=36))
    assert image.size == (306, 396)
    assert render_page(folder / "scan.png", 1).size == (300, 200)
    with pytest.raises(DataError, match="page 9"):
        render_page(folder / "report.pdf", 9)
    with pytest.raises(DataError, match="cannot open the PDF"):
        render_page(folder / "broken.pdf", 1)


def test_find_page_files_of_a_single_file(folder: Path) -> None:
    assert [(d, s) for _, d, s in find_page_files(folder / "report.pdf")] == [("report.pdf", str(folder / "report.pdf"))]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_a_thousand_page_pdf_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Peak RSS while rendering 1,000 pages one batch at a time stays far below the images' total size."""
    pdf = make_pdf(tmp_path / "long.pdf", [[f"page {i}", "text"] for i in range(1000)])
    # VmHWM, not getrusage: ru_maxrss survives exec, so it would report the forking pytest's peak.
    script = textwrap.dedent(f"""
        from retrieval.rag.pages import RenderOptions, iter_page_batches
        n = 0
        for batch in iter_page_batches({str(pdf)!r}, 8, options=RenderOptions(dpi=100)):
            n += len(batch)
        hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print(n, hwm.split()[1])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    pages, peak_kib = map(int, out.stdout.split())
    assert pages == 1000
    all_images_mib = 1000 * 850 * 1100 * 3 / 2**20  # ~2.6 GiB if every page were held at once
    assert peak_kib / 1024 < 400 < all_images_mib

"""Page ingestion for visual retrieval: PDFs and image files -> page images, one at a time.

Inputs (:func:`find_page_files`)::

    folder/          every *.pdf, *.png, *.jpg, *.jpeg file below it (sorted, recursive, hidden
                     entries skipped); the document id is the path relative to the folder
    file.pdf         one file; its document id is its name
    scan.png         an image file is a document of one page

PDF pages are rendered with PDFium (``pypdfium2``, extra ``pages``) at ``dpi`` dots per inch,
scaled down so that the longer side has at most ``max_side`` pixels; images are read with
Pillow and scaled down the same way. :func:`iter_pages` is a generator: it holds one page
image at a time (a 1,000-page PDF is never in memory as images), and
:func:`iter_page_batches` groups its pages into lists of ``batch_size`` for an encoder.

Every page becomes a :class:`Page` record: its id ``"<doc_id>#p<n>"`` (``n`` counts from 1),
the document id, the page number, the absolute source path, the rendered size and the
metadata (``file_name``, ``extension``, the PDF's ``title`` when it has one, the file's
``sha256``, and whatever the caller adds).

Hostile folders
---------------
A file that cannot be read does not stop the others: a damaged PDF, an encrypted one, a PDF
with more than ``max_pages`` pages, an image Pillow cannot decode or a page that fails to
render is recorded in the :class:`PageIngestReport` (``errors``) and the next file is read.
Entries that are not followed are listed in ``skipped``: symbolic links leading outside the
folder, symlinked directories, FIFOs, sockets and devices (a FIFO is never opened, so reading
cannot hang), and names that cannot be stored as ids (a newline, or bytes that are not UTF-8).
Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again after opening.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from indexes._paths import file_kind, open_regular
from retrieval._optional import require
from retrieval.errors import ConfigError, DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "IMAGE_SUFFIXES",
    "PDF_SUFFIXES",
    "Page",
    "PageIngestReport",
    "RenderOptions",
    "RenderedPage",
    "find_page_files",
    "iter_page_batches",
    "iter_pages",
    "render_page",
]

logger = logging.getLogger(__name__)

PDF_SUFFIXES = (".pdf",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_HASH_CHUNK = 1 << 20

PageMetadata = Mapping[str, Any] | Callable[[Path], Mapping[str, Any]] | None


@dataclass(frozen=True)
class Page:
    """One page of a document: where it came from, its rendered size and metadata.

    Attributes
    ----------
    id : str
        ``"<doc_id>#p<page>"``.
    doc_id : str
        The file's path relative to the ingested folder (``/``-separated), or its name.
    page : int
        Page number, counting from 1 (an image file is page 1).
    source : str
        Absolute path of the file.
    width, height : int
        Size of the rendered page image in pixels.
    metadata : dict
        JSON-serialisable: ``file_name``, ``extension``, ``sha256`` (of the file), ``title``
        (PDF metadata, when set) and the caller's metadata.
    image : str or None
        In a page collection: the stored page image, relative to the collection's ``pages/``.
    """

    id: str
    doc_id: str
    page: int
    source: str
    width: int
    height: int
    metadata: dict[str, Any] = field(default_factory=dict)
    image: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "doc_id": self.doc_id, "page": self.page, "source": self.source,
                "width": self.width, "height": self.height, "metadata": self.metadata, "image": self.image}


@dataclass(frozen=True)
class RenderedPage:
    """A :class:`Page` record with its RGB image (``PIL.Image.Image``)."""

    page: Page
    image: PILImage


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """How pages are turned into images.

    Attributes
    ----------
    dpi : float, default 100
        PDF rendering resolution (72 = one pixel per PDF point). 100 dpi gives 850 x 1100
        pixels for a US Letter page; ColPali resizes every page to 448 x 448 anyway.
    max_side : int, default 1400
        Upper bound on the longer side of any page image, PDF or image file (smaller images
        are never enlarged). It bounds memory per page whatever size a page claims.
    max_pages : int, default 10000
        A PDF with more pages is refused as a whole (listed in the report's errors).
    """

    dpi: float = 100.0
    max_side: int = 1400
    max_pages: int = 10_000

    def __post_init__(self) -> None:
        if isinstance(self.dpi, bool) or not isinstance(self.dpi, (int, float)) or not 10 <= self.dpi <= 1200:
            raise ConfigError(f"dpi must be a number from 10 to 1200; got {self.dpi!r}. 100 suits ColPali.")
        for name, low, high in (("max_side", 32, 20_000), ("max_pages", 1, 10_000_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer from {low} to {high}; got {value!r}.")


@dataclass
class PageIngestReport:
    """What an ingestion read, skipped and could not read.

    Attributes
    ----------
    files : int
        Files from which at least one page was read.
    pages : int
        Pages yielded.
    skipped : list of (str, str)
        ``(path, reason)`` of entries not read on purpose (links out of the folder, FIFOs, ...).
    errors : list of (str, str)
        ``(path, message)`` of files (or pages: ``"path#p<n>"``) that could not be read.
    unchanged : list of str
        Document ids left as they were by an update (same ``sha256``).
    """

    files: int = 0
    pages: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Counts on one line, then one line per skipped entry and per error."""
        head = f"{self.pages} page(s) from {self.files} file(s)"
        if self.unchanged:
            head += f", {len(self.unchanged)} unchanged file(s) kept"
        head += f"; {len(self.errors)} error(s), {len(self.skipped)} skipped"
        lines = [head]
        lines += [f"  error: {path}: {message}" for path, message in self.errors]
        lines += [f"  skipped: {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "pages": self.pages, "unchanged": list(self.unchanged),
                "errors": [{"path": p, "message": m} for p, m in self.errors],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


# ---------------------------------------------------------------------------- finding files
def _id_problem(doc_id: str) -> str | None:
    if "\n" in doc_id or "\r" in doc_id:
        return "its name holds a line break, which an id cannot store; rename the file"
    try:
        doc_id.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8; rename the file"
    return None


def _accepted(name: str) -> bool:
    return name.lower().endswith(PDF_SUFFIXES + IMAGE_SUFFIXES)


def find_page_files(path: str | os.PathLike[str],
                    report: PageIngestReport | None = None) -> list[tuple[Path, str, str]]:
    """The PDF and image files to ingest, as ``(path to open, document id, source)`` in sorted order.

    ``source`` is the absolute path of the entry in the folder. Symbolic links are followed
    only when they lead to a regular file inside the folder (the link's target is opened;
    document id and source name the link). Everything refused is appended to ``report.skipped``.

    Raises
    ------
    DataError
        If ``path`` does not exist, is a file of another kind, or the folder holds no PDF or
        image file.
    """
    report = report if report is not None else PageIngestReport()
    root = Path(path).expanduser()
    if not os.path.lexists(root):
        raise DataError(f"{root} does not exist; pass a folder of PDF / PNG / JPEG files or one such file.")
    if not root.is_dir():
        if not _accepted(root.name) or not root.is_file():
            raise DataError(f"{root} is not a folder, a .pdf file or a .png / .jpg / .jpeg image.")
        problem = _id_problem(root.name)
        if problem:
            raise DataError(f"{root}: {problem}.")
        return [(root.resolve(), root.name, str(root.absolute()))]
    real_root = root.resolve()
    found: list[tuple[Path, str, str]] = []
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            if d.startswith(".") or (here / d).is_symlink():
                if not d.startswith("."):
                    report.skipped.append((str(here / d), "a symbolic link to a directory (not followed)"))
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(".") or not _accepted(name):
                continue
            entry = here / name
            doc_id = entry.relative_to(real_root).as_posix()
            target = _checked_entry(entry, real_root, report)
            if target is None:
                continue
            problem = _id_problem(doc_id)
            if problem:
                report.skipped.append((str(entry), problem))
                continue
            found.append((target, doc_id, str(entry)))
    if not found and not report.skipped:
        raise DataError(f"{root} holds no .pdf, .png, .jpg or .jpeg file; nothing to ingest.")
    return found


def _checked_entry(entry: Path, root: Path, report: PageIngestReport) -> Path | None:
    """The regular file ``entry`` names inside ``root``, or None (and why, in ``report.skipped``)."""
    try:
        st = entry.lstat()
        target = entry
        if stat.S_ISLNK(st.st_mode):
            target = entry.resolve(strict=True)
            if os.path.commonpath([root, target]) != str(root):
                report.skipped.append((str(entry), f"a symbolic link leading outside the folder (to {target})"))
                return None
            st = target.stat()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        report.skipped.append((str(entry), f"cannot be inspected ({type(exc).__name__}: {exc})"))
        return None
    if not stat.S_ISREG(st.st_mode):
        report.skipped.append((str(entry), f"{file_kind(st.st_mode)}, not read"))
        return None
    return target


def _open_regular(path: Path) -> IO[bytes]:
    """Open ``path`` for reading without following a link or blocking on a FIFO swapped in."""
    return open_regular(path, follow_symlinks=False,
                        refuse=lambda mode: DataError(f"{path} is {file_kind(mode)} now; refusing to read it."))


def _sha256(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(_HASH_CHUNK), b""):
        h.update(block)
    f.seek(0)
    return h.hexdigest()


# ---------------------------------------------------------------------------- rendering
def _user_metadata(metadata: PageMetadata, file: Path) -> dict[str, Any]:
    if metadata is None:
        return {}
    value = metadata(file) if callable(metadata) else metadata
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"metadata for {file} must be a mapping of str keys; got {type(value).__name__}.")
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata for {file} must be JSON-serialisable ({exc}).") from exc
    return dict(value)


def _pixels(width: float, height: float, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def _pdf_pages(f: IO[bytes], file: Path, doc_id: str, base: dict[str, Any], options: RenderOptions,
               report: PageIngestReport) -> Iterator[RenderedPage]:
    pdfium = require("pypdfium2", extra="pages", feature="PDF page ingestion")
    try:
        pdf = pdfium.PdfDocument(f)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            reason = "the PDF is encrypted and needs a password; decrypt it (e.g. qpdf --decrypt) and ingest it again"
        elif "format" in reason.lower():
            reason = f"the file is damaged or is not a PDF ({reason.rstrip('.')})"
        report.errors.append((str(file), f"cannot open the PDF: {reason}"))
        return
    try:
        n = len(pdf)
        if n > options.max_pages:
            report.errors.append((str(file), f"the PDF has {n} pages, more than max_pages={options.max_pages}; "
                                             "raise max_pages (--max-pages) or split the file"))
            return
        title = (pdf.get_metadata_dict(skip_empty=True).get("Title") or "").strip()
        meta = {"title": title, **base} if title else base  # the caller's "title" wins
        yielded = False
        for number in range(1, n + 1):
            image = _render_pdf_page(pdf, number, options, file, report)
            if image is None:
                continue
            yielded = True
            yield RenderedPage(Page(f"{doc_id}#p{number}", doc_id, number, str(file), image.width, image.height,
                                    meta), image)
        if n == 0:
            report.errors.append((str(file), "the PDF has no pages"))
        elif yielded:
            report.files += 1
    finally:
        pdf.close()


def _render_pdf_page(pdf: Any, number: int, options: RenderOptions, file: Path,
                     report: PageIngestReport) -> PILImage | None:
    pdfium = require("pypdfium2", extra="pages", feature="PDF page ingestion")
    page = None
    try:
        page = pdf[number - 1]
        width, height = page.get_size()
        if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
            report.errors.append((f"{file}#p{number}", f"the page has no area ({width} x {height} points)"))
            return None
        scale = min(options.dpi / 72.0, options.max_side / max(width, height))
        bitmap = page.render(scale=scale)
        try:
            image = bitmap.to_pil()
            rgb: PILImage = image.convert("RGB") if image.mode != "RGB" else image.copy()
        finally:
            bitmap.close()
        return rgb
    except (pdfium.PdfiumError, OSError, ValueError, MemoryError) as exc:
        report.errors.append((f"{file}#p{number}", f"cannot render the page ({type(exc).__name__}: {exc})"))
        return None
    finally:
        if page is not None:
            page.close()


def _image_page(f: IO[bytes], file: Path, doc_id: str, base: dict[str, Any], options: RenderOptions,
                report: PageIngestReport) -> Iterator[RenderedPage]:
    pil_image = require("PIL.Image", extra="vision", feature="image page ingestion")
    try:
        with warnings.catch_warnings():
            # A bomb-sized image is this file's error, not a warning on the whole run.
            warnings.simplefilter("error", pil_image.DecompressionBombWarning)
            with pil_image.open(f) as opened:
                opened.draft("RGB", (options.max_side, options.max_side))  # JPEG: decode at a reduced size
                opened.load()
                image = opened.convert("RGB") if opened.mode != "RGB" else opened.copy()
    except (OSError, ValueError, SyntaxError, pil_image.DecompressionBombError,
            pil_image.DecompressionBombWarning) as exc:
        report.errors.append((str(file), f"cannot read the image ({type(exc).__name__}: {exc})"))
        return
    if max(image.size) > options.max_side:
        image.thumbnail((options.max_side, options.max_side))
    report.files += 1
    yield RenderedPage(Page(f"{doc_id}#p1", doc_id, 1, str(file), image.width, image.height, base), image)


def iter_pages(
    path: str | os.PathLike[str],
    *,
    options: RenderOptions | None = None,
    metadata: PageMetadata = None,
    report: PageIngestReport | None = None,
    skip: Callable[[str, str], bool] | None = None,
) -> Iterator[RenderedPage]:
    """Yield the pages of every PDF / image file under ``path``, one rendered page at a time.

    Parameters
    ----------
    path : path-like
        A folder (searched recursively), a PDF or an image file (see :func:`find_page_files`).
    options : RenderOptions, optional
        Resolution and limits; ``RenderOptions()`` by default.
    metadata : mapping or callable, optional
        Added to every page's metadata: the same mapping for all files, or
        ``metadata(path) -> mapping`` per file. It must be JSON-serialisable.
    report : PageIngestReport, optional
        Filled while iterating: counts, skipped entries and per-file errors.
    skip : callable, optional
        ``skip(doc_id, sha256) -> bool``: True leaves the file out (an update uses it for files
        already indexed unchanged); skipped files are added to ``report.unchanged``.

    Yields
    ------
    RenderedPage
        In file order, then page order.
    """
    options = options if options is not None else RenderOptions()
    report = report if report is not None else PageIngestReport()
    for file, doc_id, source in find_page_files(path, report):
        try:
            with _open_regular(file) as f:
                digest = _sha256(f)
                if skip is not None and skip(doc_id, digest):
                    report.unchanged.append(doc_id)
                    continue
                base = {"file_name": Path(doc_id).name, "extension": file.suffix.lower().lstrip("."),
                        "sha256": digest, **_user_metadata(metadata, file)}
                reader = _pdf_pages if file.suffix.lower() in PDF_SUFFIXES else _image_page
                for rendered in reader(f, Path(source), doc_id, base, options, report):
                    report.pages += 1
                    yield rendered
        except (OSError, DataError) as exc:
            report.errors.append((str(file), f"cannot read the file ({type(exc).__name__}: {exc})"))


def iter_page_batches(
    path: str | os.PathLike[str],
    batch_size: int,
    *,
    options: RenderOptions | None = None,
    metadata: PageMetadata = None,
    report: PageIngestReport | None = None,
    skip: Callable[[str, str], bool] | None = None,
) -> Iterator[list[RenderedPage]]:
    """:func:`iter_pages` in lists of at most ``batch_size`` pages (batches may span files)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}.")
    batch: list[RenderedPage] = []
    for rendered in iter_pages(path, options=options, metadata=metadata, report=report, skip=skip):
        batch.append(rendered)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def render_page(source: str | os.PathLike[str], page: int, *, options: RenderOptions | None = None) -> PILImage:
    """Render page ``page`` (from 1) of a PDF, or read an image file (``page`` 1), as an RGB image.

    Used to show a retrieved page when its collection stores no page images.

    Raises
    ------
    DataError
        If the file cannot be read or rendered, or has no such page.
    """
    options = options if options is not None else RenderOptions()
    file = Path(source)
    report = PageIngestReport()
    try:
        with _open_regular(file.resolve()) as f:  # a link inside an ingested folder names its target
            if file.suffix.lower() not in PDF_SUFFIXES:
                images = [r.image for r in _image_page(f, file, file.name, {}, options, report) if page == 1]
            else:
                pdfium = require("pypdfium2", extra="pages", feature="PDF page rendering")
                try:
                    pdf = pdfium.PdfDocument(f)
                except pdfium.PdfiumError as exc:
                    raise DataError(f"{file}: cannot open the PDF ({exc}).") from exc
                try:
                    one = _render_pdf_page(pdf, page, options, file, report) if 1 <= page <= len(pdf) else None
                    images = [one] if one is not None else []
                finally:
                    pdf.close()
    except OSError as exc:
        raise DataError(f"cannot read {file} ({type(exc).__name__}: {exc}).") from exc
    if not images:
        detail = "; ".join(m for _, m in report.errors) or "no such page"
        raise DataError(f"{file}: page {page} cannot be shown ({detail}).")
    return images[0]

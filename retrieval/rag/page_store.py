"""The page store of a page collection, its loader, and the page a question retrieves.

A page collection (see :mod:`retrieval.rag.page_collection`, which builds and updates it)::

    collection/
      index/              MultiVectorIndex of the pages' patch vectors (metadata.encoder names the model)
      pages/              the page store:
        manifest.json       format "densezip-pages", count, settings, checksums of every file (written last)
        pages.jsonl         one Page per line: id, doc_id, page, source, width, height, metadata, image
        images/             one JPEG or WebP file per page image (optional), named by its sha256
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexes._io import file_table, verify_checksums
from indexes._paths import load_pinned, member, member_dir, open_member
from indexes.manifest import MANIFEST_NAME, write_json
from retrieval._optional import require
from retrieval._version import __version__
from retrieval.errors import ConfigError, IndexFormatError
from retrieval.rag.pages import Page, RenderOptions, render_page
from retrieval.rag.passages import INDEX_DIR, RecordStore, check_same_ids, read_store_manifest

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from indexes.multivector import MultiVectorIndex

__all__ = ["IMAGES_DIR", "PAGES_DIR", "PageStore", "RetrievedPage", "is_page_collection", "load_page_collection"]

PAGES_DIR = "pages"
IMAGES_DIR = "images"
STORE_FORMAT = "densezip-pages"
STORE_FORMAT_VERSION = 1
_FILE = "pages.jsonl"


class PageStore(RecordStore):
    """Page records in memory, looked up by id, by document and filtered by metadata equality.

    Parameters
    ----------
    pages : sequence of Page
        Unique ids.
    settings : dict, optional
        How the pages were rendered and stored (``render``, ``images``, ``image_quality``).
    images : dict, optional
        ``{file name: {"bytes", "sha256"}}`` of the page images under ``pages/images/``.
    """

    _what = "page"
    _hint = "Page ids look like '<file>#p<page number>'."

    def __init__(self, pages: Sequence[Page], *, settings: Mapping[str, Any] | None = None,
                 images: Mapping[str, Any] | None = None) -> None:
        self.pages: list[Page] = list(pages)
        self.settings: dict[str, Any] = dict(settings or {})
        self.images: dict[str, Any] = dict(images or {})
        self._index_ids(self.pages)

    def __repr__(self) -> str:
        return f"PageStore(pages={len(self)}, documents={len(self.doc_ids())}, settings={self.settings!r})"

    def __getitem__(self, page_id: str) -> Page:
        return super().__getitem__(page_id)  # type: ignore[no-any-return]

    def doc_ids(self) -> list[str]:
        """Document ids in store order, each once."""
        return list(dict.fromkeys(p.doc_id for p in self.pages))

    # ------------------------------------------------------------------ persistence
    def write(self, directory: Path) -> None:
        """Write ``pages.jsonl`` and the manifest (last) into ``directory``, whose ``images/`` is complete."""
        with open(directory / _FILE, "w", encoding="utf-8", newline="\n") as f:
            for p in self.pages:
                f.write(json.dumps(p.to_json(), ensure_ascii=False, allow_nan=False))
                f.write("\n")
        images = directory / IMAGES_DIR
        if images.is_dir():  # flushed before the manifest that vouches for them exists
            for name in self.images:
                fd = os.open(images / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        manifest = {
            "format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION, "library_version": __version__,
            "count": len(self), "settings": self.settings, "files": file_table(directory), "images": self.images,
        }
        write_json(directory / MANIFEST_NAME, manifest)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> PageStore:
        """Read a store written by :meth:`write`: manifest, checksums (images included) and every record."""
        return load_pinned(path, lambda d: cls._load(d, verify=verify))

    @classmethod
    def _load(cls, directory: Path, *, verify: bool) -> PageStore:
        manifest, files, count = read_store_manifest(
            directory, fmt=STORE_FORMAT, version=STORE_FORMAT_VERSION, file_name=_FILE, what="page store",
            hint="`densezip index-pages FOLDER --model MODEL --out DIR` or retrieval.rag.page_collection.index_pages()")
        settings, images = manifest.get("settings"), manifest.get("images")
        if not isinstance(settings, dict) or not isinstance(images, dict):
            raise IndexFormatError(f"{directory / MANIFEST_NAME}: 'settings' and 'images' must be objects; the "
                                   "manifest is damaged.")
        verify_checksums(directory, files, hashes=verify)
        if images:
            verify_checksums(member_dir(directory, IMAGES_DIR, what="images"), images, hashes=verify)
        pages: list[Page] = []
        with open_member(member(directory, _FILE)) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                pages.append(_page_from_line(line, directory / _FILE, lineno, images))
        if len(pages) != count:
            raise IndexFormatError(f"{directory / _FILE} holds {len(pages)} pages, but its manifest says {count}; "
                                   "the store is truncated or does not belong here.")
        try:
            return cls(pages, settings=settings, images=images)
        except ConfigError as exc:
            raise IndexFormatError(f"{directory / _FILE}: {exc}") from exc


def _page_from_line(line: str, file: Path, lineno: int, images: Mapping[str, Any]) -> Page:
    try:
        obj = json.loads(line)
        page = Page(id=obj["id"], doc_id=obj["doc_id"], page=obj["page"], source=obj["source"], width=obj["width"],
                    height=obj["height"], metadata=obj.get("metadata") or {}, image=obj.get("image"))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{file}:{lineno} is not a valid page record ({exc}); the store is corrupt.") from exc
    problem = None
    if not all(isinstance(v, str) and v for v in (page.id, page.doc_id, page.source)):
        problem = "id, doc_id and source must be non-empty strings"
    elif any(type(v) is not int or v < 1 for v in (page.page, page.width, page.height)):
        problem = f"page, width and height must be positive integers; got {page.page!r}, {page.width!r}, {page.height!r}"
    elif not isinstance(page.metadata, dict):
        problem = f"metadata must be an object; got {type(page.metadata).__name__}"
    elif page.image is not None and (not isinstance(page.image, str) or not page.image.startswith(IMAGES_DIR + "/")
                                     or page.image[len(IMAGES_DIR) + 1:] not in images):
        problem = f"image {page.image!r:.80} is not one of the store's checked image files"
    if problem:
        raise IndexFormatError(f"{file}:{lineno}: {problem}; the store is corrupt.")
    return page


@dataclass(frozen=True)
class RetrievedPage:
    """A document page returned for a question: where it is, its stored image, score and rank (1 = best).

    Attributes
    ----------
    record : Page
        The page record (id, document id, page number, source, size, metadata).
    score : float
        MaxSim score of the page.
    rank : int
        1 for the best page.
    image_path : Path or None
        The page image stored in the collection, or None when it was built without images
        (:meth:`image` then renders the page from its source file).
    render : RenderOptions, optional
        How the collection rendered its pages, so a page rendered again looks the same.
    """

    record: Page
    score: float
    rank: int
    image_path: Path | None = None
    render: RenderOptions | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def doc_id(self) -> str:
        return self.record.doc_id

    @property
    def source(self) -> str:
        return self.record.source

    @property
    def page(self) -> int:
        """Page number in the source file, counting from 1."""
        return self.record.page

    @property
    def metadata(self) -> dict[str, Any]:
        return self.record.metadata

    @property
    def text(self) -> str:
        """A caption naming the page (``"report.pdf, page 3"``), used in contexts and by text-only frameworks."""
        return f"{self.doc_id}, page {self.page}"

    def cite(self) -> str:
        """``"source, page n"``."""
        return f"{self.source}, page {self.page}"

    def image(self) -> PILImage:
        """The page as an RGB ``PIL.Image``: the stored image, else rendered from the source file."""
        if self.image_path is None:
            return render_page(self.source, self.page, options=self.render)
        pil_image = require("PIL.Image", extra="vision", feature="RetrievedPage.image()")
        with pil_image.open(self.image_path) as opened:
            return opened.convert("RGB")  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- opening
def is_page_collection(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is laid out as a page collection (``index/`` + ``pages/``, no top manifest)."""
    directory = Path(path)
    return (not (directory / MANIFEST_NAME).exists() and (directory / INDEX_DIR).is_dir()
            and (directory / PAGES_DIR).is_dir())


def load_page_collection(root: str | os.PathLike[str], *, verify: bool = True,
                         mmap: bool = False) -> tuple[MultiVectorIndex, PageStore]:
    """``(index, page store)`` of a page collection, both read from the same save of it."""
    from indexes.base import load_index
    from indexes.multivector import MultiVectorIndex

    def both(directory: Path) -> tuple[MultiVectorIndex, PageStore]:
        index = load_index(directory / INDEX_DIR, verify=verify, mmap=mmap)
        if not isinstance(index, MultiVectorIndex):
            raise IndexFormatError(f"{directory / INDEX_DIR} holds a {type(index).__name__}; a page collection's "
                                   "index is a MultiVectorIndex. Rebuild it with `densezip index-pages`.")
        store = PageStore.load(directory / PAGES_DIR, verify=verify)
        check_same_ids(index.doc_ids, store, directory)
        return index, store

    if not is_page_collection(root):
        raise IndexFormatError(f"{root} is not a page collection (index/ and pages/); build one with "
                               "`densezip index-pages FOLDER --model MODEL --out DIR`.")
    return load_pinned(root, both)

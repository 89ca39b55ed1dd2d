"""Page collections: ColPali / ColQwen2 patch vectors of document pages, their records and images.

A page collection is a directory holding ``index/`` (a MultiVectorIndex) and ``pages/`` (the
page store and page images; see :mod:`retrieval.rag.page_store`).

:func:`index_pages` builds one from a folder of PDFs and images (``densezip index-pages``),
streaming: pages are rendered, encoded and written a batch at a time, so memory is bounded
by the batch size, not by the documents. With ``update=True`` it re-reads a folder into an
existing collection: files whose ``sha256`` is unchanged are skipped, a changed file's
pages replace its old ones, new files are added. :func:`delete_sources` removes every page
of given source files. Both rewrite the collection as a new directory that replaces the old
one atomically (unchanged page images are hard-linked, not copied), so a reader sees the
old or the new collection, never a mixture.

Concurrent updates: every build, update and delete holds the collection's inter-process
update lock (:func:`indexes._update_lock.update_lock`, a ``flock`` on ``.<name>.lock`` beside
the collection) from reading the old collection until the new one is published, so two
processes updating one collection run one after the other and neither's pages are lost. The
second waits up to ``lock_timeout`` seconds, then raises
:class:`~retrieval.errors.LockTimeoutError` having changed nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexes._io import atomic_directory
from indexes._paths import member, member_dir
from indexes._update_lock import DEFAULT_LOCK_TIMEOUT, update_lock
from retrieval.encode._images import check_max_image_side
from retrieval.errors import ConfigError, DataError, UnknownIdError
from retrieval.rag.page_store import IMAGES_DIR, PAGES_DIR, PageStore, is_page_collection, load_page_collection
from retrieval.rag.pages import Page, PageIngestReport, PageMetadata, RenderOptions, iter_page_batches
from retrieval.rag.passages import INDEX_DIR

if TYPE_CHECKING:
    from retrieval.types import MultiVectorEmbeddings

__all__ = ["DEFAULT_PAGE_SPEC", "PageBuild", "delete_sources", "index_pages"]

logger = logging.getLogger(__name__)

#: Keep the 60% most salient patches of each page, binary codes with an ITQ rotation (16 bytes
#: per 128-d patch vector): the compression HPC-ColPali studies.
DEFAULT_PAGE_SPEC = "Prune0.6,BinaryITQ"
_IMAGE_FORMATS = {"jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
_ADD_EVERY = 64  # pages encoded before they are appended to the index (one concatenation per chunk)


# ---------------------------------------------------------------------------- building
@dataclass
class PageBuild:
    """What :func:`index_pages` or :func:`delete_sources` did.

    Attributes
    ----------
    path : Path
        The collection.
    report : PageIngestReport
        Files and pages read, skipped entries, per-file errors, unchanged files.
    pages, documents : int
        Pages and documents in the collection now.
    added, removed : int
        Pages added and removed by this call.
    seconds : float
        Wall time of the call.
    """

    path: Path
    report: PageIngestReport
    pages: int
    documents: int
    added: int
    removed: int
    seconds: float


_NEEDS_MODEL = ("index_pages needs model=... (a ColPali / ColQwen2 checkpoint directory, e.g. --model "
                "./colpali-v1.3-hf) to encode the pages.")


def _given_encoder(model: Any, *, device: str, batch_size: int, max_image_side: int | None) -> Any:
    """The encoder for ``model`` (a checkpoint path or hub name, or an encoder object), loaded."""
    from retrieval.encode.colpali import ColPaliEncoder

    if isinstance(model, (str, os.PathLike)):
        text = os.path.expanduser(os.fspath(model))
        if Path(text).is_dir():  # recorded absolute, so the collection opens from any working directory
            text = str(Path(text).resolve())
        encoder = ColPaliEncoder(text, device=device, batch_size=batch_size, max_image_side=max_image_side)
    elif max_image_side is not None:
        raise ConfigError(f"max_image_side={max_image_side} applies to a model given by path; for the encoder "
                          f"object {type(model).__name__} set it there (ColPaliEncoder(..., max_image_side=...)).")
    else:
        encoder = model
    _ = encoder.dim  # loads the model now: a bad checkpoint fails before any page is rendered or file written
    return encoder


def _recorded_encoder(recorded: Any, target: Path, *, device: str, max_image_side: int | None) -> Any:
    """The encoder an update re-creates from the collection's description (``max_image_side`` overrides)."""
    from retrieval.encode.registry import encoder_from_description

    if recorded is None:
        raise ConfigError(_NEEDS_MODEL)
    options = {"max_image_side": max_image_side} if max_image_side is not None else {}
    return encoder_from_description(recorded, device=device, base_dir=target / INDEX_DIR, **options)


def _same_model(encoder: Any, recorded: Any, where: Path) -> None:
    if not isinstance(recorded, dict) or not hasattr(encoder, "describe"):
        return
    mine = encoder.describe()
    if mine.get("fingerprint") != recorded.get("fingerprint") or mine.get("dim") != recorded.get("dim"):
        raise ConfigError(
            f"{where} was built with model {recorded.get('model')!r} (fingerprint {recorded.get('fingerprint')!r}), "
            f"but the encoder given is {mine.get('model')!r} ({mine.get('fingerprint')!r}): its vectors would not "
            "match the stored pages. Update with the same model (or leave --model out), or rebuild with --overwrite."
        )


def _concat(parts: list[MultiVectorEmbeddings]) -> MultiVectorEmbeddings:
    from retrieval.types import MultiVectorEmbeddings

    if len(parts) == 1:
        return parts[0]
    docs = [p.doc(i) for p in parts for i in range(len(p))]
    ids = [i for p in parts for i in p.ids]
    sal = None
    if all(p.saliency is not None for p in parts):
        sal = [p.saliency[p.offsets[i]:p.offsets[i + 1]] for p in parts for i in range(len(p))]  # type: ignore[index]
    return MultiVectorEmbeddings.from_list(docs, ids=ids, saliency=sal)


class _Unchanged(Exception):
    """An update found nothing to add or replace."""


class _Writer:
    """Encodes batches of rendered pages into the index and writes their images, in bounded chunks."""

    def __init__(self, index: Any, encoder: Any, images_dir: Path, settings: Mapping[str, Any],
                 train_pages: int) -> None:
        self.index, self.encoder, self.images_dir = index, encoder, images_dir
        self.image_format = settings.get("images")
        self.quality = int(settings.get("image_quality", 80))
        self.train_pages = train_pages
        self.pending: list[MultiVectorEmbeddings] = []
        self.pending_pages = 0
        self.pages: list[Page] = []
        self.images: dict[str, Any] = {}

    def add(self, batch: list[Any], batch_size: int) -> None:
        vectors = self.encoder.encode_documents([r.image for r in batch], ids=[r.page.id for r in batch],
                                                batch_size=batch_size)
        for r in batch:
            self.pages.append(self._store_image(r) if self.image_format else r.page)
        self.pending.append(vectors)
        self.pending_pages += len(batch)
        if self.pending_pages >= (_ADD_EVERY if self.index.is_trained else self.train_pages):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        vectors = _concat(self.pending)
        if not self.index.is_trained:
            self.index.train(vectors)
        self.index.add(vectors)
        self.pending, self.pending_pages = [], 0

    def _store_image(self, rendered: Any) -> Page:
        pil_format, suffix = _IMAGE_FORMATS[self.image_format]
        buf = io.BytesIO()
        rendered.image.save(buf, format=pil_format, quality=self.quality)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = digest[:32] + suffix
        if name not in self.images:
            (self.images_dir / name).write_bytes(data)
            self.images[name] = {"bytes": len(data), "sha256": digest}
        return dataclasses.replace(rendered.page, image=f"{IMAGES_DIR}/{name}")


def _check_build_args(images: str | None, image_quality: int, batch_size: int, train_pages: int) -> None:
    if images is not None and images not in _IMAGE_FORMATS:
        raise ConfigError(f"images must be one of {sorted(_IMAGE_FORMATS)} or None (no page images); got {images!r}.")
    for name, value, low, high in (("image_quality", image_quality, 1, 100), ("batch_size", batch_size, 1, 4096),
                                   ("train_pages", train_pages, 1, 1_000_000)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{name} must be an integer from {low} to {high}; got {value!r}.")


def index_pages(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: Any = None,
    spec: str | None = None,
    first_stage: str | None = None,
    binary_index: str | None = None,
    options: RenderOptions | None = None,
    metadata: PageMetadata = None,
    images: str | None = "jpeg",
    image_quality: int = 80,
    batch_size: int = 4,
    train_pages: int = 64,
    device: str = "auto",
    update: bool = False,
    overwrite: bool = False,
    max_image_side: int | None = None,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
) -> PageBuild:
    """Render, encode and index the pages of a folder of PDFs / images as a page collection.

    Parameters
    ----------
    source : path-like
        A folder, PDF or image file (see :func:`retrieval.rag.pages.find_page_files`).
    out : path-like
        The collection directory.
    model : str, os.PathLike or encoder
        A ColPali / ColQwen2 checkpoint (local directory or hub name in the local cache), or a
        built encoder such as :class:`~retrieval.encode.colpali.ColPaliEncoder`. Required for a
        new collection; an update re-creates the recorded one when it is left out.
    spec : str, optional
        :class:`~indexes.MultiVectorIndex` spec, default :data:`DEFAULT_PAGE_SPEC`. An update
        keeps the collection's spec (a different one is an error).
    first_stage : {"plaid", "exhaustive", "centroid", "binary"}, optional
        Candidate generation of a new index (see :class:`~indexes.MultiVectorIndex`). Default:
        the index's own, ``"plaid"`` for a ``KMeans`` spec and ``"exhaustive"`` for the others.
    binary_index : {"ivf", "hnsw", "flat"}, optional
        The FAISS token index of ``first_stage="binary"`` (default: the index's own, IVF).
    options : RenderOptions, optional
        DPI, maximum side, page limit; an update reuses the recorded ones by default.
    metadata : mapping or callable, optional
        Added to every page's metadata (see :func:`~retrieval.rag.pages.iter_pages`).
    images : {"jpeg", "webp"} or None
        Store each rendered page image in the collection (``None``: store none;
        :meth:`RetrievedPage.image <retrieval.rag.page_store.RetrievedPage.image>` then renders
        the page from its source file). An update keeps the collection's choice.
    image_quality : int
        JPEG / WebP quality, 1-100 (an update keeps the collection's).
    batch_size : int
        Pages rendered and encoded per step: memory grows with it, not with the documents.
    train_pages : int
        Pages whose vectors train the codec (BinaryITQ rotation, k-means) of a new index.
    device : str
        Where a model named by path runs.
    update : bool
        Add to the existing collection ``out``: unchanged files are skipped, changed ones
        replaced, new ones added. A file that now fails to read keeps its old pages.
    overwrite : bool
        Replace an existing collection with a new one.
    max_image_side : int, optional
        Longest page side the model's processor sees (see
        :class:`~retrieval.encode.colpali.ColPaliEncoder`), for a ``model`` given by path or
        the recorded one of an update (``None`` keeps the recorded value). Unlike
        ``options.max_side`` it does not change the stored page images.
    lock_timeout : float or None, default 600
        Seconds to wait while another process updates the same collection (``None``: no
        limit); see the module docstring.

    Returns
    -------
    PageBuild

    Raises
    ------
    ConfigError
        For a missing or non-ColPali ``model`` (before any page is read), bad options, or an
        update with another model or spec than the collection's.
    MissingDependencyError
        For a colpali-engine checkpoint where colpali-engine cannot be imported.
    DataError
        If ``source`` does not exist or holds no PDF / image file.
    LockTimeoutError
        If another process kept updating ``out`` for longer than ``lock_timeout``.
    """
    from indexes.factory import make_index

    started = time.perf_counter()
    _check_build_args(images, image_quality, batch_size, train_pages)
    check_max_image_side(max_image_side)
    target = Path(out)
    if model is not None:  # loaded before the lock is taken: the lock is held for the update only
        given = _given_encoder(model, device=device, batch_size=batch_size, max_image_side=max_image_side)
    elif not (update and target.exists()):
        raise ConfigError(_NEEDS_MODEL)
    with update_lock(target, timeout=lock_timeout, what="page collection"):
        report = PageIngestReport()
        old_store: PageStore | None = None
        recorded_encoder = None
        if update and target.exists():
            index, old_store = load_page_collection(target)
            recorded_encoder = index.metadata.get("encoder")
            if spec is not None and spec != index.spec:
                raise ConfigError(f"{target} holds a {index.spec!r} index; an update cannot change it to {spec!r}. "
                                  "Rebuild with --overwrite to change the spec.")
            settings = dict(old_store.settings)
            if options is not None:
                settings["render"] = dataclasses.asdict(options)
            options = RenderOptions(**settings["render"])
        else:
            options = options if options is not None else RenderOptions()
            settings = {"render": dataclasses.asdict(options), "images": images, "image_quality": image_quality}
        if model is None:
            encoder = _recorded_encoder(recorded_encoder, target, device=device, max_image_side=max_image_side)
        else:
            encoder = given
            _same_model(encoder, recorded_encoder, target)
        dim = encoder.dim  # loads a recorded model now: a bad checkpoint fails before any page is rendered
        if old_store is None:
            index = make_index(dim, spec or DEFAULT_PAGE_SPEC, multivector=True,
                               first_stage=first_stage, binary_index=binary_index)  # type: ignore[arg-type]
        known = {p.doc_id: p.metadata.get("sha256") for p in old_store.pages} if old_store is not None else {}
        replaced: set[str] = set()
        removed = 0
        try:
            with atomic_directory(target, overwrite=overwrite or old_store is not None) as tmp:
                pages_dir = tmp / PAGES_DIR
                (pages_dir / IMAGES_DIR).mkdir(parents=True)
                writer = _Writer(index, encoder, pages_dir / IMAGES_DIR, settings, train_pages)
                batches = iter_page_batches(source, batch_size, options=options, metadata=metadata, report=report,
                                            skip=lambda doc_id, digest: known.get(doc_id) == digest)
                for batch in batches:
                    for doc_id in {r.page.doc_id for r in batch} - replaced:
                        replaced.add(doc_id)
                        if doc_id in known:  # a changed file: its new pages replace the old ones
                            removed += index.delete([p.id for p in old_store.pages if p.doc_id == doc_id])  # type: ignore[union-attr]
                    writer.add(batch, batch_size)
                writer.flush()
                if not writer.pages and old_store is None:
                    raise DataError(f"no page could be read from {source}, so no collection was written. {report.summary()}")
                if not writer.pages and old_store is not None:
                    raise _Unchanged  # leaves the published collection as it is (the temporary one is removed)
                kept = [p for p in old_store.pages if p.doc_id not in replaced] if old_store is not None else []
                description = encoder.describe() if hasattr(encoder, "describe") else None
                old = (target, old_store.images) if old_store is not None else None
                store = _finish(tmp, index, description, kept, writer, settings, old)
        except _Unchanged:
            store = old_store  # type: ignore[assignment]
        if not len(store):
            logger.warning("the collection %s holds no page: %s", target, report.summary())
        return PageBuild(target, report, len(store), len(store.doc_ids()), len(writer.pages), removed,
                         time.perf_counter() - started)


def _finish(tmp: Path, index: Any, description: Any, kept: list[Page], writer: _Writer, settings: dict[str, Any],
            old: tuple[Path, Mapping[str, Any]] | None) -> PageStore:
    """Link the kept pages' images from the old collection ``old = (root, image table)``, then save
    index and store into ``tmp``."""
    images = dict(writer.images)
    if kept and old is not None:
        _link_images(kept, old[0], tmp / PAGES_DIR / IMAGES_DIR, old[1], images)
    store = PageStore([*kept, *writer.pages], settings=settings, images=images)
    if description is not None:
        index.metadata["encoder"] = description
    index.save(tmp / INDEX_DIR)
    store.write(tmp / PAGES_DIR)
    return store


def _link_images(kept: Sequence[Page], old_root: Path, images_dir: Path, old_table: Mapping[str, Any],
                 table: dict[str, Any]) -> None:
    source_dir = member_dir(old_root.resolve() / PAGES_DIR, IMAGES_DIR, what="images")
    for page in kept:
        if page.image is None:
            continue
        name = page.image[len(IMAGES_DIR) + 1:]
        if name in table:
            continue
        src = member(source_dir, name, what="images")
        try:
            os.link(src, images_dir / name)  # the old collection never changes, so sharing the inode is safe
        except OSError:
            shutil.copyfile(src, images_dir / name)
        table[name] = old_table[name]


def delete_sources(collection: str | os.PathLike[str], sources: Iterable[str | os.PathLike[str]], *,
                   lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> PageBuild:
    """Remove every page of the given source files from a page collection (atomically).

    Parameters
    ----------
    collection : path-like
        A page collection.
    sources : iterable of str or path-like
        Document ids (paths relative to the folder indexed, as in ``Page.doc_id``) or the
        source files' paths.
    lock_timeout : float or None, default 600
        Seconds to wait while another process updates the collection (see the module docstring).

    Raises
    ------
    UnknownIdError
        If a source matches no page (nothing is deleted then).
    LockTimeoutError
        If another process kept updating the collection for longer than ``lock_timeout``.
    """
    started = time.perf_counter()
    root = Path(collection)
    if not is_page_collection(root):
        load_page_collection(root)  # raises "not a page collection" before a lock file is made beside it
    with update_lock(root, timeout=lock_timeout, what="page collection"):
        return _delete_locked(root, sources, started)


def _delete_locked(root: Path, sources: Iterable[str | os.PathLike[str]], started: float) -> PageBuild:
    index, store = load_page_collection(root)
    wanted = [os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    by_source: dict[str, set[str]] = {}
    for p in store.pages:
        by_source.setdefault(p.doc_id, set()).add(p.doc_id)
        by_source.setdefault(p.source, set()).add(p.doc_id)
    missing = [s for s in wanted if s not in by_source and str(Path(s).resolve()) not in by_source]
    if missing:
        raise UnknownIdError(f"{len(missing)} source(s) are not in {root}, e.g. {missing[:3]}; known documents "
                             f"include {store.doc_ids()[:3]}. Nothing was deleted.")
    doomed = set().union(*(by_source.get(s) or by_source[str(Path(s).resolve())] for s in wanted))
    gone = [p.id for p in store.pages if p.doc_id in doomed]
    index.delete(gone)
    kept = [p for p in store.pages if p.doc_id not in doomed]
    with atomic_directory(root, overwrite=True) as tmp:
        (tmp / PAGES_DIR / IMAGES_DIR).mkdir(parents=True)
        writer = _Writer(index, None, tmp / PAGES_DIR / IMAGES_DIR, store.settings, 1)
        new_store = _finish(tmp, index, index.metadata.get("encoder"), kept, writer, store.settings,
                            (root, store.images))
    return PageBuild(root, PageIngestReport(), len(new_store), len(new_store.doc_ids()), 0, len(gone),
                     time.perf_counter() - started)


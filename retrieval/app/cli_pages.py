"""``densezip index-pages`` / ``delete-pages`` and ``densezip search`` over page collections.

Kept out of :mod:`retrieval.app.cli`, which only registers the commands and prints the results.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from retrieval.app.measure import directory_bytes

__all__ = ["add_page_parsers", "delete_pages", "index_page_folder", "search_pages"]


def add_page_parsers(sub: Any, common: Callable[..., None], *, int_in: Callable[[int, int], Any],
                     index_cmd: Callable[[argparse.Namespace], int],
                     delete_cmd: Callable[[argparse.Namespace], int]) -> None:
    """Register ``index-pages`` and ``delete-pages`` on the ``densezip`` sub-command parser ``sub``."""
    from retrieval.encode._images import MAX_IMAGE_SIDE_RANGE
    from retrieval.rag.page_collection import DEFAULT_PAGE_SPEC

    p = sub.add_parser("index-pages", help="render the pages of a folder of PDFs / images, encode them with a "
                       "ColPali / ColQwen2 model and save a page collection")
    p.add_argument("data", help="folder of .pdf / .png / .jpg files (recursive), or one such file")
    p.add_argument("--out", required=True, help="page collection directory to write (index/ + pages/)")
    p.add_argument("--model", default=None, help="ColPali / ColQwen2 checkpoint directory (transformers '-hf' "
                   "format, e.g. a download of vidore/colpali-v1.3-hf; colpali-engine's format too where it is "
                   "installed) or a hub name in the local cache; --update reuses the collection's model when left out")
    p.add_argument("--spec", default=None,
                   help=f"MultiVectorIndex spec (default {DEFAULT_PAGE_SPEC}): [Prune<p>,]Flat|FP16|KMeans<K>[r<b>]|"
                        "Binary|BinaryITQ")
    p.add_argument("--first-stage", choices=("plaid", "exhaustive", "centroid", "binary"), default=None,
                   help="candidate generation before exact MaxSim (default: plaid for KMeans specs, "
                        "exhaustive for the others)")
    p.add_argument("--binary-index", choices=("ivf", "hnsw", "flat"), default=None,
                   help="FAISS token index of --first-stage binary (default ivf); saved with the collection")
    p.add_argument("--dpi", type=int_in(10, 1200), default=None, help="PDF rendering resolution (default 100)")
    p.add_argument("--max-side", type=int_in(32, 20_000), default=None,
                   help="longest side of a page image in pixels (default 1400)")
    p.add_argument("--max-pages", type=int_in(1, 10_000_000), default=None,
                   help="refuse PDFs with more pages (default 10000)")
    p.add_argument("--batch-size", type=int_in(1, 4096), default=4,
                   help="pages rendered and encoded per step; memory grows with it, not with the documents")
    p.add_argument("--max-image-side", type=int_in(*MAX_IMAGE_SIDE_RANGE), default=None,
                   help="longest side of the page image the model sees, in pixels (default: no limit beyond "
                        "--max-side); bounds ColQwen2's vectors per page; stored images keep --max-side")
    p.add_argument("--images", choices=("jpeg", "webp", "none"), default="jpeg",
                   help="store each page image in the collection (default jpeg)")
    p.add_argument("--image-quality", type=int_in(1, 100), default=80, help="JPEG / WebP quality (default 80)")
    p.add_argument("--train-pages", type=int_in(1, 1_000_000), default=64,
                   help="pages whose vectors train the codec of a new index (default 64)")
    p.add_argument("--update", action="store_true", help="add to an existing collection: unchanged files are "
                   "skipped, changed ones replace their pages, new ones are added")
    p.add_argument("--overwrite", action="store_true", help="replace an existing collection")
    _lock_timeout(p, int_in)
    common(p, model=False)
    p.set_defaults(func=index_cmd)

    p = sub.add_parser("delete-pages", help="remove every page of the given source files from a page collection")
    p.add_argument("collection", help="page collection directory written by `densezip index-pages`")
    p.add_argument("source", nargs="+", help="document ids (paths relative to the indexed folder) or file paths")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    _lock_timeout(p, int_in)
    p.set_defaults(func=delete_cmd)


def _lock_timeout(p: argparse.ArgumentParser, int_in: Callable[[int, int], Any]) -> None:
    from indexes._update_lock import DEFAULT_LOCK_TIMEOUT

    p.add_argument("--lock-timeout", type=int_in(0, 10_000_000), default=int(DEFAULT_LOCK_TIMEOUT), metavar="SECONDS",
                   help="while another densezip process updates the same collection, wait this long for it, then "
                        f"fail without changing anything (default {int(DEFAULT_LOCK_TIMEOUT)})")


def _render_options(args: argparse.Namespace) -> Any:
    from retrieval.rag.pages import RenderOptions

    given = {k: v for k, v in (("dpi", args.dpi), ("max_side", args.max_side), ("max_pages", args.max_pages))
             if v is not None}
    return RenderOptions(**given) if given else None


def _payload(build: Any) -> dict[str, Any]:
    return {"collection": str(build.path), "pages": build.pages, "documents": build.documents, "added": build.added,
            "removed": build.removed, "bytes": directory_bytes(build.path / "index") +
            directory_bytes(build.path / "pages"), "total_s": build.seconds, "report": build.report.to_dict()}


def index_page_folder(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Build (or ``--update``) a page collection; the summary lists per-file errors and skipped entries."""
    from retrieval.rag.page_collection import index_pages

    build = index_pages(
        args.data, args.out, model=args.model, spec=args.spec, first_stage=args.first_stage,
        binary_index=args.binary_index,
        options=_render_options(args), images=None if args.images == "none" else args.images,
        image_quality=args.image_quality, batch_size=args.batch_size, train_pages=args.train_pages,
        device=args.device, update=args.update, overwrite=args.overwrite, max_image_side=args.max_image_side,
        lock_timeout=args.lock_timeout,
    )
    payload = _payload(build)
    text = (f"indexed {build.pages} pages of {build.documents} documents into {build.path} "
            f"(+{build.added} / -{build.removed} pages): {payload['bytes'] / 1e6:.1f} MB; {build.seconds:.1f}s\n"
            + build.report.summary())
    return payload, text


def delete_pages(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from retrieval.rag.page_collection import delete_sources

    build = delete_sources(args.collection, args.source, lock_timeout=args.lock_timeout)
    return _payload(build), (f"removed {build.removed} pages; {build.pages} pages of {build.documents} documents "
                             f"remain in {build.path}")


def search_pages(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Top pages (source, page number, score, stored image) for each query text."""
    from retrieval.rag.component import RetrievalComponent

    component = RetrievalComponent.open(args.index, device=args.device, verify=not args.no_verify)
    results, lines = [], []
    for q in args.query:
        hits = component.retrieve(q, args.k)
        results.append({"query": q, "hits": [
            {"page_id": h.id, "doc_id": h.doc_id, "source": h.source, "page": h.page, "score": h.score,
             "image_path": str(h.image_path) if h.image_path is not None else None, "metadata": h.metadata}
            for h in hits]})
        lines.append(f"query: {q}")
        lines.extend(f"  {h.rank:>3}. {h.source}  page {h.page}  {h.score:.4f}" for h in hits)
    return {"results": results}, "\n".join(lines)

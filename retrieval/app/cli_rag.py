"""``densezip index`` for document folders / JSONL (RAG collections) and ``densezip search`` over them.

Kept out of :mod:`retrieval.app.cli`, which only dispatches here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from retrieval.datasets import available_datasets

__all__ = ["index_documents", "is_beir_input", "search_collection"]


def is_beir_input(data: str) -> bool:
    """True for a bundled data set name or a directory with a BEIR ``corpus.jsonl[.gz]``."""
    root = Path(data)
    return data in available_datasets() or (root / "corpus.jsonl").is_file() or (root / "corpus.jsonl.gz").is_file()


def index_documents(args: argparse.Namespace, encoder: Any) -> tuple[dict[str, Any], str]:
    """Split a folder of .txt/.md files or JSONL into passages, encode them and save a collection."""
    from indexes._ids import check_storable_ids
    from indexes.factory import make_index
    from retrieval.app.measure import directory_bytes
    from retrieval.rag.ingest import load_documents
    from retrieval.rag.passages import build_collection

    started = time.perf_counter()
    documents = load_documents(args.data)
    # Refuse ids no index can store (lone surrogates from a JSON escape) now, not after encoding.
    check_storable_ids([d.id for d in documents], what="document id")
    index: Any = make_index(encoder.dim, args.spec, nprobe=args.nprobe, ef_search=args.ef_search)
    path = build_collection(documents, args.out, encoder=encoder, index=index, max_tokens=args.max_tokens,
                            overlap=args.overlap, overwrite=args.overwrite)
    size = sum(directory_bytes(d) for d in (path / "index", path / "passages"))
    payload = {
        "collection": str(path), "spec": args.spec, "documents": len(documents), "passages": len(index),
        "dim": index.dim, "bytes": size, "total_s": time.perf_counter() - started,
    }
    text = (f"indexed {len(documents)} documents as {len(index)} passages into {path} ({args.spec}): "
            f"{size / 1e6:.1f} MB; {payload['total_s']:.1f}s")
    return payload, text


def search_collection(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Top passages with text and source for each query text."""
    from retrieval.rag.component import RetrievalComponent

    component = RetrievalComponent.open(args.index, device=args.device, verify=not args.no_verify)
    results, lines = [], []
    for q in args.query:
        hits = component.retrieve(q, args.k, where=getattr(args, "where", None))
        results.append({"query": q, "hits": [
            {"passage_id": h.id, "doc_id": h.doc_id, "score": h.score, "source": h.source, "start": h.passage.start,
             "end": h.passage.end, "text": h.text, "metadata": h.metadata} for h in hits]})
        lines.append(f"query: {q}")
        for h in hits:
            excerpt = " ".join(h.text.split())
            excerpt = excerpt if len(excerpt) <= 100 else excerpt[:97] + "..."
            lines.append(f"  {h.rank:>3}. {h.id}  {h.score:.4f}  {excerpt}")
    return {"results": results}, "\n".join(lines)

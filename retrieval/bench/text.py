"""Text data sets in the BEIR layout: quality (ir-measures on the evaluation split), bytes per
document, build time, and search speed of every configured index kind."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from retrieval.bench.config import BenchConfig, TextDataset, TextIndexConfig
from retrieval.bench.probe import index_memory_bytes, time_interleaved
from retrieval.bench.vectors import scan_bytes

if TYPE_CHECKING:
    from indexes.base import VectorIndex
    from retrieval.beir import BEIRDataset
    from retrieval.types import Embeddings

__all__ = ["EncoderFactory", "default_encoder", "run_text_dataset"]

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[str | None], Any]
"""Makes the encoder of a text data set from its ``model`` setting (None: the default model)."""

METRICS = ("nDCG@10", "MRR@10", "Recall@100")
DEPTH = 100  # retrieval depth for the quality metrics (Recall@100)


def default_encoder(model: str | None) -> Any:
    """The :class:`~retrieval.DenseEncoder` the benchmark uses: CPU, batch 16, embedding cache on."""
    from retrieval.encode.dense import DenseEncoder

    return DenseEncoder(model, device="cpu", batch_size=16, show_progress=False)


def _build(cfg: TextIndexConfig, docs: Embeddings, ds: TextDataset, data: BEIRDataset,
           encoder: Any) -> tuple[VectorIndex, NDArray[np.float32] | None, dict[str, Any]]:
    """Build one index; returns it, its own query vectors (JPQ) or None, and extra facts."""
    from retrieval.cli import EXACT, build_index

    if cfg.kind == "exact":
        return build_index(docs, EXACT), None, {}
    if cfg.kind == "faiss":
        return build_index(docs, cfg.spec, nprobe=cfg.nprobe, ef_search=cfg.ef_search), None, {}
    # JPQ: the query encoder and the PQ centroids are trained on the train split; its test
    # queries are encoded by the trained encoder, not the shared one.
    from indexes.faiss_index import FaissIndex
    from retrieval.beir import load_beir
    from training.jpq import JPQTrainer, JPQTrainingArgs

    train = load_beir(ds.path, split=ds.train_split)
    settings = JPQTrainingArgs(**cfg.jpq)
    trainer = JPQTrainer(settings, doc_ids=docs.ids, doc_vectors=docs.vectors, queries=train.queries,
                         qrels=train.qrels, model=ds.model)
    history = trainer.train()
    index = FaissIndex.from_faiss(trainer.index, trainer.doc_ids, spec=settings.spec)
    queries = trainer.encode_queries(data.query_texts())
    return index, queries, {"spec": settings.spec, "train_steps": history.steps, "dev": history.dev}


def run_text_dataset(ds: TextDataset, config: BenchConfig, *, encoder_factory: EncoderFactory,
                     progress: Callable[[str], None]) -> dict[str, Any]:
    """Encode ``ds`` once, then build, evaluate, size and time each configured index.

    Quality: ``nDCG@10``, ``MRR@10``, ``Recall@100`` from :func:`retrieval.evaluate` on the
    ``split`` qrels, retrieving 100 documents per query. Size: bytes per document held in
    memory (:func:`~retrieval.bench.probe.index_memory_bytes`) and on disk (every file of
    the saved index directory). Speed: ``k`` hits per query at every configured batch size;
    FAISS kinds are timed interleaved with the raw FAISS object they wrap.
    """
    from indexes.faiss_index import FaissIndex
    from retrieval.beir import load_beir
    from retrieval.evaluate import evaluate
    from retrieval.measure import saved_bytes

    data = load_beir(ds.path, split=ds.split)
    encoder = encoder_factory(ds.model)
    t0 = time.perf_counter()
    docs = encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
    t1 = time.perf_counter()
    qids = data.query_ids()
    shared_queries = np.asarray(encoder.encode_queries(data.query_texts()), dtype=np.float32)
    t2 = time.perf_counter()
    progress(f"  {ds.name}: {len(docs)} documents ({t1 - t0:.1f} s, cached after the first run), "
             f"{len(qids)} queries ({t2 - t1:.1f} s)")
    rows: list[dict[str, Any]] = []
    for cfg in ds.indexes:
        b0 = time.perf_counter()
        index, own_queries, extra = _build(cfg, docs, ds, data, encoder)
        build_s = time.perf_counter() - b0
        queries = shared_queries if own_queries is None else own_queries
        metrics = evaluate(index.search(queries, DEPTH, query_ids=qids).to_trec_dict(), data.qrels, METRICS)
        row: dict[str, Any] = {
            "dataset": ds.name, "label": cfg.name, "kind": cfg.kind,
            "spec": extra.get("spec", cfg.spec or "exact"),
            "search_params": {p: getattr(cfg, p) for p in ("nprobe", "ef_search") if getattr(cfg, p) is not None},
            **metrics, "build_s": build_s,
            "memory_bytes_per_doc": index_memory_bytes(index) / len(index),
            "disk_bytes_per_doc": saved_bytes(index) / len(index),
            "timing": {},
        }
        if cfg.kind == "jpq":
            row["jpq"] = {"args": cfg.jpq, "train_steps": extra["train_steps"], "dev": extra["dev"],
                          "note": "build_s includes training the query encoder and the PQ centroids"}
        raw = index.faiss_index if isinstance(index, FaissIndex) else None
        row["scan_bytes_per_query"] = (scan_bytes(raw) if raw is not None
                                       else int(docs.vectors.nbytes))  # the NumPy flat scan reads every float
        for batch in config.batch_sizes:
            searches: dict[str, Callable[[NDArray[np.float32]], object]] = {
                "ours": functools.partial(index.search, k=config.k)}
            if raw is not None:
                searches["raw"] = functools.partial(raw.search, k=config.k)
            t = time_interleaved(searches, queries, batch_size=batch, repeats=config.repeats, warmup=config.warmup)
            entry: dict[str, Any] = {name: timing.as_dict() for name, timing in t.items()}
            entry["ratio"] = t["ours"].qps / t["raw"].qps if "raw" in t else None
            row["timing"][str(batch)] = entry
        rows.append(row)
        progress(f"  {ds.name}: {cfg.name:<28} nDCG@10 {metrics['nDCG@10']:.4f}  "
                 f"{row['memory_bytes_per_doc']:.0f} B/doc  build {build_s:.1f} s  " + "  ".join(
                     f"b={b}: {row['timing'][str(b)]['ours']['qps']:.0f} q/s" for b in config.batch_sizes))
    return {
        "name": ds.name, "path": ds.path, "split": ds.split, "documents": len(docs), "queries": len(qids),
        "dim": int(docs.dim), "encoder": getattr(encoder, "name", type(encoder).__name__),
        "encode_documents_s": t1 - t0, "encode_queries_s": t2 - t1, "metrics_depth": DEPTH, "rows": rows,
    }

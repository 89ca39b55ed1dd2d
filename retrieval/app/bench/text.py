"""Text data sets in the BEIR layout: quality (ir-measures on the evaluation split), bytes per
document, build time, and search speed of every configured index kind."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.app.bench.config import BenchConfig, TextDataset, TextIndexConfig
from retrieval.app.bench.probe import extra_us_per_call, paired_ratio, time_interleaved
from retrieval.app.bench.vector_sets import scan_bytes

if TYPE_CHECKING:
    from retrieval.beir import BEIRDataset
    from retrieval.types import Embeddings, MultiVectorEmbeddings

__all__ = ["EncoderFactory", "default_encoder", "default_token_encoder", "run_text_dataset"]

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[str | None], Any]
"""Makes the encoder of a text data set from its ``model`` setting (None: the default model)."""

METRICS = ("nDCG@10", "MRR@10", "Recall@100")
DEPTH = 100  # retrieval depth for the quality metrics (Recall@100)


def default_encoder(model: str | None) -> Any:
    """The :class:`~retrieval.DenseEncoder` the benchmark uses: CPU, batch 16, embedding cache on."""
    from retrieval.encode.dense import DenseEncoder

    return DenseEncoder(model, device="cpu", batch_size=16, show_progress=False)


def default_token_encoder(model: str | None) -> Any:
    """The :class:`~retrieval.MultiVectorEncoder` of the multi-vector kind: CPU, 256 document tokens."""
    from retrieval.encode.multivector import MultiVectorEncoder

    return MultiVectorEncoder(model, device="cpu", batch_size=16, document_length=256, show_progress=False)


def _build(cfg: TextIndexConfig, docs: Embeddings, ds: TextDataset, data: BEIRDataset,
           mv_docs: MultiVectorEmbeddings | None) -> tuple[Any, Any, dict[str, Any]]:
    """Build one index; returns it, its own queries (JPQ, multi-vector) or None, and extra facts.

    ``extra["query_encode_s"]`` is time spent encoding queries inside this call, which the
    caller takes out of the build time.
    """
    from indexes.factory import EXACT, make_index

    if cfg.kind in ("exact", "faiss"):
        index: Any = make_index(docs.dim, EXACT if cfg.kind == "exact" else cfg.spec, nprobe=cfg.nprobe,
                                ef_search=cfg.ef_search)
        index.train(docs)  # once, before any sharding: every shard shares the trained state
        if cfg.shards is not None:
            from indexes.sharded import ShardedIndex

            index = ShardedIndex(index, cfg.shards)
        return index.add(docs), None, {}
    if cfg.kind == "multivector":
        assert mv_docs is not None  # loaded by the caller for this kind
        single: Any = make_index(mv_docs.dim, cfg.spec, multivector=True, nprobe=cfg.nprobe, ef_search=cfg.ef_search,
                                 **cfg.multivector)
        if cfg.shards is not None:
            from indexes.sharded_multivector import ShardedMultiVectorIndex

            return ShardedMultiVectorIndex(single, cfg.shards).add(mv_docs), None, {}
        return single.add(mv_docs), None, {}
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
    t0 = time.perf_counter()
    queries = trainer.encode_queries(data.query_texts())
    return index, queries, {"spec": settings.spec, "train_steps": history.steps, "dev": history.dev,
                            "query_encode_s": time.perf_counter() - t0}


def _token_vectors(ds: TextDataset, data: BEIRDataset, encoder: Any,
                   progress: Callable[[str], None]) -> tuple[Any, Any]:
    """Document and query token vectors for the multi-vector kind.

    Document vectors (256 tokens at most) are cached under the densezip cache directory as
    ``multivector-<data set>-<model>-256`` (the layout ``tests/benchmarks/bench_multivector.py``
    writes, so its SciFact cache is reused) and memory-mapped; a cache whose document ids do
    not match the corpus is re-encoded.
    """
    from indexes.multivector import load_embeddings, save_embeddings
    from retrieval.encode.dense import default_cache_dir

    model = "minilm" if ds.model is None else "".join(c if c.isalnum() else "_" for c in ds.model)
    tag = getattr(encoder, "cache_tag", None) or model  # test encoders name their own cache
    cache = default_cache_dir() / f"multivector-{ds.name}-{tag}-256"
    docs = None
    if (cache / "manifest.json").is_file():
        docs = load_embeddings(cache, verify=False)  # hashing gigabytes would cost more than the search
        if docs.ids != data.doc_ids():
            progress(f"  {ds.name}: token-vector cache {cache} holds other documents; re-encoding")
            docs = None
    if docs is None:
        t0 = time.perf_counter()
        docs = encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
        save_embeddings(docs, cache, overwrite=True)
        progress(f"  {ds.name}: encoded {docs.num_vectors} token vectors in {time.perf_counter() - t0:.0f} s, "
                 f"cached in {cache}")
        docs = load_embeddings(cache, verify=False)
    queries = encoder.encode_queries(data.query_texts(), ids=data.query_ids())
    return docs, queries


def _head(queries: Any, n: int) -> Any:
    """The first ``n`` queries of a matrix or of multi-vector embeddings."""
    if isinstance(queries, np.ndarray):
        return queries[:n]
    return queries.select(np.arange(min(n, len(queries))))


def run_text_dataset(ds: TextDataset, config: BenchConfig, *, encoder_factory: EncoderFactory,
                     progress: Callable[[str], None],
                     token_encoder_factory: EncoderFactory = default_token_encoder) -> dict[str, Any]:
    """Encode ``ds`` once, then build, evaluate, size and time each configured index.

    The multi-vector kind uses its own token vectors (see :func:`_token_vectors`) and may
    time only the first ``timing_queries`` queries.

    Quality: ``nDCG@10``, ``MRR@10``, ``Recall@100`` from :func:`retrieval.evaluate` on the
    ``split`` qrels, retrieving 100 documents per query. Size: bytes per document held in
    memory (the index's own ``memory_bytes()``) and on disk (every file of
    the saved index directory). Speed: ``k`` hits per query at every configured batch size;
    FAISS kinds are timed interleaved with the raw FAISS object they wrap.
    """
    from indexes.faiss_index import FaissIndex
    from retrieval.app.measure import saved_bytes
    from retrieval.beir import load_beir
    from retrieval.evaluate import evaluate

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
    mv_docs: Any = None
    mv_queries: Any = None
    for cfg in ds.indexes:
        if cfg.kind == "multivector" and mv_docs is None:
            mv_docs, mv_queries = _token_vectors(ds, data, token_encoder_factory(ds.model), progress)
        b0 = time.perf_counter()
        index, own_queries, extra = _build(cfg, docs, ds, data, mv_docs)
        build_s = time.perf_counter() - b0 - extra.get("query_encode_s", 0.0)
        queries: Any = (mv_queries if cfg.kind == "multivector"
                        else shared_queries if own_queries is None else own_queries)
        metrics = evaluate(index.search(queries, DEPTH, query_ids=qids).to_trec_dict(), data.qrels, METRICS)
        row: dict[str, Any] = {
            "dataset": ds.name, "label": cfg.name, "kind": cfg.kind,
            "spec": extra.get("spec", cfg.spec or "exact"),
            "search_params": {p: getattr(cfg, p) for p in ("nprobe", "ef_search") if getattr(cfg, p) is not None},
            **metrics, "build_s": build_s,
            "memory_bytes_per_doc": index.memory_bytes() / len(index),
            "disk_bytes_per_doc": saved_bytes(index) / len(index),
            "timing": {},
        }
        if cfg.kind == "jpq":
            row["jpq"] = {"args": cfg.jpq, "train_steps": extra["train_steps"], "dev": extra["dev"],
                          "note": "build_s includes training the query encoder and the PQ centroids"}
        if cfg.kind == "multivector":
            row["multivector"] = {"token_vectors_per_doc": index.num_vectors / len(index),
                                  "query_tokens_per_query": mv_queries.num_vectors / len(mv_queries)}
        raw = index.faiss_index if isinstance(index, FaissIndex) else None
        row["scan_bytes_per_query"] = (scan_bytes(raw) if raw is not None
                                       else int(docs.vectors.nbytes) if cfg.kind == "exact"  # NumPy reads every float
                                       else None)
        timed = queries if cfg.timing_queries is None else _head(queries, cfg.timing_queries)
        row["timing_queries"] = len(timed)
        for batch in config.batch_sizes:
            searches: dict[str, Callable[[Any], object]] = {"ours": functools.partial(index.search, k=config.k)}
            if raw is not None:
                searches["raw"] = functools.partial(raw.search, k=config.k)
            t = time_interleaved(searches, timed, batch_size=batch, repeats=config.repeats, warmup=config.warmup)
            entry: dict[str, Any] = {name: timing.as_dict() for name, timing in t.items()}
            entry["ratio"] = paired_ratio(t["ours"], t["raw"]) if "raw" in t else None
            entry["extra_us_per_call"] = extra_us_per_call(t["ours"], t["raw"]) if "raw" in t else None
            row["timing"][str(batch)] = entry
        rows.append(row)
        if cfg.shards is not None:
            index.close()  # the shards' thread pool
        progress(f"  {ds.name}: {cfg.name:<28} nDCG@10 {metrics['nDCG@10']:.4f}  "
                 f"{row['memory_bytes_per_doc']:.0f} B/doc  build {build_s:.1f} s  " + "  ".join(
                     f"b={b}: {row['timing'][str(b)]['ours']['qps']:.0f} q/s" for b in config.batch_sizes))
    return {
        "name": ds.name, "path": ds.path, "split": ds.split, "documents": len(docs), "queries": len(qids),
        "dim": int(docs.dim), "encoder": getattr(encoder, "name", type(encoder).__name__),
        "encode_documents_s": t1 - t0, "encode_queries_s": t2 - t1, "metrics_depth": DEPTH, "rows": rows,
    }

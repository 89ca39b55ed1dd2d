"""Late interaction at 10M synthetic token vectors: a streamed, bounded-memory build and the PLAID engine.

Run:  .venv/bin/python tests/benchmarks/bench_late_interaction_10m.py [--docs 100000] [--spec KMeansr4]
      [--threads 2] [--json out.json]

Data: the recipe of ``bench_late_interaction.py`` (100 tokens x 128-d per document from a
Gaussian mixture with topics, queries of 32 perturbed tokens of one document), generated in
batches of ``--batch-docs`` documents, each from its own seeded generator, so that no step
ever holds the corpus: 100,000 documents are 10M vectors, 5.1 GB as float32.

1. Build: the batches stream through :func:`indexes.build.build_multivector_from_batches`
   (spilled to disk, k-means trained on a reservoir sample, then encoded chunk by chunk).
   Reported: build seconds without the generation, peak RSS of the process, bytes per token
   of the index in memory. The built index is cached under the bench cache directory.
2. Truth: the batches are generated again and exact float32 MaxSim top 10 of every query is
   merged batch by batch (cached).
3. Search at ``--threads``: recall@10 against the truth, p50 / p95 at batch 1, QPS at batch
   32, for the PLAID defaults and a few settings; the codes' ceiling (every document decoded
   and scored) on ``--ceiling-queries`` queries, with the PLAID defaults on the same queries.
"""

from __future__ import annotations

import os
import sys

_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "2"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_late_interaction import DIM, DOC_LEN, N_TOPICS, N_WORDS, Q_LEN, TOPIC_WORDS, _measure, _recall, _searcher  # noqa: E402


class Corpus:
    """The synthetic corpus, batch by batch: batch ``b`` is the same whenever it is generated."""

    def __init__(self, n_docs: int, batch_docs: int, n_queries: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.words = rng.standard_normal((N_WORDS, DIM)).astype(np.float32)
        self.words /= np.linalg.norm(self.words, axis=1, keepdims=True)
        self.topics = np.stack([rng.choice(N_WORDS, TOPIC_WORDS, replace=False) for _ in range(N_TOPICS)])
        self.n_docs, self.batch_docs, self.seed = n_docs, batch_docs, seed
        self.sources = np.sort(rng.choice(n_docs, n_queries, replace=False))
        self.generate_s = 0.0

    def batch(self, b: int) -> Any:
        from retrieval.types import MultiVectorEmbeddings

        t0 = time.perf_counter()
        rng = np.random.default_rng([self.seed, b])
        first, n = b * self.batch_docs, min(self.batch_docs, self.n_docs - b * self.batch_docs)
        doc_topic = rng.integers(0, N_TOPICS, n)
        from_topic = rng.random((n, DOC_LEN)) < 0.8
        word_ids = np.where(from_topic, self.topics[doc_topic[:, None], rng.integers(0, TOPIC_WORDS, (n, DOC_LEN))],
                            rng.integers(0, N_WORDS, (n, DOC_LEN))).reshape(-1)
        x = self.words[word_ids] + (0.5 / np.sqrt(DIM)) * rng.standard_normal((word_ids.size, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out = MultiVectorEmbeddings(x, np.arange(n + 1, dtype=np.int64) * DOC_LEN,
                                    [f"d{i}" for i in range(first, first + n)])
        self.generate_s += time.perf_counter() - t0
        return out

    def batches(self) -> Iterator[Any]:
        for b in range(-(-self.n_docs // self.batch_docs)):
            yield self.batch(b)

    def queries(self) -> Any:
        """32 tokens of each source document, perturbed again (regenerates only their batches)."""
        from retrieval.types import MultiVectorEmbeddings

        rng = np.random.default_rng([self.seed, 1 << 30])
        parts = []
        for b in np.unique(self.sources // self.batch_docs):
            docs = self.batch(int(b))
            for d in self.sources[self.sources // self.batch_docs == b]:
                local = int(d - b * self.batch_docs)
                parts.append(docs.vectors[local * DOC_LEN + rng.choice(DOC_LEN, Q_LEN, replace=False)])
        q = np.concatenate(parts)
        q = q + (0.5 / np.sqrt(DIM)) * rng.standard_normal(q.shape, dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        n = len(self.sources)
        return MultiVectorEmbeddings(q, np.arange(n + 1, dtype=np.int64) * Q_LEN, [f"q{i}" for i in range(n)])


def _truth(corpus: Corpus, queries: Any, path: Path) -> np.ndarray:
    """Exact float32 MaxSim top 10 of every query, merged batch by batch."""
    from retrieval.rerank import maxsim_csr
    from retrieval.scores import top_k

    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), 10), -1, dtype=np.int64)
    for b, docs in enumerate(corpus.batches()):
        scores = np.concatenate([maxsim_csr(queries.select(np.arange(s, min(s + 32, len(queries)))), docs)
                                 for s in range(0, len(queries), 32)])
        s, i = top_k(scores, 10)
        merged_s = np.concatenate([best_s, s], axis=1)
        merged_i = np.concatenate([best_i, i + b * corpus.batch_docs], axis=1)
        keep = np.argsort(-merged_s, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(merged_s, keep, 1), np.take_along_axis(merged_i, keep, 1)
    print(f"exact float MaxSim truth over {corpus.n_docs} documents: {time.perf_counter() - t0:.0f} s", flush=True)
    np.save(path, best_i)
    return best_i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch-docs", type=int, default=2_000)
    parser.add_argument("--spec", default="KMeansr4")
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--ceiling-queries", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import faiss
    import numba

    from indexes import load_index
    from indexes.build import build_multivector_from_batches

    faiss.omp_set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    root = Path(os.environ.get("DENSEZIP_CACHE", Path.home() / ".cache" / "densezip"))
    cache = root / "bench" / f"late-interaction-{args.docs}"
    cache.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(args.docs, args.batch_docs, args.queries)
    queries = corpus.queries()
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))

    path = cache / f"index-{args.spec}"
    if (path / "manifest.json").is_file():
        index = load_index(path)
    else:
        corpus.generate_s = 0.0
        t0 = time.perf_counter()
        index = build_multivector_from_batches(corpus.batches(), dim=DIM, spec=args.spec, spill_dir=cache)
        total = time.perf_counter() - t0
        record({"step": "build", "spec": index.spec, "vectors": index.num_vectors, "build_s": total - corpus.generate_s,
                "generate_s": corpus.generate_s, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "bytes_per_token": (index.memory_bytes() - index.ids_memory_bytes()) / index.num_vectors})
        index.save(path, overwrite=True)
    truth = _truth(corpus, queries, cache / f"exact-top10-{args.queries}.npy")
    # documents are numbered in stream order, as the index rows are: truth and labels compare as they are
    t1 = time.perf_counter()
    index.plaid_engine()
    record({"step": "engine lists", "s": time.perf_counter() - t1,
            "bytes_per_token": (index.memory_bytes() - index.ids_memory_bytes()) / index.num_vectors})
    for params in ({}, {"ndocs": 512}, {"ndocs": 1024}, {"nprobe": 2}):
        res = _measure(_searcher(index, "plaid", params or None), queries, truth,
                       n_lat=args.latency_queries, n_qps=min(64, len(queries)))
        record({"step": "search", "spec": index.spec, "params": params or "defaults", "threads": args.threads, **res})
    if args.ceiling_queries:
        sub = queries.select(np.arange(args.ceiling_queries))
        for stage in ("exhaustive", "plaid"):
            t0 = time.perf_counter()
            labels = _searcher(index, stage)(sub)
            record({"step": "ceiling" if stage == "exhaustive" else "plaid on the ceiling queries",
                    "queries": args.ceiling_queries, "recall@10": _recall(labels, truth[: args.ceiling_queries]),
                    "s_per_query": (time.perf_counter() - t0) / args.ceiling_queries})


if __name__ == "__main__":
    main()

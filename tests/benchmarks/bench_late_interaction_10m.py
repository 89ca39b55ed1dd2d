"""Late interaction at 10M synthetic token vectors: a streamed, bounded-memory build and the PLAID engine.

Run:  .venv/bin/python tests/benchmarks/bench_late_interaction_10m.py [--docs 100000] [--spec KMeansr4]
      [--threads 2] [--json out.json]
      .venv/bin/python tests/benchmarks/bench_late_interaction_10m.py --binary BinaryITQ [--kinds ivf hnsw]
      [--probe-docs 10000] [--ivf-grid 32:16,...] [--threads 2] [--json out.json]
      .venv/bin/python tests/benchmarks/bench_late_interaction_10m.py --fast-plaid [--fast-plaid-specs KMeansr4
      KMeansr8] [--fast-plaid-grid 8:4096,...] [--rounds 3] [--threads 2] [--json out.json]

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

``--binary SPEC`` measures the binary path instead (``first_stage="binary"``, the engine of
``bench_late_interaction.py --binary``, whose helpers this script imports). Step 1 builds
the ``SPEC`` codes (e.g. ``BinaryITQ``) from the same stream, then their IVF token index
(timed on its own: build seconds and peak RSS after it, bytes per token beside the codes),
and saves both (cached as ``index-SPEC-binary``; a later run reads the token index back).
Step 3 sweeps ``token_k`` / ``nprobe`` (``--ivf-grid``) and, with ``--kinds hnsw``, an HNSW
token index built over all codes (``--hnsw-grid``; not cached). ``--probe-docs N`` instead
only times building the ``--kinds`` token indexes other than IVF over the first N documents'
codes, to size a full build. The codes' ceiling is table MaxSim over every document
(``token_k`` = every vector), next to the IVF defaults (or the ``--ceiling-ivf`` settings) on
the same queries. ``--token-index-threads N`` builds the token indexes with FAISS at N threads:
on 2 cores shared with other jobs, FAISS's binary IVF add at 2 threads stalled in OpenMP
barriers (over 5 minutes for 10M codes, unfinished, against 39 s at 1 thread).

``--fast-plaid`` puts our cached indexes (``--fast-plaid-specs``, built from the stream when
missing, searched at their defaults) next to fast-plaid over the same 10M vectors, queries and
truth, interleaved, as ``bench_late_interaction.py --fast-plaid`` does at 1M (same worker, same
matching). fast-plaid's ``create`` takes every document as a tensor, so the stream is written
once to a 5.1 GB .npy beside the cache (deleted after the build). Its index keeps all its
defaults (K = 32,768 from the token count, nbits 4, k-means on a sample of
``1 + 16 * sqrt(120 * n_docs)`` documents, 4 iterations, at most 256 points per centroid) with one
change: that k-means runs in FAISS here (same sample rule, K, iterations and cap, random
initialisation, normalised as its own), because its CPU k-means (fastkmeans in torch) measured
about 60 GFLOP/s on these 2 cores, about 55 minutes at 10M, on top of its ``create``, whose
nearest-centroid step is a half-precision matmul in torch's CPU fallback (about 17 GFLOP/s
here: 23 minutes for each of the four 25,000-document chunks at 10M). The FAISS k-means time
is recorded beside its build time.
"""

from __future__ import annotations

import os
import sys

_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "2"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _THREADS

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_late_interaction import (  # noqa: E402
    DIM,
    DOC_LEN,
    FAST_PLAID_GRID,
    N_TOPICS,
    N_WORDS,
    Q_LEN,
    TOPIC_WORDS,
    _binary_searcher,
    _binary_sweep,
    _fast_plaid_index,
    _measure,
    _Ours,
    _recall,
    _searcher,
    _token_engine,
    compare_with_fast_plaid,
)


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


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _bytes_per_token(index: Any) -> float:
    """The index in memory less its ids, per stored vector (codes, offsets, codec, built engines)."""
    return (index.memory_bytes() - index.ids_memory_bytes()) / index.num_vectors


@contextlib.contextmanager
def _faiss_threads(n: int | None) -> Iterator[int]:
    """FAISS at ``n`` OpenMP threads inside (None: unchanged); yields the count in force."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n or before)
    try:
        yield n or before
    finally:
        faiss.omp_set_num_threads(before)


def _cached(corpus: Corpus, cache: Path, name: str, record: Any, token_threads: int | None = None,
            **options: Any) -> Any:
    """The index cached as ``index-NAME``, or built from the stream (recorded) and saved there. A binary
    index's token index is built before the save (which writes it), timed on its own, with FAISS at
    ``token_threads`` threads (default: as set)."""
    from indexes import load_index
    from indexes.build import build_multivector_from_batches

    path = cache / f"index-{name}"
    if (path / "manifest.json").is_file():
        t0 = time.perf_counter()
        index = load_index(path)
        record({"step": "load", "index": name, "s": time.perf_counter() - t0})
        return index
    corpus.generate_s = 0.0
    t0 = time.perf_counter()
    index = build_multivector_from_batches(corpus.batches(), dim=DIM, spill_dir=cache, **options)
    total = time.perf_counter() - t0
    record({"step": "build", "spec": index.spec, "first_stage": index.first_stage, "vectors": index.num_vectors,
            "build_s": total - corpus.generate_s, "generate_s": corpus.generate_s, "peak_rss_gb": _peak_rss_gb(),
            "bytes_per_token": _bytes_per_token(index)})
    if index.first_stage == "binary":
        with _faiss_threads(token_threads) as threads:
            t0 = time.perf_counter()
            engine = index.binary_engine()
        record({"step": "token index", "kind": engine.kind, "s": time.perf_counter() - t0, "faiss_threads": threads,
                "peak_rss_gb": _peak_rss_gb(), "engine_bytes_per_token": engine.memory_bytes() / index.num_vectors})
    t0 = time.perf_counter()
    index.save(path, overwrite=True)
    record({"step": "save", "index": name, "s": time.perf_counter() - t0})
    return index


def _pairs(text: str, kind: str, second: str) -> list[tuple[str, dict[str, Any]]]:
    """``"16:8,32:16"`` as ``[(kind, {"token_k": 16, second: 8}), ...]``."""
    try:
        return [(kind, dict(zip(("token_k", second), (int(x) for x in item.split(":")), strict=True)))
                for item in text.split(",") if item]
    except ValueError as exc:
        raise SystemExit(f"--{kind}-grid takes token_k:{second} pairs separated by commas, e.g. 32:16; "
                         f"got {text!r}") from exc


def _binary(args: Any, corpus: Corpus, queries: Any, cache: Path, record: Any) -> None:
    """The binary path over the streamed codes: IVF token index (saved with them), other kinds, sweep, ceiling."""
    spec = args.binary
    index = _cached(corpus, cache, f"{spec}-binary", record, args.token_index_threads, spec=spec,
                    first_stage="binary", binary_index="ivf")
    truth = _truth(corpus, queries, cache / f"exact-top10-{args.queries}.npy")
    engines = {"ivf": index.binary_engine()}  # read back from the save, or the one just built
    record({"step": "memory", "spec": index.spec, "vectors": index.num_vectors, "nlist": int(engines["ivf"].index.nlist),
            "codes_bytes_per_token": index._codes.shape[1], "bytes_per_token_with_ivf": _bytes_per_token(index)})
    for kind in (k for k in args.kinds if k != "ivf"):
        with _faiss_threads(args.token_index_threads):
            engine = _token_engine(index, kind, spec, record, docs=args.probe_docs)
        if args.probe_docs is None:
            engines[kind] = engine
    grid = _pairs(args.ivf_grid, "ivf", "nprobe") + _pairs(args.hnsw_grid, "hnsw", "ef_search")
    _binary_sweep(index, engines, grid, queries, truth, args.latency_queries, args.threads, spec, record)
    if args.ceiling_queries:
        sub = queries.select(np.arange(args.ceiling_queries))
        own = {"token_k": index.binary_params.token_k, "nprobe": index.binary_params.nprobe}
        compare = [(f"ivf {p} on the ceiling queries", p) for _, p in _pairs(args.ceiling_ivf, "ivf", "nprobe")]
        for label, params in [("ceiling: table MaxSim over every document", {"token_k": index.num_vectors}),
                              *(compare or [(f"ivf {own} (the defaults) on the ceiling queries", own)])]:
            t0 = time.perf_counter()
            labels = _binary_searcher(index, engines["ivf"], params)(sub)
            record({"step": label, "queries": args.ceiling_queries, "threads": args.threads,
                    "recall@10": _recall(labels, truth[: args.ceiling_queries]),
                    "s_per_query": (time.perf_counter() - t0) / args.ceiling_queries})


def fast_plaid_kmeans_size(n_docs: int) -> tuple[int, int]:
    """(documents in its k-means sample, K) by fast-plaid's rule for ``n_docs`` documents of DOC_LEN vectors."""
    return min(1 + int(16 * np.sqrt(120 * n_docs)), n_docs), 2 ** int(np.floor(np.log2(16 * np.sqrt(n_docs * DOC_LEN))))


def _fast_plaid_centroids(n_docs: int, seed: int = 42) -> Any:
    """fast-plaid's k-means at its defaults, run in FAISS: ``train(docs_path, out_path)`` saves the normalised
    centroids and returns what it did (see the module docstring)."""

    def train(docs_path: Path, out_path: Path) -> dict[str, Any]:
        import faiss

        t0 = time.perf_counter()
        vectors = np.load(docs_path, mmap_mode="r")
        n_sample, k = fast_plaid_kmeans_size(n_docs)
        picked = np.sort(np.random.default_rng(seed).choice(n_docs, n_sample, replace=False))
        sample = np.ascontiguousarray(vectors[(picked[:, None] * DOC_LEN + np.arange(DOC_LEN)).reshape(-1)])
        kmeans = faiss.Kmeans(DIM, k, niter=4, seed=seed, max_points_per_centroid=256)
        kmeans.train(sample)
        centroids = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)
        np.save(out_path, centroids.astype(np.float32))
        return {"by": f"faiss {faiss.__version__} Kmeans", "k": k, "sample_docs": n_sample,
                "sample_vectors": int(sample.shape[0]), "niter": 4, "s": time.perf_counter() - t0}

    return train


def _write_stream(corpus: Corpus, path: Path) -> None:
    """Every batch of the stream into one (n_docs * DOC_LEN, DIM) float32 .npy, a batch at a time."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(corpus.n_docs * DOC_LEN, DIM))
    for b, docs in enumerate(corpus.batches()):
        start = b * corpus.batch_docs * DOC_LEN
        out[start : start + len(docs.vectors)] = docs.vectors
    out.flush()
    del out


def _side_by_side(args: Any, corpus: Corpus, queries: Any, cache: Path, record: Any) -> None:
    """Our cached indexes at their defaults and fast-plaid, interleaved, on the 10M stream (module docstring)."""
    truth = _truth(corpus, queries, cache / f"exact-top10-{args.queries}.npy")
    ours: dict[str, Any] = {}
    for spec in [] if args.build_only else args.fast_plaid_specs:
        index = _cached(corpus, cache, spec, record, spec=spec)
        index.plaid_engine()
        ours[f"ours {spec} {vars(index.plaid_params)}"] = _Ours(_searcher(index, "plaid"), queries)
    compare_with_fast_plaid(args, ours, queries, truth, cache, record,
                            lambda worker: _fast_plaid_index(worker, lambda path: _write_stream(corpus, path), cache,
                                                             args.threads, _fast_plaid_centroids(corpus.n_docs)))


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
    parser.add_argument("--binary", default=None, metavar="SPEC",
                        help="measure the binary path over SPEC codes (e.g. BinaryITQ) instead of the PLAID engine")
    parser.add_argument("--kinds", nargs="+", default=["ivf"], choices=("ivf", "hnsw", "flat"),
                        help="binary: token indexes (IVF is always built, saved with the index)")
    parser.add_argument("--probe-docs", type=int, default=None, metavar="N",
                        help="binary: only time building the non-IVF --kinds over the first N documents' codes")
    parser.add_argument("--token-index-threads", type=int, default=None, metavar="N",
                        help="binary: FAISS threads for building token indexes (default --threads); 2 threads "
                             "on 2 shared cores can stall in OpenMP barriers")
    parser.add_argument("--ivf-grid", default="16:8,32:8,32:16,32:32,64:16,64:32,128:32",
                        help="binary: token_k:nprobe settings of the IVF sweep")
    parser.add_argument("--ceiling-ivf", default="", metavar="GRID",
                        help="binary: token_k:nprobe settings run on the ceiling queries (default: the index's own)")
    parser.add_argument("--hnsw-grid", default="16:64,32:64,32:128,64:128",
                        help="binary: token_k:ef_search settings of the HNSW sweep (with --kinds hnsw)")
    parser.add_argument("--fast-plaid", action="store_true",
                        help="our cached indexes against fast-plaid (own throw-away environment), interleaved")
    parser.add_argument("--fast-plaid-specs", nargs="+", default=["KMeansr4", "KMeansr8"],
                        help="--fast-plaid: our indexes to compare (cached as index-SPEC)")
    parser.add_argument("--fast-plaid-grid", default=FAST_PLAID_GRID, help="n_ivf_probe:n_full_scores,...")
    parser.add_argument("--rounds", type=int, default=3, help="--fast-plaid: interleaved rounds per setting")
    parser.add_argument("--qps-queries", type=int, default=64, help="--fast-plaid: queries per batch-32 pass")
    parser.add_argument("--build-only", action="store_true", help="--fast-plaid: build fast-plaid's index and stop")
    args = parser.parse_args()

    import faiss
    import numba

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

    if args.binary:
        _binary(args, corpus, queries, cache, record)
        return
    if args.fast_plaid:
        _side_by_side(args, corpus, queries, cache, record)
        return
    index = _cached(corpus, cache, args.spec, record, spec=args.spec)
    truth = _truth(corpus, queries, cache / f"exact-top10-{args.queries}.npy")
    # documents are numbered in stream order, as the index rows are: truth and labels compare as they are
    t1 = time.perf_counter()
    index.plaid_engine()
    record({"step": "engine lists", "s": time.perf_counter() - t1, "bytes_per_token": _bytes_per_token(index)})
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

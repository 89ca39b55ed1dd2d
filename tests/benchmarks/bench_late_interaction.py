"""Late interaction at 1M synthetic token vectors: the PLAID engine against the older first stages.

Run:  .venv/bin/python tests/benchmarks/bench_late_interaction.py [--spec KMeans4096r4 ...] [--threads 2]
      [--sweep] [--json out.json]
      .venv/bin/python tests/benchmarks/bench_late_interaction.py --binary BinaryITQ [--threads 2] [--json out.json]
      .venv/bin/python tests/benchmarks/bench_late_interaction.py --fast-plaid [--spec ...] [--threads 2] [--rounds 3]
      [--fast-plaid-grid 8:4096,2:256] [--json out.json]

Data (seeded, cached under $DENSEZIP_CACHE/bench or ~/.cache/densezip/bench): 10,000 documents
x 100 token vectors x 128-d from a Gaussian mixture with topics. 32,768 "word" directions;
200 topics of 300 words each; a document picks a topic and draws each token's word from it
(80%) or from all words (20%), then adds Gaussian noise (norm ~0.5) and L2-normalises.
A query is 32 tokens of one document, each perturbed again (noise norm ~0.5) and normalised.
Ground truth: exact float32 MaxSim over the uncompressed vectors (top 10).

Measured at ``--threads`` threads (BLAS, FAISS, Numba; default 2), engine after engine in one run:
recall@10 against exact float MaxSim over all queries (batch 32), p50 / p95 latency at
batch 1, queries per second at batch 32; the old default (``first_stage="exhaustive"``: every
code decoded) and the centroid lists (``"centroid"``) next to the PLAID engine, a sweep of
its ``nprobe`` / ``centroid_score_threshold`` / ``ndocs``, and a per-stage time breakdown of
one batch-1 search next to each stage's arithmetic floor.

``--binary SPEC`` measures the binary path instead (``first_stage="binary"``, codes cached as
``index-SPEC``): the old flat Hamming scan with decoded MaxSim (``token_k`` 64, replayed here
from public pieces) next to the binary engine over a flat scan, IVF and HNSW token indexes,
swept over ``token_k`` / ``nprobe`` / ``ef_search``, one configuration after another in one run.
``--kinds`` limits the token indexes, ``--skip-old`` drops the old path and the ceiling rows.
For each token index kind it also times a load: the cached index saved without a token index
(rebuilt on its first search) against the same index saved with it (read back), load plus
first search. ``--kernel-baseline REV`` adds the table kernel of git revision REV
(``indexes/_binary_kernels.py`` there, fed the layout it expects), interleaved with the current
one: the kernel alone on the same candidates, and whole searches, at the loaded index's own
settings (those saved in the cache).

``--fast-plaid`` puts our engine (defaults, and ``ndocs`` 128 / 1024 for the first spec) next to
fast-plaid (PyPI ``fast-plaid``) on the same vectors, queries and truth. fast-plaid pins an older
torch than ours, so it is installed once into its own throw-away environment beside the cache
(``fast-plaid-venv``; never into ours) and runs in a child process of it (``fast_plaid_worker.py``,
JSON lines over a pipe). When it cannot be installed the script says why and measures ours alone.
Its index is built at its defaults and cached. Both engines run at ``--threads``, interleaved
setting by setting, and each of our settings is matched to fast-plaid's fastest at its recall.
"""

from __future__ import annotations

import os
import sys

# BLAS reads its thread count when NumPy loads: take --threads from the command line first.
_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "2"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _THREADS

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

N_DOCS, DOC_LEN, DIM, Q_LEN = 10_000, 100, 128, 32
N_WORDS, N_TOPICS, TOPIC_WORDS = 32_768, 200, 300


def synthetic(seed: int = 0, n_docs: int = N_DOCS, n_queries: int = 128) -> tuple[Any, Any, Any]:
    """(documents, queries, source document of each query) as MultiVectorEmbeddings / int array."""
    from retrieval.types import MultiVectorEmbeddings

    rng = np.random.default_rng(seed)
    words = rng.standard_normal((N_WORDS, DIM)).astype(np.float32)
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    topics = np.stack([rng.choice(N_WORDS, TOPIC_WORDS, replace=False) for _ in range(N_TOPICS)])
    doc_topic = rng.integers(0, N_TOPICS, n_docs)
    from_topic = rng.random((n_docs, DOC_LEN)) < 0.8
    word_ids = np.where(from_topic, topics[doc_topic[:, None], rng.integers(0, TOPIC_WORDS, (n_docs, DOC_LEN))],
                        rng.integers(0, N_WORDS, (n_docs, DOC_LEN))).reshape(-1)
    vectors = np.empty((n_docs * DOC_LEN, DIM), np.float32)
    for s in range(0, vectors.shape[0], 1 << 18):  # in slices: the noise never exists at full size in float64
        e = min(s + (1 << 18), vectors.shape[0])
        x = words[word_ids[s:e]] + (0.5 / np.sqrt(DIM)) * rng.standard_normal((e - s, DIM), dtype=np.float32)
        vectors[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    offsets = np.arange(n_docs + 1, dtype=np.int64) * DOC_LEN
    docs = MultiVectorEmbeddings(vectors, offsets, [f"d{i}" for i in range(n_docs)])
    source = rng.choice(n_docs, n_queries, replace=False)
    picks = np.stack([d * DOC_LEN + rng.choice(DOC_LEN, Q_LEN, replace=False) for d in source]).reshape(-1)
    q = vectors[picks] + (0.5 / np.sqrt(DIM)) * rng.standard_normal((picks.size, DIM), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    queries = MultiVectorEmbeddings(q, np.arange(n_queries + 1, dtype=np.int64) * Q_LEN,
                                    [f"q{i}" for i in range(n_queries)])
    return docs, queries, source


def _cache_dir() -> Path:
    root = Path(os.environ.get("DENSEZIP_CACHE", Path.home() / ".cache" / "densezip"))
    out = root / "bench" / "late-interaction-1m"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _exact_top10(docs: Any, queries: Any, cache: Path) -> np.ndarray:
    from retrieval.rerank import maxsim_csr
    from retrieval.scores import top_k

    path = cache / f"exact-top10-{len(queries)}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    out = np.concatenate([top_k(maxsim_csr(queries.select(np.arange(s, min(s + 32, len(queries)))), docs), 10)[1]
                          for s in range(0, len(queries), 32)])
    print(f"exact float MaxSim ground truth: {time.perf_counter() - t0:.1f} s", flush=True)
    np.save(path, out)
    return out


def _index(spec: str, docs: Any, cache: Path, **options: Any) -> tuple[Any, float | None]:
    from indexes import MultiVectorIndex, load_index

    path = cache / f"index-{spec}"
    if (path / "manifest.json").is_file():
        return load_index(path), None
    t0 = time.perf_counter()
    index = MultiVectorIndex(DIM, spec=spec, **options).add(docs)
    build_s = time.perf_counter() - t0
    print(f"built {spec} in {build_s:.0f} s", flush=True)
    index.save(path, overwrite=True)
    return index, build_s


def _recall(labels: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / 10 for a, b in zip(labels, truth,
                                                                                           strict=True)]))


class _Ours:
    """One configuration of our engine, measured in this process (the same three passes as fast-plaid's worker)."""

    def __init__(self, search: Any, queries: Any) -> None:
        self.search, self.queries = search, queries

    def labels(self) -> np.ndarray:
        n = len(self.queries)
        return np.concatenate([self.search(self.queries.select(np.arange(s, min(s + 32, n)))) for s in range(0, n, 32)])

    def latency(self, n: int) -> list[float]:
        out = []
        for i in range(n):
            one = self.queries.select([i])
            t0 = time.perf_counter()
            self.search(one)
            out.append(1000 * (time.perf_counter() - t0))
        return out

    def rate(self, n: int) -> float:
        t0 = time.perf_counter()
        for s in range(0, n, 32):
            self.search(self.queries.select(np.arange(s, min(s + 32, n))))
        return n / (time.perf_counter() - t0)


def _summary(labels: np.ndarray, truth: np.ndarray, lat: list[float], rates: list[float]) -> dict[str, float]:
    return {"recall@10": _recall(labels, truth), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "qps_b32": float(np.median(rates)) if rates else float("nan")}


def _measure(search: Any, queries: Any, truth: np.ndarray, *, n_lat: int, n_qps: int) -> dict[str, float]:
    """recall@10 (all queries, batch 32), p50 / p95 at batch 1, QPS at batch 32 (median of 3 passes)."""
    runner = _Ours(search, queries)
    labels, lat = runner.labels(), runner.latency(n_lat)
    return _summary(labels, truth, lat, [runner.rate(n_qps) for _ in range(3 if n_qps >= 32 else 0)])


def _searcher(index: Any, first_stage: str, params: dict[str, Any] | None = None) -> Any:
    def search(q: Any) -> np.ndarray:
        saved = index.first_stage
        index.first_stage = first_stage  # one loaded index serves every engine: same codes, same memory
        try:
            return index.search(q, k=10, params=params).labels
        finally:
            index.first_stage = saved

    return search


def _floors(index: Any, params: Any, queries: Any, n: int) -> dict[str, Any]:
    """Per-stage milliseconds of batch-1 searches (mean), the work of each stage, and its floor:
    the work at this machine's measured matmul rate (flop) or memory copy rate (bytes)."""
    engine = index.plaid_engine()
    totals: dict[str, float] = {}
    cands = []
    for i in range(n):
        one = queries.select([i])
        engine.search(one.vectors, one.offsets, 10, params, timings=totals)
        cands.append(engine.candidates(one.vectors, one.offsets, params.nprobe)[0].size)
    per_stage = {name: 1000 * s / n for name, s in totals.items()}
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    t0 = time.perf_counter()
    _ = a @ a
    gflops = 2 * 2048**3 / (time.perf_counter() - t0) / 1e9
    src, dst = np.ones(1 << 26, np.uint8), np.zeros(1 << 26, np.uint8)  # both touched: no page faults timed
    t0 = time.perf_counter()
    for _ in range(4):
        np.copyto(dst, src)
    gbps = 4 * 2 * src.nbytes / (time.perf_counter() - t0) / 1e9  # bytes read + written
    k, cents = engine.codec.k, engine.doc_cents.size / max(engine.n_docs, 1)
    n_cands = float(np.mean(cands))
    ndocs, n_exact = params.budget(10)
    exact_vectors = min(n_cands, n_exact) * DOC_LEN
    table = engine.table if engine.nibble_table is None else engine.nibble_table
    work = {  # (amount, unit): what each stage must at least touch or compute
        "stage1_matmul": (2 * Q_LEN * k * DIM, "flop"),
        # the scores scanned once (best centroids, pruning), then the probed lists
        "stage1_candidates": (4 * Q_LEN * k + 4 * Q_LEN * params.nprobe * engine.list_docs.size / k + engine.n_docs,
                              "byte"),
        "stage2_pruned": (n_cands * cents * 2, "byte"),  # every candidate's centroid ids, once
        "stage3_full_interaction": (min(n_cands, ndocs) * cents * (2 + 4 * Q_LEN), "byte"),
        # one addition per query vector for the centroid score and each table row of a stored vector
        "stage4_tables": (exact_vectors * (1 + table.shape[0]) * Q_LEN, "flop"),
        "stage4_as_blas": (2 * exact_vectors * DIM * Q_LEN, "flop"),  # the same scores as one BLAS product
    }
    floor = {name: 1000 * w / (gflops if unit == "flop" else gbps) / 1e9 for name, (w, unit) in work.items()}
    return {"ms": per_stage, "floor_ms": floor, "work": {name: w for name, (w, _) in work.items()},
            "gflops": gflops, "gbps": gbps, "candidates": n_cands, "distinct_centroids_per_doc": cents}


def _old_flat_binary(index: Any, flat: Any, token_k: int = 64) -> Any:
    """The binary first stage before the engine: a FAISS flat Hamming scan of every code per query,
    then exact MaxSim over the decoded codes of the documents hit (one query at a time)."""
    from retrieval.scores import top_k

    def search(q: Any) -> np.ndarray:
        out = np.full((len(q), 10), -1, np.int64)
        for qi in range(len(q)):
            one = q.select([qi])
            _, hits = flat.search(index.hamming.encode(one.vectors), token_k)
            rows = np.unique(np.searchsorted(index._offsets, hits[hits >= 0], side="right") - 1)
            _, local = top_k(index.score(one, rows), 10)
            out[qi] = np.where(local[0] >= 0, rows[np.maximum(local[0], 0)], -1)
        return out

    return search


def _binary_searcher(index: Any, engine: Any, params: dict[str, Any]) -> Any:
    def search(q: Any) -> np.ndarray:
        index._binary = engine  # one loaded index, one engine per token index kind
        return index.search(q, k=10, params=params).labels

    return search


class _BaselineKernels:
    """The table kernel of another git revision, fed the unpadded (code_size, 256, Lq) blocks it reads."""

    def __init__(self, rev: str) -> None:
        import subprocess
        import types

        root = Path(__file__).resolve().parents[2]
        src = subprocess.run(["git", "show", f"{rev}:indexes/_binary_kernels.py"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.replace("cache=True", "cache=False")
        self.module = types.ModuleType(f"binary_kernels_{rev}")
        exec(compile(src, f"{rev}:indexes/_binary_kernels.py", "exec"), self.module.__dict__)

    def lut_maxsim(self, tables: Any, const: Any, q_offsets: Any, *rest: Any) -> Any:
        lengths = np.diff(q_offsets)
        blocks = tables.reshape(len(lengths), rest[2].shape[1], 256, -1)
        flat = np.concatenate([blocks[q, :, :, : lengths[q]].reshape(-1) for q in range(len(lengths))])
        return self.module.lut_maxsim(flat, const, q_offsets, *rest)


def _kernel_ab(index: Any, engine: Any, queries: Any, baseline: _BaselineKernels, record: Any, spec: str,
               threads: int) -> None:
    """The table kernel alone, current against ``baseline``, on the same candidates (the index's own settings)."""
    from indexes.binary_ann import lookup_tables, per_query_tables

    params = index.binary_params
    for batch in (1, 32):
        cur_ms: list[float] = []
        old_ms: list[float] = []
        vectors, diff = 0, 0.0
        for s in range(0, 32 if batch == 1 else 64, batch):
            q = queries.select(np.arange(s, s + batch))
            qv, q_off = np.ascontiguousarray(q.vectors, np.float32), q.offsets
            c_off, c_docs = engine.candidates(qv, q_off, params)
            table, const = lookup_tables(engine.quantizer, qv)
            padded = per_query_tables(table, q_off)
            vectors += int(engine.lengths[c_docs].sum())
            got = {}
            if s == 0 and batch == 1:  # compile / load from the cache outside the timings
                for kernels in (engine._kernels, baseline):
                    kernels.lut_maxsim(padded, const, q_off, c_off, c_docs, engine.codes, engine.offsets)
            for name, kernels, out in (("now", engine._kernels, cur_ms), ("old", baseline, old_ms)) * 2:
                t0 = time.perf_counter()
                got[name] = kernels.lut_maxsim(padded, const, q_off, c_off, c_docs, engine.codes, engine.offsets)
                out.append(1000 * (time.perf_counter() - t0))
            diff = max(diff, float(np.abs(got["now"] - got["old"]).max(initial=0.0)))
        n_q = 32 if batch == 1 else 64
        record({"spec": spec, "engine": f"table kernel alone, batch {batch}", "threads": threads,
                "current_ms_per_query": float(np.sum(cur_ms)) / 2 / n_q, "baseline_ms_per_query": float(np.sum(old_ms)) / 2 / n_q,
                "doc_vectors_per_query": vectors / n_q, "max_abs_diff": diff})
        print(f"table kernel, batch {batch}: {np.sum(cur_ms) / 2 / n_q:.2f} ms/query now, "
              f"{np.sum(old_ms) / 2 / n_q:.2f} ms/query at the baseline ({vectors / n_q:.0f} document vectors "
              f"per query; max |diff| {diff:.2g})", flush=True)


def _load_times(index: Any, engine: Any, kind: str, cache: Path, spec: str, record: Any) -> None:
    """Load + first search of the cached index saved without a token index (rebuild) and with one (read)."""
    import shutil

    from indexes import load_index

    with_file = cache / f"index-{spec}-{kind}-token-index"
    index.binary_index, index._binary = kind, engine
    t0 = time.perf_counter()
    index.save(with_file, overwrite=True)  # writes the token index built above
    save_s = time.perf_counter() - t0
    times = {}
    for label, path in (("rebuilt", cache / f"index-{spec}"), ("read back", with_file)):
        t0 = time.perf_counter()
        loaded = load_index(path)
        loaded.binary_index = kind
        load_s = time.perf_counter() - t0
        loaded.binary_engine()
        one = time.perf_counter() - t0
        times[label] = (load_s, one)
    record({"spec": spec, "engine": f"load {kind}", "save_with_token_index_s": save_s,
            "rebuilt_load_s": times["rebuilt"][0], "rebuilt_ready_s": times["rebuilt"][1],
            "read_load_s": times["read back"][0], "read_ready_s": times["read back"][1],
            "token_index_bytes": (with_file / "binary.token_index.npy").stat().st_size})
    print(f"{spec} {kind}: load + token index ready: {times['rebuilt'][1]:.2f} s rebuilt, {times['read back'][1]:.2f} s "
          f"read back (save with it {save_s:.1f} s)", flush=True)
    shutil.rmtree(with_file, ignore_errors=True)
    index.binary_index, index._binary = "ivf", None


def _token_engine(index: Any, kind: str, spec: str, record: Any, *, build_s: float | None = None,
                  docs: int | None = None) -> Any:
    """A binary token index of ``kind`` over the sign codes of the index's first ``docs`` documents
    (default all), built from scratch, timed and recorded."""
    from indexes.binary_ann import BinaryEngine

    codes = index._codes if index.hamming is index.codec else index._hamming_codes
    offsets = index._offsets[: (len(index) if docs is None else min(docs, len(index))) + 1]
    codes = codes[: int(offsets[-1])]
    t0 = time.perf_counter()
    engine = BinaryEngine(index.hamming, codes, offsets, kind, seed=0)
    engine_s = time.perf_counter() - t0
    per_token = engine.memory_bytes() / max(engine.n_vectors, 1)
    record({"spec": spec, "engine": f"build {kind}", "build_s": build_s, "engine_s": engine_s,
            "vectors": engine.n_vectors, "engine_bytes_per_token": per_token, "codes_bytes_per_token": codes.shape[1]})
    print(f"{spec}: {kind} token index over {engine.n_vectors} vectors built in {engine_s:.1f} s, "
          f"{per_token:.1f} B/token beside the codes", flush=True)
    return engine


def _binary_sweep(index: Any, engines: dict[str, Any], grid: list[tuple[str, dict[str, Any]]], queries: Any,
                  truth: np.ndarray, n_lat: int, threads: int, spec: str, record: Any) -> None:
    """One measured row per (token index kind, params) of ``grid`` whose kind is in ``engines``."""
    for kind, params in [(k, p) for k, p in grid if k in engines]:
        res = _measure(_binary_searcher(index, engines[kind], params), queries, truth, n_lat=n_lat,
                       n_qps=min(64, len(queries)))
        record({"spec": spec, "engine": f"binary {kind} {params}", "kind": kind, "threads": threads, **params,
                **res})


def _binary_rows(spec: str, docs: Any, queries: Any, truth: np.ndarray, cache: Path, args: Any, record: Any) -> None:
    index, build_s = _index(spec, docs, cache, first_stage="binary")
    engines = {kind: _token_engine(index, kind, spec, record, build_s=build_s) for kind in args.kinds}
    n_lat = args.latency_queries
    for kind in args.kinds:
        _load_times(index, engines[kind], kind, cache, spec, record)
    if args.kernel_baseline and "ivf" in engines:
        baseline = _BaselineKernels(args.kernel_baseline)
        _kernel_ab(index, engines["ivf"], queries, baseline, record, spec, args.threads)
        current = engines["ivf"]._kernels
        for label, kernels in (("current", current), ("baseline", baseline)) * 2:  # interleaved, twice
            engines["ivf"]._kernels = kernels
            res = _measure(_binary_searcher(index, engines["ivf"], {}), queries, truth, n_lat=n_lat, n_qps=64)
            own = {"token_k": index.binary_params.token_k, "nprobe": index.binary_params.nprobe}
            record({"spec": spec, "engine": f"binary ivf {own} (the index's own), {label} table kernel",
                    "threads": args.threads, **res})
        engines["ivf"]._kernels = current
    if not args.skip_old and "flat" in engines:
        res = _measure(_old_flat_binary(index, engines["flat"].index), queries, truth, n_lat=min(n_lat, 5), n_qps=32)
        record({"spec": spec, "engine": "old flat scan + decoded MaxSim, token_k=64", "threads": args.threads, **res})
        res = _measure(_binary_searcher(index, engines["flat"], {"token_k": index.num_vectors}), queries, truth,
                       n_lat=2, n_qps=0)
        record({"spec": spec, "engine": "table MaxSim over every document (the codes' ceiling)",
                "threads": args.threads, **res})
    grid: list[tuple[str, dict[str, Any]]] = [("flat", {"token_k": t}) for t in (16, 64)]
    grid += [("ivf", {"token_k": t, "nprobe": p}) for t in (16, 32, 64) for p in (2, 4, 8, 16)]
    grid += [("hnsw", {"token_k": t, "ef_search": e}) for t in (16, 32, 64) for e in (32, 64, 128)]
    _binary_sweep(index, engines, grid, queries, truth, n_lat, args.threads, spec, record)


FAST_PLAID = "fast-plaid==1.7.0.2110"  # pins torch==2.11.0 (ours is newer): it gets a virtual environment of its own
FAST_PLAID_GRID = "8:4096,4:1024,2:256,1:64"  # n_ivf_probe:n_full_scores; 8:4096 are its defaults


def _fast_plaid_python(cache: Path) -> Path | None:
    """The Python of fast-plaid's throw-away environment beside the bench cache, created on first use;
    None (with the reason printed) when it cannot be installed. Never touches this process's environment."""
    venv = cache.parent / "fast-plaid-venv"
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import fast_plaid"], capture_output=True,
                                           check=False).returncode == 0:
        return python
    tmp = venv.with_name(venv.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"installing {FAST_PLAID} and its torch into {venv} (several GB, once; pip's output follows)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, timeout=600)
        subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", FAST_PLAID],
                       check=True, timeout=3600)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"fast-plaid rows skipped: {FAST_PLAID} could not be installed into its own environment ({exc}). "
              "pip's output above says why (no package registry reachable, no wheel for this platform or "
              "Python, disk full); our engine's rows follow anyway.", flush=True)
        return None
    shutil.rmtree(venv, ignore_errors=True)
    tmp.rename(venv)
    return python


class _FastPlaidWorker:
    """fast_plaid_worker.py in fast-plaid's environment, one JSON request and answer per line."""

    def __init__(self, python: Path, threads: int) -> None:
        script = Path(__file__).with_name("fast_plaid_worker.py")
        self.proc = subprocess.Popen([str(python), str(script), "--threads", str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._answer()

    def _answer(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"the fast-plaid worker exited (status {self.proc.wait()}); its stderr above says why")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fast-plaid worker: {reply['error']}")
        return reply

    def call(self, op: str, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **request}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


class _FastPlaid:
    """One fast-plaid setting, measured by the worker: the same three passes as ``_Ours``. Batch 1 runs in
    one job; batch 32 in ``processes`` joblib threads (fast-plaid's own CPU batch parallelism: one call of 32
    queries in one job ran 4-10x slower per query than 32 calls of one on this machine)."""

    def __init__(self, worker: _FastPlaidWorker, params: dict[str, int], processes: int) -> None:
        self.worker, self.params, self.processes = worker, params, processes

    def labels(self) -> np.ndarray:
        return np.asarray(self.worker.call("labels", params={**self.params, "n_processes": self.processes})["labels"])

    def latency(self, n: int) -> list[float]:
        return self.worker.call("latency", params={**self.params, "n_processes": 1}, n=n)["ms"]

    def rate(self, n: int) -> float:
        return self.worker.call("rate", params={**self.params, "n_processes": self.processes}, n=n)["qps"]


def _fast_plaid_index(worker: _FastPlaidWorker, write_docs: Any, cache: Path, threads: int,
                      centroids: Any = None) -> dict[str, Any]:
    """fast-plaid's index of the same vectors at its defaults (nbits 4, K from the token count), built once and
    cached with its build time. ``write_docs(path)`` writes the (n_docs * DOC_LEN, DIM) float32 vectors as .npy.
    ``centroids(docs_path, out_path)``, when given, trains its k-means centroids outside it (saved to
    ``out_path``, normalised float32) and returns what to record of that; its ``create`` then runs on them."""
    path, meta = cache / "fast-plaid-index", cache / "fast-plaid-index.json"
    if meta.is_file() and path.is_dir():
        return {**json.loads(meta.read_text()), "cached": True}
    shutil.rmtree(path, ignore_errors=True)
    tmp, trained = cache / "fast-plaid-docs.npy", cache / "fast-plaid-centroids.npy"
    out: dict[str, Any] = {"threads": threads, "nbits": 4, "fast_plaid": worker.info["fast_plaid"]}
    try:
        write_docs(tmp)
        request = {}
        if centroids is not None:
            out["kmeans"] = centroids(tmp, trained)
            request["centroids"] = str(trained)
        built = worker.call("build", docs=str(tmp), doc_len=DOC_LEN, index=str(path), nbits=4, **request)
    finally:
        tmp.unlink(missing_ok=True)
        trained.unlink(missing_ok=True)
    out["build_s"] = built["build_s"]
    meta.write_text(json.dumps(out))
    print(f"fast-plaid index built in {built['build_s']:.0f} s at {threads} thread(s)", flush=True)
    return {**out, "cached": False}


def _interleaved(runners: dict[str, Any], truth: np.ndarray, rounds: int, n_lat: int,
                 n_qps: int) -> dict[str, dict[str, float]]:
    """Every runner's labels once, then ``rounds`` rounds of one latency pass and one batch-32 pass each, the
    runners in alternating order (ours, theirs, ours, ...; reversed every other round), so that load from
    other processes falls on both engines alike. p50 / p95 over all rounds' latencies, QPS the median pass."""
    labels = {name: runner.labels() for name, runner in runners.items()}
    lat: dict[str, list[float]] = {name: [] for name in runners}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name in list(runners)[:: 1 if r % 2 == 0 else -1]:
            lat[name] += runners[name].latency(n_lat)
            rates[name].append(runners[name].rate(n_qps))
    return {name: {**_summary(labels[name], truth, lat[name], rates[name]), "mean_ms": float(np.mean(lat[name])),
                   "qps_passes": rates[name]} for name in runners}


def _matched(ours: dict[str, Any], theirs: list[dict[str, Any]], slack: float = 0.005) -> dict[str, Any] | None:
    """fast-plaid's fastest setting reaching at least our recall@10 less ``slack``, and the ratios: our QPS at
    batch 32 over its best rate (``qps_best``), its p50 at batch 1 over ours."""
    reach = [row for row in theirs if row["recall@10"] >= ours["recall@10"] - slack]
    if not reach:
        return None
    best = max(reach, key=lambda row: row["qps_best"])
    return {"fast_plaid": best["engine"], "fast_plaid_recall@10": best["recall@10"],
            "qps_ratio": ours["qps_b32"] / best["qps_best"], "p50_ratio": best["p50_ms"] / ours["p50_ms"]}


def _side_by_side(args: Any, docs: Any, queries: Any, truth: np.ndarray, cache: Path, record: Any) -> None:
    """Our engine (defaults and two ``ndocs`` around them) and fast-plaid (its defaults and the --fast-plaid-grid
    settings) on the same vectors, queries and truth, interleaved, at ``--threads`` threads each."""
    from indexes.plaid import PlaidParams

    ours: dict[str, Any] = {}
    for i, spec in enumerate([] if args.build_only else args.spec):
        index, _ = _index(spec, docs, cache)
        index.plaid_engine()
        for extra in [{}] + ([{"ndocs": 128}, {"ndocs": 1024}] if i == 0 else []):
            params = {**vars(PlaidParams()), **extra}
            ours[f"ours {spec} {params}"] = _Ours(_searcher(index, "plaid", params), queries)
    compare_with_fast_plaid(args, ours, queries, truth, cache, record,
                            lambda worker: _fast_plaid_index(worker, lambda path: np.save(path, docs.vectors), cache,
                                                             args.threads))


def compare_with_fast_plaid(args: Any, ours: dict[str, Any], queries: Any, truth: np.ndarray, cache: Path,
                            record: Any, fast_plaid_index: Any) -> None:
    """``ours`` (name -> runner) and fast-plaid at the --fast-plaid-grid settings, interleaved, at ``--threads``
    threads each; each of ours matched to fast-plaid's fastest setting at its recall. ``fast_plaid_index(worker)``
    builds or finds fast-plaid's index in ``cache`` and returns what to record of it."""
    runners = dict(ours)
    theirs: list[str] = []
    worker = None
    python = _fast_plaid_python(cache)
    if python is not None:
        worker = _FastPlaidWorker(python, args.threads)
        print(f"fast-plaid {worker.info['fast_plaid']} on torch {worker.info['torch']}, "
              f"{worker.info['threads']} thread(s)", flush=True)
        built = fast_plaid_index(worker)
        record({"spec": "fast-plaid", "engine": "build", **built})
        if args.build_only:
            worker.close()
            return
        q = cache / f"queries-{len(queries)}.npy"
        np.save(q, queries.vectors.reshape(len(queries), Q_LEN, DIM))
        worker.call("load", index=str(cache / "fast-plaid-index"), queries=str(q))
        for item in args.fast_plaid_grid.split(","):
            probe, full = (int(x) for x in item.split(":"))
            theirs.append(f"fast-plaid n_ivf_probe={probe} n_full_scores={full}")
            runners[theirs[-1]] = _FastPlaid(worker, {"n_ivf_probe": probe, "n_full_scores": full}, args.threads)
    order = [name for pair in itertools.zip_longest(ours, theirs) for name in pair if name]
    try:
        results = _interleaved({name: runners[name] for name in order}, truth, args.rounds,
                               args.latency_queries, args.qps_queries)
    finally:
        if worker is not None:
            worker.close()
    rows = {name: {"spec": name.split()[1] if name in ours else "fast-plaid", "engine": name,
                   "threads": args.threads, **res} for name, res in results.items()}
    for name in theirs:  # its best rate: batch-32 calls, or the batch-1 calls back to back, whichever is faster
        rows[name]["qps_b1_serial"] = 1000 / rows[name]["mean_ms"]
        rows[name]["qps_best"] = max(rows[name]["qps_b32"], rows[name]["qps_b1_serial"])
    for name in order:
        record(rows[name])
    for name in ours if theirs else []:
        match = _matched(rows[name], [rows[t] for t in theirs])
        record({"spec": rows[name]["spec"], "engine": "matched recall", "ours": name, **(match or {})})
        print(f"{name}: " + (f"{match['qps_ratio']:.1f}x fast-plaid's QPS@32, {match['p50_ratio']:.1f}x at p50, "
                             f"against {match['fast_plaid']} (R@10 {match['fast_plaid_recall@10']:.3f})"
                             if match else "no fast-plaid setting reaches this recall"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", nargs="+", default=["KMeans4096r4"])
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--skip-exhaustive", action="store_true", help="do not time the old exhaustive default")
    parser.add_argument("--build-only", action="store_true", help="generate, build and cache, then stop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="also sweep nprobe x threshold x ndocs")
    parser.add_argument("--json", default=None)
    parser.add_argument("--binary", nargs="+", default=None, metavar="SPEC",
                        help="measure the binary path (e.g. BinaryITQ) instead of the PLAID engine")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=("flat", "ivf", "hnsw"),
                        help="binary token indexes to build and sweep (default all three)")
    parser.add_argument("--skip-old", action="store_true", help="binary: skip the old flat scan and the ceiling rows")
    parser.add_argument("--kernel-baseline", default=None, metavar="REV",
                        help="binary: also time the table kernel of git revision REV, interleaved with the current one")
    parser.add_argument("--fast-plaid", action="store_true",
                        help="our engine against fast-plaid (own throw-away environment), interleaved, instead")
    parser.add_argument("--fast-plaid-grid", default=FAST_PLAID_GRID, help="n_ivf_probe:n_full_scores,...")
    parser.add_argument("--rounds", type=int, default=3, help="--fast-plaid: interleaved rounds per setting")
    parser.add_argument("--qps-queries", type=int, default=64, help="--fast-plaid: queries per batch-32 pass")
    args = parser.parse_args()

    import faiss
    import numba

    from indexes.plaid import PlaidParams

    faiss.omp_set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    cache = _cache_dir()
    t0 = time.perf_counter()
    docs, queries, _ = synthetic(n_queries=args.queries)
    print(f"{len(docs)} documents, {docs.num_vectors} vectors, {len(queries)} queries x {Q_LEN} "
          f"(generated in {time.perf_counter() - t0:.0f} s)", flush=True)
    truth = _exact_top10(docs, queries, cache)
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        if "recall@10" in row:
            print(f"{row['spec']:<14} {row['engine']:<58} R@10 {row['recall@10']:.3f}  p50 {row['p50_ms']:8.1f} ms  "
                  f"p95 {row['p95_ms']:8.1f} ms  QPS@32 {row['qps_b32']:7.1f}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))

    if args.fast_plaid:
        _side_by_side(args, docs, queries, truth, cache, record)
        return
    for spec in args.binary or []:
        _binary_rows(spec, docs, queries, truth, cache, args, record)
    for spec in [] if args.binary else args.spec:
        index, build_s = _index(spec, docs, cache)
        if args.build_only:
            continue
        t1 = time.perf_counter()
        index.plaid_engine()
        lists_s = time.perf_counter() - t1
        rows.append({"spec": spec, "engine": "build", "build_s": build_s, "lists_s": lists_s,
                     "bytes_per_token": (index.memory_bytes() - index.ids_memory_bytes()) / index.num_vectors})
        print(f"{spec}: engine lists built in {lists_s:.2f} s; {rows[-1]['bytes_per_token']:.1f} B/token in memory",
              flush=True)
        n_lat = args.latency_queries
        default = PlaidParams()
        grid = [{"nprobe": p, "centroid_score_threshold": t, "ndocs": nd}
                for p, t, nd in itertools.product((1, 2, 4), (None, 0.3, 0.4, 0.5), (64, 128, 256, 512, 1024))]
        for params in [dict(vars(default)), *(grid if args.sweep else [])]:
            res = _measure(_searcher(index, "plaid", params), queries, truth, n_lat=n_lat, n_qps=64)
            record({"spec": spec, "engine": f"plaid {params}", "threads": args.threads, **params, **res})
        # timed before the centroid lists: their BLAS products leave OpenBLAS's workers spinning on the cores
        breakdown = _floors(index, default, queries, n_lat)
        for nprobe, n_cand in ((1, 128), (2, 256)):
            index.n_candidates, index.nprobe = n_cand, nprobe
            res = _measure(_searcher(index, "centroid"), queries, truth, n_lat=min(n_lat, 10), n_qps=32)
            record({"spec": spec, "engine": f"centroid lists nprobe={nprobe} n_candidates={n_cand}",
                    "threads": args.threads, **res})
        if not args.skip_exhaustive:
            res = _measure(_searcher(index, "exhaustive"), queries, truth, n_lat=3, n_qps=0)
            record({"spec": spec, "engine": "exhaustive (old default)", "threads": args.threads, **res})
        rows.append({"spec": spec, "engine": "breakdown", **breakdown})
        print(json.dumps(breakdown, indent=1), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

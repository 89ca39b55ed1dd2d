"""Reliability measurements for docs/RELIABILITY.md: kill trials, concurrency stress, bounded-memory build.

Run (each under the CPU lock; 2-core CPU, no GPU):

    .venv/bin/python tests/benchmarks/bench_reliability.py crash  --trials 200 [--json out.json]
    .venv/bin/python tests/benchmarks/bench_reliability.py stress --seconds 60 --readers 4
    .venv/bin/python tests/benchmarks/bench_reliability.py build  --n 1000000 --dim 384 --spec IVF1024,PQ48x8
    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_reliability.py lock [--code-root /work/main]
    .venv/bin/python tests/benchmarks/bench_reliability.py loadrace --loads 1000 --trials 500

``crash``: for every index kind, ``--trials`` SIGKILLs at random points of a child that loads
the index, adds / deletes and saves in a loop (both the atomic-exchange save and the two-rename
fallback); counts unloadable and mixed directories (see tests/indexes/kill_harness.py).

``stress``: per index kind, ``--readers`` threads search while one thread adds, deletes and
saves, for ``--seconds``; counts errors and wrong results (tests/indexes/stress_harness.py).

``loadrace``: per exact index kind, 2 writer processes ``save(overwrite=True)`` distinguishable
generations while 2 reader processes ``load_index(verify=True)`` ``--loads`` times each; then one
process loads + adds + saves while 2 readers load; counts mixed generations, spurious corruption
reports and missing paths (tests/indexes/loadrace_harness.py). Then ``--trials`` create races:
2 processes save the same new path with ``overwrite=False``; exactly one must win, the other
must get "already exists" (tests/indexes/test_overwrite_safety.py).

``build``: in this (fresh) process, generates ``--n`` structured vectors batch by batch
(``--batch`` rows; a mixture of 1,000 Gaussian clusters, unit-normalised), builds the index with
:func:`indexes.build.build_from_batches` and reports peak RSS (``getrusage`` ``ru_maxrss``)
against the raw float32 size n * dim * 4. ``--in-ram`` builds the same index the ordinary way
(every vector stacked in one array, then train + add) for comparison. Recall@10 of 200 queries
against exact search over the same vectors (computed chunk by chunk) is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "indexes"))
sys.path.insert(0, str(HERE.parents[1]))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def cmd_crash(args: argparse.Namespace) -> dict[str, Any]:
    import kill_harness

    rows = []
    for mode in ("exchange", "rename"):
        for kind in args.kinds or kill_harness.KINDS:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                stats = kill_harness.run_trials(kind, args.trials, Path(tmp), mode=mode, seed=args.seed)
                row = stats.to_dict() | {"seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"{mode:8s} {kind:12s} trials={row['trials']} unloadable={row['unloadable']} mixed={row['mixed']} "
                  f"killed_in_save={row['killed_in_save']} found_new={row['found_new']} saves={row['steps']} "
                  f"leftovers={row['leftovers_after']} ({row['seconds']} s)", flush=True)
    return {"crash": rows}


def kill_harness_kinds() -> tuple[str, ...]:
    import kill_harness

    return tuple(kill_harness.KINDS)


def cmd_stress(args: argparse.Namespace) -> dict[str, Any]:
    import stress_harness

    rows = []
    for kind in args.kinds or kill_harness_kinds():
        stats = stress_harness.run_stress(kind, readers=args.readers, seconds=args.seconds, seed=args.seed)
        rows.append(stats.to_dict())
        print(f"{kind:12s} threads={args.readers}+1 {stats.seconds:.1f} s: searches={stats.searches} "
              f"queries={stats.queries} adds={stats.adds} deletes={stats.deletes} saves={stats.saves} "
              f"errors={stats.errors} wrong={stats.wrong} {stats.problems[:1]}", flush=True)
    return {"stress": rows}


def cmd_loadrace(args: argparse.Namespace) -> dict[str, Any]:
    import loadrace_harness
    from test_overwrite_safety import run_create_race

    rows = []
    runs = [(kind, "overwrite") for kind in args.kinds or loadrace_harness.KINDS] + [("flat", "update"), ("sharded", "update")]
    for kind, mode in runs:
        with tempfile.TemporaryDirectory() as tmp:
            stats = loadrace_harness.run_race(Path(tmp), kind, mode=mode, loads_per_reader=args.loads)
        row = stats.to_dict()
        rows.append(row)
        print(json.dumps(row), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        create = run_create_race(Path(tmp), args.trials)
    print(json.dumps({"create_race": create}), flush=True)
    return {"loadrace": rows, "create_race": create}


def _centers(dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1000, dim)).astype(np.float32)


def _stream(n: int, dim: int, batch: int, seed: int) -> Iterator[tuple[list[str], np.ndarray]]:
    centers = _centers(dim, seed)
    rng = np.random.default_rng(seed + 1)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        x = centers[rng.integers(0, len(centers), m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield [f"d{start + i}" for i in range(m)], x


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from indexes import FaissIndex
    from indexes.build import build_from_batches

    faiss.omp_set_num_threads(args.threads)
    base_rss = _rss_mb()
    t0 = time.perf_counter()
    if args.in_ram:
        ids: list[str] = []
        parts = []
        for batch_ids, x in _stream(args.n, args.dim, args.batch, args.seed):
            ids.extend(batch_ids)
            parts.append(x)
        vectors = np.concatenate(parts)
        del parts
        index = FaissIndex(args.dim, spec=args.spec, metric="ip", nprobe=args.nprobe)
        sample = vectors[np.random.default_rng(0).choice(args.n, min(args.train_size, args.n), replace=False)]
        index.train(sample).add(vectors, ids=ids)
        del vectors, sample
    else:
        index = build_from_batches(_stream(args.n, args.dim, args.batch, args.seed), dim=args.dim, spec=args.spec,
                                   metric="ip", train_size=args.train_size, add_chunk=args.batch, nprobe=args.nprobe)
    build_s = time.perf_counter() - t0
    peak = _peak_rss_mb()
    raw_mb = args.n * args.dim * 4 / 2**20
    # Quality check: exact top-10 of 200 queries, streamed (regenerates the same vectors).
    rng = np.random.default_rng(args.seed + 7)
    q = _centers(args.dim, args.seed)[rng.integers(0, 1000, 200)] + 0.6 * rng.standard_normal((200, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    best_s = np.full((200, 10), -np.inf, np.float32)
    best_i = np.zeros((200, 10), np.int64)
    for batch_ids, x in _stream(args.n, args.dim, args.batch, args.seed):
        s = q @ x.T
        first = int(batch_ids[0][1:])
        cat_s = np.concatenate([best_s, s], axis=1)
        cat_i = np.concatenate([best_i, np.broadcast_to(np.arange(first, first + x.shape[0]), s.shape)], axis=1)
        top = np.argsort(-cat_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)
    found = index.search(q, k=10).doc_ids
    recall = float(np.mean([len({f"d{i}" for i in gt} & set(row)) / 10 for gt, row in zip(best_i, found, strict=True)]))
    out = {
        "mode": "in-ram" if args.in_ram else "build_from_batches", "n": args.n, "dim": args.dim, "spec": args.spec,
        "batch": args.batch, "train_size": args.train_size, "threads": args.threads, "nprobe": args.nprobe,
        "raw_float32_mb": round(raw_mb, 1), "rss_after_imports_mb": round(base_rss, 1),
        "peak_rss_mb": round(peak, 1), "peak_over_raw": round(peak / raw_mb, 3),
        "build_s": round(build_s, 1), "recall@10_vs_exact": round(recall, 4), "count": len(index),
    }
    print(json.dumps(out), flush=True)
    return {"build": out}


def cmd_lock(args: argparse.Namespace) -> dict[str, Any]:
    """Single-query search latency (µs) of the code under ``--code-root`` (e.g. main's, to compare)."""
    import statistics

    from indexes import FaissIndex, FlatIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 384)).astype(np.float32)
    q = rng.standard_normal((1, 384)).astype(np.float32)
    out: dict[str, Any] = {"code": str(Path(sys.modules["indexes"].__file__ or "").parents[1])}
    for name, index in (("FlatIndex", FlatIndex(384)), ("HNSW32", FaissIndex(384, spec="HNSW32")),
                        ("FaissFlat", FaissIndex(384, spec="Flat"))):
        index.add(x, ids=[str(i) for i in range(5000)])
        for _ in range(200):
            index.search(q, k=10)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(500):
                index.search(q, k=10)
            runs.append((time.perf_counter() - t0) / 500 * 1e6)
        out[name] = round(statistics.median(runs), 1)
    print(json.dumps(out), flush=True)
    return {"lock": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["crash", "stress", "build", "lock", "loadrace"])
    parser.add_argument("--code-root", default=None, help="lock: import `indexes` from this checkout instead")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=None, help="crash / stress: index kinds of kill_harness.KINDS (default all)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--loads", type=int, default=1000, help="loadrace: loads per reader process")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--spec", default="IVF1024,PQ48x8")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--train-size", type=int, default=65_536)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-ram", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.code_root:
        sys.path.insert(0, args.code_root)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    commands = {"crash": cmd_crash, "stress": cmd_stress, "build": cmd_build, "lock": cmd_lock, "loadrace": cmd_loadrace}
    result = commands[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

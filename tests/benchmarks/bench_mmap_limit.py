"""A memory-mapped MultiVectorIndex served under a memory limit smaller than the index (cgroup v1).

Run (as root, with the cgroup v1 memory controller mounted, e.g. at /sys/fs/cgroup/memory):

    .venv/bin/python tests/benchmarks/bench_mmap_limit.py [--spec KMeansr8] [--limits none,2G,1G]
        [--threads 2] [--json out.json]

Index and truth: those ``bench_late_interaction_10m.py`` caches (``<cache>/bench/late-interaction-
100000/index-<spec>`` and ``exact-top10-<queries>.npy``, ``<cache>`` = ``$DENSEZIP_CACHE`` or
``~/.cache/densezip``); run that script first, or name another index with ``--index``. The
queries are that script's (regenerated here once, by this process, and handed to the workers
as a file), so recall compares with its figures.

For each limit (``none``: a group without a limit, for the same accounting) this process

1. drops the page cache (``echo 1 > /proc/sys/vm/drop_caches``, system-wide; noted and skipped
   when not permitted, or with ``--keep-cache``), so every configuration starts cold;
2. creates a child memory cgroup of its own group with ``memory.limit_in_bytes``. cgroup v1
   charges a group's page cache to it too, so the mapped codes compete with the worker's
   anonymous memory for the limit and are evicted and read again as a search needs them;
3. starts a worker that moves itself into the group, loads the index with ``mmap=True``
   (checksums verified unless ``--no-verify``: a read of every file through the page cache),
   builds the PLAID engine's lists (anonymous memory), times one cold batch-32 search, then
   measures as the 10M script does: recall@10 (every query, batch 32), p50 / p95 over
   ``--latency-queries`` batch-1 searches and QPS at batch 32 (median of 3 passes over 64
   queries), with the PLAID defaults.

Reported per limit: whether the worker finished (an OOM kill shows as exit code -9 and the
group's ``oom_kill`` count), load / engine / cold-search seconds, the measures, the worker's
peak RSS (``ru_maxrss``: mapped file pages it had resident count), its resident anonymous /
file memory at the end, its major page faults, the group's ``memory.stat`` cache / rss / mapped_file at the worker's end,
and the group's ``memory.max_usage_in_bytes`` and ``memory.failcnt`` (times the limit was hit).
Pages already in the page cache stay charged to the group that read them first: without a drop
of the page cache (``--keep-cache``) the shared libraries and a warm index are not charged here.
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
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(limit: str) -> int | None:
    """``"none"`` -> None, ``"1G"`` / ``"512M"`` / ``"1073741824"`` -> bytes."""
    if limit.lower() == "none":
        return None
    unit = _UNITS.get(limit[-1].upper())
    return int(float(limit[:-1]) * unit) if unit else int(limit)


def memory_group_root() -> Path:
    """This process's own cgroup v1 memory group (mount point + path), or OSError saying why not."""
    mount = None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, kind, options = line.split()[:4]
        if kind == "cgroup" and "memory" in options.split(","):
            mount = Path(where)
    if mount is None:
        raise OSError("no cgroup v1 memory controller is mounted (/proc/self/mounts); on cgroup v2 use "
                      "memory.max of a child group instead")
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return mount / path.lstrip("/")
    raise OSError("/proc/self/cgroup names no memory group for this process")


def _drop_caches() -> str:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "dropped"
    except OSError as exc:
        return f"not dropped ({exc})"


def _group_peak(group: Path) -> dict[str, Any]:
    """The group's peak charge, times it hit its limit and OOM kills (read after the worker exits)."""
    oom = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
    return {"group_max_usage_gb": int((group / "memory.max_usage_in_bytes").read_text()) / 2**30,
            "group_failcnt": int((group / "memory.failcnt").read_text()), "group_oom_kill": int(oom.get("oom_kill", -1))}


def _group_now(group: Path) -> dict[str, Any]:
    """The group's page cache, anonymous memory and mapped file pages now (read by the worker, at its end)."""
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    return {f"group_{name}_gb_end": int(stat[name]) / 2**30 for name in ("cache", "rss", "mapped_file") if name in stat}


def _status_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / (1 << 20)  # kB
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """Join the group, load with mmap=True, build the engine, measure; the result as JSON on stdout."""
    if args.cgroup:
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    import numba
    from bench_late_interaction import _measure, _searcher

    from indexes import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    numba.set_num_threads(args.threads)
    q = np.load(args.queries_file)
    queries = MultiVectorEmbeddings(q["vectors"], q["offsets"], [f"q{i}" for i in range(len(q["offsets"]) - 1)])
    truth = np.load(args.truth)
    t0 = time.perf_counter()
    index = MultiVectorIndex.load(args.index, mmap=True, verify=not args.no_verify)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.plaid_engine()
    engine_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.search(queries.select(np.arange(min(32, len(queries)))), k=10)
    cold_s = time.perf_counter() - t0
    res = _measure(_searcher(index, "plaid"), queries, truth, n_lat=args.latency_queries,
                   n_qps=min(64, len(queries)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({
        "load_s": load_s, "engine_s": engine_s, "cold_b32_s": cold_s, **res,
        "peak_rss_gb": usage.ru_maxrss / 2**20, "rss_anon_gb_end": _status_gb("RssAnon"),
        "rss_file_gb_end": _status_gb("RssFile"), "major_faults": usage.ru_majflt,
        "codes_gb": index._codes.nbytes / 2**30, "memory_bytes_gb": index.memory_bytes() / 2**30,
        **(_group_now(Path(args.cgroup)) if args.cgroup else {})}), flush=True)


def _queries_file(args: argparse.Namespace, directory: Path) -> Path:
    from bench_late_interaction_10m import Corpus

    queries = Corpus(args.docs, args.batch_docs, args.queries).queries()
    path = directory / "queries.npz"
    np.savez(path, vectors=queries.vectors, offsets=queries.offsets)
    return path


def _warm_numba() -> None:
    """Compile (or load from Numba's disk cache) the PLAID kernels once, outside every group."""
    from indexes import MultiVectorIndex
    from retrieval.types import MultiVectorEmbeddings

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 128)).astype(np.float32)
    docs = MultiVectorEmbeddings(x, np.arange(0, 4001, 40), [f"d{i}" for i in range(100)])
    index = MultiVectorIndex(128, spec="KMeans64r4").add(docs)
    index.search(docs.select(np.arange(32)), k=10)
    index.search(docs.select([0]), k=10)


def run_limit(limit: str, args: argparse.Namespace, queries_file: Path, truth: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"limit": limit, "page_cache": "kept (--keep-cache)" if args.keep_cache else _drop_caches()}
    group = None
    try:
        group = memory_group_root() / f"dzbench-{os.getpid()}-{limit}"
        group.mkdir()
        value = _bytes(limit)
        if value is not None:
            (group / "memory.limit_in_bytes").write_text(str(value))
    except OSError as exc:
        row["cgroup"] = f"not created ({exc}); measured without a limit"
        group = None
    cmd = [sys.executable, __file__, "--worker", "--index", str(args.index), "--truth", str(truth),
           "--queries-file", str(queries_file), "--threads", str(args.threads),
           "--latency-queries", str(args.latency_queries)] + (["--no-verify"] if args.no_verify else [])
    cmd += ["--cgroup", str(group)] if group is not None else []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout, check=False)
        row["exit_code"], out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        row["exit_code"], out, err = f"timed out after {args.worker_timeout} s", str(exc.stdout or ""), ""
    row["wall_s"] = time.perf_counter() - t0
    found = [line[len("RESULT "):] for line in out.splitlines() if line.startswith("RESULT ")]
    if found:
        row.update(json.loads(found[-1]))
    else:
        row["stderr_tail"] = err[-600:]
    if group is not None:
        row.update(_group_peak(group))
        try:
            (group / "memory.force_empty").write_text("0")
            group.rmdir()
        except OSError as exc:
            row["cgroup_left"] = f"{group} ({exc})"
    return row


def main() -> None:
    root = Path(os.environ.get("DENSEZIP_CACHE", Path.home() / ".cache" / "densezip"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="KMeansr8", help="the cached index-<spec> of the 10M script")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch-docs", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--index", type=Path, default=None, help="another saved MultiVectorIndex (same corpus)")
    parser.add_argument("--limits", default="none,2G,1G", help="comma-separated: none, or bytes with K / M / G")
    parser.add_argument("--latency-queries", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-cache", action="store_true", help="do not drop the page cache (it is system-wide)")
    parser.add_argument("--no-verify", action="store_true", help="load without hashing the files")
    parser.add_argument("--worker-timeout", type=int, default=1800)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cgroup", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--truth", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    cache = root / "bench" / f"late-interaction-{args.docs}"
    args.index = args.index or cache / f"index-{args.spec}"
    truth = cache / f"exact-top10-{args.queries}.npy"
    for needed in (args.index / "manifest.json", truth):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: run bench_late_interaction_10m.py --spec {args.spec} first.")
    on_disk = sum(f.stat().st_size for f in args.index.iterdir())
    print(json.dumps({"index": str(args.index), "on_disk_gb": on_disk / 2**30}), flush=True)
    _warm_numba()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dz-mmap-bench-") as tmp:
        queries_file = _queries_file(args, Path(tmp))
        for limit in args.limits.split(","):
            rows.append({"index_gb_on_disk": on_disk / 2**30, **run_limit(limit.strip(), args, queries_file, truth)})
            print(json.dumps(rows[-1]), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

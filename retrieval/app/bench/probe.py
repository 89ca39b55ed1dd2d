"""Measurements shared by the benchmark runners: interleaved timings, memory bandwidth,
in-memory index size, and a description of the machine and library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from retrieval.app.measure import SearchTiming

__all__ = ["extra_us_per_call", "machine_info", "memory_bandwidth", "paired_ratio", "set_threads",
           "time_interleaved"]

_VERSIONED = ("densezip", "numpy", "faiss-cpu", "faiss-gpu", "torch", "sentence-transformers", "transformers",
              "ir-measures", "matplotlib")


def _batches(queries: Any, batch_size: int) -> list[Any]:
    """Split a query matrix, or :class:`~retrieval.types.MultiVectorEmbeddings`, into batches."""
    n = len(queries)
    if isinstance(queries, np.ndarray):
        return [queries[i : i + batch_size] for i in range(0, n, batch_size)]
    return [queries.select(np.arange(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def time_interleaved(
    searches: Mapping[str, Callable[[Any], object]],
    queries: Any,
    *,
    batch_size: int,
    repeats: int,
    warmup: int,
) -> dict[str, SearchTiming]:
    """Time several search functions on the same queries, interleaved batch by batch.

    A shared virtual machine speeds up and slows down over milliseconds to seconds, so two
    functions timed one after the other (even pass by pass) can differ by 10-20% for no
    reason of their own. Here the functions take turns batch by batch: in each round of
    ``len(searches)`` passes over ``queries`` (a float matrix, or multi-vector embeddings,
    in batches of ``batch_size``), batch ``j`` of pass ``s`` goes to function
    ``(j + s) mod len(searches)``, so every function sends every batch once per round, the
    same batch never runs twice in a row when there are several (no cache gift from the
    previous call), and any slow spell hits all functions alike. The first ``warmup`` rounds
    are not timed.

    Returns
    -------
    dict of str to SearchTiming
        Per function: median queries per second over ``repeats`` rounds (with min and max,
        and every round in ``runs``; a round's rate is its queries over the summed batch
        times), p50 / p95 latency per batch pooled over the rounds. Compare two functions
        with :func:`paired_ratio`.
    """
    names = list(searches)
    fns = [searches[n] for n in names]
    batches = _batches(queries, batch_size)
    rates: dict[str, list[float]] = {n: [] for n in names}
    lat: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(warmup + repeats):
        spent = [0.0] * len(names)
        times: list[list[float]] = [[] for _ in names]
        for shift in range(len(names)):
            for j, b in enumerate(batches):
                who = (j + shift) % len(names)
                t0 = time.perf_counter()
                fns[who](b)
                dt = time.perf_counter() - t0
                spent[who] += dt
                times[who].append(dt)
        if rnd >= warmup:
            for who, name in enumerate(names):
                rates[name].append(len(queries) / spent[who])
                lat[name].extend(times[who])
    out: dict[str, SearchTiming] = {}
    for name in names:
        ms = np.asarray(lat[name]) * 1000.0
        out[name] = SearchTiming(
            batch_size=batch_size, qps=float(np.median(rates[name])), qps_min=float(np.min(rates[name])),
            qps_max=float(np.max(rates[name])), p50_ms=float(np.percentile(ms, 50)),
            p95_ms=float(np.percentile(ms, 95)), repeats=repeats, runs=tuple(rates[name]),
        )
    return out


def _paired_runs(a: SearchTiming, b: SearchTiming, caller: str) -> list[tuple[float, float]]:
    """The two timings' rounds side by side; they must come from one :func:`time_interleaved` call."""
    if not a.runs or len(a.runs) != len(b.runs):
        raise ValueError(f"{caller} needs the same number of passes; got {len(a.runs)} and {len(b.runs)}.")
    return list(zip(a.runs, b.runs, strict=True))


def paired_ratio(a: SearchTiming, b: SearchTiming) -> float:
    """Median over passes of ``a``'s QPS over ``b``'s QPS in the same pass pair.

    :func:`time_interleaved` runs the functions' passes back to back, so pass ``i`` of each
    saw the same machine conditions; the median of those per-pair ratios is steadier than
    the ratio of the two medians when the machine's speed drifts over seconds (a shared VM).

    Examples
    --------
    >>> t = lambda *runs: SearchTiming(batch_size=1, qps=0, qps_min=0, qps_max=0, p50_ms=0, p95_ms=0,
    ...                                repeats=len(runs), runs=runs)
    >>> paired_ratio(t(90.0, 45.0, 95.0), t(100.0, 50.0, 100.0))
    0.9
    """
    return float(np.median([x / y for x, y in _paired_runs(a, b, "paired_ratio")]))


def extra_us_per_call(a: SearchTiming, b: SearchTiming) -> float:
    """Median over pass pairs of the extra time ``a`` takes per call (one batch) over ``b``, in µs.

    Examples
    --------
    >>> t = lambda *runs: SearchTiming(batch_size=4, qps=0, qps_min=0, qps_max=0, p50_ms=0, p95_ms=0,
    ...                                repeats=len(runs), runs=runs)
    >>> round(extra_us_per_call(t(1e5, 1e5), t(2e5, 2e5)), 3)
    20.0
    """
    per_query = [1.0 / x - 1.0 / y for x, y in _paired_runs(a, b, "extra_us_per_call")]
    return float(np.median(per_query)) * a.batch_size * 1e6


def memory_bandwidth(*, mib: int = 256, repeats: int = 5) -> dict[str, float]:
    """Measure the machine's sustained memory read bandwidth, in bytes per second.

    A buffer of ``mib`` MiB (far larger than any CPU cache) is read by two streaming
    kernels: NumPy's ``add.reduce`` (one core) and a BLAS dot product of the buffer with
    itself (OpenBLAS threads). Each is the median of ``repeats`` passes after one warm-up.
    ``read_bytes_per_s`` is the faster of the two: the best rate this process can stream
    memory at, the physical limit for an exhaustive scan.

    Returns
    -------
    dict
        ``numpy_sum_bytes_per_s``, ``blas_dot_bytes_per_s``, ``read_bytes_per_s``, ``buffer_bytes``.
    """
    x = np.ones(mib * 2**20 // 8, dtype=np.float64)  # written once so every page is mapped
    rates: dict[str, float] = {}
    for name, kernel in (("numpy_sum", lambda: np.add.reduce(x)), ("blas_dot", lambda: x @ x)):
        kernel()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            kernel()
            times.append(time.perf_counter() - t0)
        rates[f"{name}_bytes_per_s"] = x.nbytes / float(np.median(times))
    return {**rates, "read_bytes_per_s": max(rates.values()), "buffer_bytes": float(x.nbytes)}


def set_threads(threads: int) -> int:
    """Use ``threads`` OpenMP threads in FAISS (and torch when loaded); returns what FAISS reports."""
    import faiss

    faiss.omp_set_num_threads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return int(faiss.omp_get_max_threads())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flags & {"avx2", "avx512f", "fma", "sse4_2", "neon"})
    except OSError:
        pass
    return []


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and flags, cores, memory, GPU presence, Python and library versions."""
    versions: dict[str, str] = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        mem = 0
    from retrieval._optional import has_faiss_gpu

    return {
        "cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "logical_cpus": os.cpu_count(),
        "memory_bytes": mem, "gpu": has_faiss_gpu(), "threads": threads,
        "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
    }

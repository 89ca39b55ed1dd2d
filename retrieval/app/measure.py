"""Measuring the same way everywhere: warmed-up search timings (medians, percentiles) and index size."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from indexes.base import VectorIndex

__all__ = ["SearchTiming", "directory_bytes", "saved_bytes", "time_search"]


@dataclass(frozen=True)
class SearchTiming:
    """Throughput and per-batch latency of a search function.

    ``qps`` is the median over ``repeats`` full passes; latencies are per batch (a query
    at batch size 1), pooled over all passes.
    """

    batch_size: int
    qps: float
    qps_min: float
    qps_max: float
    p50_ms: float
    p95_ms: float
    repeats: int
    runs: tuple[float, ...] = ()  # queries per second of each timed pass, in the order run

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {
            "batch_size": self.batch_size, "qps": self.qps, "qps_min": self.qps_min, "qps_max": self.qps_max,
            "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "repeats": self.repeats, "qps_runs": list(self.runs),
        }


def time_search(
    search: Callable[[NDArray[np.float32]], object],
    queries: NDArray[np.float32],
    *,
    batch_size: int,
    repeats: int = 5,
    warmup: int = 1,
) -> SearchTiming:
    """Time ``search`` over ``queries`` split into batches of ``batch_size``."""
    batches = [queries[i : i + batch_size] for i in range(0, len(queries), batch_size)]
    for _ in range(warmup):
        for b in batches:
            search(b)
    rates: list[float] = []
    latencies: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            t0 = time.perf_counter()
            search(b)
            latencies.append(time.perf_counter() - t0)
        rates.append(len(queries) / (time.perf_counter() - start))
    lat = np.array(latencies) * 1000.0
    return SearchTiming(
        batch_size=batch_size,
        qps=float(np.median(rates)),
        qps_min=float(np.min(rates)),
        qps_max=float(np.max(rates)),
        p50_ms=float(np.percentile(lat, 50)),
        p95_ms=float(np.percentile(lat, 95)),
        repeats=repeats,
        runs=tuple(rates),
    )


def directory_bytes(path: Path) -> int:
    """Total size of the files of a saved index directory."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def saved_bytes(index: VectorIndex) -> int:
    """Bytes of everything a saved copy of ``index`` holds: backend file, ids, manifest (and,
    for a sharded index, every shard's directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = index.save(Path(tmp) / "index")
        return sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())

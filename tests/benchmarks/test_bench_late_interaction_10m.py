"""The 10M late-interaction benchmark's binary mode, end to end at a toy size (two runs: build, then cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.benchmark

SCRIPT = Path(__file__).with_name("bench_late_interaction_10m.py")


def _run(cache: Path, out: Path, *extra: str) -> list[dict]:
    args = ["--docs", "80", "--batch-docs", "30", "--queries", "64", "--binary", "BinaryITQ", "--latency-queries", "2",
            "--ceiling-queries", "3", "--ivf-grid", "16:4,32:8", "--threads", "1", "--json", str(out), *extra]
    env = {**os.environ, "DENSEZIP_CACHE": str(cache), "PYTHONPATH": str(SCRIPT.parents[2])}
    subprocess.run([sys.executable, str(SCRIPT), *args], check=True, env=env, capture_output=True, timeout=600)
    return json.loads(out.read_text())


def test_binary_mode_builds_caches_and_measures(tmp_path):
    first = _run(tmp_path / "cache", tmp_path / "a.json")
    steps = [row.get("step") or row["engine"] for row in first]
    assert steps[:4] == ["build", "token index", "save", "memory"]
    build = first[0]
    assert build["vectors"] == 80 * 100 and build["first_stage"] == "binary" and build["peak_rss_gb"] > 0
    assert first[3]["codes_bytes_per_token"] == 16 and first[3]["nlist"] == 64  # 2^floor(log2(sqrt(8000)))
    sweep = [row for row in first if row.get("engine", "").startswith("binary ivf")]
    assert [(row["token_k"], row["nprobe"]) for row in sweep] == [(16, 4), (32, 8)]
    assert all(0.0 <= row["recall@10"] <= 1.0 and row["qps_b32"] > 0 for row in sweep)
    ceiling = [row for row in first if "ceiling" in row.get("step", "")]
    assert len(ceiling) == 2 and all(row["queries"] == 3 and row["s_per_query"] > 0 for row in ceiling)
    saved = tmp_path / "cache" / "bench" / "late-interaction-80" / "index-BinaryITQ-binary"
    assert (saved / "binary.token_index.npy").is_file()

    again = _run(tmp_path / "cache", tmp_path / "b.json", "--kinds", "ivf", "hnsw", "--probe-docs", "10")
    assert again[0]["step"] == "load" and not any(row.get("step") == "build" for row in again)
    probe = [row for row in again if row.get("engine") == "build hnsw"]
    assert len(probe) == 1 and probe[0]["vectors"] == 1000  # timed over the first 10 documents only
    assert not any(row.get("engine", "").startswith("binary hnsw") for row in again)  # a probe is not searched
    assert [row["recall@10"] for row in again if row.get("engine", "").startswith("binary ivf")] == [row["recall@10"] for row in sweep]


def test_fast_plaid_inputs_follow_the_stream_and_its_kmeans_rule(tmp_path):
    """--fast-plaid's two inputs: the stream written as one .npy in document order, and centroids trained
    by fast-plaid's rule (sample of 1 + 16 sqrt(120 n) documents, K = 2^floor(log2(16 sqrt(tokens))))."""
    sys.path.insert(0, str(SCRIPT.parent))
    bench = pytest.importorskip("bench_late_interaction_10m")
    corpus = bench.Corpus(n_docs=70, batch_docs=30, n_queries=4)
    docs = tmp_path / "docs.npy"
    bench._write_stream(corpus, docs)
    written = np.load(docs)
    assert written.shape == (7000, 128) and written.dtype == np.float32
    np.testing.assert_array_equal(written, np.concatenate([batch.vectors for batch in corpus.batches()]))

    out = tmp_path / "centroids.npy"
    done = bench._fast_plaid_centroids(corpus.n_docs)(docs, out)
    centroids = np.load(out)
    assert done["k"] == 1024 and centroids.shape == (1024, 128)  # 16 * sqrt(7000) = 1339
    assert done["sample_docs"] == 70 and done["sample_vectors"] == 7000  # 1 + 16 sqrt(8400) > 70 documents
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    assert bench.fast_plaid_kmeans_size(100_000) == (55_426, 32_768)  # 10M vectors (module docstring)
    assert bench.fast_plaid_kmeans_size(10_000) == (10_000, 8_192)  # 1M: the K its own build chose

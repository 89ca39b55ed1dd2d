"""Bounded-memory builds from a stream of batches (indexes.build)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexes import FlatIndex
from indexes.build import SpillFile, _reservoir, build_from_batches
from retrieval.errors import ConfigError, ShapeError
from retrieval.types import Embeddings

X = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
IDS = [f"d{i}" for i in range(3000)]


def _stream(batch: int = 250):
    for s in range(0, len(X), batch):
        yield IDS[s : s + batch], X[s : s + batch]


def test_same_results_as_an_exact_index(tmp_path):
    index = build_from_batches(_stream(), dim=16, spec="IVF8,Flat", metric="l2", train_size=800, add_chunk=700,
                               nprobe=8, spill_dir=tmp_path)
    exact = FlatIndex(16, metric="l2").add(X, ids=IDS)
    q = X[:20] + 0.01
    assert index.search(q, k=5).doc_ids == exact.search(q, k=5).doc_ids
    assert index.doc_ids == IDS and list(tmp_path.iterdir()) == []  # spill removed


def test_accepts_embeddings_batches(tmp_path):
    stream = (Embeddings(X[s : s + 1000], IDS[s : s + 1000]) for s in range(0, 3000, 1000))
    index = build_from_batches(stream, dim=16, spec="PQ4x4", metric="l2", train_size=3000, spill_dir=tmp_path)
    assert len(index) == 3000 and index.is_trained


def test_reservoir_sample_spans_the_whole_stream():
    rng = np.random.default_rng(1)
    sample = np.empty((0, 1), np.float32)
    for s in range(0, 20_000, 500):
        sample = _reservoir(sample, np.arange(s, s + 500, dtype=np.float32)[:, None], s, 2000, rng)
    assert sample.shape == (2000, 1)
    rows = sample[:, 0]
    # Uniform over 0..19999: each quarter of the stream holds about a quarter of the sample.
    counts = np.histogram(rows, bins=4, range=(0, 20_000))[0]
    assert counts.min() > 400 and len(np.unique(rows)) == 2000


def test_spill_file_roundtrip(tmp_path):
    spill = SpillFile(tmp_path / "v.f32", 16)
    spill.append(X[:10])
    spill.append(X[10:25])
    assert np.array_equal(spill.memmap(), X[:25])
    blocks = [(s, c.copy()) for s, c in spill.chunks(7)]
    assert [s for s, _ in blocks] == [0, 7, 14, 21]
    assert np.array_equal(np.concatenate([c for _, c in blocks]), X[:25])


@pytest.mark.parametrize(("stream", "error", "match"), [
    (lambda: iter([]), ConfigError, "no vectors"),
    (lambda: iter([(["a"], X[:2])]), ShapeError, "1 ids for 2 vectors"),
    (lambda: iter([(IDS[:2], X[:2]), (IDS[1:3], X[:2])]), ConfigError, "already in the index"),
    (lambda: iter([(IDS[:2], np.full((2, 16), np.nan))]), ShapeError, "NaN"),
    (lambda: iter([(IDS[:2], X[:2, :8])]), ShapeError, "batch 0 vectors"),
    (lambda: iter([X[:2]]), ConfigError, "must be an \\(ids, vectors\\) tuple"),
    (lambda: iter([("ab", X[:2])]), ConfigError, "not one string"),
])
def test_bad_batches(stream, error, match, tmp_path):
    with pytest.raises(error, match=match):
        build_from_batches(stream(), dim=16, spec="Flat", spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the spill file is removed on failure too


@pytest.mark.parametrize(("kw", "match"), [({"train_size": 0}, "train_size"), ({"add_chunk": -1}, "add_chunk"),
                                           ({"spec": "NotASpec"}, "factory string")])
def test_bad_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        build_from_batches(_stream(), **{"dim": 16, "spec": "Flat", **kw})


@pytest.mark.slow
def test_peak_memory_below_raw_size():
    # 300k x 384 float32 is 439 MiB; the streamed IVF-PQ build must stay well below it.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_reliability.py"
    out = subprocess.run([sys.executable, str(script), "build", "--n", "300000", "--spec", "IVF256,PQ48x8",
                          "--train-size", "20000"], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["peak_over_raw"] < 0.8, result

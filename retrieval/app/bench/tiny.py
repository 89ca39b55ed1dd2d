"""The tiny synthetic data of the ``smoke`` configuration, written on demand.

``densezip bench smoke`` without ``--data-root`` writes it into a temporary directory
(:func:`write_smoke_data`); the test suite writes the same files. The data depend only on
the seed, so every run measures the same corpus, and token-vector caches keyed by the data
set name stay valid.

Layout under ``root``::

    tiny-beir/       corpus.jsonl (150 documents), queries.jsonl (12), qrels/test.tsv
    tiny-vectors/    base.fvecs (400 x 16), query.fvecs (30 x 16), groundtruth.ivecs (exact L2 top 20)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from retrieval.app.bench.fvecs import write_fvecs, write_ivecs

__all__ = ["SMOKE_SEED", "write_smoke_data", "write_tiny_beir", "write_tiny_vectors"]

SMOKE_SEED = 1338

TOPICS = {
    "ocean": "ocean wave tide salt coral reef fish current",
    "space": "planet orbit star galaxy comet rocket moon telescope",
    "cell": "cell protein gene membrane enzyme dna mitosis ribosome",
    "music": "melody rhythm chord guitar piano tempo harmony violin",
    "stone": "granite basalt mineral crystal quartz erosion magma sediment",
}


def write_tiny_beir(root: Path, rng: np.random.Generator, n_docs: int = 150, n_queries: int = 12) -> Path:
    """A BEIR-layout corpus where each document and query draws its words from one of five topics.

    Every document of a query's topic is relevant to it (grade 1). Documents also carry six
    random filler words (``w0`` .. ``w499``), so the topics overlap only through them.
    """
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    names = list(TOPICS)
    topic_of = []
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_docs):
            topic = names[i % len(names)]
            words = rng.choice(TOPICS[topic].split(), size=6).tolist() + [f"w{int(x)}" for x in rng.integers(0, 500, 6)]
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(words)}) + "\n")
            topic_of.append(topic)
    with open(root / "queries.jsonl", "w", encoding="utf-8") as q, \
            open(root / "qrels" / "test.tsv", "w", encoding="utf-8") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for j in range(n_queries):
            topic = names[j % len(names)]
            q.write(json.dumps({"_id": f"q{j}", "text": " ".join(rng.choice(TOPICS[topic].split(), size=3))}) + "\n")
            for row in np.flatnonzero(np.array(topic_of) == topic):
                r.write(f"q{j}\td{row}\t1\n")
    return root


def write_tiny_vectors(root: Path, rng: np.random.Generator, n: int = 400, nq: int = 30, d: int = 16) -> Path:
    """Clustered base vectors (8 clusters), queries near them, and their exact L2 top 20."""
    root.mkdir(parents=True)
    centers = rng.standard_normal((8, d)) * 3
    base = (centers[rng.integers(0, 8, n)] + rng.standard_normal((n, d))).astype(np.float32)
    queries = (centers[rng.integers(0, 8, nq)] + rng.standard_normal((nq, d))).astype(np.float32)
    dist = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    truth = np.argsort(dist, axis=1, kind="stable")[:, :20]
    write_fvecs(root / "base.fvecs", base)
    write_fvecs(root / "query.fvecs", queries)
    write_ivecs(root / "groundtruth.ivecs", truth)
    return root


def write_smoke_data(root: str | os.PathLike[str], *, seed: int = SMOKE_SEED) -> Path:
    """Write ``tiny-beir/`` and ``tiny-vectors/`` under ``root`` (created if missing); returns ``root``.

    The same ``seed`` always writes the same bytes.
    """
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_tiny_beir(out / "tiny-beir", rng)
    write_tiny_vectors(out / "tiny-vectors", rng)
    return out

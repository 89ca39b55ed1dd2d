"""Concurrency stress: reader threads search while a writer thread adds, deletes and saves.

Checks on every search result (``wrong`` counts any violation):

- no document whose ``delete()`` had returned before the search started comes back;
- every returned id was added at some point, and no id repeats within a row;
- a row is full (no ``-1`` padding) while enough documents are live;
- exact kinds: the query built from an *anchor* document (never deleted) finds that
  document first, and every returned score equals the score recomputed from the
  returned id's own vector (so a label can never be mapped to the wrong id).

Any exception in any thread counts as an error. Used by
``tests/indexes/test_concurrency.py`` (about two seconds) and
``tests/benchmarks/bench_reliability.py stress`` (minutes).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kill_harness import _mv_batch, _mv_vectors, apply, new_index, vector_of

EXACT = ("flat", "faiss-flat", "hnsw", "multivector", "sharded", "sharded-mv")
ANCHORS = [f"a{i}" for i in range(40)]


@dataclass
class StressStats:
    kind: str
    readers: int
    seconds: float = 0.0
    searches: int = 0
    queries: int = 0
    adds: int = 0
    deletes: int = 0
    saves: int = 0
    errors: int = 0
    wrong: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _expected_score(kind: str, query: Any, doc_id: str) -> float:
    if kind in ("multivector", "sharded-mv"):
        return float((query @ _mv_vectors(doc_id).T).max(axis=1).sum())
    diff = query - vector_of(doc_id)
    return -float(diff @ diff)


def run_stress(kind: str, *, readers: int = 4, seconds: float = 2.0, k: int = 10, seed: int = 0) -> StressStats:
    """Run the stress test on index ``kind`` (see :mod:`kill_harness`) for ``seconds``."""
    index = new_index(kind)
    apply(index, kind, "add", [*ANCHORS, *(f"b{i}" for i in range(160))])
    stats = StressStats(kind=kind, readers=readers)
    ever_added: set[str] = {*ANCHORS, *(f"b{i}" for i in range(160))}
    deleted_at: dict[str, int] = {}  # id -> position in deleted_log once delete() returned
    deleted_log: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()  # guards the counters only

    def fail(what: str, wrong: bool) -> None:
        with lock:
            if wrong:
                stats.wrong += 1
            else:
                stats.errors += 1
            if len(stats.problems) < 10:
                stats.problems.append(what)

    def writer() -> None:
        rng = random.Random(seed)
        live = [f"b{i}" for i in range(160)]  # deletable ids, oldest first
        n = 0
        with tempfile.TemporaryDirectory() as tmp:
            while not stop.is_set():
                try:
                    n += 1
                    new = [f"w{n}-{i}" for i in range(8)]
                    ever_added.update(new)
                    apply(index, kind, "add", new)
                    live.extend(new)
                    stats.adds += 1
                    gone, live[:] = live[:8], live[8:]
                    index.delete(gone)
                    for doc_id in gone:
                        deleted_at[doc_id] = len(deleted_log)
                        deleted_log.append(doc_id)
                    stats.deletes += 1
                    if rng.random() < 0.05:
                        index.save(Path(tmp) / "ix", overwrite=True)
                        stats.saves += 1
                except Exception:
                    fail(traceback.format_exc(limit=3), wrong=False)
                    return

    def reader(r: int) -> None:
        rng = random.Random(seed * 1000 + r)
        while not stop.is_set():
            try:
                anchors = rng.sample(ANCHORS, 2)
                others = [f"b{rng.randrange(160)}", f"a{rng.randrange(40)}"]
                probe = anchors + others
                horizon = len(deleted_log)  # deletions finished before this search started
                if kind in ("multivector", "sharded-mv"):
                    queries = _mv_batch(probe)
                    qvecs = [_mv_vectors(p) for p in probe]
                else:
                    queries = np.stack([vector_of(p) for p in probe])
                    qvecs = list(queries)
                result = index.search(queries, k=k)
                with lock:
                    stats.searches += 1
                    stats.queries += len(probe)
                for qi, (row, scores) in enumerate(zip(result.doc_ids, result.scores, strict=True)):
                    if len(row) < k:
                        fail(f"short row ({len(row)} < {k}) for {probe[qi]}", wrong=True)
                    if len(set(row)) != len(row):
                        fail(f"repeated id in {row}", wrong=True)
                    for doc_id in row:
                        if doc_id not in ever_added:
                            fail(f"unknown id {doc_id!r}", wrong=True)
                        elif deleted_at.get(doc_id, horizon) < horizon:
                            fail(f"deleted id {doc_id!r} returned", wrong=True)
                    if kind in EXACT:
                        if qi < 2 and row[:1] != [probe[qi]]:
                            fail(f"anchor {probe[qi]} not first: {row[:3]}", wrong=True)
                        for doc_id, score in zip(row, scores, strict=False):
                            expected = _expected_score(kind, qvecs[qi], doc_id)
                            if abs(float(score) - expected) > 1e-2 * max(1.0, abs(expected)):
                                fail(f"score {score} for {doc_id} but its vector gives {expected}", wrong=True)
            except Exception:
                fail(traceback.format_exc(limit=3), wrong=False)
                return

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(r,)) for r in range(readers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    stats.seconds = time.perf_counter() - start
    if any(t.is_alive() for t in threads):
        fail("a thread did not stop within 60 s (deadlock?)", wrong=False)
    return stats

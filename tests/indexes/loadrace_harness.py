"""Multi-process load / save races: a load must see exactly one save.

Writer processes save distinguishable *generations* of an index to one path with
``save(overwrite=True)`` while reader processes load it with ``verify=True`` in a loop.
Generation ``g`` holds the ids ``g<g>-0 ... g<g>-<n_g - 1>`` (``n_g`` differs between
generations), each id with its own vector (:func:`kill_harness.vector_of`). A reader counts:

- ``mixed``: a load whose ids span generations, whose count is not its generation's, or
  whose vectors are not its ids' vectors (every id must find itself first in a search, and
  a FlatIndex must store exactly the ids' vectors): ids of one save with vectors of another;
- ``corrupt``: a load that raised (a sound index reported damaged, or any other failure);
- ``missing``: a load that found no index at the path after the first save.

Mode ``"update"``: one writer instead loads the index, adds four documents of the next batch
``u<k>-*``, deletes batch ``k - WINDOW`` and saves it (``metadata["gen"] = k``) in a loop; a
reader checks that the index of batch ``k`` holds exactly the ids of batches ``k - WINDOW + 1 ... k``. Writers count ``failed_saves``.
Used by ``tests/indexes/test_load_race.py`` (seconds) and ``tests/benchmarks/bench_reliability.py
loadrace`` (thousands of loads).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kill_harness import MULTI, _mv_batch, new_index, vector_of

KINDS = ("flat", "faiss-flat", "multivector", "sharded", "sharded-mv")


def gen_ids(gen: int) -> list[str]:
    return [f"g{gen}-{i}" for i in range(12 + gen % 9)]


#: Update mode keeps the last WINDOW batches: each step adds batch k and deletes batch k - WINDOW.
WINDOW = 25


def batch_ids(upto: int) -> list[str]:
    return [f"u{k}-{i}" for k in range(max(0, upto - WINDOW + 1), upto + 1) for i in range(4)]


def _add(index: Any, kind: str, ids: list[str]) -> None:
    if kind in MULTI:
        index.add(_mv_batch(ids))
    else:
        index.add(np.stack([vector_of(i) for i in ids]), ids=ids)


def build(kind: str, ids: list[str], gen: int) -> Any:
    index = new_index(kind)
    _add(index, kind, ids)
    index.metadata["gen"] = gen
    return index


def check(index: Any, kind: str, mode: str) -> str | None:
    """What is wrong with a loaded index (None when it is exactly one generation)."""
    live = index.doc_ids
    gen = index.metadata.get("gen")
    expected = gen_ids(gen) if mode == "overwrite" else batch_ids(gen)
    if sorted(live) != sorted(expected):
        return f"ids of generation {gen} expected ({len(expected)}), got {len(live)} ids e.g. {live[:2]}"
    if kind == "flat":
        stored = np.asarray(index.vectors)[index._table.rows_of(live)]
        if not np.array_equal(stored, np.stack([vector_of(i) for i in live])):
            return "stored vectors are not the ids' vectors"
    probe = live[:: max(1, len(live) // 32)]  # every id of a generation; a sample of a grown index
    queries = _mv_batch(probe) if kind in MULTI else np.stack([vector_of(i) for i in probe])
    got = [row[0] for row in index.search(queries, k=1).doc_ids]
    if got != probe:
        wrong = sum(a != b for a, b in zip(got, probe, strict=True))
        return f"{wrong} of {len(probe)} documents do not find themselves: vectors of another save"
    return None


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "raced a save" in record.getMessage()


def _reader(path: str, kind: str, mode: str, loads: int, started: Any, out: Any) -> None:  # pragma: no cover - child
    from indexes import load_index

    counter = _RetryCounter()
    log = logging.getLogger("indexes._paths")
    log.addHandler(counter)
    log.setLevel(logging.DEBUG)
    stats = {"loads": 0, "mixed": 0, "corrupt": 0, "missing": 0, "retried": 0, "examples": []}
    if not started.wait(timeout=120):
        raise RuntimeError("no writer saved within 120 s")
    for _ in range(loads):
        if not Path(path).exists():
            stats["missing"] += 1
            continue
        try:
            index = load_index(path, verify=True)
        except Exception as exc:  # every failure of a load of a sound index counts
            stats["corrupt"] += 1
            stats["examples"].append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        stats["loads"] += 1
        problem = check(index, kind, mode)
        close = getattr(index, "close", None)
        if close is not None:
            close()
        if problem is not None:
            stats["mixed"] += 1
            stats["examples"].append(problem)
    stats["retried"] = counter.count
    stats["examples"] = stats["examples"][:3]
    out.put(("reader", stats))


def _writer(  # pragma: no cover - runs in a child
    path: str, kind: str, mode: str, who: int, writers: int, started: Any, stop: Any, out: Any
) -> None:
    from indexes import load_index

    stats = {"saves": 0, "failed_saves": 0, "examples": []}
    gen = who
    while not stop.is_set():
        try:
            if mode == "overwrite":
                build(kind, gen_ids(gen), gen).save(path, overwrite=True)
                gen += writers
            else:
                index = load_index(path)
                k = index.metadata["gen"] + 1
                _add(index, kind, [f"u{k}-{i}" for i in range(4)])
                if k >= WINDOW:
                    index.delete([f"u{k - WINDOW}-{i}" for i in range(4)])
                index.metadata["gen"] = k
                index.save(path, overwrite=True)
                close = getattr(index, "close", None)
                if close is not None:
                    close()
            stats["saves"] += 1
            started.set()  # readers start once a writer is saving, so that loads and saves overlap
        except Exception as exc:  # a save that fails is counted, never hidden
            stats["failed_saves"] += 1
            stats["examples"].append(f"{type(exc).__name__}: {exc}"[:300])
    stats["examples"] = stats["examples"][:3]
    out.put(("writer", stats))


@dataclass
class RaceStats:
    kind: str
    mode: str
    writers: int
    readers: int
    loads: int = 0
    mixed: int = 0
    corrupt: int = 0
    missing: int = 0
    retried: int = 0  # loads that raced a save, saw the directory replaced and were retried
    saves: int = 0
    failed_saves: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_race(root: Path, kind: str, *, mode: str = "overwrite", loads_per_reader: int = 100,
             writers: int = 2, readers: int = 2) -> RaceStats:
    """Run one race under ``root`` and return the counts (see the module docstring)."""
    # spawn, not fork: a child forked from a process whose OpenMP pool FAISS has used hangs in
    # its first parallel region (GNU libgomp does not survive fork), as after other tests.
    ctx = mp.get_context("spawn")
    path = root / f"{kind}-{mode}"
    if mode == "update":
        writers = 1
        build(kind, batch_ids(0), 0).save(path)
    else:
        build(kind, gen_ids(0), 0).save(path)
    started, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer,
                         args=(str(path), kind, mode, w + (mode == "overwrite"), writers, started, stop, out))
             for w in range(writers)]
    procs += [ctx.Process(target=_reader, args=(str(path), kind, mode, loads_per_reader, started, out))
              for _ in range(readers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    stats = RaceStats(kind, mode, writers, readers)
    results = [out.get(timeout=600) for _ in range(readers)]
    stop.set()
    results += [out.get(timeout=120) for _ in range(writers)]
    for p in procs:
        p.join(timeout=60)
    stats.seconds = round(time.perf_counter() - t0, 2)
    for _, part in results:
        for key, value in part.items():
            if key == "examples":
                stats.examples.extend(value)
            else:
                setattr(stats, key, getattr(stats, key) + value)
    return stats

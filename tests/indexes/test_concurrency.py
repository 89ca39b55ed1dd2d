"""Thread safety: concurrent searches with a writer adding, deleting and saving; the RW lock itself.

The long version (minutes per kind) is ``tests/benchmarks/bench_reliability.py stress``.
"""

from __future__ import annotations

import threading
import time

import pytest
import stress_harness  # tests/indexes is on sys.path (pytest's rootdir-relative import mode)

from indexes._lock import RWLock


@pytest.mark.parametrize("kind", ["flat", "faiss-flat", "hnsw", "ivf-pq", "multivector", "sharded", "sharded-mv"])
def test_search_while_adding_and_deleting(kind):
    stats = stress_harness.run_stress(kind, readers=3, seconds=0.8, seed=1)
    assert stats.problems == []
    assert stats.errors == 0 and stats.wrong == 0
    assert stats.searches > 0 and stats.adds > 0 and stats.deletes > 0


def test_readers_share_writers_exclude():
    lock = RWLock()
    inside: list[str] = []
    lock.acquire_read()
    got_second_read = threading.Event()

    def second_reader() -> None:
        lock.acquire_read()
        got_second_read.set()
        lock.release_read()

    t = threading.Thread(target=second_reader)
    t.start()
    assert got_second_read.wait(5)  # two readers at once
    t.join()

    def writer() -> None:
        lock.acquire_write()
        inside.append("w")
        lock.release_write()

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.05)
    assert inside == []  # the writer waits for the reader
    lock.release_read()
    w.join(5)
    assert inside == ["w"]


def test_waiting_writer_blocks_new_readers():
    lock = RWLock()
    lock.acquire_read()
    order: list[str] = []

    def writer() -> None:
        lock.acquire_write()
        order.append("writer")
        lock.release_write()

    def reader() -> None:
        lock.acquire_read()
        order.append("reader")
        lock.release_read()

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.05)  # the writer is now waiting
    r = threading.Thread(target=reader)
    r.start()
    time.sleep(0.05)
    assert order == []  # the new reader queues behind the writer
    lock.release_read()
    w.join(5)
    r.join(5)
    assert order == ["writer", "reader"]


def test_reentrant_and_no_upgrade():
    lock = RWLock()
    lock.acquire_write()
    lock.acquire_write()  # a write calling a write (MultiVectorIndex.add -> train)
    lock.acquire_read()  # a write calling a search
    lock.release_read()
    lock.release_write()
    lock.release_write()
    lock.acquire_read()
    lock.acquire_read()
    with pytest.raises(RuntimeError, match="inside a search"):
        lock.acquire_write()
    lock.release_read()
    lock.release_read()
    lock.acquire_write()  # free again
    lock.release_write()


def test_index_copies_get_their_own_lock():
    import copy

    import numpy as np

    from indexes import FlatIndex

    index = FlatIndex(2).add(np.eye(2, dtype=np.float32), ids=["a", "b"])
    clone = copy.deepcopy(index)
    assert clone._lock is not index._lock and clone.search(np.eye(2, dtype=np.float32), k=1).doc_ids == [["a"], ["b"]]


def test_stress_detects_races_without_the_lock(monkeypatch):
    # The same stress with the lock switched off must fail, or passing it proves nothing.
    for name in ("acquire_read", "release_read", "acquire_write", "release_write"):
        monkeypatch.setattr(RWLock, name, lambda self: None)
    # Races are probabilistic: retry a few short runs (the first almost always fails) rather than
    # let a quiet scheduler turn this control into a flaky test.
    for attempt in range(6):
        stats = stress_harness.run_stress("multivector", readers=3, seconds=0.8, seed=1 + attempt)
        if stats.errors + stats.wrong:
            break
    assert stats.errors + stats.wrong > 0


def test_a_writer_that_gives_up_waiting_lets_queued_readers_in(monkeypatch):
    lock = RWLock()
    lock.acquire_read()
    order: list[str] = []
    waits = threading.Event()
    real_wait = lock._cond.wait

    def interrupted_wait(timeout: float | None = None) -> bool:
        if threading.current_thread().name == "writer":
            waits.set()
            real_wait(0.2)
            raise KeyboardInterrupt  # e.g. Ctrl-C while the writer waits for the reader
        return real_wait(timeout)

    monkeypatch.setattr(lock._cond, "wait", interrupted_wait)

    def writer() -> None:
        try:
            lock.acquire_write()
        except KeyboardInterrupt:
            order.append("writer gave up")

    def reader() -> None:
        lock.acquire_read()
        order.append("reader")
        lock.release_read()

    w = threading.Thread(target=writer, name="writer")
    w.start()
    assert waits.wait(5)
    r = threading.Thread(target=reader)
    r.start()  # queues behind the waiting writer
    w.join(5)
    r.join(5)
    assert order == ["writer gave up", "reader"]
    lock.release_read()
    lock.acquire_write()  # nothing is left counted
    lock.release_write()

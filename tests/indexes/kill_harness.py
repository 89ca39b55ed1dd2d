"""Kill trials: SIGKILL a process at random points of add / delete / save, then load what it left.

A *zygote* subprocess imports numpy, faiss and ``indexes`` once and then, per trial, forks a
child that loads the index directory, applies a deterministic schedule of adds and deletes
and saves after every step (``save(overwrite=True)``) until the zygote kills it after a random
delay. The test process then loads the directory and checks that it is exactly the state
before or after the save the kill interrupted, never a mix, never unloadable.

State ``j`` of the schedule is a pure function of ``j``: state 0 holds ``N0`` documents; odd
steps add ``STEP`` new documents, even steps delete the ``STEP`` oldest live ones. Every
vector is derived from its document id, so the content of a loaded index can be checked too.
The zygote never runs FAISS code itself (OpenMP does not survive ``fork`` in a process that
has already used it); every child does its own work and dies by SIGKILL.

Used by ``tests/indexes/test_crash_safety.py`` (a few trials) and
``tests/benchmarks/bench_reliability.py crash`` (hundreds).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DIM = 16
N0 = 120
STEP = 12

KINDS = ("flat", "faiss-flat", "hnsw", "ivf-pq", "opq-pq", "multivector", "sharded", "sharded-mv")
MULTI = ("multivector", "sharded-mv")  # kinds searched with MultiVectorEmbeddings


def vector_of(doc_id: str) -> np.ndarray:
    """The document's vector, a pure function of its id."""
    seed = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def _mv_vectors(doc_id: str) -> np.ndarray:
    base = vector_of(doc_id)
    tokens = np.stack([base, np.roll(base, 1), -np.roll(base, 2)])
    return tokens / np.linalg.norm(tokens, axis=1, keepdims=True)  # unit tokens: a document is its own best match


class Schedule:
    """Live ids of every state ``j`` (memoised; each state derives from the previous one)."""

    def __init__(self) -> None:
        self._states: list[list[str]] = [[f"d{i}" for i in range(N0)]]

    def ids(self, j: int) -> list[str]:
        while len(self._states) <= j:
            step = len(self._states)
            prev = self._states[-1]
            if step % 2:
                self._states.append([*prev, *(f"s{step}-{i}" for i in range(STEP))])
            else:
                self._states.append(prev[STEP:])
        return self._states[j]

    def op(self, j: int) -> tuple[str, list[str]]:
        """The operation turning state ``j - 1`` into state ``j``."""
        before, after = set(self.ids(j - 1)), self.ids(j)
        if j % 2:
            return "add", [i for i in after if i not in before]
        return "delete", [i for i in self.ids(j - 1) if i not in set(after)]


def new_index(kind: str) -> Any:
    """An empty index of ``kind``, trained where it needs training."""
    from indexes import FaissIndex, FlatIndex, ShardedIndex
    from indexes.multivector import MultiVectorIndex
    from indexes.sharded_multivector import ShardedMultiVectorIndex

    train = np.random.default_rng(5).standard_normal((10_000, DIM)).astype(np.float32)
    makers: dict[str, Callable[[], Any]] = {
        "flat": lambda: FlatIndex(DIM, metric="l2"),
        "faiss-flat": lambda: FaissIndex(DIM, spec="Flat", metric="l2"),
        "hnsw": lambda: FaissIndex(DIM, spec="HNSW16", metric="l2", ef_search=64),
        "ivf-pq": lambda: FaissIndex(DIM, spec="IVF8,PQ4x4", metric="l2", nprobe=8).train(train),
        "opq-pq": lambda: _fast_opq().train(train[:2000]),
        "multivector": lambda: MultiVectorIndex(DIM, spec="FP16"),
        # Three exact shards in sub-directories, the top manifest written last.
        "sharded": lambda: ShardedIndex(FlatIndex(DIM, metric="l2"), 3),
        "sharded-mv": lambda: ShardedMultiVectorIndex(MultiVectorIndex(DIM, spec="FP16"), 3),
    }
    return makers[kind]()


def _fast_opq() -> Any:
    import faiss

    from indexes import FaissIndex

    index = FaissIndex(DIM, spec="OPQ4,PQ4x4", metric="l2")
    opq = faiss.downcast_VectorTransform(faiss.downcast_index(index.faiss_index).chain.at(0))
    opq.niter, opq.niter_pq, opq.niter_pq_0 = 4, 2, 2  # the rotation's quality does not matter here
    return index


def _mv_batch(ids: list[str]) -> Any:
    from retrieval.types import MultiVectorEmbeddings

    return MultiVectorEmbeddings.from_list([_mv_vectors(i) for i in ids], ids=ids)


def apply(index: Any, kind: str, op: str, ids: list[str]) -> None:
    if op == "delete":
        index.delete(ids)
    elif kind in MULTI:
        index.add(_mv_batch(ids))
    else:
        index.add(np.stack([vector_of(i) for i in ids]), ids=ids)


def build_state0(kind: str, path: Path) -> None:
    index = new_index(kind)
    apply(index, kind, "add", Schedule().ids(0))
    index.save(path, overwrite=True)


# ---------------------------------------------------------------------- child and zygote
@contextmanager
def _unsafe_directory(path: Any, *, overwrite: bool) -> Iterator[Path]:
    """A deliberately broken save (clear the directory, write in place) to show the trials catch it."""
    target = Path(path)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    # Stand for a slow disk: the directory stays empty for a while, so a random kill lands in
    # the damage window most of the time (without it, 4 kills could all miss a sub-ms save).
    time.sleep(0.02)
    yield target


def _child(path: Path, kind: str, start: int, log: Path, mode: str) -> None:  # pragma: no cover - dies by SIGKILL
    import indexes._io
    import indexes.base
    import indexes.multivector
    from indexes import load_index

    if mode == "rename":
        indexes._io._exchange = lambda a, b: False  # type: ignore[assignment]
    elif mode == "unsafe":
        indexes.base.atomic_directory = _unsafe_directory  # type: ignore[assignment]
        indexes.multivector.atomic_directory = _unsafe_directory  # type: ignore[assignment]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    schedule = Schedule()
    index = load_index(path)
    os.write(fd, b"ready\n")
    j = start
    while True:
        j += 1
        apply(index, kind, *schedule.op(j))
        os.write(fd, f"saving {j}\n".encode())
        index.save(path, overwrite=True)
        os.write(fd, f"saved {j}\n".encode())


def zygote() -> None:  # pragma: no cover - runs in a subprocess
    """Read one JSON trial per stdin line, fork a child for it, kill it after ``delay`` s."""
    import faiss

    import indexes.faiss_index
    import indexes.multivector  # noqa: F401 - imported before fork so children start fast

    faiss.omp_set_num_threads(1)
    for line in sys.stdin:
        trial = json.loads(line)
        log = Path(trial["log"])
        log.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:
            try:
                _child(Path(trial["path"]), trial["kind"], trial["start"], log, trial["mode"])
            finally:
                os._exit(1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not (log.is_file() and b"ready" in log.read_bytes()):
            time.sleep(0.001)
        time.sleep(trial["delay"])
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"killed": os.WIFSIGNALED(status)}) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------- driver
@dataclass
class TrialStats:
    kind: str
    mode: str
    trials: int = 0
    unloadable: int = 0
    mixed: int = 0
    killed_in_save: int = 0  # the child's last log line was "saving j": the kill hit save()
    found_new: int = 0  # the directory held the state the interrupted save was writing
    steps: int = 0  # saves completed across all trials
    leftovers_after: int = 0  # temp / backup siblings left after the last trial's next save
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verify(path: Path, kind: str, allowed: set[int], schedule: Schedule) -> tuple[int | None, str | None]:
    """Load ``path``; return (state number, None) or (None, what is wrong)."""
    from indexes import load_index

    try:
        index = load_index(path)
    except Exception as exc:
        return None, f"unloadable: {type(exc).__name__}: {exc}"
    live = index.doc_ids
    # Shards list their ids shard by shard: compare as a set there, in insertion order elsewhere.
    same = (lambda j: sorted(live) == sorted(schedule.ids(j))) if kind.startswith("sharded") else (lambda j: live == schedule.ids(j))
    state = next((j for j in sorted(allowed) if same(j)), None)
    if state is None:
        return None, f"mixed: {len(live)} live ids match none of states {sorted(allowed)}"
    probe = live[:: max(1, len(live) // 5)][:5]
    if kind in MULTI:
        queries = _mv_batch(probe)
        got = [row[0] for row in index.search(queries, k=1).doc_ids]
    else:
        if kind == "flat":
            rows = [live.index(i) for i in probe]
            stored = np.asarray(index.vectors)[~index._table.deleted][rows]
            if not np.array_equal(stored, np.stack([vector_of(i) for i in probe])):
                return None, "mixed: stored vectors differ from the ids' vectors"
        got = [row[0] for row in index.search(np.stack([vector_of(i) for i in probe]), k=1).doc_ids]
    if kind in ("flat", "faiss-flat", "hnsw", "multivector", "sharded", "sharded-mv") and got != probe:
        return None, f"mixed: self-search returned {got} for {probe}"
    return state, None


def run_trials(
    kind: str, trials: int, workdir: Path, *, mode: str = "exchange", window: float = 0.25, seed: int = 0,
) -> TrialStats:
    """Run ``trials`` kill trials of index ``kind`` in ``workdir``; see the module docstring.

    ``mode``: ``"exchange"`` (the normal save: one atomic renameat2 exchange on Linux),
    ``"rename"`` (the two-rename fallback used where no exchange exists, with recovery on
    load) or ``"unsafe"`` (a broken in-place save, to show that the trials detect damage).
    """
    from indexes._io import leftover_paths

    rng = random.Random(seed)
    schedule = Schedule()
    path = workdir / f"{kind}-{mode}"
    build_state0(kind, path)
    stats = TrialStats(kind=kind, mode=mode)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here.parents[1]), str(here), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-c", "import kill_harness; kill_harness.zygote()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    state = 0
    try:
        for _ in range(trials):
            log = workdir / "child.log"
            trial = {"path": str(path), "kind": kind, "start": state, "log": str(log),
                     "mode": mode, "delay": rng.uniform(0.0, window)}
            proc.stdin.write(json.dumps(trial) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"the kill-trial zygote died (exit status {proc.poll()})")
            lines = log.read_text().split("\n") if log.is_file() else []
            saving = [int(x.split()[1]) for x in lines if x.startswith("saving ")]
            saved = [int(x.split()[1]) for x in lines if x.startswith("saved ")]
            allowed = {saved[-1] if saved else state}
            if saving and (not saved or saving[-1] > saved[-1]):
                allowed.add(saving[-1])
                stats.killed_in_save += 1
            stats.steps += len(saved)
            stats.trials += 1
            found, problem = _verify(path, kind, allowed, schedule)
            if problem is not None:
                stats.failures.append(problem)
                if problem.startswith("unloadable"):
                    stats.unloadable += 1
                else:
                    stats.mixed += 1
                # Start over from a known state. The damaged directory has no manifest, so save()
                # would (rightly) refuse to replace it: the harness removes what it made itself.
                shutil.rmtree(path, ignore_errors=True)  # a kill may also have left no directory
                build_state0(kind, path)
                state = 0
                continue
            assert found is not None
            if len(allowed) == 2 and found == max(allowed):
                stats.found_new += 1
            state = found
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
    # The next save cleans the leftovers of killed saves.
    from indexes import load_index

    load_index(path).save(path, overwrite=True)
    stats.leftovers_after = len(leftover_paths(path))
    return stats

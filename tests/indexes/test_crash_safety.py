"""Crash safety of saved indexes: SIGKILL mid-save leaves the old or the new index, never a mix.

The full version (hundreds of trials per kind) is ``tests/benchmarks/bench_reliability.py crash``;
its results are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import kill_harness  # tests/indexes is on sys.path (pytest's rootdir-relative import mode)
import numpy as np
import pytest

from indexes import FlatIndex, load_index
from indexes._io import _exchange, leftover_paths, recover_interrupted_save

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kill trials fork a child per trial")


@pytest.mark.parametrize("kind", kill_harness.KINDS)
def test_kill_during_add_delete_save_leaves_old_or_new(kind, tmp_path):
    stats = kill_harness.run_trials(kind, 3, tmp_path, seed=11, window=0.15)
    assert stats.failures == []
    assert stats.trials == 3 and stats.unloadable == 0 and stats.mixed == 0
    assert stats.steps + stats.killed_in_save > 0  # the kills landed in or after a save
    assert stats.leftovers_after == 0


@pytest.mark.parametrize("kind", ["flat", "ivf-pq"])
def test_kill_with_two_rename_fallback_recovers(kind, tmp_path):
    stats = kill_harness.run_trials(kind, 3, tmp_path, mode="rename", seed=3, window=0.15)
    assert stats.failures == [] and stats.unloadable == 0 and stats.mixed == 0


def test_trials_detect_an_unsafe_save(tmp_path):
    # A save that clears the directory and writes in place must be caught, or the trials prove nothing.
    stats = kill_harness.run_trials("flat", 8, tmp_path, mode="unsafe", seed=5, window=0.1)
    assert stats.unloadable + stats.mixed > 0


def _flat(n: int, seed: int = 0) -> FlatIndex:
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    return FlatIndex(4).add(x, ids=[f"d{i}" for i in range(n)])


def test_exchange_swaps_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no atomic exchange on this platform / file system")
    assert (tmp_path / "b" / "x").read_text() == "a" and not (tmp_path / "a" / "x").exists()


def test_missing_index_is_restored_from_backup_of_dead_process(tmp_path):
    _flat(5).save(tmp_path / "ix")
    # What a kill between the two renames of the fallback leaves: no ix, a complete backup.
    os.replace(tmp_path / "ix", tmp_path / ".ix.old-999999999")
    assert load_index(tmp_path / "ix").doc_ids == [f"d{i}" for i in range(5)]
    assert leftover_paths(tmp_path / "ix") == []
    assert recover_interrupted_save(tmp_path / "ix") is False  # nothing left to do


def test_next_save_removes_leftovers_of_killed_saves(tmp_path):
    _flat(3).save(tmp_path / "ix")
    (tmp_path / ".ix.tmp-999999999-abc").mkdir()  # half-written by a dead process
    (tmp_path / ".ix.old-999999999").mkdir()
    (tmp_path / f".ix.tmp-{os.getppid()}-live").mkdir()  # a live process's save: left alone
    _flat(4).save(tmp_path / "ix", overwrite=True)
    assert [p.name for p in leftover_paths(tmp_path / "ix")] == [f".ix.tmp-{os.getppid()}-live"]
    assert len(load_index(tmp_path / "ix")) == 4


def test_failed_save_keeps_old_index(tmp_path, monkeypatch):
    _flat(3).save(tmp_path / "ix")
    index = _flat(6)

    def boom(directory: Path, arrays: dict) -> dict:
        raise OSError("disk full")

    monkeypatch.setattr(index, "_write_payload", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "ix", overwrite=True)
    assert len(load_index(tmp_path / "ix")) == 3 and leftover_paths(tmp_path / "ix") == []

"""A load sees exactly one save, while other processes save over the same path.

Two writer processes ``save(overwrite=True)`` distinguishable generations while two reader
processes ``load_index(verify=True)``; every load must be one whole generation (0 mixed),
no sound index may be reported damaged (0 corrupt) and the path never goes missing. The
long version (thousands of loads, every exact kind) is ``tests/benchmarks/bench_reliability.py
loadrace``; see docs/RELIABILITY.md.
"""

from __future__ import annotations

import sys

import pytest
from loadrace_harness import run_race

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc/self/fd (Linux)")


def _clean(stats, loads: int) -> None:
    d = stats.to_dict()
    assert (d["mixed"], d["corrupt"], d["missing"], d["failed_saves"]) == (0, 0, 0, 0), d["examples"]
    assert d["loads"] == d["readers"] * loads and d["saves"] > 0


@pytest.mark.parametrize(("kind", "loads"), [("flat", 100), ("faiss-flat", 50), ("sharded", 80)])
def test_loads_racing_overwrites_see_one_generation(tmp_path, kind, loads):
    _clean(run_race(tmp_path, kind, mode="overwrite", loads_per_reader=loads), loads)


def test_loads_racing_load_add_save_see_one_generation(tmp_path):
    _clean(run_race(tmp_path, "flat", mode="update", loads_per_reader=60), 60)

"""Overwriting never destroys what is not densezip's; creating a new path is one atomic step.

``save(path, overwrite=True)`` (and every CLI ``--out ... --overwrite``, which all end in
:func:`indexes._io.atomic_directory`) replaces only an empty directory or one densezip wrote;
two processes creating the same new path cannot both succeed; a symlinked index path is
replaced through the link, leaving no temporary behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from indexes import FlatIndex, ShardedIndex, load_index
from indexes._io import is_replaceable, leftover_paths
from retrieval.errors import ConfigError
from retrieval.rag.ingest import Passage
from retrieval.rag.passages import build_collection


def _flat(n: int, seed: int = 0) -> FlatIndex:
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    return FlatIndex(4).add(x, ids=[f"d{i}" for i in range(n)])


def _user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_bytes(b"\\documentclass{article} years of work")
    (path / "photos").mkdir()
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return _snapshot(path)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(path.rglob("*"))}


def _refused(exc: ConfigError, path: Path) -> None:
    text = str(exc)
    assert str(path) in text and "nothing in it was touched" in text and "not a densezip index" in text


def test_a_user_folder_survives_save_with_overwrite(tmp_path):
    folder = tmp_path / "home"
    before = _user_folder(folder)
    with pytest.raises(ConfigError) as info:
        _flat(3).save(folder, overwrite=True)
    _refused(info.value, folder)
    assert _snapshot(folder) == before
    assert leftover_paths(folder) == []  # the refusal comes before any temporary is made


@pytest.mark.parametrize("manifest", [b'{"format": "something-else"}', b"not json", b'["densezip-index"]'])
def test_a_folder_whose_manifest_is_not_densezips_survives(tmp_path, manifest):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(manifest)
    (folder / "data.bin").write_bytes(b"precious")
    before = _snapshot(folder)
    with pytest.raises(ConfigError):
        _flat(3).save(folder, overwrite=True)
    assert _snapshot(folder) == before


def test_an_empty_directory_and_an_index_are_replaced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _flat(3).save(empty, overwrite=True)
    assert len(load_index(empty)) == 3
    _flat(5).save(empty, overwrite=True)
    assert len(load_index(empty)) == 5
    with pytest.raises(ConfigError, match="already exists"):
        _flat(2).save(empty)


def test_sharded_collection_and_jpq_layouts_are_densezips(tmp_path):
    sharded = ShardedIndex(FlatIndex(4), n_shards=2)
    sharded.add(np.eye(4, dtype=np.float32), ids=list("abcd"))
    sharded.save(tmp_path / "sh")
    assert is_replaceable(tmp_path / "sh")
    sharded.save(tmp_path / "sh", overwrite=True)

    from conftest import FakeEncoder

    passages = [Passage(f"p{i}#0", f"text {i}", f"p{i}", 0, 6) for i in range(3)]
    build_collection(passages, tmp_path / "coll", encoder=FakeEncoder(dim=8))
    assert is_replaceable(tmp_path / "coll")
    build_collection(passages, tmp_path / "coll", encoder=FakeEncoder(dim=8), overwrite=True)

    jpq = tmp_path / "jpq"  # the layout of a JPQ export: index/ + query_encoder/ + jpq.json
    _flat(2).save(jpq / "index")
    (jpq / "query_encoder").mkdir()
    (jpq / "query_encoder" / "config.json").write_text("{}")
    (jpq / "jpq.json").write_text("{}")
    assert is_replaceable(jpq)
    (jpq / "notes.txt").write_text("mine")  # a file densezip did not write: no longer its layout
    assert not is_replaceable(jpq)
    (jpq / "notes.txt").unlink()
    (jpq / "index" / "manifest.json").write_text('{"format": "other"}')
    assert not is_replaceable(jpq)


def test_collection_overwrite_refuses_a_user_folder(tmp_path):
    from conftest import FakeEncoder

    folder = tmp_path / "docs"
    before = _user_folder(folder)
    passages = [Passage("p0#0", "x", "p0", 0, 1)]
    with pytest.raises(ConfigError) as info:
        build_collection(passages, folder, encoder=FakeEncoder(dim=8), overwrite=True)
    _refused(info.value, folder)
    assert _snapshot(folder) == before


# ---------------------------------------------------------------------------- create race
def _racer(paths: list[str], barrier, results, who: int) -> None:  # pragma: no cover - runs in a child
    import time

    write = FlatIndex._write_payload

    def slow_write(self, directory, arrays):  # widen the window: both racers pass the early check
        time.sleep(0.01)
        return write(self, directory, arrays)

    FlatIndex._write_payload = slow_write
    index = _flat(4, seed=who)
    for n, path in enumerate(paths):
        barrier.wait(timeout=30)
        try:
            index.save(path)
            results.put((n, who, "ok"))
        except Exception as exc:  # any other type is a failure the counts report
            results.put((n, who, f"{type(exc).__name__}: {exc}"))


def run_create_race(root: Path, trials: int, processes: int = 2) -> dict[str, int]:
    """``processes`` processes save to the same new path ``trials`` times; count winners and losers."""
    ctx = mp.get_context("fork")
    paths = [str(root / f"ix{n}") for n in range(trials)]
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(paths, barrier, results, w)) for w in range(processes)]
    for p in procs:
        p.start()
    outcome = [results.get(timeout=60) for _ in range(trials * processes)]
    for p in procs:
        p.join(timeout=30)
    by_trial: dict[int, list[tuple[int, str]]] = {}
    for n, who, what in outcome:
        by_trial.setdefault(n, []).append((who, what))
    counts = {"trials": trials, "one_winner": 0, "lost_creates": 0, "bad_errors": 0}
    for n, answers in by_trial.items():
        winners = [who for who, what in answers if what == "ok"]
        losers = [what for _, what in answers if what != "ok"]
        counts["one_winner"] += len(winners) == 1
        counts["bad_errors"] += sum(not what.startswith("ConfigError") or "already exists" not in what
                                    for what in losers)
        if len(winners) == 1:  # the saved index must be the winner's
            expected = _flat(4, seed=winners[0]).vectors
            counts["lost_creates"] += not np.array_equal(load_index(paths[n]).vectors, expected)
        else:
            counts["lost_creates"] += 1
    return counts


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_two_processes_creating_one_path_have_exactly_one_winner(tmp_path):
    counts = run_create_race(tmp_path, trials=25)
    assert counts == {"trials": 25, "one_winner": 25, "lost_creates": 0, "bad_errors": 0}


# ---------------------------------------------------------------------------- symlinks
@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_overwrite_through_a_symlink_replaces_the_target_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "ix"
    _flat(3).save(real)
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    _flat(6, seed=1).save(link, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(load_index(link)) == 6 and len(load_index(real)) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "store"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["ix"]
    with pytest.raises(ConfigError, match="already exists"):
        _flat(2).save(link)  # without overwrite a link is an existing path like any other


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_symlink_to_a_user_folder_is_refused(tmp_path):
    folder = tmp_path / "home"
    before = _user_folder(folder)
    (tmp_path / "out").symlink_to(folder, target_is_directory=True)
    with pytest.raises(ConfigError):
        _flat(2).save(tmp_path / "out", overwrite=True)
    assert _snapshot(folder) == before and (tmp_path / "out").is_symlink()

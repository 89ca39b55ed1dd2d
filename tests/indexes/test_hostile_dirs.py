"""An attacker-controlled index directory: nothing outside it is read, nothing stored runs, nothing hangs.

For every index kind (Flat, FAISS, multi-vector, sharded with a trained FAISS file, RAG
collection) and every file slot of its saved layout (each file a manifest names, the
manifests themselves, shard directories, the shared trained file), plant:

- ``link-out``: a symlink to a file outside the directory holding a secret;
- ``link-fifo``: a symlink to a FIFO outside (opening it without O_NONBLOCK would block);
- ``link-dev``: a symlink to ``/dev/zero`` (an endless read);
- ``fifo``: a FIFO in place of the file;
- ``device``: a character device in place of the file (where this process may mknod);
- ``dotdot`` / ``absolute``: the manifest names ``../<file>`` or an absolute path to a valid
  copy of the file outside, with the checksums updated to match;
- ``pickle``: a ``.npy`` holding a pickled object whose unpickling would create a marker
  file, with the checksums updated to match.

Each must be refused by the load (IndexFormatError) and reported by ``check_index`` as damage;
no error may echo the secret, the marker must not exist, and every case runs under an alarm
so that a read that blocks fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex, ShardedIndex, load_index
from indexes._io import file_sha256
from indexes.check import check_index
from indexes.multivector import MultiVectorIndex
from retrieval.errors import IndexFormatError
from retrieval.rag.ingest import Passage
from retrieval.rag.passages import PassageStore, check_collection, load_collection
from retrieval.types import MultiVectorEmbeddings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, /dev/zero, SIGALRM")

SECRET = "SECRET-7f3a-do-not-echo"
DIM = 8
_X = np.random.default_rng(0).standard_normal((12, DIM)).astype(np.float32)
_IDS = [f"d{i}" for i in range(12)]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ---------------------------------------------------------------------------- layouts
def _flat(path: Path) -> None:
    index = FlatIndex(DIM).add(_X, ids=_IDS)
    index.delete(["d3"])  # so that deleted_bits.npy exists
    index.save(path)


def _faiss(path: Path) -> None:
    FaissIndex(DIM, spec="Flat").add(_X, ids=_IDS).save(path)


def _multivector(path: Path) -> None:
    emb = MultiVectorEmbeddings.from_list([_X[i : i + 3] for i in range(4)], ids=_IDS[:4])
    MultiVectorIndex(DIM, spec="FP16").add(emb).save(path)


def _sharded(path: Path) -> None:
    template = FaissIndex(DIM, spec="IVF2,Flat").train(np.random.default_rng(1).standard_normal((64, DIM)).astype(np.float32))
    ShardedIndex(template, 2).add(_X, ids=_IDS).save(path)


def _collection(path: Path) -> None:
    FlatIndex(DIM).add(_X[:3], ids=["a#0", "a#1", "b#0"]).save(path / "index")
    passages = [Passage("a#0", "one", "a", 0, 3), Passage("a#1", "two", "a", 4, 7), Passage("b#0", "three", "b", 0, 5)]
    PassageStore(passages).save(path / "passages")


LAYOUTS: dict[str, Callable[[Path], None]] = {
    "flat": _flat, "faiss": _faiss, "multivector": _multivector, "sharded": _sharded, "collection": _collection,
}


def _load(kind: str, path: Path) -> Any:
    return load_collection(path) if kind == "collection" else load_index(path)


def _check(kind: str, path: Path) -> Any:
    return check_collection(path) if kind == "collection" else check_index(path)


def _slots(root: Path) -> list[str]:
    """Every file and shard directory a manifest under ``root`` names, and every manifest."""
    slots = []
    for manifest in sorted(root.rglob("manifest.json")):
        raw = json.loads(manifest.read_text())
        base = manifest.parent.relative_to(root)
        slots.append(str(base / "manifest.json"))
        slots += [str(base / name) for name in raw.get("files", {})]
        slots += [str(base / e["dir"]) for e in raw.get("params", {}).get("shards", [])]
    return sorted(set(slots))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-originals")
    for kind, make in LAYOUTS.items():
        make(root / kind)
    return {kind: root / kind for kind in LAYOUTS}


def _can_mknod() -> bool:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        try:
            os.mknod(Path(d) / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except (PermissionError, AttributeError, OSError):
            return False
    return True


ATTACKS = ("link-out", "link-fifo", "link-dev", "fifo", "device", "dotdot", "absolute", "pickle")
#: Files read under a fixed name, never a name taken from a manifest: no name to forge there.
_FIXED_NAMES = ("manifest.json", "passages.jsonl")


def _applies(slot: str, attack: str) -> bool:
    name = Path(slot).name
    if attack in ("dotdot", "absolute"):
        return name not in _FIXED_NAMES
    if attack == "pickle":
        return name.endswith(".npy")
    return attack != "device" or _CAN_MKNOD


def _cases() -> list[tuple[str, str, str]]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="densezip-hostile-slots-"))
    cases = []
    for kind, make in LAYOUTS.items():
        make(root / kind)
        cases += [(kind, slot, attack) for slot in _slots(root / kind) for attack in ATTACKS if _applies(slot, attack)]
    shutil.rmtree(root)
    return cases


_CAN_MKNOD = sys.platform.startswith("linux") and _can_mknod()
CASES = _cases() if sys.platform.startswith("linux") else []


# ---------------------------------------------------------------------------- planting
def _rename_in_manifest(manifest: Path, old: str, new: str) -> None:
    """Replace the name ``old`` by ``new`` everywhere in ``manifest`` (keys and values)."""
    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {(new if k == old else k): walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return new if obj == old else obj

    manifest.write_text(json.dumps(walk(json.loads(manifest.read_text()))))


def _reseal(root: Path) -> None:
    """Make every checksum match the files as they now are, so only the planted names are wrong."""
    for manifest in sorted(root.rglob("manifest.json"), key=lambda p: -len(p.parts)):
        raw = json.loads(manifest.read_text())
        for name, info in raw.get("files", {}).items():
            p = manifest.parent / name
            if os.path.isabs(name) or "/" in name or not p.is_file() or p.is_symlink():
                continue
            info.update(bytes=p.stat().st_size, sha256=file_sha256(p))
        for entry in raw.get("params", {}).get("shards", []):
            sub = manifest.parent / entry["dir"] / "manifest.json"
            if sub.is_file() and not sub.is_symlink():
                entry["manifest_sha256"] = file_sha256(sub)
        manifest.write_text(json.dumps(raw))


def _replace(target: Path, make: Callable[[Path], None]) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()
    make(target)


def _plant(root: Path, slot: str, attack: str, outside: Path) -> None:
    """Plant ``attack`` at ``slot`` (see :func:`_applies`)."""
    target = root / slot
    name = target.name
    secret = outside / "secret.txt"
    if attack == "link-out":
        _replace(target, lambda t: t.symlink_to(secret))
    elif attack == "link-fifo":
        _replace(target, lambda t: t.symlink_to(outside / "fifo"))
    elif attack == "link-dev":
        _replace(target, lambda t: t.symlink_to("/dev/zero"))
    elif attack == "fifo":
        _replace(target, os.mkfifo)
    elif attack == "device":
        _replace(target, lambda t: os.mknod(t, stat.S_IFCHR | 0o600, os.makedev(1, 5)))  # /dev/zero's numbers
    elif attack in ("dotdot", "absolute"):
        copy = (target.parent.parent / name) if attack == "dotdot" else (outside / name)
        (shutil.copytree if target.is_dir() else shutil.copy2)(target, copy)
        _rename_in_manifest(target.parent / "manifest.json", name, f"../{name}" if attack == "dotdot" else str(copy))
        _reseal(root)
    elif attack == "pickle":
        original = np.load(target)
        hostile = np.empty(max(original.size, 1), dtype=object)
        hostile[:] = [_Payload(str(outside / "ran"))] * hostile.size
        np.save(target, hostile.reshape(original.shape) if original.size else hostile, allow_pickle=True)
        _reseal(root)


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def fire(signum, frame):
        raise TimeoutError("a read blocked: the load or check opened a FIFO / device")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(("kind", "slot", "attack"), CASES)
def test_a_hostile_entry_is_refused_by_load_and_check(built, tmp_path, kind, slot, attack):
    root = tmp_path / "ix"
    shutil.copytree(built[kind], root, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET * 100)
    os.mkfifo(outside / "fifo")
    _plant(root, slot, attack, outside)
    with _alarm(20):
        with pytest.raises(IndexFormatError) as info:
            _load(kind, root)
        report = _check(kind, root)
    assert SECRET not in str(info.value)
    assert not report.healthy, report.format()
    assert SECRET not in report.format()
    assert not (outside / "ran").exists()  # no pickle ran
    if attack != "pickle":  # a refusal of the path itself, not a failure further on
        assert any(word in str(info.value) for word in ("not a plain file name", "leads outside", "not a regular file",
                                                         "a FIFO", "a character device", "not a directory")), str(info.value)


def test_every_kind_slot_and_attack_is_covered():
    assert {kind for kind, _, _ in CASES} == set(LAYOUTS)
    assert {attack for _, _, attack in CASES} >= set(ATTACKS) - {"device"}
    slots = {slot for _, slot, _ in CASES}
    for name in ("trained.faiss", "faiss.index", "shard-001", "passages/passages.jsonl", "deleted_bits.npy", "codes.npy"):
        assert any(slot.endswith(name) for slot in slots), name
    assert len(CASES) >= 150

"""Concurrent updates of one page collection by two real processes lose nothing.

A child process runs ``index_pages(update=True)`` whose per-file metadata callback touches a
marker file and sleeps, so the test knows the child is inside its read-modify-write window
(collection read, new one not yet published). The test process then updates or deletes from
the same collection. Without the update lock both would start from the same old collection
and the later publish would drop the other's change; with it the second waits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from page_fixtures import make_pdf

from indexes._update_lock import lock_path, update_lock
from retrieval.app.cli import main
from retrieval.errors import ConfigError, LockTimeoutError
from retrieval.rag.page_collection import delete_sources, index_pages
from retrieval.rag.page_store import load_page_collection
from retrieval.rag.pages import RenderOptions

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pypdfium2")

REPO = Path(__file__).resolve().parents[3]
FAST = RenderOptions(dpi=36)

_SLOW_UPDATE = """
import pathlib, sys, time
import torch
torch.set_num_threads(1)
from retrieval.rag.page_collection import index_pages
from retrieval.rag.pages import RenderOptions
source, out, model, marker = sys.argv[1:5]
def slow(path):
    pathlib.Path(marker).touch()  # inside the update: the old collection is read, the new one not yet published
    time.sleep(2.0)
    return {}
index_pages(source, out, model=model, device="cpu", batch_size=2, update=True, options=RenderOptions(dpi=36),
            metadata=slow, lock_timeout=120)
"""

_HOLD_LOCK = """
import pathlib, sys, time
from indexes._update_lock import update_lock
with update_lock(sys.argv[1]):
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(120)
"""


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (tests/conftest.py)."""


def _one_pdf_folder(root: Path, name: str, pages: int) -> Path:
    root.mkdir(parents=True)
    make_pdf(root / name, [[f"{name} page {i}"] for i in range(1, pages + 1)])
    return root


@pytest.fixture
def collection(tmp_path: Path, colpali_dir: Path) -> Path:
    out = tmp_path / "col"
    index_pages(_one_pdf_folder(tmp_path / "base", "base.pdf", 2), out, model=colpali_dir, device="cpu",
                batch_size=2, train_pages=2, options=FAST)
    return out


def _spawn(code: str, *args: str | Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(marker: Path, child: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            _, err = child.communicate()
            pytest.fail(f"the child exited ({child.returncode}) before reaching the marker:\n{err.decode()[-3000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the child did not reach the marker in time")
        time.sleep(0.05)


def _finish(child: subprocess.Popen[bytes]) -> None:
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err.decode()[-3000:]


def _documents(root: Path) -> dict[str, int]:
    index, store = load_page_collection(root)
    counts: dict[str, int] = {}
    for page in store.pages:
        counts[page.doc_id] = counts.get(page.doc_id, 0) + 1
    assert sorted(index.doc_ids) == sorted(store.ids)
    return counts


def test_two_processes_updating_at_once_keep_both_additions(collection: Path, colpali_dir: Path,
                                                            tmp_path: Path) -> None:
    marker = tmp_path / "child-inside"
    child = _spawn(_SLOW_UPDATE, _one_pdf_folder(tmp_path / "a", "a.pdf", 2), collection, colpali_dir, marker)
    _wait_for(marker, child)
    assert child.poll() is None  # still inside its update
    started = time.monotonic()
    build = index_pages(_one_pdf_folder(tmp_path / "b", "b.pdf", 1), collection, model=colpali_dir, device="cpu",
                        batch_size=2, update=True, options=FAST, lock_timeout=120)
    waited = time.monotonic() - started
    _finish(child)
    assert waited > 0.5  # it waited for the child's update instead of reading the old collection
    assert build.added == 1 and build.pages == 5
    assert _documents(collection) == {"base.pdf": 2, "a.pdf": 2, "b.pdf": 1}
    assert sorted(os.listdir(collection)) == ["index", "pages"]  # the lock file lives beside, not inside
    assert lock_path(collection) == tmp_path / ".col.lock" and lock_path(collection).is_file()


def test_delete_during_an_update_is_not_undone(collection: Path, colpali_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "child-inside"
    child = _spawn(_SLOW_UPDATE, _one_pdf_folder(tmp_path / "a", "a.pdf", 1), collection, colpali_dir, marker)
    _wait_for(marker, child)
    build = delete_sources(collection, ["base.pdf"], lock_timeout=120)
    _finish(child)
    assert build.removed == 2
    assert _documents(collection) == {"a.pdf": 1}  # the child's publish did not bring base.pdf back


def test_a_held_lock_times_out_with_a_clear_error_and_changes_nothing(
    collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "holding"
    holder = _spawn(_HOLD_LOCK, collection, marker)
    try:
        _wait_for(marker, holder)
        before = (collection / "pages" / "manifest.json").read_bytes()
        with pytest.raises(LockTimeoutError, match=rf"another process \(pid {holder.pid}\) is updating the page "
                                                   r"collection .*col.*after 0\.3s; nothing was changed"):
            delete_sources(collection, ["base.pdf"], lock_timeout=0.3)
        assert main(["delete-pages", str(collection), "base.pdf", "--lock-timeout", "0"]) != 0
        assert "--lock-timeout SECONDS" in capsys.readouterr().err
        assert (collection / "pages" / "manifest.json").read_bytes() == before
    finally:
        holder.kill()  # the kernel releases a killed holder's flock
        holder.communicate()
    assert delete_sources(collection, ["base.pdf"], lock_timeout=30).removed == 2


def test_update_lock_checks_its_timeout_and_resolves_links(tmp_path: Path) -> None:
    for bad in (-1, float("inf"), True, "10"):
        with pytest.raises(ConfigError, match="lock_timeout must be"):
            with update_lock(tmp_path / "c", timeout=bad):  # type: ignore[arg-type]
                pass
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert lock_path(tmp_path / "alias") == lock_path(tmp_path / "real") == tmp_path / ".real.lock"
    with update_lock(tmp_path / "alias", timeout=0) as held:
        assert held == tmp_path / ".real.lock"
        assert held.read_text() == str(os.getpid())
        with pytest.raises(LockTimeoutError):  # flock locks are per open file: a second open in one process waits too
            with update_lock(tmp_path / "real", timeout=0):
                pass
    with update_lock(tmp_path / "real", timeout=0):  # released on exit
        pass
    (tmp_path / ".planted.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"cannot open the update lock .*\.planted\.lock.*symbolic link"):
        with update_lock(tmp_path / "planted"):
            pass
    assert not (tmp_path / "elsewhere").exists()

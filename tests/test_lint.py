"""The lint run is part of the default suite: ruff is clean, and pylint's duplicate-code check
(a maintained clone detector; runs of 6+ similar lines, comments, docstrings and imports ignored)
finds no repeated code in the library packages. ``scripts/lint.sh`` runs the same two commands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ["retrieval", "indexes", "training"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    pytest.importorskip("ruff")
    if shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists():
        pytest.skip("the ruff executable is not installed")
    out = _run("ruff", "check", *LIBRARY, "tests", "examples")
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_duplicate_code_in_the_library() -> None:
    pytest.importorskip("pylint")
    out = _run("pylint", "--disable=all", "--enable=duplicate-code", "--min-similarity-lines=6", "--score=n",
               *LIBRARY)
    pairs = re.findall(r"R0801: Similar lines in (\d+) files\n((?:==.*\n)+)", out.stdout)
    assert pairs == [], "pylint found repeated code (factor it out):\n" + out.stdout
    assert out.returncode == 0, out.stdout + out.stderr


MAX_MODULE_LINES = 600


def test_modules_stay_small() -> None:
    """No library module over ~600 lines: past that a module is doing more than one job."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for pkg in LIBRARY for p in sorted((ROOT / pkg).rglob("*.py"))}
    large = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES}
    assert large == {}, f"modules over {MAX_MODULE_LINES} lines (split them): {large}"

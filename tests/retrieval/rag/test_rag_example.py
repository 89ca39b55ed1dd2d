"""examples/rag_pipeline.py runs end to end offline (slow: a subprocess loads the model and encodes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rag_pipeline.py"


@pytest.mark.slow
def test_rag_example_answers_with_citations():
    # The repository root first on the path, so the example imports this checkout's package.
    root = str(EXAMPLE.parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, str(EXAMPLE), "--n-docs", "60", "--spec", "PQ16x4", "-k", "3"],
                         check=True, capture_output=True, text=True, env=env, timeout=600).stdout
    answers = re.findall(r"(?m)^A: (.+)$", out)
    assert len(answers) == 3 and all(re.search(r"\[\d\]$", a) for a in answers), out
    assert "(extractive: not an LLM)" in out and "judged-relevant abstract is in the context: True" in out

"""The public namespace: sorted, complete, cheap to import."""

from __future__ import annotations

import subprocess
import sys

import indexes
import retrieval


def test_all_is_sorted_and_resolves():
    assert retrieval.__all__ == sorted(retrieval.__all__)
    for name in retrieval.__all__:
        assert getattr(retrieval, name) is not None
    assert set(dir(retrieval)) == set(retrieval.__all__)
    for name in indexes.__all__:
        assert getattr(indexes, name) is not None


def test_import_does_not_load_torch_or_faiss():
    code = (
        "import sys, retrieval, indexes, retrieval.app.cli, retrieval.pipeline, retrieval.compress, retrieval.rerank\n"
        "import indexes.multivector, retrieval.encode.multivector\n"
        "heavy = [m for m in ('torch', 'faiss', 'sentence_transformers', 'ir_measures') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_is_exposed():
    assert retrieval.__version__.count(".") == 2

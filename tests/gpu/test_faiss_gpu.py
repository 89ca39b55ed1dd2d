"""FaissIndex on a CUDA device; skipped unless faiss-gpu and a GPU are present."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import FaissIndex, FlatIndex, load_index
from retrieval._optional import has_faiss_gpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_faiss_gpu(), reason="Requires: [faiss GPU build + CUDA device]"),
]


@pytest.mark.parametrize("spec", ["Flat", "IVF64,Flat", "IVF64,PQ16x8"])
def test_gpu_search_matches_cpu_and_saves_cpu_form(spec, tmp_path):
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((5000, 32)).astype(np.float32)
    xq = rng.standard_normal((50, 32)).astype(np.float32)
    ids = [str(i) for i in range(len(xb))]
    cpu = FaissIndex(32, spec=spec, nprobe=64) if "IVF" in spec else FaissIndex(32, spec=spec)
    cpu.train(xb).add(xb, ids=ids)
    gpu = cpu.to_gpu()
    exact = FlatIndex(32).add(xb, ids=ids).search(xq, k=10)
    assert gpu.search(xq, k=10).recall_at(cpu.search(xq, k=10).doc_ids) >= 0.95
    assert gpu.search(xq, k=10).recall_at(exact.doc_ids) >= (0.95 if "PQ" not in spec else 0.3)
    gpu.delete(["0", "1"])
    assert not {"0", "1"} & {d for row in gpu.search(xb[:2], k=5).doc_ids for d in row}
    gpu.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert loaded.search(xq, k=10).recall_at(gpu.search(xq, k=10).doc_ids) >= 0.95

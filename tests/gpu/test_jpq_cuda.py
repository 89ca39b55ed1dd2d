"""JPQTrainer on a CUDA device; skipped unless torch sees a GPU (none was available when written)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: [a CUDA device visible to torch]"),
]


@pytest.mark.parametrize("train_encoder", [True, False])
def test_label_free_training_on_cuda_matches_the_cpu_scores(train_encoder, tmp_path):
    from training.jpq import JPQTrainer, JPQTrainingArgs, load_jpq

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = {f"q{i}": f"query number {i} about topic {i % 7}" for i in range(64)}
    args = JPQTrainingArgs(m=8, nbits=4, opq=False, epochs=1, batch_size=16, teacher="exact", teacher_dev=8,
                           train_encoder=train_encoder, query_adapter=True, distill_top_n=10, distill_negatives=10)
    trainer = JPQTrainer(args, doc_ids=[str(i) for i in range(400)], doc_vectors=x, queries=queries, device="cuda")
    assert trainer.centroids.device.type == "cuda" and trainer.codes.device.type == "cuda"
    history = trainer.train()
    assert np.isfinite(history.losses).all()
    q = trainer.encode_queries(["query number 3 about topic 3"])
    _, labels = trainer.index.search(q, 5)
    ours = trainer.score(torch.from_numpy(q).cuda(), torch.from_numpy(labels).cuda()).cpu().detach().numpy()
    np.testing.assert_allclose(ours, trainer.index.search(q, 5)[0], rtol=1e-3, atol=1e-3)
    out = trainer.save(tmp_path / "run")
    assert len(load_jpq(out, device="cpu").search("topic 3", k=3).doc_ids[0]) == 3

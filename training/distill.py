"""Distillation from the uncompressed retriever: the teacher, the listwise loss, and agreement.

Following Distill-VQ (Xiao et al., "Distill-VQ: Learning Retrieval Oriented Vector
Quantization By Distilling Knowledge from Dense Embeddings", SIGIR 2022), the teacher is exact
inner-product search over the float document vectors with the query encoder as it was before
training. Its ranking of *any* query text is the target, so JPQ trains without judgments: the
student (the trainable query encoder and PQ centroids, scoring documents reconstructed from
their fixed codes) is pulled towards the teacher's score distribution over the teacher's own
top-N documents plus the hard negatives the live compressed index retrieves.

Model selection needs no labels either: :func:`agreement` measures how well the student's
top-10 reproduces the teacher's on held-out queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval._optional import require
from retrieval.types import as_float32_matrix

__all__ = ["ExactTeacher", "agreement", "listwise_kl"]

#: A finite stand-in for -inf on masked logits (an -inf would make 0 * log 0 a NaN in the KL).
_MASKED = -1e4


class ExactTeacher:
    """Exact top-N over the float document vectors (FAISS ``IndexFlatIP``).

    Parameters
    ----------
    doc_vectors : np.ndarray, shape (n, d)
        The frozen document vectors the PQ codes were fitted on.
    """

    def __init__(self, doc_vectors: NDArray[np.floating]) -> None:
        faiss = require("faiss", extra="cpu", feature="ExactTeacher")
        self.vectors = as_float32_matrix(doc_vectors, name="doc_vectors")
        self._index = faiss.IndexFlatIP(self.vectors.shape[1])
        self._index.add(self.vectors)

    def rank(self, queries: NDArray[np.float32], n: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Scores and rows of the exact top ``n`` (capped at the corpus size) for each query."""
        n = min(n, self.vectors.shape[0])
        scores, rows = self._index.search(as_float32_matrix(queries, name="queries"), n)
        return scores, rows

    def scores(self, queries: NDArray[np.float32], rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Exact inner products of each query (B, d) with its documents ``rows`` (B, C)."""
        return np.einsum("bd,bcd->bc", queries, self.vectors[rows]).astype(np.float32)


def listwise_kl(student: Any, teacher: Any, mask: Any, temperature: float) -> Any:
    """Mean over queries of KL(teacher || student) between softmax distributions over candidates.

    ``student`` and ``teacher`` are (B, C) score tensors, ``mask`` (B, C) bool marks the real
    candidates (padding and duplicates are False). Both sides share ``temperature``.
    """
    torch = require("torch", extra="cpu", feature="listwise_kl")
    fill = torch.full_like(student, _MASKED)
    log_p_student = torch.log_softmax(torch.where(mask, student / temperature, fill), dim=1)
    log_p_teacher = torch.log_softmax(torch.where(mask, teacher / temperature, fill), dim=1)
    p_teacher = log_p_teacher.exp() * mask
    return (p_teacher * (log_p_teacher - log_p_student)).sum(dim=1).mean()


def candidate_rows(teacher_rows: NDArray[np.int64], live_rows: NDArray[np.int64]) -> tuple[NDArray[np.int64],
                                                                                             NDArray[np.bool_]]:
    """Teacher top-N followed by live-index negatives, and a mask that drops repeats and padding.

    Examples
    --------
    >>> rows, mask = candidate_rows(np.array([[3, 1]]), np.array([[1, 7, -1]]))
    >>> rows.tolist(), mask.tolist()
    ([[3, 1, 1, 7, 0]], [[True, True, False, True, False]])
    """
    rows = np.concatenate([teacher_rows, live_rows], axis=1)
    mask = rows >= 0
    n_teacher = teacher_rows.shape[1]
    for b in range(rows.shape[0]):  # B <= batch size: a short loop over queries, vectorised over candidates
        mask[b, n_teacher:] &= ~np.isin(live_rows[b], teacher_rows[b])
    return np.where(mask, rows, 0), mask


def agreement(student_rows: NDArray[np.int64], teacher_rows: NDArray[np.int64], k: int = 10) -> dict[str, float]:
    """How well the student's ranking reproduces the teacher's top ``k`` (no labels needed).

    ``teacher-R@k``: the share of the teacher's top k found in the student's top k.
    ``teacher-nDCG@k``: nDCG@k of the student's ranking with the teacher's top k as graded
    judgments (grade ``k - rank``, so the teacher's first document counts most), computed with
    ir-measures like every other quality figure.
    """
    from retrieval.evaluate import evaluate

    qids = [str(i) for i in range(len(teacher_rows))]
    qrels = {q: {str(int(r)): k - j for j, r in enumerate(row[:k]) if r >= 0} for q, row in zip(qids, teacher_rows,
                                                                                                   strict=True)}
    run = {q: {str(int(r)): float(len(row) - j) for j, r in enumerate(row) if r >= 0}
           for q, row in zip(qids, student_rows, strict=True)}
    found = [len(set(s[:k].tolist()) & set(t[:k].tolist()) - {-1}) / max(1, int((t[:k] >= 0).sum()))
             for s, t in zip(student_rows, teacher_rows, strict=True)]
    scores = evaluate(run, qrels, [f"nDCG@{k}"])
    return {f"teacher-R@{k}": float(np.mean(found)), f"teacher-nDCG@{k}": float(scores[f"nDCG@{k}"])}


def split_heldout(qids: Sequence[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle ``qids`` with ``seed`` and return (held out, rest), ``n`` held out (at most half)."""
    import random

    order = sorted(qids)
    random.Random(seed).shuffle(order)
    n = min(n, len(order) // 2)
    return order[:n], order[n:]

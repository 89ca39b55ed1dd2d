"""JPQ's ranking loss over judged queries: pairwise (delta-MRR weighted) or softmax cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ranking_loss"]


def ranking_loss(trainer: Any, q: Any, judged: Sequence[tuple[int, list[int]]], retrieved: NDArray[np.int64]) -> Any:
    """The ranking loss of the judged queries of a batch, or None if none has a negative.

    ``judged`` pairs a batch position with the query's relevant rows; ``retrieved`` (B, N) holds
    the live compressed index's top rows per batch position. Known positives are never
    negatives. ``pairwise``: ``log(1 + exp(s_neg - s_pos))`` weighted by
    ``|1/rank_pos - 1/rank_neg|`` (1/rank is 0 beyond ``rank_cut``); ``softmax``: cross-entropy
    of each positive against all retrieved negatives at ``temperature``.
    """
    torch, args, device = trainer._torch, trainer.args, trainer._device

    def inv(rank: int) -> float:
        return 1.0 / rank if rank <= args.rank_cut else 0.0

    losses = []
    for b, pos in judged:
        pos_set = set(pos)
        ranked = [int(r) for r in retrieved[b] if r >= 0]
        rank_of = {row: i + 1 for i, row in enumerate(ranked)}
        neg = [row for row in ranked if row not in pos_set]
        if not neg:
            continue
        rows = torch.tensor([pos + neg], device=device)
        s = trainer.score(q[b : b + 1], rows)[0]
        s_pos, s_neg = s[: len(pos)], s[len(pos) :]
        if args.loss == "softmax":
            logits = torch.cat([s_pos[:, None], s_neg[None, :].expand(len(pos), -1)], dim=1) / args.temperature
            target = torch.zeros(len(pos), dtype=torch.long, device=device)
            losses.append(torch.nn.functional.cross_entropy(logits, target))
            continue
        inv_pos = torch.tensor([inv(rank_of.get(r, args.top_n + 1)) for r in pos], device=device)
        inv_neg = torch.tensor([inv(rank_of[r]) for r in neg], device=device)
        weight = (inv_pos[:, None] - inv_neg[None, :]).abs()
        pair = torch.nn.functional.softplus(s_neg[None, :] - s_pos[:, None])
        losses.append((weight * pair).sum() / len(pos))
    return torch.stack(losses).mean() if losses else None

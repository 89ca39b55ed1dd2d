"""Late-interaction (MaxSim) scoring and reranking."""

from __future__ import annotations

from retrieval.rerank.maxsim import MaxSimReranker, maxsim, maxsim_csr

__all__ = ["MaxSimReranker", "maxsim", "maxsim_csr"]

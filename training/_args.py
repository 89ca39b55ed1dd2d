"""Settings of a JPQ run: :class:`JPQTrainingArgs` (also read from a TOML ``[jpq]`` table)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from retrieval.errors import ConfigError

__all__ = ["LABEL_FREE_DEFAULTS", "JPQTrainingArgs"]


@dataclass(frozen=True, kw_only=True)
class JPQTrainingArgs:
    """Settings of a JPQ run (the paper's symbols in brackets).

    Attributes
    ----------
    m : int
        Number of PQ sub-vectors [M]; bytes per document at ``nbits=8``. Must divide the
        embedding dimension.
    nbits : int
        Bits per sub-vector code; ``2**nbits`` centroids per sub-quantizer [K = 256 at 8].
    opq : bool
        Fit an OPQ rotation before PQ (``OPQ{m},PQ{m}x{nbits}``); False gives plain PQ.
    epochs : int
        Passes over the training queries.
    batch_size : int
        Queries per step.
    lr_encoder, lr_centroids : float
        AdamW learning rates of the query encoder and of the PQ centroids. The paper uses
        5e-6 for the encoder and 5e-6 to 1e-4 for the centroids depending on M.
    warmup_steps : int
        Linear learning-rate warm-up.
    top_n : int
        Candidates retrieved from the current index per query (negatives) [200 in the paper].
    loss : {"pairwise", "softmax"}
        ``pairwise``: JPQ's pairwise logistic loss ``log(1 + exp(s_neg - s_pos))`` weighted by
        ``|1/rank_pos - 1/rank_neg|`` (a LambdaRank-style delta-MRR weight, with 1/rank taken
        as 0 beyond ``rank_cut``). ``softmax``: cross-entropy of each positive against all
        retrieved negatives, at ``temperature``.
    rank_cut : int
        Ranks beyond this carry no weight in the pairwise loss (10 for document ranking).
    temperature : float
        Softmax temperature (inner products of unit vectors are small, so < 1 sharpens).
    max_grad_norm : float
        Gradient clipping.
    max_query_length : int
        Query tokens kept [32 in the paper].
    train_encoder, train_centroids : bool
        Switch either part off for ablations (centroids only / encoder only).
    dev_fraction : float
        Share of the training queries held out to report a dev nDCG@10 during training
        (never the test split); 0 disables.
    eval_every : int
        Evaluate on the dev queries every this many steps (0: only at the end of each epoch).
    checkpoint_dir : str, optional
        Write ``checkpoint.safetensors`` (tensors + JSON, no pickle) there after every epoch
        (atomically); a later ``train()`` with the same directory resumes after the last
        completed epoch. The best-so-far snapshot of ``select`` is not in the checkpoint: after
        a resume, selection picks among the evaluations of the resumed epochs.
    seed : int
        Seeds Python, NumPy, torch and FAISS k-means.
    teacher : {"none", "exact"}
        ``"exact"``: distil from exact search over the float vectors (query encoder as it was
        before training); every training query, judged or not, gets the listwise KL loss.
        ``"none"``: judged queries and the ranking loss only (plain JPQ).
    distill_weight : float
        Weight of the distillation loss next to the ranking loss.
    distill_top_n : int
        The teacher's top documents per query over which the distributions are matched.
    distill_negatives : int
        Documents retrieved from the live compressed index per query and added to the
        teacher's top-N (hard negatives the student ranks too high).
    distill_temperature : float
        Softmax temperature of both sides of the KL.
    teacher_dev : int
        Unjudged training queries held out to measure agreement with the teacher
        (teacher-R@10, teacher-nDCG@10) for model selection; capped at half of them.
    anchor : float
        Weight of ``||C - C0||^2 / ||C0||^2``, which keeps the centroids ``C`` near their OPQ
        start ``C0`` (0 disables).
    centroid_optimizer : {"adamw", "sgd"}
        ``"sgd"`` (momentum 0.9): a centroid's step scales with its gradient, so centroids that
        few training documents use move little; AdamW gives them full-size steps.
    query_adapter : bool
        Train a linear map ``A`` (d x d, starting at the identity) applied to the query vectors
        before scoring: a cheap query-side adaptation to the compressed document space that
        needs no gradient through the encoder. Exported as a ``Dense`` module appended to the
        query encoder.
    lr_adapter : float
        AdamW learning rate of the query adapter.
    select : {"auto", "dev", "teacher", "last"}
        Which evaluated state to keep at the end: best labelled dev nDCG@10 (``"dev"``), best
        teacher-nDCG@10 on held-out queries (``"teacher"``), or the last. ``"auto"`` is
        ``"dev"`` when there are labelled dev queries, else ``"teacher"`` with a teacher, else
        ``"last"``. The state before the first step is a candidate, so a run that only hurts
        returns the OPQ start.
    """

    m: int = 48
    nbits: int = 8
    opq: bool = True
    epochs: int = 2
    batch_size: int = 32
    lr_encoder: float = 5e-6
    lr_centroids: float = 1e-4
    warmup_steps: int = 10
    top_n: int = 200
    loss: Literal["pairwise", "softmax"] = "pairwise"
    rank_cut: int = 10
    temperature: float = 0.05
    max_grad_norm: float = 1.0
    max_query_length: int = 32
    train_encoder: bool = True
    train_centroids: bool = True
    dev_fraction: float = 0.1
    eval_every: int = 0
    checkpoint_dir: str | None = None
    seed: int = 0
    teacher: Literal["none", "exact"] = "none"
    distill_weight: float = 1.0
    distill_top_n: int = 50
    distill_negatives: int = 50
    distill_temperature: float = 0.05
    teacher_dev: int = 256
    anchor: float = 0.0
    centroid_optimizer: Literal["adamw", "sgd"] = "adamw"
    select: Literal["auto", "dev", "teacher", "last"] = "auto"
    query_adapter: bool = False
    lr_adapter: float = 1e-3

    def __post_init__(self) -> None:
        positive_ints = ("m", "nbits", "epochs", "batch_size", "top_n", "rank_cut", "max_query_length",
                         "distill_top_n", "distill_negatives")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"JPQTrainingArgs.{name} must be a positive integer; got {value!r}.")
        if not 1 <= self.nbits <= 16:
            raise ConfigError(f"JPQTrainingArgs.nbits must be in 1..16; got {self.nbits}.")
        for name in ("lr_encoder", "lr_centroids", "max_grad_norm", "temperature", "distill_weight",
                     "distill_temperature", "anchor", "lr_adapter"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"JPQTrainingArgs.{name} must be a finite number >= 0; got {value!r}.")
        if self.loss not in ("pairwise", "softmax"):
            raise ConfigError(f"JPQTrainingArgs.loss must be 'pairwise' or 'softmax'; got {self.loss!r}.")
        for name, allowed in (("teacher", ("none", "exact")), ("centroid_optimizer", ("adamw", "sgd")),
                              ("select", ("auto", "dev", "teacher", "last"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"JPQTrainingArgs.{name} must be one of {list(allowed)}; got {getattr(self, name)!r}.")
        if isinstance(self.teacher_dev, bool) or not isinstance(self.teacher_dev, int) or self.teacher_dev < 0:
            raise ConfigError(f"JPQTrainingArgs.teacher_dev must be an integer >= 0; got {self.teacher_dev!r}.")
        if self.temperature == 0 or self.distill_temperature == 0:
            raise ConfigError("JPQTrainingArgs temperatures must be > 0.")
        if self.select == "teacher" and self.teacher != "exact":
            raise ConfigError("JPQTrainingArgs.select='teacher' needs teacher='exact'.")
        if not 0 <= self.dev_fraction < 1:
            raise ConfigError(f"JPQTrainingArgs.dev_fraction must be in [0, 1); got {self.dev_fraction}.")
        if not (self.train_encoder or self.train_centroids or self.query_adapter):
            raise ConfigError("JPQTrainingArgs: at least one of train_encoder / train_centroids / query_adapter must "
                              "be True.")

    @property
    def spec(self) -> str:
        """The FAISS factory string of the compressed index."""
        pq = f"PQ{self.m}x{self.nbits}"
        return f"OPQ{self.m},{pq}" if self.opq else pq

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], *, section: str = "jpq") -> JPQTrainingArgs:
        """Read the ``[jpq]`` table of a TOML file; unknown keys are an error."""
        import tomllib

        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read JPQ config {file}: {exc}") from exc
        table = raw.get(section, raw)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{file}: unknown JPQ option(s) {unknown}; known options are {sorted(known)}.")
        return cls(**table)


#: What ``densezip train-jpq`` uses without judgments and without a ``--config``: centroids and
#: a query adapter trained on cached query vectors (no gradient through the encoder), so that
#: thousands of pseudo-queries train in minutes on a CPU. Chosen on SciFact by agreement with the
#: teacher on held-out pseudo-queries and training time, no judgment involved (docs/BENCHMARKS.md 3c;
#: the pseudo-query count is training.queries.DEFAULT_PSEUDO_QUERIES).
LABEL_FREE_DEFAULTS = {"teacher": "exact", "train_encoder": False, "query_adapter": True, "epochs": 3,
                       "lr_centroids": 3e-4, "lr_adapter": 1e-4}

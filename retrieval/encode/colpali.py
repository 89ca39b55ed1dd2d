"""ColPali / ColQwen2 page-image encoder: one vector per image patch, with per-patch saliency.

Importing this module is cheap: torch, transformers and Pillow are imported, the device
probed and the model loaded only when vectors are first needed.

The encoder runs the ColVision models that ship with transformers itself
(``ColPaliForRetrieval`` / ``ColPaliProcessor`` and ``ColQwen2ForRetrieval`` /
``ColQwen2Processor``), with the Pillow image-processing backend, so it works on CPU-only
machines; the ``colpali-engine`` package is not needed for them. Checkpoints in
colpali-engine's own format (``vidore/colpali-v1.3``, ``vidore/colqwen2-v1.0``) are loaded with
colpali-engine's classes when it is installed (a GPU machine; see
:mod:`retrieval.encode._colvision`, which picks the backend from the checkpoint's config).
That path is untested on this project's CPU-only CI.

Patch vectors
-------------
A page image becomes the processor's prompt: ``n_img`` image tokens followed by a short
text prompt (``"Describe the image."``). The model projects every position to ``d``
dimensions (128 for the released checkpoints) and L2-normalises it. Only the positions
holding an image token (``input_ids == processor.image_token_id``) are kept: one vector
per patch (ColPali: 1024 for a 448 x 448 page; ColQwen2: one per merged 2 x 2 patch group,
so the count depends on the page size). Prompt tokens and padding are dropped.

Saliency
--------
The saliency of image token ``j`` is the attention it *receives* in the last layer of the
language model: the attention weights ``A[h, i, j]`` of that layer, averaged over the
heads ``h`` and over every real (non-padding) position ``i`` of the page's sequence
(image tokens and prompt tokens alike)::

    saliency[j] = mean_h mean_{i : attention_mask[i] = 1} A[h, i, j]

Each value lies in ``[0, 1]``; the values of one page sum to at most 1 (the rest of the
attention goes to the prompt tokens). It is the same definition as
:class:`~retrieval.encode.multivector.MultiVectorEncoder` uses for text tokens and what
:class:`~retrieval.compress.AttentionPruner` ranks by. Attention weights exist only with
``attn_implementation="eager"`` (the fused sdpa / flash kernels never materialise them),
so a ``saliency=True`` encoder loads the model with eager attention; ``saliency=False``
lets transformers pick its fastest kernel.

References
----------
- Faysse et al., "ColPali: Efficient Document Retrieval with Vision Language Models",
  ICLR 2025, arXiv:2407.01449.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from retrieval._optional import require
from retrieval.encode._checks import as_text_list, check_description, check_ids, positive_int
from retrieval.encode._colvision import (
    DEFAULT_COLPALI_MODEL,
    check_model_and_processor,
    load_checkpoint,
    model_backend,
)
from retrieval.encode._device import check_device, resolve_device
from retrieval.encode._fingerprint import fingerprint_model_dir, fingerprint_transformers_model
from retrieval.encode._images import as_image_list, check_max_image_side, fit_within
from retrieval.encode._saliency import last_attention_module, received_attention, saliency_hook
from retrieval.encode.base import LazyModel
from retrieval.errors import ConfigError, ShapeError
from retrieval.types import MultiVectorEmbeddings

if TYPE_CHECKING:
    from types import ModuleType

    from PIL.Image import Image as PILImage

__all__ = ["DEFAULT_COLPALI_MODEL", "ColPaliEncoder"]

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")
# Bump when the saliency definition changes, so stored saliency is never mixed silently.
_SALIENCY_TAG = "last-layer-attention-received-v1"
_DESCRIBE_KEYS = frozenset({"type", "model", "architecture", "dim", "dtype", "saliency", "fingerprint",
                            "max_image_side"})


class ColPaliEncoder(LazyModel):
    """Encode page images into patch vectors (with saliency) and queries into token vectors.

    Construction is cheap: the model is loaded (and torch imported) on first use. See the
    module docstring for which positions become vectors and how saliency is defined.

    Parameters
    ----------
    model : str or os.PathLike, default "vidore/colpali-v1.3-hf"
        A transformers ColPali or ColQwen2 checkpoint (``model_type`` ``"colpali"`` or
        ``"colqwen2"`` in its ``config.json``, i.e. the ``-hf`` repositories), as a local
        directory or a Hugging Face hub name; with colpali-engine installed, also one in its
        format (``vidore/colpali-v1.3``). Hub names are read from the local Hugging Face
        cache when offline (``HF_HUB_OFFLINE=1``). Anything else raises ConfigError at load.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default "auto"
        Where the model runs. Only ``"auto"`` falls back to the CPU (logged at INFO); an
        explicit device that is not available raises
        :class:`~retrieval.errors.MissingDependencyError` at model load.
    batch_size : int, default 4
        Images (or queries) per forward pass.
    max_image_side : int, optional
        Scale every page image down (aspect ratio kept, never up) so that its longer side
        is at most this many pixels before the processor sees it (16 to 20000; ``None``: no
        limit). ColQwen2 makes one vector per 28 x 28 pixels up to its processor's pixel
        budget, so this bounds vectors, time and memory per page; ColPali resizes every page
        to its fixed input size anyway, so for it the limit only saves resizing work.
    saliency : bool, default True
        Compute per-patch saliency. Needs eager attention, which is slower and uses
        ``O(L^2)`` memory per head in the last layer; ``False`` uses sdpa attention and
        returns ``saliency=None``.
    dtype : {"float32", "bfloat16", "float16"}, optional
        Weight dtype. ``None`` uses float32 on the CPU and MPS and bfloat16 on CUDA. The
        returned vectors are always float32.

    Examples
    --------
    >>> enc = ColPaliEncoder(device="cpu")                           # doctest: +SKIP
    >>> pages = enc.encode_documents(["page1.png"], ids=["p1"])      # doctest: +SKIP
    >>> pages.vectors.shape, pages.saliency.shape                    # doctest: +SKIP
    ((1024, 128), (1024,))
    >>> enc.encode_queries(["What is the revenue in 2023?"]).dim     # doctest: +SKIP
    128
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_COLPALI_MODEL,
        *,
        device: str = "auto",
        batch_size: int = 4,
        saliency: bool = True,
        dtype: str | None = None,
        max_image_side: int | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)):
            raise ConfigError(f"model must be a hub name or a local directory; got {type(model).__name__}.")
        if isinstance(model, os.PathLike) and not Path(model).is_dir():
            raise ConfigError(
                f"model directory {os.fspath(model)!r} does not exist or is not a directory. "
                "Pass the folder that holds config.json and the weights, or a hub name as a str."
            )
        if isinstance(model, str) and not model.strip():
            raise ConfigError(
                f"model must be a non-empty hub name or path; got ''. The default is {DEFAULT_COLPALI_MODEL!r}."
            )
        check_device(device)
        if not isinstance(saliency, bool):
            raise ConfigError(f"saliency must be True or False; got {saliency!r}.")
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigError(
                f"dtype must be one of {', '.join(map(repr, _DTYPES))} or None (automatic); got {dtype!r}."
            )
        self._model_arg: str | None = os.path.expanduser(os.fspath(model))
        self._device = device
        self._batch_size = positive_int("batch_size", batch_size)
        self._max_image_side = check_max_image_side(max_image_side)
        self._saliency = saliency
        self._dtype = dtype
        self._backend: str | None = None
        self._model: Any | None = None
        self._processor: Any = None  # set together with _model
        self._architecture: str | None = None
        self._dim: int | None = None
        self._fingerprint: str | None = None
        self._resolved_device: str | None = None
        self._lock = threading.RLock()

    @classmethod
    def from_model(cls, model: Any, processor: Any, *, batch_size: int = 4, saliency: bool = True,
                   max_image_side: int | None = None) -> ColPaliEncoder:
        """Wrap an already built transformers ColPali / ColQwen2 model and its processor.

        The model stays on its device and in its dtype; it is switched to eval mode (so
        dropout never makes vectors random).

        Parameters
        ----------
        model : ColPaliForRetrieval or ColQwen2ForRetrieval
            A transformers retrieval model (or colpali-engine's ``ColPali`` / ``ColQwen2``).
            With ``saliency=True`` it must use eager
            attention (``from_pretrained(..., attn_implementation="eager")`` or
            ``model.set_attn_implementation("eager")``).
        processor : ColPaliProcessor or ColQwen2Processor
            The matching processor; its ``image_token_id`` must be the model's.
        batch_size : int, default 4
            Images (or queries) per forward pass.
        saliency : bool, default True
            Compute per-patch saliency.
        max_image_side : int, optional
            Longest page side the processor sees (see the class parameters).

        Returns
        -------
        ColPaliEncoder

        Raises
        ------
        ConfigError
            If the model is not a supported architecture, the processor does not match it,
            or ``saliency=True`` with a non-eager attention implementation.
        """
        if not isinstance(saliency, bool):
            raise ConfigError(f"saliency must be True or False; got {saliency!r}.")
        found = model_backend(model)
        if found is None:
            raise ConfigError(
                f"ColPaliEncoder.from_model needs a transformers ColPaliForRetrieval or ColQwen2ForRetrieval (or "
                f"colpali-engine's ColPali / ColQwen2); got {type(model).__name__} (model_type "
                f"{getattr(getattr(model, 'config', None), 'model_type', None)!r})."
            )
        encoder = cls.__new__(cls)
        encoder._model_arg = None
        encoder._device = "auto"
        encoder._batch_size = positive_int("batch_size", batch_size)
        encoder._max_image_side = check_max_image_side(max_image_side)
        encoder._backend = found[0]
        encoder._saliency = saliency
        encoder._dtype = None
        encoder._fingerprint = None
        encoder._lock = threading.RLock()
        encoder._install(model, processor, found[1], owner="ColPaliEncoder.from_model")
        return encoder

    # ------------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        """The model name or path as given, or the wrapped model's ``name_or_path``."""
        if self._model_arg is not None:
            return self._model_arg
        name = getattr(self._model, "name_or_path", "") or ""
        return str(name) or f"<in-memory {type(self._model).__name__}>"

    @property
    def architecture(self) -> str | None:
        """``"colpali"`` or ``"colqwen2"``, or ``None`` before the model is loaded."""
        return self._architecture

    @property
    def backend(self) -> str | None:
        """``"transformers"`` or ``"colpali-engine"`` (which classes run the model), ``None`` before loading."""
        return self._backend

    @property
    def max_image_side(self) -> int | None:
        """The longest page side the processor sees, or ``None`` for no limit."""
        return self._max_image_side

    @property
    def fingerprint(self) -> str:
        """Identity of the model weights.

        A local directory is fingerprinted from its files without loading it
        (:func:`~retrieval.encode.dense.fingerprint_model_dir`); a hub name by the
        revision (commit) it was loaded from; a wrapped model by hashing its parameters.
        """
        if self._fingerprint is None:
            with self._lock:
                if self._fingerprint is None:
                    if self._model_arg is not None and Path(self._model_arg).is_dir():
                        self._fingerprint = fingerprint_model_dir(self._model_arg)
                    else:
                        model = self._get_model()
                        commit = getattr(model.config, "_commit_hash", None)
                        if self._model_arg is not None and isinstance(commit, str) and commit:
                            self._fingerprint = f"hub:{self._model_arg}@{commit}"
                        else:
                            torch = require("torch", extra="cpu", feature="ColPaliEncoder")
                            self._fingerprint = fingerprint_transformers_model(model, torch)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable identity of the encoder (loads the model).

        Returns
        -------
        dict
            ``type`` (``"ColPaliEncoder"``), ``model`` (the name or path as given),
            ``architecture`` (``"colpali"`` / ``"colqwen2"``), ``dim``, ``dtype`` (as
            requested; ``None`` = automatic), ``saliency`` (a tag naming the saliency
            definition, or ``None`` when off) and ``fingerprint``; ``max_image_side`` when one
            is set (it changes page vectors). Device and batch size are not included: they do
            not change the vectors.
        """
        self._get_model()
        description = {
            "type": "ColPaliEncoder",
            "model": self.name,
            "architecture": self._architecture,
            "dim": self.dim,
            "dtype": self._dtype,
            "saliency": _SALIENCY_TAG if self._saliency else None,
            "fingerprint": self.fingerprint,
        }
        if self._max_image_side is not None:
            description["max_image_side"] = self._max_image_side
        return description

    @classmethod
    def from_description(
        cls,
        description: dict[str, Any],
        *,
        device: str = "auto",
        batch_size: int = 4,
        check_fingerprint: bool = True,
        max_image_side: int | None = None,
    ) -> ColPaliEncoder:
        """Re-create an encoder from :meth:`describe` output (e.g. an index manifest).

        Parameters
        ----------
        description : dict
            As returned by :meth:`describe`.
        device, batch_size
            Runtime settings, as in the constructor; they are not part of the description.
        check_fingerprint : bool, default True
            Compare the model's fingerprint with the stored one and raise on mismatch, so
            queries are never encoded by a different model than the pages. For a local
            directory this reads its files only; for a hub name it loads the model.
        max_image_side : int, optional
            Overrides the described one (``None`` keeps it).

        Raises
        ------
        ConfigError
            For a description of another encoder type, unknown keys, a wrapped in-memory
            model (:meth:`from_model`: nothing on disk to load), a saliency definition this
            version does not compute, or (with ``check_fingerprint``) a changed model.
        """
        check_description(description, "ColPaliEncoder", _DESCRIBE_KEYS)
        model = description.get("model")
        if not isinstance(model, str) or not model or model.startswith("<in-memory"):
            raise ConfigError(
                f"the ColPaliEncoder description names no loadable model (model={model!r}): it describes a model "
                "wrapped with ColPaliEncoder.from_model. Wrap the same model again and pass it as encoder=..."
            )
        tag = description.get("saliency")
        if tag not in (None, _SALIENCY_TAG):
            raise ConfigError(
                f"the ColPaliEncoder description uses saliency {tag!r}, but this version computes {_SALIENCY_TAG!r}; "
                "re-encode the pages, or install the densezip version that built the index."
            )
        side = max_image_side if max_image_side is not None else description.get("max_image_side")
        encoder = cls(model, device=device, batch_size=batch_size, saliency=tag is not None,
                      dtype=description.get("dtype"), max_image_side=side)
        expected = description.get("fingerprint")
        if check_fingerprint and expected is not None:
            actual = encoder.fingerprint
            if expected.startswith("params-sha256:") and not actual.startswith("params-sha256:"):
                # A wrapped model (from_model) was fingerprinted by its parameters: compare like with like.
                torch = require("torch", extra="cpu", feature="ColPaliEncoder")
                actual = fingerprint_transformers_model(encoder._get_model(), torch)
            if actual == expected:
                return encoder
            raise ConfigError(
                f"model {model!r} has fingerprint {actual!r}, but the description expects {expected!r}: "
                "the model changed since the pages were encoded, so query vectors would not match them. Re-encode "
                "the pages, restore the original model, or pass check_fingerprint=False if the change is harmless."
            )
        return encoder

    def __repr__(self) -> str:
        state = f"loaded on {self._resolved_device}" if self._model is not None else "not loaded"
        return (
            f"ColPaliEncoder(model={self.name!r}, device={self._device!r}, batch_size={self._batch_size}, "
            f"saliency={self._saliency}, dtype={self._dtype!r}, max_image_side={self._max_image_side})  # {state}"
        )

    # ------------------------------------------------------------------ encoding

    def encode_documents(
        self,
        images: Sequence[PILImage | str | os.PathLike[str]],
        ids: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
    ) -> MultiVectorEmbeddings:
        """Encode page images into one vector per image patch token.

        Parameters
        ----------
        images : sequence of PIL.Image.Image, str or os.PathLike, length n >= 1
            Page images, or paths of image files (opened with Pillow). Any mode is
            converted to RGB, transparent areas becoming white; pages larger than
            ``max_image_side`` are scaled down, then the processor resizes each page to the
            model's input size.
        ids : sequence of str, length n, optional
            Page ids; ``None`` gives ``"0"``, ``"1"``, ...
        batch_size : int, optional
            Overrides the constructor's ``batch_size``.

        Returns
        -------
        MultiVectorEmbeddings
            ``vectors`` of shape ``(T, dim)``, dtype float32, unit L2 norm per row, where
            page ``i`` owns ``lengths[i]`` = its number of image tokens (fixed for ColPali,
            size-dependent for ColQwen2); ``saliency`` of shape ``(T,)``, dtype float32,
            finite and in ``[0, 1]`` (see the module docstring), or ``None`` when the
            encoder was built with ``saliency=False``.

        Raises
        ------
        ConfigError
            If ``images`` is empty, a single image, or holds something that is not an
            image or a readable image file (the message names the item and the path).
        ShapeError
            If ``ids`` does not have one id per image, or the model returns NaN / inf.
        """
        pil_image = require("PIL.Image", extra="vision", feature="ColPaliEncoder.encode_documents")
        pages = [fit_within(p, self._max_image_side, pil_image) for p in as_image_list(images, pil_image)]
        id_list = check_ids(ids, len(pages), what="encode_documents", item="image")
        bs = self._batch_size if batch_size is None else positive_int("batch_size", batch_size)
        model = self._get_model()
        processor = self._processor
        torch = require("torch", extra="cpu", feature="ColPaliEncoder")
        vectors: list[NDArray[np.float32]] = []
        saliency: list[NDArray[np.float32]] = []
        for start in range(0, len(pages), bs):
            inputs = processor.process_images(pages[start : start + bs])
            vecs, sal = self._forward(model, inputs, torch, keep="image", want_saliency=self._saliency)
            vectors.extend(vecs)
            if sal is not None:
                saliency.extend(sal)
        return MultiVectorEmbeddings.from_list(vectors, ids=id_list, saliency=saliency if self._saliency else None)

    def encode_queries(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
    ) -> MultiVectorEmbeddings:
        """Encode text queries into one vector per query token.

        The processor adds its query prompt (``"Question: "`` / ``"Query: "``) and ten
        query-augmentation tokens, as the models were trained; their vectors are kept,
        padding is dropped.

        Parameters
        ----------
        texts : sequence of str, length n >= 1
            Query texts; empty strings are allowed.
        ids : sequence of str, length n, optional
            Query ids; ``None`` gives ``"0"``, ``"1"``, ...
        batch_size : int, optional
            Overrides the constructor's ``batch_size``.

        Returns
        -------
        MultiVectorEmbeddings
            ``vectors`` of shape ``(T, dim)``, dtype float32, unit L2 norm per row, one
            row per non-padding token; ``saliency`` is ``None``.

        Raises
        ------
        ConfigError
            If ``texts`` is empty, a single str, or holds a non-str item.
        ShapeError
            If ``ids`` does not have one id per text, or the model returns NaN / inf.
        """
        items = as_text_list(texts, what="encode_queries", allow_empty=False)
        id_list = check_ids(ids, len(items), what="encode_queries")
        bs = self._batch_size if batch_size is None else positive_int("batch_size", batch_size)
        model = self._get_model()
        processor = self._processor
        torch = require("torch", extra="cpu", feature="ColPaliEncoder")
        vectors: list[NDArray[np.float32]] = []
        for start in range(0, len(items), bs):
            inputs = processor.process_queries(items[start : start + bs])
            vecs, _ = self._forward(model, inputs, torch, keep="tokens", want_saliency=False)
            vectors.extend(vecs)
        return MultiVectorEmbeddings.from_list(vectors, ids=id_list)

    # ------------------------------------------------------------------ internals

    def _get_model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._load()
        return self._model

    def _load(self) -> None:
        owner = "ColPaliEncoder"
        torch = require("torch", extra="cpu", feature=owner)
        transformers = require("transformers", extra="cpu", feature=owner)
        require("PIL.Image", extra="vision", feature=owner)
        device = resolve_device(self._device, torch, owner=owner)
        path = self._model_arg
        if path is None:  # pragma: no cover - only from_model leaves it unset, and it is loaded there
            raise RuntimeError("ColPaliEncoder has neither a model path nor a wrapped model.")
        dtype_name = self._dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        model, processor, architecture, backend = load_checkpoint(
            path, torch=torch, transformers=transformers, device=device, dtype_name=dtype_name, eager=self._saliency
        )
        self._backend = backend
        self._install(model, processor, architecture, owner=owner)
        logger.info("Loaded %s (%s, %s) on %s (dim=%d, dtype=%s)", path, architecture, backend, device, self._dim,
                    dtype_name)

    def _install(self, model: Any, processor: Any, architecture: str, *, owner: str) -> None:
        """Check that model and processor fit together, then make them the encoder's."""
        dim = check_model_and_processor(model, processor, owner=owner, saliency=self._saliency)
        model.eval()
        self._model = model
        self._processor = processor
        self._architecture = architecture
        self._dim = dim
        self._resolved_device = str(next(model.parameters()).device)

    def _forward(
        self,
        model: Any,
        inputs: Any,
        torch: ModuleType,
        *,
        keep: str,
        want_saliency: bool,
    ) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]] | None]:
        """Run one batch; return per-row vectors (and saliency) of the kept positions."""
        inputs.pop("labels", None)  # the processor adds training labels for images
        device = next(model.parameters()).device
        inputs = inputs.to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        mask = inputs["attention_mask"].bool()
        received: list[Any] = []
        hook = None
        use_output_attentions = False
        if want_saliency:
            module = last_attention_module(model)
            if module is not None:
                hook = module.register_forward_hook(saliency_hook(mask, received))
            else:
                use_output_attentions = True
        try:
            with torch.inference_mode():
                out = model(**inputs, output_attentions=True) if use_output_attentions else model(**inputs)
        finally:
            if hook is not None:
                hook.remove()
        # transformers' models return an output object; colpali-engine's the (B, L, d) tensor itself.
        attentions = getattr(out, "attentions", None)
        if use_output_attentions and attentions:
            received.append(received_attention(attentions[-1], mask))
        embeddings = getattr(out, "embeddings", out).float().cpu().numpy()
        if keep == "image":
            keep_mask = ((inputs["input_ids"] == self._processor.image_token_id) & mask).cpu().numpy()
        else:
            keep_mask = mask.cpu().numpy()
        counts = keep_mask.sum(axis=1)
        if keep == "image" and (counts == 0).any():
            raise ConfigError(
                f"the processor's image token id {self._processor.image_token_id} does not occur in the prompt of "
                f"{int((counts == 0).sum())} page(s); processor and model do not match."
            )
        vectors = [np.ascontiguousarray(embeddings[r][keep_mask[r]], dtype=np.float32) for r in range(len(counts))]
        if not all(np.isfinite(v).all() for v in vectors):
            raise ShapeError(
                f"{self.name} returned NaN or inf vectors. With dtype={self._dtype!r} the weights may overflow; "
                "try dtype='float32'."
            )
        if not want_saliency:
            return vectors, None
        if not received or received[-1] is None:
            raise ConfigError(
                f"{self.name} returned no attention weights, so saliency cannot be computed. Load it with "
                "attn_implementation='eager', or pass saliency=False."
            )
        scores = received[-1].cpu().numpy()
        saliency = [np.ascontiguousarray(scores[r][keep_mask[r]], dtype=np.float32) for r in range(len(counts))]
        if not all(np.isfinite(s).all() for s in saliency):
            raise ShapeError(f"{self.name} returned NaN or inf attention weights; try dtype='float32'.")
        return vectors, saliency

"""Token / patch saliency from attention: the attention a position *receives* in the last layer.

For a sequence with attention weights ``A[h, i, j]`` (head ``h``, query position ``i``, key
position ``j``) and a padding mask, the saliency of position ``j`` is::

    saliency[j] = mean_h mean_{i : mask[i] = 1} A[h, i, j]

:class:`~retrieval.encode.multivector.MultiVectorEncoder` (text tokens) and
:class:`~retrieval.encode.colpali.ColPaliEncoder` (image patches) share this definition, and
:class:`~retrieval.compress.AttentionPruner` ranks by it. Torch is never imported here: the
functions work on the tensors they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["last_attention_module", "received_attention", "saliency_hook"]


def received_attention(weights: Any, mask: Any) -> Any:
    """Attention received per position, averaged over heads and over the real query positions.

    Parameters
    ----------
    weights : torch.Tensor, shape (B, H, L, L)
        Attention weights of one layer (softmax over the last axis).
    mask : torch.Tensor, shape (B, L), dtype bool
        True for real (non-padding) positions.

    Returns
    -------
    torch.Tensor, shape (B, L), dtype float32
        Each value in ``[0, 1]``.
    """
    per_query = weights.float().mean(dim=1)  # (B, L_query, L_key): heads averaged
    rows = mask.to(per_query.dtype)
    received = (per_query * rows[:, :, None]).sum(dim=1) / rows.sum(dim=1, keepdim=True).clamp(min=1)
    return received.clamp(min=0.0)  # softmax weights are >= 0; clamp only rounding noise


#: Where the language model sits: transformers' ColPali / ColQwen2 (``vlm``), colpali-engine's
#: ColPali (``model``: a PaliGemmaForConditionalGeneration) and ColQwen2 (a Qwen2VLModel itself).
_LANGUAGE_MODEL_PATHS = (("vlm", "language_model"), ("vlm", "model", "language_model"),
                         ("model", "model", "language_model"), ("model", "language_model"), ("language_model",))


def last_attention_module(model: Any) -> Any | None:
    """The self-attention module of a ColPali / ColQwen2 language model's last decoder layer, if found."""
    for path in _LANGUAGE_MODEL_PATHS:
        node = model
        for name in path:
            node = getattr(node, name, None)
        layers = getattr(node, "layers", None)
        if layers is not None and len(layers) > 0:
            return getattr(layers[-1], "self_attn", None)
    return None


def saliency_hook(mask: Any, sink: list[Any]) -> Callable[..., None]:
    """Forward hook for an attention module that appends only the reduced ``(B, L)`` scores to ``sink``.

    Reducing inside the hook avoids ``output_attentions=True``, which would keep the
    ``(B, H, L, L)`` weights of every layer (about 0.6 GB per page for ColPali in float32).
    A module that returned no weights appends ``None``.
    """

    def hook(module: Any, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        sink.append(None if weights is None else received_attention(weights, mask))

    return hook

"""Spec strings for codecs: ``"Flat"``, ``"FP16"``, ``"KMeans<K>"``, ``"KMeans<K>r<b>"``,
``"Binary"``, ``"BinaryITQ"``, optionally behind ``"Prune<p>,"`` for multi-vector indexes.
``K`` may be left out (``"KMeans"``, ``"KMeansr2"``): it is then sized to the training vectors
(:func:`retrieval.compress.kmeans.corpus_k`).

The one place that turns a spec into a codec (:func:`parse_codec`), re-creates a fitted
codec from saved arrays (:func:`codec_from_state`) and splits off the pruning share
(:func:`split_prune`). Codec classes never import this module, so there is no import circle.
"""

from __future__ import annotations

import re
from typing import Any

from numpy.typing import NDArray

from retrieval.compress.base import Codec, FloatCodec
from retrieval.compress.binary import BinaryQuantizer
from retrieval.compress.kmeans import PatchKMeans
from retrieval.errors import ConfigError, IndexFormatError

__all__ = ["codec_from_state", "parse_codec", "split_prune"]

_PRUNE = re.compile(r"^Prune(?P<p>[0-9]*\.?[0-9]+)$")
_SPEC = re.compile(r"^(?:(?P<flat>Flat)|(?P<fp16>FP16)|KMeans(?P<k>\d+)?(?:r(?P<r>\d+))?|(?P<binary>Binary)(?P<itq>ITQ)?)$")


def parse_codec(spec: str, dim: int, *, seed: int = 0) -> Codec:
    """Build an untrained codec from its spec string.

    Parameters
    ----------
    spec : str
        ``"Flat"``, ``"FP16"``, ``"KMeans{K}"``, ``"KMeans{K}r{b}"``, ``"Binary"`` or ``"BinaryITQ"``.
        Without ``{K}`` (``"KMeans"``, ``"KMeansr2"``) k-means is sized to the vectors it is fitted on.
    dim : int
        Vector dimension ``d``.
    seed : int
        Seed for codecs that train (k-means, ITQ).

    Examples
    --------
    >>> parse_codec("KMeans256r2", 128).code_size
    33
    >>> parse_codec("BinaryITQ", 128).spec
    'BinaryITQ'
    >>> parse_codec("KMeansr2", 128).spec  # K chosen by fit: corpus_k(number of vectors)
    'KMeansr2'
    """
    m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise ConfigError(
            f"unknown codec spec {spec!r}; expected one of 'Flat', 'FP16', 'KMeans<K>' (e.g. 'KMeans256'), "
            "'KMeans<K>r<bits>' (e.g. 'KMeans256r2'), 'KMeans' / 'KMeansr<bits>' (K sized to the corpus), "
            "'Binary', 'BinaryITQ'."
        )
    if m["flat"]:
        return FloatCodec(dim)
    if m["fp16"]:
        return FloatCodec(dim, dtype="float16")
    if m["binary"]:
        return BinaryQuantizer(dim, rotation="itq" if m["itq"] else None, seed=seed)
    return PatchKMeans(dim, k=int(m["k"]) if m["k"] else None, residual_bits=int(m["r"] or 0), seed=seed)


def codec_from_state(spec: str, dim: int, arrays: dict[str, NDArray[Any]]) -> Codec:
    """Re-create a fitted codec from its spec and :meth:`Codec.state` arrays (used by loaders)."""
    try:
        codec = parse_codec(spec, dim)
    except ConfigError as exc:
        raise IndexFormatError(f"saved codec spec is not understood: {exc}") from exc
    codec.load_state(arrays)
    return codec


def split_prune(spec: str) -> tuple[float | None, str]:
    """Split a multi-vector spec ``"<codec>"`` or ``"Prune<p>,<codec>"`` into ``(p or None, codec)``.

    Examples
    --------
    >>> split_prune("Prune0.6,KMeans256r2")
    (0.6, 'KMeans256r2')
    >>> split_prune("BinaryITQ")
    (None, 'BinaryITQ')
    """
    parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else []
    keep = None
    if len(parts) == 2:
        m = _PRUNE.match(parts[0])
        if m is None:
            raise ConfigError(f"spec {spec!r}: the first part must be 'Prune<p>' (e.g. 'Prune0.6'); got {parts[0]!r}.")
        keep = float(m["p"])
        parts = parts[1:]
    if len(parts) != 1 or not parts[0]:
        raise ConfigError(
            f"MultiVectorIndex spec must be '<codec>' or 'Prune<p>,<codec>', e.g. 'KMeans256' or "
            f"'Prune0.6,KMeans256r2'; got {spec!r}."
        )
    return keep, parts[0]

"""Vector codecs for multi-vector storage: fit / encode / decode, described by spec strings.

Every codec turns float vectors ``(T, d)`` into a ``(T, code_size)`` uint8 byte matrix and
back (the faiss ``sa_encode`` / ``sa_decode`` convention), so an index stores one flat code
array whatever the codec:

====================  ==========================================================  ===============
spec                  codec                                                        bytes / vector
====================  ==========================================================  ===============
``Flat``              float32, lossless                                            ``4 d``
``FP16``              float16                                                      ``2 d``
``KMeans256``         :class:`PatchKMeans`: nearest-centroid id (1 byte, K <= 256)  ``1``
``KMeans4096``        2-byte ids for 256 < K <= 65536                              ``2``
``KMeans256r2``       id plus a 2-bit per-dimension residual (PLAID style)         ``1 + d/4``
``Binary``            :class:`BinaryQuantizer`: sign bits                          ``d/8``
``BinaryITQ``         sign bits after a learned ITQ rotation                       ``d/8``
====================  ==========================================================  ===============

:class:`AttentionPruner` (``Prune0.6``) is not a codec: it drops whole vectors by saliency
before they are encoded.
"""

from __future__ import annotations

from retrieval.compress.base import Codec, FloatCodec
from retrieval.compress.binary import BinaryQuantizer
from retrieval.compress.kmeans import PatchKMeans
from retrieval.compress.prune import AttentionPruner
from retrieval.compress.spec import codec_from_state, parse_codec, split_prune

__all__ = [
    "AttentionPruner",
    "BinaryQuantizer",
    "Codec",
    "FloatCodec",
    "PatchKMeans",
    "codec_from_state",
    "parse_codec",
    "split_prune",
]

"""The :class:`Encoder` protocol: text in, float vectors out.

Queries and documents are encoded by separate methods (the BEIR split) because many
retrieval models treat them differently: a prompt such as ``"query: "`` for one side
only, or a different pooling / sub-model. An encoder that treats both sides alike
simply implements both methods the same way.

Any object with these members is an encoder; no subclassing is needed. The
sentence-transformers backed :class:`~retrieval.encode.dense.DenseEncoder` is the main
implementation, and the test suite's ``FakeEncoder`` (deterministic token hashing) is
another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from retrieval.types import Embeddings

__all__ = ["Encoder", "LazyModel"]


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns query and document texts into dense float32 vectors.

    Attributes
    ----------
    dim : int
        Width ``d`` of every vector the encoder returns. Implementations may load a
        model to answer this.
    name : str
        Short human-readable name, e.g. the model name. Informational only; use
        :meth:`describe` for an identity that can re-create the encoder.

    Notes
    -----
    ``isinstance(obj, Encoder)`` only checks that the members exist. On Python 3.11
    that check reads ``obj.dim`` through ``hasattr``, so for a lazily loaded model it
    loads the model; on 3.12+ it does not. Prefer static typing over runtime checks in
    hot paths.
    """

    @property
    def dim(self) -> int:
        """Width of the returned vectors."""
        ...

    @property
    def name(self) -> str:
        """Short human-readable name of the encoder."""
        ...

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> NDArray[np.float32]:
        """Encode search queries.

        Parameters
        ----------
        texts : sequence of str, length n
            Query texts. Empty strings are allowed.
        batch_size : int, optional
            Texts per forward pass; ``None`` uses the encoder's default.
        show_progress : bool, optional
            Show a progress bar; ``None`` lets the encoder decide.

        Returns
        -------
        np.ndarray, shape (n, dim), dtype float32
            C-contiguous, finite. ``n == 0`` gives shape ``(0, dim)``.
        """
        ...

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> Embeddings:
        """Encode documents (passages) for indexing.

        Parameters
        ----------
        texts : sequence of str, length n
            Document texts. Empty strings are allowed.
        ids : sequence of str, length n, optional
            Document ids; ``None`` numbers the documents ``"0"``, ``"1"``, ...
        batch_size : int, optional
            Texts per forward pass; ``None`` uses the encoder's default.
        show_progress : bool, optional
            Show a progress bar; ``None`` lets the encoder decide.

        Returns
        -------
        Embeddings
            ``vectors`` of shape ``(n, dim)``, dtype float32, with the ``ids``.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable identity of the encoder.

        Stored in index manifests so a loaded index can re-create the encoder that
        must encode its queries. Contains at least ``"type"`` (the class name);
        implementations add what is needed to rebuild it and a ``"fingerprint"`` that
        changes when the underlying model changes.
        """
        ...


class LazyModel:
    """Mixin for encoders that load their model on first use (DenseEncoder, ColPaliEncoder).

    The class sets ``_dim`` and ``_resolved_device`` in ``_get_model()``; until then, asking
    for :attr:`dim` loads the model, while :attr:`device` answers ``None``.
    """

    _dim: int | None
    _resolved_device: str | None

    def _get_model(self) -> Any:  # pragma: no cover - every encoder using the mixin defines it
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Width ``d`` of the vectors the model returns; loads the model unless already known."""
        if self._dim is None:
            self._get_model()
        if self._dim is None:  # pragma: no cover - _get_model always sets it
            raise RuntimeError(f"{type(self).__name__} failed to determine the embedding dimension.")
        return self._dim

    @property
    def device(self) -> str | None:
        """The concrete device the model runs on, or ``None`` before it is loaded."""
        return self._resolved_device

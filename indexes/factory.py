"""One function from a spec string to an empty index: :func:`make_index`.

Every caller that lets a user name an index by a string (the ``densezip`` commands, RAG
collections, sharded builds, the benchmark harness) goes through here, so the accepted
spellings and their errors are written once.

Two spellings name an exact (brute-force) search and are easy to confuse:

``"exact"``
    :class:`~indexes.FlatIndex`, NumPy only: the reference implementation the tests compare
    every other index against. It needs no FAISS and is the spelling the CLI and saved
    configurations use.
``"Flat"``
    FAISS ``IndexFlat`` wrapped in :class:`~indexes.FaissIndex`: the same ranking, computed
    by FAISS's BLAS kernels (faster on large corpora).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval.errors import ConfigError

if TYPE_CHECKING:
    from indexes.base import Metric, VectorIndex
    from indexes.binary_ann import BinaryIndexKind
    from indexes.multivector import FirstStage, MultiVectorIndex

__all__ = ["EXACT", "make_index"]

EXACT = "exact"
"""The spec of the NumPy :class:`~indexes.FlatIndex` (not FAISS's ``"Flat"``)."""

ACCEPTED_SPECS = (
    "'exact' (NumPy FlatIndex: exact brute force without FAISS, the test oracle); "
    "a FAISS factory string for FaissIndex, e.g. 'Flat' (FAISS IndexFlat, also exact), 'HNSW32', 'SQ8', "
    "'PQ48x8', 'IVF64,PQ48x8', 'OPQ48,PQ48x8' (https://github.com/facebookresearch/faiss/wiki/The-index-factory); "
    "or, with multivector=True, a MultiVectorIndex spec: 'Flat', 'FP16', 'KMeans<K>', 'KMeans<K>r<bits>', "
    "'KMeans' / 'KMeansr<bits>' (K sized to the corpus), "
    "'Binary', 'BinaryITQ', optionally after 'Prune<p>,' (e.g. 'Prune0.6,KMeans256r2')"
)
_MULTIVECTOR_PREFIXES = ("Prune", "KMeans", "FP16", "Binary")


def make_index(
    dim: int,
    spec: str,
    *,
    metric: Metric = "ip",
    nprobe: int | None = None,
    ef_search: int | None = None,
    multivector: bool = False,
    first_stage: FirstStage | None = None,
    n_candidates: int | None = None,
    token_k: int | None = None,
    seed: int | None = None,
    binary_index: BinaryIndexKind | None = None,
    ndocs: int | None = None,
) -> VectorIndex | MultiVectorIndex:
    """An empty (untrained) index for ``spec``.

    Parameters
    ----------
    dim : int
        Vector dimension ``d`` (token / patch vector dimension for multi-vector indexes).
    spec : str
        - ``"exact"``: :class:`~indexes.FlatIndex`, exact search in NumPy, no FAISS needed.
          It is the test oracle, and the spelling the ``densezip`` CLI and saved
          configurations use for it.
        - any FAISS factory string: :class:`~indexes.FaissIndex`, e.g. ``"Flat"`` (FAISS
          ``IndexFlat``: also exact, FAISS kernels), ``"HNSW32"``, ``"IVF64,PQ48x8"``.
        - with ``multivector=True``: a :class:`~indexes.MultiVectorIndex` spec, ``"<codec>"``
          or ``"Prune<p>,<codec>"`` with codec ``Flat``, ``FP16``, ``KMeans<K>``,
          ``KMeans<K>r<b>`` (``<K>`` may be left out: sized to the corpus), ``Binary`` or ``BinaryITQ``.
    metric : {"ip", "l2"}
        Similarity of single-vector indexes. Multi-vector indexes score by MaxSim, an inner
        product, and accept ``"ip"`` only.
    nprobe : int, optional
        IVF lists probed per query (FAISS ``IVF`` specs), or centroids probed per query
        vector (multi-vector ``first_stage="plaid"``, the default for ``KMeans`` codecs, or
        ``"centroid"``), or binary IVF lists probed per query vector (multi-vector
        ``first_stage="binary"``). Default: the index's own.
    ef_search : int, optional
        HNSW search beam width: FAISS ``HNSW`` specs, or the binary HNSW token index of a
        multi-vector ``first_stage="binary"`` with ``binary_index="hnsw"``.
    multivector : bool
        Build a :class:`~indexes.MultiVectorIndex` (several vectors per document, MaxSim)
        instead of a single-vector index. ``"Flat"`` is a valid spec of both kinds, so the
        kind is chosen here, never guessed from the spec.
    first_stage, n_candidates, token_k, seed, binary_index, ndocs : optional
        :class:`~indexes.MultiVectorIndex` options (candidate generation, re-scored
        documents, Hamming neighbours per query vector, codec training seed, the FAISS
        binary token index of ``first_stage="binary"``: ``"ivf"``, ``"hnsw"`` or ``"flat"``,
        documents scored exactly per query); multi-vector only. Omitted ones keep the
        MultiVectorIndex defaults.

    Returns
    -------
    VectorIndex or MultiVectorIndex
        Not yet trained or filled: call ``train`` (when ``is_trained`` is False) and ``add``.

    Raises
    ------
    ConfigError
        For an unknown spec (the message lists the accepted ones) or an option that does
        not apply to the chosen kind.

    Examples
    --------
    >>> type(make_index(8, "exact")).__name__
    'FlatIndex'
    >>> make_index(8, "exact", nprobe=4)
    Traceback (most recent call last):
    ...
    retrieval.errors.ConfigError: nprobe / ef_search do not apply to spec 'exact' (the NumPy FlatIndex, which scans every vector); drop them, or pick an IVF / HNSW FAISS spec such as 'IVF64,Flat' or 'HNSW32'.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"spec must be a non-empty string; got {spec!r}. Accepted: {ACCEPTED_SPECS}.")
    mv_options = {name: value for name, value in (("first_stage", first_stage), ("n_candidates", n_candidates),
                                                  ("token_k", token_k), ("seed", seed), ("binary_index", binary_index),
                                                  ("ndocs", ndocs)) if value is not None}
    if multivector:
        return _multivector(dim, spec, metric=metric, nprobe=nprobe, ef_search=ef_search, options=mv_options)
    if mv_options:
        raise ConfigError(
            f"{sorted(mv_options)} apply to multi-vector indexes only; got them for single-vector spec {spec!r}. "
            "Pass multivector=True for a MultiVectorIndex, or drop them."
        )
    if spec == EXACT:
        if nprobe is not None or ef_search is not None:
            raise ConfigError(
                "nprobe / ef_search do not apply to spec 'exact' (the NumPy FlatIndex, which scans every vector); "
                "drop them, or pick an IVF / HNSW FAISS spec such as 'IVF64,Flat' or 'HNSW32'."
            )
        from indexes.flat import FlatIndex

        return FlatIndex(dim, metric=metric)
    if spec.strip().startswith(_MULTIVECTOR_PREFIXES):
        raise ConfigError(
            f"spec {spec!r} is a MultiVectorIndex spec, not a single-vector one; pass multivector=True "
            f"(and multi-vector embeddings), or use a single-vector spec. Accepted: {ACCEPTED_SPECS}."
        )
    if spec.strip().lower() == EXACT:
        raise ConfigError(f"unknown spec {spec!r}; the NumPy exact index is spelled 'exact' (lower case).")
    from indexes.faiss_index import FaissIndex

    try:
        return FaissIndex(dim, spec=spec, metric=metric, nprobe=nprobe, ef_search=ef_search)
    except ConfigError as exc:
        if "factory string" not in str(exc):  # dim, metric, nprobe / ef_search: already precise
            raise
        raise ConfigError(f"unknown spec {spec!r} for dim={dim}. Accepted: {ACCEPTED_SPECS}. ({exc})") from exc


def _multivector(
    dim: int, spec: str, *, metric: str, nprobe: int | None, ef_search: int | None, options: dict[str, Any]
) -> MultiVectorIndex:
    from indexes.multivector import MultiVectorIndex

    if spec == EXACT:
        raise ConfigError(
            "spec 'exact' names the single-vector NumPy FlatIndex; for exact multi-vector (MaxSim) search "
            "use spec 'Flat' (float32) or 'FP16' with multivector=True."
        )
    if metric != "ip":
        raise ConfigError(f"multi-vector indexes score by MaxSim (inner products): metric must be 'ip'; got {metric!r}.")
    binary = options.get("first_stage") == "binary"
    if "binary_index" in options and not binary:
        raise ConfigError(f"binary_index={options['binary_index']!r} is the token index of first_stage='binary'; got "
                          f"first_stage={options.get('first_stage')!r}. Pass first_stage='binary', or drop binary_index.")
    if ef_search is not None:
        if not binary or options.get("binary_index") != "hnsw":
            raise ConfigError("ef_search applies to FAISS HNSW specs, and to multi-vector indexes with "
                              "first_stage='binary' and binary_index='hnsw' (the binary HNSW token index); got "
                              f"first_stage={options.get('first_stage')!r}, binary_index={options.get('binary_index')!r}.")
        options["ef_search"] = ef_search
    if nprobe is not None:
        options["nprobe"] = nprobe
    try:
        return MultiVectorIndex(dim, spec=spec, **options)
    except ConfigError as exc:
        if not str(exc).startswith(("unknown codec spec", "MultiVectorIndex spec must be", f"spec {spec!r}: ")):
            raise  # an option error (first_stage, nprobe, ...): already precise
        raise ConfigError(f"unknown multi-vector spec {spec!r}. Accepted: {ACCEPTED_SPECS}. ({exc})") from exc

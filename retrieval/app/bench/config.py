"""Benchmark configurations: which data sets, which index kinds, which parameters.

A configuration is a TOML (or YAML) file with run settings at the top level and two
lists of data sets, ``[[text]]`` (BEIR layout, scored with qrels) and ``[[vectors]]``
(fvecs / ivecs with exact ground truth). Each data set lists its indexes::

    name = "example"
    threads = 2          # FAISS / BLAS threads
    repeats = 5          # timed rounds per figure (the median is reported, min and max kept)
    warmup = 1           # untimed rounds before them
    k = 10               # hits per query when timing

    [[text]]
    name = "scifact"
    path = "scifact"                 # directory, or a bundled data set name
    indexes = [
      { kind = "exact" },                                   # NumPy FlatIndex
      { kind = "faiss", spec = "HNSW32", ef_search = 128 },  # any FAISS factory string
      { kind = "jpq", m = 48, epochs = 1 },                 # JPQ trained on the train split
      { kind = "faiss", spec = "IVF64,PQ48x8", nprobe = 16, shards = 2 },  # ShardedIndex, local threads
      { kind = "multivector", spec = "Prune0.4,KMeans256r2", first_stage = "centroid", nprobe = 8,
        timing_queries = 32 },                              # MaxSim over token vectors
    ]

    [[vectors]]
    name = "deep10k"
    base = "deep10k/deep10k_base.fvecs"
    queries = "deep10k/deep10k_query.fvecs"
    groundtruth = "deep10k/deep10k_groundtruth.ivecs"
    indexes = [
      { spec = "HNSW32", sweep = { ef_search = [16, 32, 64] } },  # search-time sweep, one build
      { spec = "PQ{m}x8", sweep = { m = [8, 16, 32] } },           # build-time sweep, one build per m
    ]

Relative paths are resolved against the ``data_root`` given to :func:`load_config` (the
command's ``--data-root``), then against the configuration file's directory, then, for
paths that start with a bundled vector set's name (``deep10k/...``, ``fmnist_small/...``,
see :func:`retrieval.datasets.available_vector_sets`), against the package's copy. Unknown keys
are an error, so a typo never silently runs a different benchmark.
"""

from __future__ import annotations

import itertools
import os
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from retrieval.datasets import available_vector_sets, vector_set_path
from retrieval.errors import ConfigError

__all__ = [
    "BenchConfig",
    "TextDataset",
    "TextIndexConfig",
    "VectorDataset",
    "VectorIndexConfig",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

TextKind = Literal["exact", "faiss", "jpq", "multivector"]
SEARCH_PARAMS = ("nprobe", "ef_search")
_TEXT_KINDS = ("exact", "faiss", "jpq", "multivector")
_JPQ_KEYS = ("m", "nbits", "opq", "epochs", "batch_size", "lr_encoder", "lr_centroids", "seed")
_MV_KEYS = ("first_stage", "n_candidates", "token_k", "binary_index", "ndocs")


@dataclass(frozen=True, kw_only=True)
class TextIndexConfig:
    """One index over a text data set.

    Attributes
    ----------
    kind : {"exact", "faiss", "jpq", "multivector"}
        ``exact`` is the NumPy :class:`~indexes.FlatIndex`; ``faiss`` a
        :class:`~indexes.FaissIndex` built from ``spec``; ``jpq`` a JPQ index (query encoder
        and PQ centroids trained jointly on the data set's ``train`` split, see
        :mod:`training.jpq`), with its training time counted as build time;
        ``multivector`` a :class:`~indexes.MultiVectorIndex` (MaxSim over token vectors
        from :class:`~retrieval.MultiVectorEncoder`, cached on disk after the first run).
    spec : str
        FAISS factory string (``faiss``) or MultiVectorIndex spec (``multivector``, e.g.
        ``"Prune0.4,KMeans256r2"``).
    nprobe, ef_search : int, optional
        Search-time parameters of IVF / HNSW specs; ``nprobe`` is also the centroids (or
        binary IVF lists) probed per query token of a multi-vector index, and ``ef_search`` the
        breadth of a multi-vector ``first_stage="binary"``, ``binary_index="hnsw"`` token index.
    jpq : dict
        :class:`~training.jpq.JPQTrainingArgs` fields for ``kind="jpq"`` (m, nbits, opq,
        epochs, batch_size, lr_encoder, lr_centroids, seed).
    multivector : dict
        MultiVectorIndex options for ``kind="multivector"``: first_stage, n_candidates, token_k,
        binary_index, ndocs (``ef_search`` above also reaches a binary HNSW token index).
    timing_queries : int, optional
        Time only the first this many queries (quality always uses all); for slow kinds.
    shards : int, optional
        Split the index into this many shards searched in parallel by local threads
        (:class:`~indexes.ShardedIndex` for ``exact`` / ``faiss``, with one trained state
        shared by all shards; :class:`~indexes.ShardedMultiVectorIndex` for ``multivector``).
    label : str
        Row name in the tables; defaults to the spec and parameters.
    """

    kind: TextKind
    spec: str = ""
    nprobe: int | None = None
    ef_search: int | None = None
    jpq: dict[str, Any] = field(default_factory=dict)
    multivector: dict[str, Any] = field(default_factory=dict)
    timing_queries: int | None = None
    shards: int | None = None
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        base = self._base_name()
        return base if self.shards is None else f"{base}, {self.shards} shards"

    def _base_name(self) -> str:
        if self.kind == "exact":
            return "exact (NumPy)"
        if self.kind == "jpq":
            return "JPQ " + ",".join(f"{k}={v}" for k, v in self.jpq.items())
        if self.kind == "multivector":
            extra = {**self.multivector, **({"nprobe": self.nprobe} if self.nprobe is not None else {})}
            return f"MaxSim {self.spec}" + "".join(f" {k}={v}" for k, v in extra.items())
        params = "".join(f" {p}={getattr(self, p)}" for p in SEARCH_PARAMS if getattr(self, p) is not None)
        return self.spec + params


@dataclass(frozen=True, kw_only=True)
class TextDataset:
    """A BEIR-layout data set and the indexes to build over it."""

    name: str
    path: str
    split: str = "test"
    train_split: str = "train"
    model: str | None = None
    indexes: tuple[TextIndexConfig, ...] = ()


@dataclass(frozen=True, kw_only=True)
class VectorIndexConfig:
    """One FAISS index family over a vector data set, with an optional parameter sweep.

    Attributes
    ----------
    spec : str
        FAISS factory string; may hold ``{name}`` fields filled from ``sweep`` (a
        build-time sweep: one index per value, e.g. ``"PQ{m}x8"``).
    sweep : dict of str to list of int
        ``nprobe`` and ``ef_search`` are search-time: one build, the parameter changed
        between measurements. Any other key must be a field of ``spec``. Several keys
        sweep their Cartesian product.
    label : str
        Curve name in the plots; defaults to ``spec``.
    """

    spec: str
    sweep: dict[str, tuple[int, ...]] = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.spec

    def build_points(self) -> list[dict[str, int]]:
        """The build-time parameter sets (``[{}]`` when the spec has no fields)."""
        keys = [k for k in self.sweep if k not in SEARCH_PARAMS]
        return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(self.sweep[k] for k in keys))]

    def search_points(self) -> list[dict[str, int]]:
        """The search-time parameter sets (``[{}]`` when nothing is swept at search time)."""
        keys = [k for k in self.sweep if k in SEARCH_PARAMS]
        return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(self.sweep[k] for k in keys))]


@dataclass(frozen=True, kw_only=True)
class VectorDataset:
    """Base vectors, queries and exact ground-truth neighbours (fvecs / ivecs)."""

    name: str
    base: str
    queries: str
    groundtruth: str
    metric: Literal["l2", "ip"] = "l2"
    timing_queries: int = 1000
    indexes: tuple[VectorIndexConfig, ...] = ()


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """A whole benchmark run. See the module docstring for the file format."""

    name: str
    threads: int = 2
    repeats: int = 5
    warmup: int = 1
    k: int = 10
    batch_sizes: tuple[int, ...] = (1, 64)
    bandwidth_mib: int = 256
    text: tuple[TextDataset, ...] = ()
    vectors: tuple[VectorDataset, ...] = ()
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, recorded in the result file."""
        return asdict(self)


# ---------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike[str], *, data_root: str | os.PathLike[str] | None = None) -> BenchConfig:
    """Read a ``.toml``, ``.yaml`` or ``.yml`` benchmark configuration.

    Parameters
    ----------
    path : str or os.PathLike
        The configuration file, or the name of a shipped configuration (``"smoke"``,
        ``"full"``: the files in ``retrieval/app/bench/configs``).
    data_root : str or os.PathLike, optional
        Directory that relative data paths are resolved against first.

    Returns
    -------
    BenchConfig

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, or any value is invalid.
    """
    file = resolve_config_path(path)
    text = file.read_text(encoding="utf-8")
    raw: Any
    if file.suffix == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML ({exc}).") from exc
    else:
        from retrieval._optional import require

        yaml = require("yaml", extra="bench", feature="YAML benchmark configurations")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc}).") from exc
    roots = [Path(data_root)] if data_root is not None else []
    roots.append(file.parent)
    return parse_config(raw, roots=roots, source=str(file))


def parse_config(raw: Any, *, roots: list[Path] | None = None, source: str = "<dict>") -> BenchConfig:
    """Validate a configuration already parsed into dicts and lists (see :func:`load_config`).

    Examples
    --------
    >>> cfg = parse_config({"name": "t", "vectors": [{"name": "v", "base": "/b.fvecs", "queries": "/q.fvecs",
    ...     "groundtruth": "/g.ivecs", "indexes": [{"spec": "HNSW16", "sweep": {"ef_search": [8, 16]}}]}]})
    >>> cfg.vectors[0].indexes[0].search_points()
    [{'ef_search': 8}, {'ef_search': 16}]
    """
    top = _table(raw, source, ("name", "threads", "repeats", "warmup", "k", "batch_sizes", "bandwidth_mib",
                               "text", "vectors"))
    where = source
    text = tuple(_text_dataset(t, roots or [], f"{where} [text #{i}]") for i, t in enumerate(_list(top, "text", where)))
    vectors = tuple(_vector_dataset(v, roots or [], f"{where} [vectors #{i}]")
                    for i, v in enumerate(_list(top, "vectors", where)))
    if not text and not vectors:
        raise ConfigError(f"{where}: no data sets; add at least one [[text]] or [[vectors]] table.")
    return BenchConfig(
        name=_str(top, "name", where, required=True),
        threads=_int(top, "threads", where, 2),
        repeats=_int(top, "repeats", where, 5),
        warmup=_int(top, "warmup", where, 1, minimum=0),
        k=_int(top, "k", where, 10),
        batch_sizes=_ints(top, "batch_sizes", where, (1, 64)),
        bandwidth_mib=_int(top, "bandwidth_mib", where, 256),
        text=text,
        vectors=vectors,
        source=source,
    )


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """The configuration file ``path`` names: a file, or a shipped configuration's name (``"smoke"``)."""
    file = Path(path)
    if file.is_file():
        return file
    shipped = Path(__file__).parent / "configs" / f"{path}.toml"
    if not file.suffix and shipped.is_file():
        return shipped
    known = sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.toml"))
    raise ConfigError(f"benchmark configuration {str(path)!r} not found; pass a .toml / .yaml file or the name of a "
                      f"shipped one: {known}.")


def _text_dataset(raw: Any, roots: list[Path], where: str) -> TextDataset:
    t = _table(raw, where, ("name", "path", "split", "train_split", "model", "indexes"))
    name = _str(t, "name", where, required=True)
    indexes = tuple(_text_index(x, f"{where} index #{i}") for i, x in enumerate(_list(t, "indexes", where)))
    if not indexes:
        raise ConfigError(f"{where}: data set {name!r} lists no indexes; add e.g. indexes = [{{kind = 'exact'}}].")
    return TextDataset(
        name=name,
        path=_data_path(_str(t, "path", where, required=True), roots, bundled_ok=True),
        split=_str(t, "split", where) or "test",
        train_split=_str(t, "train_split", where) or "train",
        model=_str(t, "model", where) or None,
        indexes=indexes,
    )


def _text_index(raw: Any, where: str) -> TextIndexConfig:
    t = _table(raw, where, ("kind", "spec", "nprobe", "ef_search", "label", "timing_queries", "shards", *_JPQ_KEYS,
                            *_MV_KEYS))
    kind = _str(t, "kind", where, required=True)
    if kind not in _TEXT_KINDS:
        raise ConfigError(f"{where}: kind must be one of {list(_TEXT_KINDS)}; got {kind!r}.")
    spec = _str(t, "spec", where)
    jpq = {k: t[k] for k in _JPQ_KEYS if k in t}
    mv = {k: t[k] for k in _MV_KEYS if k in t}
    if kind in ("faiss", "multivector") and not spec:
        example = "'HNSW32'" if kind == "faiss" else "'Prune0.5,KMeans256r2'"
        raise ConfigError(f"{where}: kind {kind!r} needs spec = '...', e.g. {example}.")
    if kind in ("exact", "jpq") and (spec or "nprobe" in t or "ef_search" in t):
        raise ConfigError(f"{where}: spec / nprobe / ef_search do not apply to kind {kind!r}.")
    if kind == "multivector" and "ef_search" in t and (mv.get("first_stage"), mv.get("binary_index")) != ("binary", "hnsw"):
        raise ConfigError(f"{where}: ef_search applies to kind 'faiss', and to kind 'multivector' with "
                          "first_stage = 'binary' and binary_index = 'hnsw' only.")
    if kind != "jpq" and jpq:
        raise ConfigError(f"{where}: {sorted(jpq)} apply to kind 'jpq' only; got kind {kind!r}.")
    if kind != "multivector" and mv:
        raise ConfigError(f"{where}: {sorted(mv)} apply to kind 'multivector' only; got kind {kind!r}.")
    if kind == "jpq" and "shards" in t:
        raise ConfigError(f"{where}: shards applies to kinds exact, faiss and multivector; got kind 'jpq'.")
    return TextIndexConfig(
        kind=kind,  # type: ignore[arg-type]  # checked against _TEXT_KINDS above
        spec=spec,
        nprobe=_int(t, "nprobe", where, None),
        ef_search=_int(t, "ef_search", where, None),
        jpq=jpq,
        multivector=mv,
        timing_queries=_int(t, "timing_queries", where, None),
        shards=_int(t, "shards", where, None),
        label=_str(t, "label", where),
    )


def _vector_dataset(raw: Any, roots: list[Path], where: str) -> VectorDataset:
    t = _table(raw, where, ("name", "base", "queries", "groundtruth", "metric", "timing_queries", "indexes"))
    name = _str(t, "name", where, required=True)
    metric = _str(t, "metric", where) or "l2"
    if metric not in ("l2", "ip"):
        raise ConfigError(f"{where}: metric must be 'l2' or 'ip'; got {metric!r}.")
    indexes = tuple(_vector_index(x, f"{where} index #{i}") for i, x in enumerate(_list(t, "indexes", where)))
    if not indexes:
        raise ConfigError(f"{where}: data set {name!r} lists no indexes; add e.g. indexes = [{{spec = 'Flat'}}].")
    return VectorDataset(
        name=name,
        base=_data_path(_str(t, "base", where, required=True), roots),
        queries=_data_path(_str(t, "queries", where, required=True), roots),
        groundtruth=_data_path(_str(t, "groundtruth", where, required=True), roots),
        metric=metric,  # type: ignore[arg-type]  # checked above
        timing_queries=_int(t, "timing_queries", where, 1000),
        indexes=indexes,
    )


def _vector_index(raw: Any, where: str) -> VectorIndexConfig:
    t = _table(raw, where, ("spec", "sweep", "label"))
    spec = _str(t, "spec", where, required=True)
    sweep_raw = t.get("sweep", {})
    if not isinstance(sweep_raw, Mapping):
        raise ConfigError(f"{where}: sweep must be a table such as {{ef_search = [16, 32]}}; got {sweep_raw!r}.")
    sweep = {str(k): _ints(sweep_raw, str(k), where, ()) for k in sweep_raw}
    fields = {f for _, f, _, _ in string.Formatter().parse(spec) if f}
    build_keys = {k for k in sweep if k not in SEARCH_PARAMS}
    if fields != build_keys:
        raise ConfigError(
            f"{where}: the fields of spec {spec!r} ({sorted(fields)}) must be exactly the build-time sweep keys "
            f"({sorted(build_keys)}); search-time keys are {list(SEARCH_PARAMS)}."
        )
    for key, values in sweep.items():
        if not values:
            raise ConfigError(f"{where}: sweep {key!r} is empty; give at least one value.")
    return VectorIndexConfig(spec=spec, sweep=sweep, label=_str(t, "label", where))


# ---------------------------------------------------------------------------- value checks
def _table(raw: Any, where: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table (key = value pairs); got {type(raw).__name__}.")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}.")
    return raw


def _list(t: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = t.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {key} must be a list (an array of tables); got {type(value).__name__}.")
    return value


def _str(t: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    if key not in t:
        if required:
            raise ConfigError(f"{where}: missing required key {key!r}.")
        return ""
    value = t[key]
    if not isinstance(value, str) or (required and not value.strip()):
        raise ConfigError(f"{where}: {key} must be a non-empty string; got {value!r}.")
    return value


def _int(t: Mapping[str, Any], key: str, where: str, default: Any, *, minimum: int = 1) -> Any:
    if key not in t:
        return default
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum}; got {value!r}.")
    return value


def _ints(t: Mapping[str, Any], key: str, where: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if key not in t:
        return default
    value = t[key]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ConfigError(f"{where}: {key} must be a list of positive integers; got {value!r}.")
    return tuple(value)


def _data_path(text: str, roots: list[Path], *, bundled_ok: bool = False) -> str:
    path = Path(os.path.expanduser(text))
    if path.is_absolute():
        return str(path)
    for root in roots:
        if (root / path).exists():
            return str(root / path)
    if path.parts and path.parts[0] in available_vector_sets():  # e.g. "deep10k/deep10k_base.fvecs"
        shipped = vector_set_path(path.parts[0]).joinpath(*path.parts[1:])
        if shipped.exists():
            return str(shipped)
    if bundled_ok:
        return text  # a bundled data set name such as "scifact"; load_beir reports it if unknown
    tried = ", ".join(str(r / path) for r in roots) or text
    raise ConfigError(f"data file {text!r} not found (tried {tried}); pass --data-root DIR or an absolute path.")

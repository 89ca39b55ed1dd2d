"""Typed per-document attributes stored with an index: :class:`AttributeTable`.

An index keeps one value per stored row for each attribute column, in NumPy arrays aligned
with its rows (deleted rows included where the kind keeps tombstones). Columns and their kinds:

========== ======================================= ===========================================
kind       held as                                 given as
========== ======================================= ===========================================
int        int64                                   Python / NumPy integers
float      float64                                 floats (ints are accepted too)
str        int32 codes + a dictionary of strings   str (categorical: few distinct values)
bool       bool                                    True / False
timestamp  int64 nanoseconds since 1970 (UTC)      datetime / date / np.datetime64 / ISO string
========== ======================================= ===========================================

The first ``add`` that brings documents fixes the columns and their kinds; every later ``add``
must give the same fields (a ConfigError names the difference). Every document needs a value
for every field: there are no nulls. Predicates over the columns (``where=``) are compiled by
:mod:`indexes._predicates`.

On disk a column is ``attr<i>.npy`` (its values or codes) and, for str, ``attr<i>_dict.npy``
(the dictionary, a fixed-width unicode array); ``manifest.params["attributes"]`` lists
``{"name", "kind"}`` per column. Both go through the index's checksummed file table, and a
load checks dtypes, lengths and that every code is inside its dictionary.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexes._io import load_array, save_array
from retrieval.errors import ConfigError, IndexFormatError

__all__ = ["KINDS", "AttributeTable", "Column", "to_timestamp"]

KINDS = ("int", "float", "str", "bool", "timestamp")
_DTYPES = {"int": np.int64, "float": np.float64, "str": np.int32, "bool": np.bool_, "timestamp": np.int64}
_HOW = ("give one value per document for each field, e.g. attributes={'year': [2021, 2024], "
        "'type': ['faq', 'manual']} or a list of one dict per document")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def to_timestamp(value: Any, *, name: str) -> int:
    """``value`` (datetime, date, np.datetime64 or ISO 8601 str) as int64 ns since the epoch, UTC.

    Examples
    --------
    >>> to_timestamp("2024-01-01", name="t")
    1704067200000000000
    >>> to_timestamp(dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))), name="t")
    1704067200000000000
    """
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"field {name!r}: {value!r} is not an ISO 8601 date or time; write e.g. "
                              "'2024-05-01' or '2024-05-01T12:00:00'.") from None
        return to_timestamp(parsed, name=name)
    if isinstance(value, (dt.datetime, dt.date, np.datetime64)) and not isinstance(value, bool):
        stamp = np.datetime64(value, "ns")
        if np.isnat(stamp):
            raise ConfigError(f"field {name!r}: NaT is not a timestamp; every document needs a value.")
        return int(stamp.astype(np.int64))
    raise ConfigError(f"field {name!r} is a timestamp column; got {type(value).__name__} {value!r:.60}. "
                      "Give a datetime, date, np.datetime64 or an ISO 8601 string.")


def _infer_kind(name: str, values: Any) -> str:
    """The kind of a new column from its first values."""
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        kind = {"b": "bool", "i": "int", "u": "int", "f": "float", "U": "str", "M": "timestamp"}.get(values.dtype.kind)
        if kind is None:
            raise ConfigError(f"field {name!r}: arrays of dtype {values.dtype} are not stored; use one of "
                              f"{KINDS} (int, float, str, bool or datetime64 arrays).")
        return kind
    sample = list(values)
    if all(isinstance(v, (bool, np.bool_)) for v in sample):
        return "bool"
    if all(_is_int(v) for v in sample):
        return "int"
    if all(_is_int(v) or isinstance(v, (float, np.floating)) for v in sample):
        return "float"
    if all(isinstance(v, str) for v in sample):
        return "str"
    if all(isinstance(v, (dt.date, np.datetime64)) for v in sample):
        return "timestamp"
    kinds = sorted({type(v).__name__ for v in sample})
    raise ConfigError(f"field {name!r} mixes value types {kinds}; one field holds one type ({', '.join(KINDS)}). "
                      "Convert the values (None is not allowed: every document needs a value).")


def _convert(name: str, kind: str, values: Any) -> NDArray[Any]:
    """``values`` as the column dtype of ``kind`` (str: as a unicode array; codes come later)."""
    arr = values if isinstance(values, np.ndarray) else None
    try:
        if kind == "timestamp":
            if arr is not None and arr.dtype.kind == "M":
                out = arr.astype("datetime64[ns]").astype(np.int64)
                if np.isnat(arr).any():
                    raise ConfigError(f"field {name!r} holds NaT; every document needs a value.")
                return out
            return np.array([to_timestamp(v, name=name) for v in values], dtype=np.int64)
        checks = {"bool": lambda v: isinstance(v, (bool, np.bool_)), "int": _is_int, "str": lambda v: isinstance(v, str),
                  "float": lambda v: _is_int(v) or isinstance(v, (float, np.floating))}
        if arr is not None and arr.dtype.kind != "O":
            ok = {"bool": "b", "int": "iu", "float": "iuf", "str": "U"}[kind]
            if arr.dtype.kind not in ok:
                raise ConfigError(f"field {name!r} is a {kind} column; got an array of dtype {arr.dtype}.")
            if kind == "int" and arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
                raise ConfigError(f"field {name!r}: values must fit in int64; got {int(arr.max())}.")
            return arr.astype(_DTYPES[kind] if kind != "str" else str)
        values = list(values)
        bad = next((v for v in values if not checks[kind](v)), None)
        if bad is not None or (kind != "str" and any(v is None for v in values)):
            raise ConfigError(f"field {name!r} is a {kind} column; got {type(bad).__name__} {bad!r:.60}. "
                              f"Convert it to {kind} (None is not allowed: every document needs a value).")
        if kind == "str":
            return np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")
        return np.array(values, dtype=_DTYPES[kind])
    except OverflowError:
        raise ConfigError(f"field {name!r}: a value does not fit in int64.") from None


def _columns_of(attributes: Any, n: int) -> dict[str, Any]:
    """``attributes`` (a mapping of field -> n values, or n dicts) as a mapping of field -> values."""
    if isinstance(attributes, Mapping):
        columns = dict(attributes)
    elif isinstance(attributes, Sequence) and not isinstance(attributes, (str, bytes)):
        rows = list(attributes)
        if len(rows) != n or not all(isinstance(r, Mapping) for r in rows):
            raise ConfigError(f"attributes as a list must hold one dict per document ({n}); got {len(rows)} "
                              f"items. Or {_HOW}.")
        keys = set(rows[0]) if rows else set()
        for i, r in enumerate(rows):
            if set(r) != keys:
                raise ConfigError(f"attributes[{i}] has fields {sorted(map(str, r))}, attributes[0] has "
                                  f"{sorted(map(str, keys))}; every document needs the same fields (no nulls).")
        columns = {key: [r[key] for r in rows] for key in keys}
    else:
        raise ConfigError(f"attributes must be a dict of field -> values or a list of dicts; got "
                          f"{type(attributes).__name__}. {_HOW[0].upper()}{_HOW[1:]}.")
    for name, values in columns.items():
        if not isinstance(name, str) or not name or name.startswith("$"):
            raise ConfigError(f"attribute field names must be non-empty str not starting with '$'; got {name!r}.")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise ConfigError(f"field {name!r} needs a sequence of {n} values; got {type(values).__name__}.")
        if isinstance(values, np.ndarray) and values.ndim != 1:
            raise ConfigError(f"field {name!r} needs a 1-d array of {n} values; got shape {values.shape}.")
        if len(values) != n:
            raise ConfigError(f"field {name!r} has {len(values)} values for {n} documents; give one per document.")
    return columns


def _objects(values: Any) -> NDArray[np.object_]:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


@dataclass
class Column:
    """One attribute column: ``values`` per row (codes into ``categories`` for kind str)."""

    kind: str
    values: NDArray[Any]
    categories: NDArray[np.str_] | None = None
    _lookup: dict[str, int] = field(default_factory=dict, repr=False)

    def code_of(self) -> dict[str, int]:
        if len(self._lookup) != len(self.categories if self.categories is not None else ()):
            self._lookup = {c: i for i, c in enumerate(self.categories.tolist())}  # type: ignore[union-attr]
        return self._lookup


@dataclass
class Prepared:
    """The checked attributes of one ``add``, applied by :meth:`AttributeTable.commit` once the rows exist."""

    columns: dict[str, Column]
    n: int


class AttributeTable:
    """The attribute columns of one index, aligned with its rows (see the module docstring)."""

    def __init__(self) -> None:
        self.columns: dict[str, Column] = {}
        self.rows = 0

    @classmethod
    def like(cls, schema: Mapping[str, str], rows: int = 0) -> AttributeTable:
        """A table with the columns of ``schema`` and no values (to check attributes or a predicate
        against a schema, e.g. a sharded index's, before any shard changes)."""
        table = cls()
        for name, kind in schema.items():
            cats = np.zeros(0, dtype="<U1") if kind == "str" else None
            table.columns[name] = Column(kind, np.zeros(0, dtype=_DTYPES[kind]), cats)
        table.rows = rows
        return table

    def split(self, attributes: Any, n: int, parts: Sequence[NDArray[np.int64]]) -> list[Any]:
        """Check ``attributes`` of ``n`` new rows (:meth:`prepare`), then cut them into ``parts`` (row positions)."""
        self.prepare(attributes, n)
        if attributes is None:
            return [None] * len(parts)
        columns = {name: v if isinstance(v, np.ndarray) else _objects(v) for name, v in _columns_of(attributes, n).items()}
        return [{name: v[p] for name, v in columns.items()} for p in parts]

    def __bool__(self) -> bool:
        return bool(self.columns)

    @property
    def schema(self) -> dict[str, str]:
        """``field -> kind`` of every column."""
        return {name: col.kind for name, col in self.columns.items()}

    def memory_bytes(self) -> int:
        return sum(int(c.values.nbytes) + (int(c.categories.nbytes) if c.categories is not None else 0)
                   for c in self.columns.values())

    # ------------------------------------------------------------------ changes
    def prepare(self, attributes: Any, n: int) -> Prepared:
        """Check the attributes of ``n`` new rows against the columns; nothing changes yet.

        Raises
        ------
        ConfigError
            For attributes missing on an index that has columns, or given to an index holding
            documents without them; other fields than the columns; values of the wrong type.
        """
        if attributes is None:
            if self.columns and n:
                raise ConfigError(f"this index stores attributes {sorted(self.columns)}; pass attributes= with a "
                                  f"value of each for the {n} new documents.")
            return Prepared({}, n)
        columns = _columns_of(attributes, n)
        if not n:
            return Prepared({}, 0)
        if not self.columns and self.rows:
            raise ConfigError(f"this index holds {self.rows} rows without attributes; attributes must be given "
                              "from the first add on. Rebuild the index with attributes for every document.")
        if self.columns and set(columns) != set(self.columns):
            raise ConfigError(f"this index stores attributes {sorted(self.columns)}; got {sorted(columns)}. Give "
                              "exactly these fields for every new document.")
        out: dict[str, Column] = {}
        for name, values in columns.items():
            old = self.columns.get(name)
            kind = old.kind if old is not None else _infer_kind(name, values)
            converted = _convert(name, kind, values)
            if kind == "str":
                lookup = dict(old.code_of()) if old is not None else {}
                distinct, inverse = np.unique(converted, return_inverse=True)  # one Python step per distinct value
                for value in distinct.tolist():
                    lookup.setdefault(value, len(lookup))
                cats = np.array(list(lookup), dtype=str) if lookup else np.zeros(0, dtype="<U1")
                code_of = np.array([lookup[v] for v in distinct.tolist()], dtype=np.int32)
                codes = code_of[inverse.reshape(-1)] if len(converted) else np.zeros(0, dtype=np.int32)
                out[name] = Column(kind, codes, cats, lookup)
            else:
                out[name] = Column(kind, converted)
        return Prepared(out, n)

    def commit(self, prepared: Prepared) -> None:
        """Append the rows :meth:`prepare` checked."""
        for name, new in prepared.columns.items():
            old = self.columns.get(name)
            if old is not None:
                new.values = np.concatenate([old.values, new.values])
            self.columns[name] = new
        self.rows += prepared.n

    def copy(self) -> AttributeTable:
        """An independent table with the same columns (the arrays are shared until either changes them:
        every change builds new arrays)."""
        clone = AttributeTable()
        clone.rows = self.rows
        clone.columns = {n: Column(c.kind, c.values, c.categories) for n, c in self.columns.items()}
        return clone

    def keep(self, keep: NDArray[np.bool_]) -> None:
        """Drop the rows where ``keep`` is False (kinds without tombstones)."""
        for col in self.columns.values():
            col.values = np.asarray(col.values)[keep]
        self.rows = int(np.count_nonzero(keep))

    def select(self, rows: NDArray[np.int64]) -> dict[str, Any]:
        """The attributes of ``rows`` as ``add(attributes=...)`` takes them (to move rows to another index)."""
        out: dict[str, Any] = {}
        for name, col in self.columns.items():
            vals = np.asarray(col.values)[rows]
            if col.kind == "str":
                out[name] = col.categories[vals] if col.categories is not None else vals  # type: ignore[index]
            elif col.kind == "timestamp":
                out[name] = vals.astype("datetime64[ns]")
            else:
                out[name] = vals
        return out

    def values(self, name: str) -> NDArray[Any]:
        """The column ``name`` decoded: strings for str, datetime64[ns] for timestamps."""
        col = self.columns[name]
        return self.select(np.arange(self.rows))[name] if col.kind in ("str", "timestamp") else np.asarray(col.values)

    # ------------------------------------------------------------------ persistence
    def write(self, directory: Path, arrays: dict[str, Any]) -> list[dict[str, str]]:
        """Save every column as ``attr<i>.npy`` (+ ``attr<i>_dict.npy``); returns the schema for the manifest."""
        schema = []
        for i, (name, col) in enumerate(self.columns.items()):
            arrays[f"attr{i}"] = save_array(directory, f"attr{i}", np.asarray(col.values))
            if col.categories is not None:
                arrays[f"attr{i}_dict"] = save_array(directory, f"attr{i}_dict", col.categories)
            schema.append({"name": name, "kind": col.kind})
        return schema

    @classmethod
    def read(cls, directory: Path, schema: Any, arrays: dict[str, Any], rows: int) -> AttributeTable:
        """Read what :meth:`write` saved for ``rows`` rows (memory-mapped), checking every column."""
        table = cls()
        table.rows = rows
        if schema is None:
            return table
        where = f"{directory / 'manifest.json'}: params.attributes"
        if not isinstance(schema, list):
            raise IndexFormatError(f"{where} must be a list of {{'name', 'kind'}}; got {schema!r:.100}.")
        for i, entry in enumerate(schema):
            name, kind = (entry.get("name"), entry.get("kind")) if isinstance(entry, dict) else (None, None)
            if not isinstance(name, str) or not name or kind not in KINDS or name in table.columns:
                raise IndexFormatError(f"{where}[{i}] must name a new field and a kind in {KINDS}; got {entry!r:.100}.")
            values = load_array(directory, arrays.get(f"attr{i}"), name=f"attr{i}", mmap=True)
            want = np.dtype(_DTYPES[kind])
            if values.dtype != want or values.shape != (rows,):
                raise IndexFormatError(f"{directory}/attr{i}.npy (field {name!r}) must be {want} of shape ({rows},); "
                                       f"got {values.dtype} {values.shape}. Rebuild or restore the index.")
            cats = None
            if kind == "str":
                cats = load_array(directory, arrays.get(f"attr{i}_dict"), name=f"attr{i}_dict")
                if cats.dtype.kind != "U" or cats.ndim != 1 or len(set(cats.tolist())) != len(cats):
                    raise IndexFormatError(f"{directory}/attr{i}_dict.npy (field {name!r}) must be a 1-d unicode "
                                           "array of distinct strings. Rebuild or restore the index.")
                if rows and (int(values.min()) < 0 or int(values.max()) >= len(cats)):
                    raise IndexFormatError(f"{directory}/attr{i}.npy (field {name!r}) holds codes outside its "
                                           f"dictionary of {len(cats)} strings. Rebuild or restore the index.")
            table.columns[name] = Column(kind, values.view(np.ndarray), cats)
        return table

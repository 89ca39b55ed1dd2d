"""``where=`` predicates over an index's attribute columns, evaluated to a boolean row mask.

The syntax is the dict form MongoDB and Chroma use:

* ``{"field": value}``: equality;
* ``{"field": {"$op": value, ...}}`` with ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``
  (one value) or ``$in``, ``$nin`` (a list); several operators in one dict must all hold;
* ``{"$and": [p, ...]}``, ``{"$or": [p, ...]}``, ``{"$not": p}``; several keys in one dict
  must all hold (an implicit ``$and``).

Values must match the column: numbers for int / float, str for str (a range compares strings),
True / False for bool (equality and ``$in`` only), and a datetime, date, np.datetime64 or ISO 8601
string for timestamps. A value absent from a str column simply matches nothing. Every
condition is evaluated vectorised over the whole column.

Examples
--------
>>> from indexes._attributes import AttributeTable
>>> t = AttributeTable()
>>> t.commit(t.prepare({"year": [2020, 2023, 2024], "type": ["faq", "manual", "faq"]}, 3))
>>> evaluate({"type": "faq", "year": {"$gte": 2021}}, t).tolist()
[False, False, True]
>>> evaluate({"$or": [{"year": 2020}, {"type": {"$in": ["manual"]}}]}, t).tolist()
[True, True, False]
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexes._attributes import AttributeTable, Column, _is_int, to_timestamp
from retrieval.errors import ConfigError

__all__ = ["OPERATORS", "check_where", "evaluate", "evaluate_records", "fields_of", "uses_operators"]

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "$eq": operator.eq, "$ne": operator.ne, "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt,
    "$lte": operator.le,
}
_LISTS = ("$in", "$nin")
_LOGICAL = ("$and", "$or", "$not")
OPERATORS = (*_COMPARE, *_LISTS)
_FIX = ('write e.g. {"year": {"$gte": 2020}, "type": {"$in": ["faq", "manual"]}}; see indexes/_predicates.py '
        "for the syntax")


def check_where(where: Any) -> None:
    """Check the shape of ``where`` (operators, nesting, list arguments) without an index.

    Raises
    ------
    ConfigError
        Naming the unknown operator or the misplaced argument, and what is accepted.
    """
    _walk(where, None)


def evaluate(where: Any, table: AttributeTable) -> NDArray[np.bool_]:
    """The rows of ``table`` (all of them, deleted ones included) that ``where`` holds for.

    Raises
    ------
    ConfigError
        For a field the index does not store, an unknown operator, or a value of the wrong type.
    """
    mask = _walk(where, table)
    assert mask is not None
    return mask


def uses_operators(where: Any) -> bool:
    """True when ``where`` holds an operator (a ``$`` key) anywhere, False for a plain ``{field: value}`` dict."""
    if isinstance(where, dict):
        return any((isinstance(k, str) and k.startswith("$")) or uses_operators(v) for k, v in where.items())
    if isinstance(where, (list, tuple)):
        return any(uses_operators(v) for v in where)
    return False


def fields_of(where: Any) -> list[str]:
    """The field names ``where`` tests, in first-seen order (after :func:`check_where`)."""
    check_where(where)
    out: dict[str, None] = {}

    def visit(node: Any) -> None:
        for key, arg in node.items():
            if key in ("$and", "$or"):
                for part in arg:
                    visit(part)
            elif key == "$not":
                visit(arg)
            else:
                out[key] = None

    visit(where)
    return list(out)


def evaluate_records(where: Any, records: list[Any]) -> NDArray[np.bool_]:
    """``where`` over a list of dicts (e.g. passage metadata), one bool per record.

    A record lacking a field the predicate names matches nothing (as a NULL in SQL), ``$ne``
    and ``$not`` included; the values of each field must share one type (ConfigError otherwise).
    """
    fields = fields_of(where)
    present = np.array([all(f in r for f in fields) for r in records], dtype=bool)
    rows = np.flatnonzero(present)
    mask = np.zeros(len(records), dtype=bool)
    if rows.size:
        table = AttributeTable()
        table.commit(table.prepare({f: [records[i][f] for i in rows.tolist()] for f in fields}, int(rows.size)))
        mask[rows] = evaluate(where, table)
    return mask


def _walk(node: Any, table: AttributeTable | None) -> NDArray[np.bool_] | None:
    if not isinstance(node, dict) or not node:
        raise ConfigError(f"a where= predicate must be a non-empty dict; got {node!r:.100}. {_FIX[0].upper()}{_FIX[1:]}.")
    masks = []
    for key, arg in node.items():
        if not isinstance(key, str):
            raise ConfigError(f"where= keys must be field names or {_LOGICAL}; got {key!r}.")
        if key in ("$and", "$or"):
            if not isinstance(arg, (list, tuple)) or not arg:
                raise ConfigError(f"{key} takes a non-empty list of predicates; got {arg!r:.100}.")
            parts = [_walk(p, table) for p in arg]
            if table is not None:
                reduce = np.logical_and.reduce if key == "$and" else np.logical_or.reduce
                masks.append(reduce(parts))
        elif key == "$not":
            inner = _walk(arg, table)
            if table is not None:
                masks.append(~inner)  # type: ignore[operator]
        elif key.startswith("$"):
            raise ConfigError(f"unknown logical operator {key!r} at the top of a predicate; use {_LOGICAL}, or a "
                              f"field name with one of {OPERATORS} inside: {_FIX}.")
        else:
            masks.append(_field(key, arg, table))
    if table is None:
        return None
    return masks[0] if len(masks) == 1 else np.logical_and.reduce(masks)


def _field(name: str, cond: Any, table: AttributeTable | None) -> NDArray[np.bool_] | None:
    ops = cond if isinstance(cond, dict) and any(isinstance(k, str) and k.startswith("$") for k in cond) else {"$eq": cond}
    for op, value in ops.items():
        if op not in OPERATORS:
            raise ConfigError(f"field {name!r}: unknown operator {op!r}; use one of {OPERATORS} "
                              "(combine with $and / $or / $not around field conditions).")
        if op in _LISTS and (not isinstance(value, (list, tuple, set, frozenset, np.ndarray)) or isinstance(value, str)):
            raise ConfigError(f"field {name!r}: {op} takes a list of values; got {value!r:.100}. Write "
                              f'{{"{name}": {{"{op}": [a, b]}}}}.')
    if table is None:
        return None
    col = table.columns.get(name)
    if col is None:
        known = sorted(table.columns) or "none (add documents with attributes= to filter on them)"
        raise ConfigError(f"where= names field {name!r}, which this index does not store; its attribute fields: "
                          f"{known}.")
    return np.logical_and.reduce([_condition(name, col, op, value) for op, value in ops.items()])


def _condition(name: str, col: Column, op: str, value: Any) -> NDArray[np.bool_]:
    if col.kind == "bool" and op not in ("$eq", "$ne", *_LISTS):
        raise ConfigError(f"field {name!r} is bool: it takes $eq, $ne, $in and $nin, not {op}.")
    values = np.asarray(col.values)
    if col.kind == "str":
        # Evaluate on the dictionary, then look each row's code up: one pass over the rows.
        cats = col.categories if col.categories is not None else np.zeros(0, dtype=str)
        return _condition_on(name, "str", cats, op, value)[values]
    return _condition_on(name, col.kind, values, op, value)


def _condition_on(name: str, kind: str, values: NDArray[Any], op: str, value: Any) -> NDArray[np.bool_]:
    if op in _LISTS:
        items = np.array([_scalar(name, kind, v) for v in value], dtype=object if kind == "str" else None)
        if kind == "str":
            found = np.isin(values.astype(object), items) if len(items) else np.zeros(len(values), dtype=bool)
        else:
            found = np.isin(values, items)
        return found if op == "$in" else ~found
    return np.asarray(_COMPARE[op](values, _scalar(name, kind, value)), dtype=bool)


def _scalar(name: str, kind: str, value: Any) -> Any:
    """``value`` checked against a column of ``kind`` and converted to its representation."""
    if kind == "timestamp":
        return to_timestamp(value, name=name)
    ok = {"int": lambda v: _is_int(v) or isinstance(v, (float, np.floating)),
          "float": lambda v: _is_int(v) or isinstance(v, (float, np.floating)),
          "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, (bool, np.bool_))}[kind]
    if not ok(value):
        want = {"int": "a number", "float": "a number", "str": "a str", "bool": "True or False"}[kind]
        raise ConfigError(f"field {name!r} is a {kind} column: compare it with {want}; got "
                          f"{type(value).__name__} {value!r:.60}.")
    return value

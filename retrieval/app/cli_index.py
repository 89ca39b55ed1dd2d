"""``densezip index`` of a BEIR corpus (one index, or ``--shards N``), with attributes to filter on.

Attributes (the values ``densezip search --where`` filters on) come from

* ``--attributes FILE.jsonl``: one ``{"_id": <doc id>, "<field>": <value>, ...}`` object per
  line, every document of the corpus exactly once, every line with the same fields;
* ``--attribute-fields a,b``: the named fields of each ``corpus.jsonl`` record (at its top
  level or under its ``metadata`` object).

Both can be given (their field names must differ). A field's values share one JSON type:
int, float (ints mixed with floats are floats), str (a categorical) or bool; ``--attribute-type
FIELD=KIND`` stores a field as ``timestamp`` (ISO 8601 strings such as "2024-05-01") or
``float``, or checks it is ``int`` / ``str`` / ``bool``. Errors name the file, the line and
the document.

Kept out of :mod:`retrieval.app.cli`, which only dispatches here.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import ConfigError, DataError

if TYPE_CHECKING:
    from indexes.base import VectorIndex
    from retrieval.types import Embeddings

__all__ = ["add_attribute_arguments", "build_index", "corpus_attributes", "index_beir"]

KINDS = ("int", "float", "str", "bool", "timestamp")
_JSON_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def build_index(docs: Embeddings, spec: str, *, nprobe: int | None = None, ef_search: int | None = None,
                attributes: Any = None) -> VectorIndex:
    """An index of ``spec`` (see :func:`indexes.make_index`) trained on and holding ``docs``."""
    from indexes.factory import make_index

    index: Any = make_index(docs.dim, spec, nprobe=nprobe, ef_search=ef_search)
    if not index.is_trained:
        index.train(docs)
    return index.add(docs, attributes=attributes)  # type: ignore[no-any-return]


def add_attribute_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--attributes``, ``--attribute-fields`` and ``--attribute-type`` options of ``densezip index``."""
    p.add_argument("--attributes", metavar="FILE.jsonl", default=None,
                   help="BEIR corpora: values to filter on with `search --where`, one {\"_id\": ..., field: value} "
                        "object per document")
    p.add_argument("--attribute-fields", metavar="A,B", type=_field_list, default=None,
                   help="BEIR corpora: store these fields of each corpus.jsonl record (top level or under "
                        "\"metadata\") as attributes")
    p.add_argument("--attribute-type", metavar="FIELD=KIND", action="append", type=_field_kind, default=[],
                   help=f"store FIELD as KIND ({', '.join(KINDS)}); e.g. published=timestamp for ISO dates")


def _field_list(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")]
    if not all(fields) or len(set(fields)) != len(fields):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated field names such as 'year,type'; "
                                         f"got {text!r}")
    return fields


def _field_kind(text: str) -> tuple[str, str]:
    name, sep, kind = text.partition("=")
    if not sep or not name.strip() or kind.strip() not in KINDS:
        raise argparse.ArgumentTypeError(f"expected FIELD=KIND with KIND one of {', '.join(KINDS)}; got {text!r}")
    return name.strip(), kind.strip()


def wants_attributes(args: argparse.Namespace) -> bool:
    return bool(args.attributes or args.attribute_fields or args.attribute_type)


def corpus_attributes(args: argparse.Namespace) -> Callable[[list[str]], dict[str, Any]] | None:
    """What ``--attributes`` / ``--attribute-fields`` give: a function of the corpus ids (in order) to the
    attribute columns, or None when neither is given."""
    if not wants_attributes(args):
        return None
    if not (args.attributes or args.attribute_fields):
        raise ConfigError("--attribute-type sets the kind of an attribute; give the attributes too, with "
                          "--attributes FILE.jsonl or --attribute-fields A,B.")
    kinds = dict(args.attribute_type)

    def columns(ids: list[str]) -> dict[str, Any]:
        from retrieval.beir import corpus_file, read_fields

        sources = []
        if args.attributes:
            sources.append((Path(args.attributes), read_fields(args.attributes), False))
        if args.attribute_fields:
            file = corpus_file(args.data)
            sources.append((file, read_fields(file, args.attribute_fields), True))
        out: dict[str, Any] = {}
        for file, records, is_corpus in sources:
            part = _columns(file, records, ids, is_corpus=is_corpus)
            clash = sorted(set(part) & set(out))
            if clash:
                raise ConfigError(f"field {clash[0]!r} is given both by --attributes and by --attribute-fields; "
                                  "name each field once.")
            out.update(part)
        unknown = sorted(set(kinds) - set(out))
        if unknown:
            raise ConfigError(f"--attribute-type names {unknown[0]!r}, which is not an attribute; the attributes "
                              f"are {sorted(out)}.")
        return {name: _as_kind(name, values, kinds.get(name)) for name, values in out.items()}

    return columns


def _columns(file: Path, records: dict[str, tuple[int, dict[str, Any]]], ids: list[str], *,
             is_corpus: bool) -> dict[str, list[Any]]:
    """The records' fields as columns in corpus order, checked: same fields everywhere, one JSON type per
    field, no null, and (for a separate file) exactly the corpus's documents."""
    if not is_corpus:
        known = set(ids)
        unknown = [(line, doc) for doc, (line, _) in records.items() if doc not in known]
        if unknown:
            line, doc = unknown[0]
            raise DataError(f"{file}, line {line}: document {doc!r:.60} is not in the corpus ({len(unknown)} "
                            "such ids). Attribute ids must be corpus `_id`s; remove those lines or fix the ids.")
        missing = [doc for doc in ids if doc not in records]
        if missing:
            raise DataError(f"{file}: no attributes for {len(missing)} of the {len(ids)} documents, e.g. "
                            f"{missing[:3]}. Every document needs a value for every field (there are no nulls).")
    if not records:
        raise DataError(f"{file}: no records; expected one {{\"_id\": ..., field: value}} object per line.")
    first_line, first = next(iter(records.values()))
    fields = sorted(first)
    if not fields:
        raise DataError(f"{file}, line {first_line}: the record has no field besides \"_id\"; give at least one "
                        "attribute such as {\"_id\": \"d1\", \"year\": 2024}.")
    kind: dict[str, tuple[str, int, str]] = {}  # field -> (JSON kind, line, doc) of its first value
    columns: dict[str, list[Any]] = {f: [] for f in fields}
    for doc in ids:
        line, values = records[doc]
        if sorted(values) != fields:
            raise DataError(f"{file}, line {line}: document {doc!r:.60} has fields {sorted(values)}, line {first_line} "
                            f"has {fields}; every record needs the same fields.")
        for name in fields:
            value = values[name]
            now = _JSON_KINDS.get(type(value))
            if now is None:
                raise DataError(f"{file}, line {line}: field {name!r} of document {doc!r:.60} is "
                                f"{'null' if value is None else type(value).__name__}; attribute values are "
                                "numbers, strings or booleans (no nulls).")
            seen = kind.setdefault(name, (now, line, doc))
            if seen[0] != now and {seen[0], now} != {"int", "float"}:
                raise DataError(f"{file}, line {line}: field {name!r} of document {doc!r:.60} is {now} "
                                f"({value!r:.40}), but it is {seen[0]} on line {seen[1]} (document {seen[2]!r:.60}); "
                                "one field holds one type.")
            if now == "float":
                kind[name] = ("float", *seen[1:])
            columns[name].append(value)
    return columns


def _as_kind(name: str, values: list[Any], kind: str | None) -> Any:
    """A column as the kind ``--attribute-type`` asks for (ints mixed with floats become floats)."""
    from indexes._attributes import to_timestamp

    if kind == "timestamp":
        return np.array([to_timestamp(v, name=name) for v in values], dtype="datetime64[ns]")
    is_float = any(isinstance(v, float) for v in values)
    if kind == "float" or (kind is None and is_float):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"--attribute-type {name}=float: the field holds non-numbers, e.g. "
                              f"{next(v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool))!r}.")
        return np.array(values, dtype=np.float64)
    if kind is not None:
        want = {"int": int, "str": str, "bool": bool}[kind]
        bad = next((v for v in values if type(v) is not want), None)
        if bad is not None:
            raise ConfigError(f"--attribute-type {name}={kind}: the field holds {type(bad).__name__} values, e.g. "
                              f"{bad!r:.40}; give {kind} values or another kind.")
    return values


def index_beir(args: argparse.Namespace, encoder_factory: Callable[[], Any]) -> tuple[dict[str, Any], str]:
    """``densezip index DATA`` for a BEIR corpus: encode, build ``--spec``, save; the summary and its text."""
    if args.shards is not None:
        payload = _index_sharded(args, encoder_factory)
        return payload, (
            f"indexed {payload['documents']} documents into {payload['index']} ({args.spec}, {args.shards} shards of "
            f"{payload['shard_sizes']}, {payload['backend']}): encode {payload['encode_s']:.1f}s, "
            f"train {payload['train_s']:.1f}s, build {payload['build_s']:.1f}s{_fields_text(payload)}"
        )
    from retrieval.app.measure import directory_bytes
    from retrieval.beir import corpus_texts, load_corpus
    from retrieval.pipeline import Retriever

    started = time.perf_counter()
    corpus = load_corpus(args.data)
    columns = corpus_attributes(args)
    attributes = columns(list(corpus)) if columns is not None else None  # checked before encoding
    encoder = encoder_factory()
    docs = encoder.encode_documents(corpus_texts(corpus), ids=list(corpus))
    encoded = time.perf_counter()
    index = build_index(docs, args.spec, nprobe=args.nprobe, ef_search=args.ef_search, attributes=attributes)
    built = time.perf_counter()
    path = Retriever(encoder, index).save(args.out, overwrite=args.overwrite)
    size = directory_bytes(path)
    payload = {
        "index": str(path), "spec": args.spec, "documents": len(index), "dim": index.dim,
        "bytes": size, "bytes_per_doc": size / max(len(index), 1), "attributes": index.attribute_schema,
        "encode_s": encoded - started, "build_s": built - encoded, "total_s": time.perf_counter() - started,
    }
    return payload, (
        f"indexed {len(index)} documents into {path} ({args.spec}): {size / 1e6:.1f} MB, "
        f"{payload['bytes_per_doc']:.0f} bytes/doc; encode {payload['encode_s']:.1f}s, build {payload['build_s']:.1f}s"
        f"{_fields_text(payload)}"
    )


def _fields_text(payload: dict[str, Any]) -> str:
    fields = payload.get("attributes") or {}
    return ("; attributes " + ", ".join(f"{name} ({kind})" for name, kind in fields.items())) if fields else ""


def _index_sharded(args: argparse.Namespace, encoder_factory: Callable[[], Any]) -> dict[str, Any]:
    """``densezip index DATA --shards N [--ray ADDRESS|off]``: the summary of :func:`retrieval.distributed.index_corpus`."""
    from retrieval.app.measure import directory_bytes
    from retrieval.distributed import index_corpus

    started = time.perf_counter()
    columns = corpus_attributes(args)
    schema: dict[str, str] = {}

    def attributes(ids: list[str]) -> dict[str, Any]:
        from indexes._attributes import AttributeTable

        out = columns(ids) if columns is not None else {}
        table = AttributeTable()
        table.commit(table.prepare(out, len(ids)))
        schema.update(table.schema)
        return out

    report = index_corpus(
        args.data, args.out, encoder=encoder_factory(), n_shards=args.shards, spec=args.spec, nprobe=args.nprobe,
        ef_search=args.ef_search, use_ray=args.ray != "off", ray_address=args.ray, encode_workers=args.encode_workers,
        device=args.device, overwrite=args.overwrite, attributes=attributes if columns is not None else None,
    )
    size = sum(directory_bytes(d) for d in [report.path, *sorted(report.path.glob("shard-*"))])
    return {
        "index": str(report.path), "spec": args.spec, "shards": args.shards, "shard_sizes": report.shard_sizes,
        "backend": report.backend, "documents": report.documents, "dim": report.dim, "bytes": size,
        "attributes": schema, "encode_s": report.encode_s, "train_s": report.train_s, "build_s": report.build_s,
        "total_s": time.perf_counter() - started,
    }

"""The ``densezip`` command line: ``index``, ``index-pages``, ``delete-pages``, ``search``, ``evaluate``, ``check``,
``train-jpq``, ``demo`` and ``bench``.

Every command accepts ``--json`` for machine-readable output on stdout; progress bars and
logs go to stderr. Errors print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from retrieval._version import __version__
from retrieval.app._platform import keep_freed_memory
from retrieval.errors import ConfigError, RetrievalError

__all__ = ["main"]

DEMO_SPECS = ("Flat", "HNSW32", "IVF64,PQ48x8")
SPEC_HELP = ("'exact' = NumPy FlatIndex (exact, no FAISS; the test oracle), or a FAISS factory string: "
             "Flat (FAISS IndexFlat, also exact), HNSW32, IVF64,PQ48x8, OPQ48,PQ48x8, ...")


def _encoder(args: argparse.Namespace) -> Any:
    from retrieval.encode.dense import DenseEncoder

    return DenseEncoder(
        args.model, device=args.device, batch_size=args.batch_size, show_progress=not args.json,
        cache_dir=False if args.no_cache else None,
    )


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)


# ---------------------------------------------------------------------------- commands
def cmd_index(args: argparse.Namespace) -> int:
    from retrieval.app.cli_index import index_beir, wants_attributes
    from retrieval.app.cli_rag import index_documents, is_beir_input

    _check_out(args.out, overwrite=args.overwrite)
    if not is_beir_input(args.data):  # a folder of .txt/.md files or JSONL: a RAG collection
        if args.shards is not None:
            raise ConfigError(
                f"--shards applies to BEIR-format corpora; {args.data} is a folder of text / JSONL documents, which "
                "builds a RAG collection (one index). Drop --shards, or convert the documents to a BEIR corpus.jsonl."
            )
        if wants_attributes(args):
            raise ConfigError(
                f"--attributes / --attribute-fields / --attribute-type apply to BEIR-format corpora; {args.data} builds "
                "a RAG collection, whose passages keep each JSONL document's \"metadata\" for `search --where`. Put "
                "the values there, or convert the documents to a BEIR corpus.jsonl."
            )
        payload, text = index_documents(args, _encoder(args))
        _emit(args, payload, text)
        return 0
    _emit(args, *index_beir(args, functools.partial(_encoder, args)))
    return 0


def cmd_index_pages(args: argparse.Namespace) -> int:
    from retrieval.app.cli_pages import index_page_folder

    if not args.update:
        _check_out(args.out, overwrite=args.overwrite)
    _emit(args, *index_page_folder(args))
    return 0


def cmd_delete_pages(args: argparse.Namespace) -> int:
    from retrieval.app.cli_pages import delete_pages

    _emit(args, *delete_pages(args))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from retrieval.app.cli_rag import search_collection
    from retrieval.pipeline import Retriever
    from retrieval.rag.page_store import is_page_collection
    from retrieval.rag.passages import is_collection

    if is_page_collection(args.index):
        from retrieval.app.cli_pages import search_pages

        _emit(args, *search_pages(args))
        return 0
    if is_collection(args.index):
        _emit(args, *search_collection(args))
        return 0
    retriever = Retriever.load(args.index, device=args.device, verify=not args.no_verify, where=args.where)
    result = retriever.search(args.query, k=args.k, where=args.where)
    hits = result.to_list()
    payload = {"results": [
        {"query": q, "hits": [{"doc_id": h.doc_id, "score": h.score} for h in row]} for q, row in zip(args.query, hits, strict=True)
    ]}
    lines = []
    for q, row in zip(args.query, hits, strict=True):
        lines.append(f"query: {q}")
        lines.extend(f"  {rank:>3}. {h.doc_id}  {h.score:.4f}" for rank, h in enumerate(row, 1))
    _emit(args, payload, "\n".join(lines))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from retrieval.beir import load_beir
    from retrieval.evaluate import evaluate
    from retrieval.pipeline import Retriever

    data = load_beir(args.data, split=args.split)
    retriever = Retriever.load(args.index, device=args.device, verify=not args.no_verify)
    qids = data.query_ids()
    t0 = time.perf_counter()
    vectors = retriever.encoder.encode_queries(data.query_texts())
    t1 = time.perf_counter()
    result = retriever.index.search(vectors, args.k, query_ids=qids)
    t2 = time.perf_counter()
    metrics = evaluate(result.to_trec_dict(), data.qrels, args.metrics)
    payload = {
        "index": args.index, "data": str(args.data), "split": args.split, "queries": len(qids), "k": args.k,
        "metrics": metrics, "query_encode_s": t1 - t0, "search_s": t2 - t1,
        "search_qps": len(qids) / max(t2 - t1, 1e-9),
    }
    text = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    _emit(args, payload, (
        f"{data.name} {args.split} ({len(qids)} queries): {text}\n"
        f"query encoding {payload['query_encode_s']:.2f}s, search {payload['search_s'] * 1000:.1f} ms "
        f"({payload['search_qps']:.0f} queries/s, one batch)"
    ))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from indexes.check import check_index
    from retrieval.rag.page_store import PAGES_DIR, PageStore, is_page_collection
    from retrieval.rag.passages import check_collection, is_collection

    check: Any = check_collection if is_collection(args.index) else check_index
    if is_page_collection(args.index):
        check = functools.partial(check_collection, store_dir=PAGES_DIR, load_store=PageStore.load)
    report = check(args.index, verify=not args.no_verify, load=not args.no_load)
    _emit(args, report.to_dict(), report.format())
    return 0 if report.healthy else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from retrieval.app.cli_index import build_index
    from retrieval.app.measure import saved_bytes, time_search
    from retrieval.beir import load_beir
    from retrieval.evaluate import evaluate

    started = time.perf_counter()
    data = load_beir(args.data, split="test")
    encoder = _encoder(args)
    t0 = time.perf_counter()
    docs = encoder.encode_documents(data.doc_texts(), ids=data.doc_ids())
    t1 = time.perf_counter()
    qids = data.query_ids()
    encoder.encode_queries(["warm-up"])  # loads the model if the cache hit above skipped it; timed apart
    t_loaded = time.perf_counter()
    queries = encoder.encode_queries(data.query_texts())
    t2 = time.perf_counter()
    threads = _faiss_threads()
    rows = []
    for spec in args.spec or DEMO_SPECS:
        b0 = time.perf_counter()
        index = build_index(docs, spec, nprobe=args.nprobe if "IVF" in spec else None,
                            ef_search=args.ef_search if "HNSW" in spec else None)
        build_s = time.perf_counter() - b0
        result = index.search(queries, 100, query_ids=qids)
        metrics = evaluate(result.to_trec_dict(), data.qrels)
        search = functools.partial(index.search, k=10)
        timing = {b: time_search(search, queries, batch_size=b, repeats=3) for b in (1, 64)}
        size = saved_bytes(index)
        rows.append({
            "spec": spec, **metrics, "bytes_per_doc": size / len(index), "build_s": build_s,
            "qps_batch1": timing[1].qps, "p50_ms_batch1": timing[1].p50_ms, "p95_ms_batch1": timing[1].p95_ms,
            "qps_batch64": timing[64].qps,
        })
    total = time.perf_counter() - started
    payload = {
        "data": data.name, "split": "test", "documents": len(docs), "queries": len(qids), "model": encoder.name,
        "dim": docs.dim, "threads": threads, "encode_documents_s": t1 - t0, "load_model_s": t_loaded - t1,
        "encode_queries_s": t2 - t_loaded,
        "total_s": total, "results": rows,
    }
    header = f"{'index':<16}{'nDCG@10':>9}{'MRR@10':>8}{'R@100':>7}{'bytes/doc':>11}{'build s':>9}" \
             f"{'QPS@1':>9}{'p50 ms':>8}{'p95 ms':>8}{'QPS@64':>9}"
    lines = [
        f"densezip demo: {data.name} test split, {len(docs)} documents, {len(qids)} queries, "
        f"{encoder.name} ({docs.dim}-d), {threads} search thread(s)",
        f"encode documents {t1 - t0:.1f}s (cached after the first run), load model {t_loaded - t1:.1f}s, "
        f"encode queries {t2 - t_loaded:.1f}s",
        "", header,
    ]
    for r in rows:
        lines.append(
            f"{r['spec']:<16}{r['nDCG@10']:>9.4f}{r['MRR@10']:>8.4f}{r['Recall@100']:>7.3f}{r['bytes_per_doc']:>11.0f}"
            f"{r['build_s']:>9.2f}{r['qps_batch1']:>9.0f}{r['p50_ms_batch1']:>8.2f}{r['p95_ms_batch1']:>8.2f}"
            f"{r['qps_batch64']:>9.0f}"
        )
    lines += ["", f"total {total:.1f}s. Search timings: k=10, medians of 3 warmed-up passes over the {len(qids)} queries."]
    _emit(args, payload, "\n".join(lines))
    return 0


def cmd_train_jpq(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from retrieval.beir import corpus_texts, has_qrels, load_beir, load_corpus
    from retrieval.evaluate import evaluate
    from training._args import LABEL_FREE_DEFAULTS
    from training.jpq import JPQTrainer, JPQTrainingArgs, load_jpq
    from training.queries import DEFAULT_PSEUDO_QUERIES, pseudo_queries, read_queries

    _check_out(args.out, overwrite=args.overwrite)
    settings = JPQTrainingArgs.from_toml(args.config) if args.config else JPQTrainingArgs()
    overrides = {k: v for k, v in (("m", args.m), ("epochs", args.epochs), ("nbits", args.nbits)) if v is not None}
    judged = has_qrels(args.data, args.train_split)
    teacher = args.teacher
    if teacher == "auto":  # judgments: plain JPQ unless the config asks for a teacher; none: distil
        teacher = settings.teacher if judged else "exact"
    if teacher == "none" and not judged:
        raise ConfigError(f"{args.data} has no judged '{args.train_split}' split (qrels/{args.train_split}.tsv and "
                          "queries.jsonl); train without judgments with --teacher exact.")
    overrides["teacher"] = teacher
    if teacher == "exact" and not judged and not args.config:
        overrides = {**LABEL_FREE_DEFAULTS, **overrides}
    if args.fast_scan and (overrides.get("nbits", settings.nbits) != 4):
        raise ConfigError("--fast-scan serves 4-bit codes; add --nbits 4 (and twice the --m for the same bytes).")
    settings = replace(settings, **overrides)
    started = time.perf_counter()
    if judged:
        train = load_beir(args.data, split=args.train_split)
        # Judged train queries only: a BEIR queries.jsonl also holds the test queries, which must
        # not reach training, not even as unjudged queries for the teacher.
        queries = {q: t for q, t in train.queries.items() if q in train.qrels}
        ids, texts, qrels = train.doc_ids(), train.doc_texts(), train.qrels
    else:
        corpus = load_corpus(args.data)
        ids, texts, queries, qrels = list(corpus), corpus_texts(corpus), {}, {}
    if teacher == "exact":
        if args.queries:
            queries.update({f"file:{q}": t for q, t in read_queries(args.queries).items()})
        n_pseudo = args.pseudo_queries if args.pseudo_queries is not None else (0 if args.queries else DEFAULT_PSEUDO_QUERIES)
        if n_pseudo:
            queries.update(pseudo_queries(texts, n_pseudo, seed=settings.seed))
    elif args.queries or args.pseudo_queries:
        raise ConfigError("--queries / --pseudo-queries feed the distillation teacher; add --teacher exact.")
    encoder = _encoder(args)
    docs = encoder.encode_documents(texts, ids=ids)
    trainer = JPQTrainer(settings, doc_ids=docs.ids, doc_vectors=docs.vectors, queries=queries,
                         qrels=qrels, model=args.model, device="cpu" if args.device == "auto" else args.device)
    history = trainer.train(show_progress=not args.json)
    path = trainer.save(args.out, overwrite=args.overwrite, fast_scan=args.fast_scan, ivf_lists=args.ivf_lists)
    retriever = load_jpq(path, device="cpu")  # the saved pair, as a user opens it: spec and evaluation
    spec = retriever.index.spec
    payload: dict[str, Any] = {"out": str(path), "spec": spec, "teacher": teacher, "queries": len(queries),
                               "steps": history.steps, "train_s": history.seconds,
                               "total_s": time.perf_counter() - started, "dev": history.dev,
                               "selected": history.selected}
    text = f"trained {spec} ({'distilled from exact search' if teacher == 'exact' else 'judged queries'}, " \
           f"{len(queries)} training queries) for {history.steps} steps in {history.seconds:.0f}s; saved to {path}"
    if history.selected:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in history.selected.items() if k not in ("by", "step"))
        text += f"\nkept the state after step {history.selected['step']} (best by {history.selected['by']}): {shown}"
    if args.eval_split and has_qrels(args.data, args.eval_split):
        test = load_beir(args.data, split=args.eval_split)
        result = retriever.search(test.query_texts(), 100, query_ids=test.query_ids())
        payload["metrics"] = evaluate(result.to_trec_dict(), test.qrels)
        text += "\n" + f"{args.eval_split}: " + "  ".join(f"{k} {v:.4f}" for k, v in payload["metrics"].items())
    elif args.eval_split:
        text += f"\nno judged '{args.eval_split}' split: quality against judgments not measured"
    _emit(args, payload, text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from retrieval.app.bench.cli import run_from_args

    payload, text = run_from_args(args)
    _emit(args, payload, text)
    return 0


def _faiss_threads() -> int:
    try:
        import faiss

        return int(faiss.omp_get_max_threads())
    except ImportError:  # pragma: no cover - faiss is in the default install
        return 1


# ---------------------------------------------------------------------------- parser
#: The largest value of a C ``int``: FAISS keeps k, nprobe and efSearch in one.
C_INT_MAX = 2**31 - 1


def _int_in(low: int, high: int) -> Any:
    """An argparse type: an integer in ``[low, high]``, else a one-line usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip()) if len(text) <= 30 else None
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r:.40}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message: "invalid integer value"
    return parse


_positive_int = _int_in(1, C_INT_MAX)


def _where_json(text: str) -> dict[str, Any]:
    """``--where``: a JSON object, e.g. '{"year": {"$gte": 2024}, "type": {"$in": ["faq", "manual"]}}'."""
    try:
        where = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); write e.g. '{{\"year\": {{\"$gte\": 2024}}}}'") from None
    if not isinstance(where, dict) or not where:
        raise argparse.ArgumentTypeError(f"must be a non-empty JSON object of field -> condition; got {text!r:.100}")
    return where


def _check_out(path: str, *, overwrite: bool) -> None:
    """Refuse an output directory that cannot or must not be written, before any encoding starts.

    Raises
    ------
    ConfigError
        For the current directory or one of its parents, a path under /proc or /sys, a path
        under an existing file, a parent directory this user cannot write to, an existing
        non-empty directory without ``--overwrite``, or with ``--overwrite`` one that densezip
        did not write (``save`` would refuse it too, but only after minutes of encoding).
    """
    from pathlib import Path

    from retrieval.errors import ConfigError

    target = Path(path).expanduser().resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise ConfigError(f"--out {path} is the current directory or one of its parents; the output would replace "
                          "it. Name a new directory, e.g. --out ./my-index.")
    if target.parts[1:2] in (("proc",), ("sys",), ("dev",)):
        raise ConfigError(f"--out {path} is under /{target.parts[1]}, a kernel file system; name a directory on disk.")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {path} is an existing file, not a directory; remove it or name another path.")
    if target.is_dir() and any(target.iterdir()):
        from indexes._io import is_replaceable

        if not overwrite:
            raise ConfigError(f"--out {path} already exists; pass --overwrite to replace it, or name a new directory.")
        if not is_replaceable(target):
            raise ConfigError(f"--out {path} exists and is not a densezip index, collection or JPQ export; "
                              "--overwrite replaces only those, so nothing in it was touched. Name a new directory.")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {path} lies under {parent}, which is a file, not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path}: cannot create it, {parent} is not writable by this user (permission "
                          "denied). Choose a directory you can write to.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densezip", description="Dense retrieval with compressed indexes.")
    parser.add_argument("--version", action="version", version=f"densezip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, model: bool) -> None:
        p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
        if model:
            p.add_argument("--model", default=None,
                           help="sentence-transformers model name or local path (default: offline all-MiniLM-L6-v2)")
            p.add_argument("--batch-size", type=_int_in(1, 65536), default=16,
                           help="texts per forward pass (default 16, the fastest on a 2-core CPU; use 64+ on a GPU)")
            p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")

    from retrieval.app.cli_index import add_attribute_arguments

    p = sub.add_parser("index", help="encode a BEIR corpus, or a folder of .txt/.md / JSONL documents, and save an index")
    p.add_argument("data", help="directory with corpus.jsonl(.gz) or a bundled data set name (scifact, cranfield): "
                   "a plain index; or a folder of .txt/.md files, a .jsonl file or a folder of them: a RAG "
                   "collection (index/ + passages/)")
    p.add_argument("--out", required=True, help="index (or collection) directory to write")
    p.add_argument("--max-tokens", type=_int_in(1, 1_000_000), default=None,
                   help="documents only: passage length in encoder tokens (default: the encoder's window)")
    p.add_argument("--overlap", type=_int_in(0, 1_000_000), default=32, help="documents only: tokens shared by consecutive passages")
    p.add_argument("--spec", default="Flat", help=f"index to build (default Flat): {SPEC_HELP}")
    p.add_argument("--nprobe", type=_positive_int, default=None, help="IVF lists probed per query")
    p.add_argument("--ef-search", type=_positive_int, default=None, help="HNSW search beam width")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    p.add_argument("--shards", type=_int_in(1, 4096), default=None,
                   help="build a ShardedIndex of N shards (trained once, shards built in parallel)")
    p.add_argument("--ray", default="local", metavar="ADDRESS",
                   help="with --shards: Ray cluster address, 'local' (default: a Ray started in-process) or "
                        "'off' (local threads, no Ray)")
    p.add_argument("--encode-workers", type=_int_in(1, 1024), default=2,
                   help="with --shards and Ray: encoder actors, each loading the model once (default 2)")
    add_attribute_arguments(p)
    common(p, model=True)
    p.set_defaults(func=cmd_index)

    from retrieval.app.cli_pages import add_page_parsers

    add_page_parsers(sub, common, int_in=_int_in, index_cmd=cmd_index_pages, delete_cmd=cmd_delete_pages)

    p = sub.add_parser("search", help="search a saved index with query texts")
    p.add_argument("index", help="index or collection directory written by `densezip index` or `densezip index-pages`")
    p.add_argument("query", nargs="+", help="one or more query texts")
    p.add_argument("-k", type=_positive_int, default=10, help="hits per query (default 10)")
    p.add_argument("--where", type=_where_json, default=None,
                   help="JSON predicate over stored attributes (a collection: passage metadata), e.g. "
                        "'{\"year\": {\"$gte\": 2024}, \"type\": {\"$in\": [\"faq\"]}}'; ops $eq $ne $gt $gte $lt $lte "
                        "$in $nin $and $or $not")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the index files (faster load)")
    common(p, model=False)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("evaluate", help="evaluate a saved index on a BEIR split")
    p.add_argument("index", help="index directory written by `densezip index`")
    p.add_argument("data", help="BEIR-format directory or bundled data set name")
    p.add_argument("--split", default="test", help="qrels split (default test)")
    p.add_argument("-k", type=_positive_int, default=100, help="retrieval depth (default 100)")
    p.add_argument("--metrics", nargs="+", default=["nDCG@10", "MRR@10", "Recall@100"], help="ir-measures names")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the index files (faster load)")
    common(p, model=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("check", help="report what is wrong with a saved index directory (exit 1 if damaged)")
    p.add_argument("index", help="index directory written by `densezip index` or save()")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 hashing (sizes and headers are still checked)")
    p.add_argument("--no-load", action="store_true", help="do not try to load the index after the file checks")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train-jpq", help="train a JPQ index (query encoder + PQ centroids), with or without judgments")
    p.add_argument("data", help="BEIR-format directory or bundled data set name; judgments (qrels/train.tsv) are "
                   "optional: without them JPQ distils from exact search")
    p.add_argument("--out", required=True, help="output directory (index/ and query_encoder/)")
    p.add_argument("--config", default=None, help="TOML file with a [jpq] table of JPQTrainingArgs")
    p.add_argument("--m", type=_int_in(1, 4096), default=None, help="PQ sub-vectors (bytes per document at 8 bits)")
    p.add_argument("--epochs", type=_int_in(1, 1_000_000), default=None, help="passes over the training queries")
    p.add_argument("--nbits", type=_int_in(1, 16), default=None, help="bits per code (default 8; 4 for --fast-scan)")
    p.add_argument("--teacher", choices=("auto", "none", "exact"), default="auto",
                   help="exact: distil from exact search over the float vectors (no judgments needed); none: judged "
                   "queries only; auto (default): exact when the data has no judgments, else the config's choice")
    p.add_argument("--queries", default=None, metavar="FILE",
                   help="unjudged training queries for the teacher: text (one per line) or JSONL with \"text\"")
    p.add_argument("--pseudo-queries", type=_int_in(0, 10_000_000), default=None, metavar="N",
                   help="pseudo-queries cut from the corpus for the teacher (default 32768 without --queries, else 0)")
    p.add_argument("--fast-scan", action="store_true", help="export the 4-bit codes as a FAISS fast-scan index")
    p.add_argument("--ivf-lists", type=_int_in(1, 1 << 24), default=None, metavar="N",
                   help="export with an inverted file of N lists in front of the same codes")
    p.add_argument("--train-split", default="train", help="qrels split to train on (default train)")
    p.add_argument("--eval-split", default="test", help="split to evaluate after training ('' to skip)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    common(p, model=True)
    p.set_defaults(func=cmd_train_jpq)

    p = sub.add_parser("demo", help="index SciFact, search it, print quality and timing")
    p.add_argument("--data", default="scifact", help="BEIR directory or bundled name (default scifact)")
    p.add_argument("--spec", action="append", default=None,
                   help=f"index to build (repeatable; default: {', '.join(DEMO_SPECS)}): {SPEC_HELP}")
    p.add_argument("--nprobe", type=_positive_int, default=16, help="IVF lists probed (default 16)")
    p.add_argument("--ef-search", type=_positive_int, default=128, help="HNSW search beam width (default 128)")
    common(p, model=True)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run a benchmark configuration; write JSON, a Markdown table and plots")
    p.add_argument("config", help="TOML / YAML configuration, or a shipped one: smoke, full")
    p.add_argument("--out", default="bench-out", help="directory for results.json, report.md and PNGs (default bench-out)")
    p.add_argument("--data-root", default=None, help="directory that relative data paths in the config are resolved against")
    p.add_argument("--update-doc", default=None,
                   help="also rewrite the generated section of this Markdown file (between densezip bench markers)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: redraw report.md, plots and --update-doc from --out/results.json")
    p.add_argument("--json", action="store_true", help="print the full result JSON instead of the report")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_freed_memory()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning  # a warning is one "warning: ..." line, not a source excerpt
    try:
        return int(args.func(args))
    except RetrievalError as exc:
        print("error: " + re.sub(r"[\r\n]+", " ", str(exc)).strip(), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print("warning: " + re.sub(r"[\r\n]+", " ", str(message)).strip(), file=sys.stderr)

"""SciFact RAG benchmark: retrieval latency inside RetrievalComponent and context recall at k = 3, 5, 10.

Run:  flock /tmp/densezip-cpu.lock .venv/bin/python tests/benchmarks/bench_rag.py [--json out.json]

Ingestion: the 5,183 BEIR SciFact abstracts (title + text, as retrieval.beir.corpus_texts) are
split with all-MiniLM-L6-v2's own tokenizer into passages of at most 254 tokens (the model's
256-position window minus [CLS] and [SEP]) with 32 tokens of overlap, so an abstract that fits
stays one passage. Both collections (Flat and a compressed FAISS index) are built with
build_collection and reopened with RetrievalComponent.open, exactly as a user would.

Latency: RetrievalComponent.retrieve(claim, k=10) per question (batch 1: query encoding,
search, passage lookup), over the 300 test claims; one warm-up pass, then `--repeats` passes
pooled for p50 / p95, the two indexes interleaved pass by pass. The query-encoding share is
timed apart with the encoder alone.

Context recall: for each test claim, the top-10 passages are retrieved once; the context for
k = 3, 5, 10 is build_context over the first k of them under a token budget (MiniLM tokenizer
counts). A claim counts as covered when any passage of any abstract judged relevant to it
is inside the context string.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

KS = (3, 5, 10)
BUDGETS = (512, 1024, 4096)


def main() -> None:
    import faiss
    import numpy as np
    import torch

    from retrieval.beir import corpus_texts, load_beir
    from retrieval.encode.dense import DenseEncoder
    from retrieval.rag.component import RetrievalComponent, build_context
    from retrieval.rag.ingest import Document, encoder_tokenizer, split_documents
    from retrieval.rag.passages import build_collection

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--spec", action="append", default=None, help="compressed FAISS spec(s) (default PQ48x8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    specs = ["Flat", *(args.spec or ["PQ48x8"])]

    data = load_beir("scifact", split="test")
    texts = corpus_texts(data.corpus)
    documents = [Document(doc_id, text) for doc_id, text in zip(data.corpus, texts, strict=True)]
    encoder = DenseEncoder(batch_size=16)
    tokenizer, window = encoder_tokenizer(encoder)
    assert window is not None
    passages = split_documents(documents, tokenizer, max_tokens=window, overlap=32)
    per_doc: dict[str, int] = {}
    for p in passages:
        per_doc[p.doc_id] = per_doc.get(p.doc_id, 0) + 1
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, "
                   f"{faiss.omp_get_max_threads()} FAISS threads, no GPU",
        "data": "BEIR SciFact test split", "documents": len(documents), "passages": len(passages),
        "documents_split": sum(1 for n in per_doc.values() if n > 1), "max_tokens": window, "overlap": 32,
        "model": encoder.name, "queries": len(data.query_ids()), "k_latency": 10, "repeats": args.repeats,
        "indexes": {},
    }
    print(f"{len(documents)} abstracts -> {len(passages)} passages ({report['documents_split']} abstracts split); "
          f"{report['machine']}")

    qids = data.query_ids()
    claims = data.query_texts()
    relevant = {q: {d for d, g in data.qrels[q].items() if g > 0} for q in qids}
    with tempfile.TemporaryDirectory() as tmp:
        components: dict[str, RetrievalComponent] = {}
        for spec in specs:
            t0 = time.perf_counter()
            path = build_collection(passages, Path(tmp) / spec.replace(",", "_"), encoder=encoder, spec=spec)
            build_s = time.perf_counter() - t0
            rc = RetrievalComponent.open(path, device="cpu")
            components[spec] = rc
            size = sum(f.stat().st_size for f in (path / "index").iterdir())
            report["indexes"][spec] = {"build_s": build_s, "index_bytes": size,
                                       "index_bytes_per_passage": size / len(passages)}
            print(f"built {spec}: {build_s:.1f}s (encoding cached after the first), index {size / 1e6:.2f} MB")

        # ---- latency, interleaved pass by pass, pass 0 is warm-up
        query_encoder = components[specs[0]].encoder
        vectors = query_encoder.encode_queries(claims)
        row_of_claim = {q: i for i, q in enumerate(claims)}

        class Encoded:
            """Stands in for the encoder with the claims' precomputed vectors: times search + assembly only."""

            dim, name = vectors.shape[1], "precomputed"

            def encode_queries(self, texts: list[str]) -> Any:
                return vectors[[row_of_claim[t] for t in texts]]

        stub = Encoded()
        latencies: dict[str, list[list[float]]] = {s: [] for s in specs}
        no_encoding: dict[str, list[list[float]]] = {s: [] for s in specs}
        encode_ms: list[list[float]] = []

        def timed(fn: Any) -> list[float]:
            out = []
            for q in claims:
                t = time.perf_counter()
                fn(q)
                out.append((time.perf_counter() - t) * 1000)
            return out

        for rep in range(args.repeats + 1):
            for spec in (specs if rep % 2 else specs[::-1]):
                rc = components[spec]
                full = timed(lambda q, rc=rc: rc.retrieve(q, 10))
                rc.encoder, real = stub, rc.encoder
                bare = timed(lambda q, rc=rc: rc.retrieve(q, 10))
                rc.encoder = real
                if rep:
                    latencies[spec].append(full)
                    no_encoding[spec].append(bare)
            enc = timed(lambda q: query_encoder.encode_queries([q]))
            if rep:
                encode_ms.append(enc)

        def summary(passes: list[list[float]]) -> dict[str, Any]:
            pooled = np.concatenate(passes)
            return {"p50": float(np.percentile(pooled, 50)), "p95": float(np.percentile(pooled, 95)),
                    "p50_per_pass": [float(np.percentile(p, 50)) for p in passes], "n": int(pooled.size)}

        report["query_encoding_ms"] = summary(encode_ms)
        for spec in specs:
            report["indexes"][spec]["retrieve_ms"] = summary(latencies[spec])
            report["indexes"][spec]["retrieve_without_encoding_ms"] = summary(no_encoding[spec])

        # ---- context recall
        for spec in specs:
            rc = components[spec]
            count = rc.count_tokens
            hits = [rc.retrieve(q, 10) for q in claims]
            recall: dict[str, float] = {}
            for k in KS:
                recall[f"retrieved@{k}"] = float(np.mean([
                    any(h.doc_id in relevant[q] for h in row[:k]) for q, row in zip(qids, hits, strict=True)]))
                for budget in BUDGETS:
                    covered, cited, tokens = [], [], []
                    for q, row in zip(qids, hits, strict=True):
                        ctx = build_context(row[:k], max_tokens=budget, count_tokens=count)
                        covered.append(any(c.doc_id in relevant[q] for c in ctx.citations))
                        cited.append(len(ctx.citations))
                        tokens.append(ctx.tokens)
                    recall[f"context@{k}/{budget}"] = float(np.mean(covered))
                    recall[f"passages@{k}/{budget}"] = float(np.mean(cited))
                    recall[f"tokens@{k}/{budget}"] = float(np.mean(tokens))
            report["indexes"][spec]["context_recall"] = recall

    print(f"\nquery encoding alone: p50 {report['query_encoding_ms']['p50']:.1f} ms, "
          f"p95 {report['query_encoding_ms']['p95']:.1f} ms")
    for spec in specs:
        bare = report["indexes"][spec]["retrieve_without_encoding_ms"]
        print(f"{spec}: retrieve without query encoding p50 {bare['p50']:.2f} ms, p95 {bare['p95']:.2f} ms")
    print(f"{'index':<12}{'p50 ms':>8}{'p95 ms':>8}{'bytes/psg':>11}" + "".join(
        f"{f'R{k}':>7}" + "".join(f"{f'C{k}/{b}':>10}" for b in BUDGETS) for k in KS))
    for spec in specs:
        r = report["indexes"][spec]
        row = f"{spec:<12}{r['retrieve_ms']['p50']:>8.1f}{r['retrieve_ms']['p95']:>8.1f}" \
              f"{r['index_bytes_per_passage']:>11.0f}"
        for k in KS:
            row += f"{r['context_recall'][f'retrieved@{k}']:>7.3f}"
            row += "".join(f"{r['context_recall'][f'context@{k}/{b}']:>10.3f}" for b in BUDGETS)
        print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

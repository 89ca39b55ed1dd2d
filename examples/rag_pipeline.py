"""Retrieval-augmented generation end to end, offline: ingest a folder, build a compressed index, answer.

Run:  .venv/bin/python examples/rag_pipeline.py [--docs FOLDER] [--question TEXT ...] [--generator MODEL_DIR]

1. Ingest a folder of .txt / .md files (or a JSONL file). Without --docs, 300 SciFact abstracts
   are written as .txt files into a temporary folder first, so the example runs as is.
2. Split them into passages of at most 254 all-MiniLM-L6-v2 tokens (32 tokens of overlap),
   encode them and build a compressed FAISS index (PQ32x8: 32 bytes per passage), saved with its
   checksummed passage store as one collection directory.
3. For each question: retrieve the top passages, build a prompt whose numbered context fits a
   token budget, and generate an answer citing [n].

The default generator is ExtractiveAnswerer, which is NOT a language model: it answers with the
context sentence that best matches the question. No LLM weights can be downloaded here. Pass
--generator with a local transformers causal-LM directory (e.g. a Qwen2.5-0.5B-Instruct copy)
to generate with it instead; any callable prompt -> str works in Python.
Takes about 20 seconds on 2 CPU cores (encoding the passages).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import retrieval as rt
from retrieval.rag.generate import ExtractiveAnswerer, TransformersGenerator, answer
from retrieval.rag.passages import build_collection

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--docs", help="folder of .txt/.md files or a .jsonl file (default: SciFact abstracts)")
parser.add_argument("--question", action="append", help="question to answer (repeatable)")
parser.add_argument("--generator", help="local transformers text-generation model directory")
parser.add_argument("--n-docs", type=int, default=300, help="SciFact abstracts to use without --docs")
parser.add_argument("--spec", default="PQ32x8", help="FAISS index spec (default PQ32x8)")
parser.add_argument("-k", type=int, default=5, help="passages retrieved per question")
parser.add_argument("--max-tokens", type=int, default=768, help="context budget in tokens")
args = parser.parse_args()

work = Path(tempfile.mkdtemp(prefix="densezip-rag-"))
questions = args.question or []
relevant: dict[str, set[str]] = {}
if args.docs is None:
    data = rt.load_beir("scifact", split="test").subset(args.n_docs, seed=0)
    docs = work / "docs"
    docs.mkdir()
    for doc_id, doc in data.corpus.items():
        (docs / f"{doc_id}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n", encoding="utf-8")
    if not questions:
        questions = data.query_texts()[:3]
        relevant = {data.queries[q]: {f"{d}.txt" for d, g in data.qrels[q].items() if g > 0}
                    for q in data.query_ids()[:3]}
    print(f"wrote {len(data.corpus)} SciFact abstracts to {docs}")
else:
    docs = Path(args.docs)
if not questions:
    parser.error("pass --question with --docs")

collection = build_collection(docs, work / "collection", encoder=rt.DenseEncoder(), spec=args.spec)
component = rt.RetrievalComponent.open(collection)
print(f"collection: {collection} holds {len(component)} passages; {component.index!r}")

generator = TransformersGenerator(args.generator) if args.generator else ExtractiveAnswerer()
print(f"generator: {generator!r}" + ("" if args.generator else "  (extractive: not an LLM)"))
for question in questions:
    result = answer(component, question, generator, k=args.k, max_tokens=args.max_tokens)
    print(f"\nQ: {question}\nA: {result.text}")
    print(f"   context: {len(result.context.citations)} passages, {result.context.tokens} of "
          f"{args.max_tokens} tokens")
    for line in result.context.sources():
        print("   " + line)
    if question in relevant:
        hit = any(c.doc_id in relevant[question] for c in result.context.citations)
        print(f"   a judged-relevant abstract is in the context: {hit}")

"""The id store before and after the compact layout (issue 18), measured in one run.

Run (2-core CPU, no GPU; ~1-2 minutes at 1M):

    .venv/bin/python tests/benchmarks/bench_idstore.py --n 1000000 --spec PQ16x8 [--json out.json]

Builds a FaissIndex over ``--n`` random 64-d float32 vectors (``--spec``, trained on 20,000 of
them) with ids ``doc-000000`` ..., saves it once, then for each id store opens it in a fresh
process and reports: ``memory_bytes()`` per document minus the codes (the FAISS structure's
own bytes), RSS after ``load`` minus RSS before it, the load time, 10,000 id lookups (one
batched ``rows_of`` and a loop of ``in``), and a search of 64 queries restricted to a random 1%
of the ids (``subset=``), with and without reading ``doc_ids``.

"old" is the list + dict + object-array ``IdTable`` of commit 64266e7 (read with ``git show``
and swapped in for ``indexes.base.IdTable`` in that process); "new" is ``indexes._ids.IdTable``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

OLD_COMMIT = "64266e7"
ROOT = Path(__file__).resolve().parents[2]


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _old_table() -> type:
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:indexes/_ids.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("old_ids")
    sys.modules["old_ids"] = module
    exec(compile(source, "old_ids.py", "exec"), module.__dict__)  # our own file at a pinned commit
    return module.IdTable


def probe(path: str, variant: str, n: int) -> dict[str, float]:
    """Measure one id store on the saved index (runs in a fresh process)."""
    import indexes.base
    from indexes import FaissIndex

    if variant == "old":
        indexes.base.IdTable = _old_table()  # type: ignore[attr-defined]
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((64, 64)).astype(np.float32)
    lookup = [f"doc-{i:06d}" for i in rng.choice(n, 10_000, replace=False)]
    subset = [f"doc-{i:06d}" for i in rng.choice(n, n // 100, replace=False)]
    before = _rss()
    t = time.perf_counter()
    index = FaissIndex.load(path)
    load_s = time.perf_counter() - t
    rss = _rss() - before
    codes = index.faiss_index.sa_code_size() * n
    table = index._table
    t = time.perf_counter()
    rows = table.rows_of(lookup)
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    found = sum(i in index for i in lookup)
    loop_s = time.perf_counter() - t
    assert found == len(lookup) and len(rows) == len(lookup)
    index.search(queries, 10, subset=subset)  # warm-up
    t = time.perf_counter()
    result = index.search(queries, 10, subset=subset)
    subset_s = time.perf_counter() - t
    t = time.perf_counter()
    hits = result.doc_ids
    ids_s = time.perf_counter() - t
    assert set(hits[0]) <= set(subset)
    return {"variant": variant, "bytes_per_doc": index.memory_bytes() / n, "codes_per_doc": codes / n,
            "ids_bytes_per_doc": table.memory_bytes() / n, "rss_per_doc": rss / n, "load_s": load_s,
            "lookup_batch_ms": batch_s * 1e3, "lookup_loop_ms": loop_s * 1e3, "subset_search_ms": subset_s * 1e3,
            "doc_ids_ms": ids_s * 1e3}


def build(path: Path, n: int, spec: str) -> None:
    from indexes import FaissIndex

    rng = np.random.default_rng(0)
    index = FaissIndex(64, spec=spec)
    index.train(rng.standard_normal((20_000, 64)).astype(np.float32))
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        index.add(rng.standard_normal((stop - start, 64)).astype(np.float32),
                  ids=[f"doc-{i:06d}" for i in range(start, stop)])
    index.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--spec", default="PQ16x8")
    parser.add_argument("--json")
    parser.add_argument("--probe", nargs=2, metavar=("PATH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe[0], args.probe[1], args.n)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build(Path(tmp) / "index", args.n, args.spec)
        print(f"built {args.spec} over {args.n:,} docs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for variant in ("old", "new"):
            out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--probe", str(Path(tmp) / "index"),
                                  variant], check=True, capture_output=True, text=True, cwd=ROOT).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    keys = list(rows[0])[1:]
    print(f"{args.spec}, n = {args.n:,}, ids 'doc-000000'\n")
    print("| measure | " + " | ".join(r["variant"] for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{r[key]:.3g}" for r in rows) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "spec": args.spec, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

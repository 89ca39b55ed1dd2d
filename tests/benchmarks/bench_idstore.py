"""The id store before and after issue 18, measured in one run: docs/BENCHMARKS.md section 7.

Run (2-core CPU, no GPU; a few minutes at 1M per spec):

    .venv/bin/python tests/benchmarks/bench_idstore.py --n 1000000 --spec PQ16x8 --spec IVF1024,PQ48x8 [--json out.json]

For each ``--spec`` it builds a FaissIndex over ``--n`` random 96-d float32 vectors (trained on
``--train`` of them; ``--bounded`` streams them through :func:`indexes.build.build_from_batches`)
with ids ``doc-0000000`` ..., saves it once (format 2), derives two copies of the same codes
(format 1: ``doc_ids.txt``; integer ids ``0 .. n-1``), then opens each variant in a fresh
process and reports: ``memory_bytes()`` per document, of which codes (the PQ code size),
ids (``ids_memory_bytes()``) and the FAISS structure's own (the rest: centroids, codebooks,
an IVF index's int64 list ids); RSS after
``load`` minus RSS before and the peak RSS of the load (VmHWM, reset just before, minus RSS before); the
load time without and with sha256 verification; 10,000 id lookups (one batched ``rows_of``
and a loop of ``in``); a search of ``--queries`` queries restricted to a random 1% of the ids
(``subset=``), the median of 3 resolutions of that subset's ids to a row mask (the id
store's share of the subset search, once per search call) and reading its ``doc_ids``; RSS after all that.

Variants: ``list+dict`` is the ``IdTable`` of commit 64266e7 (a list of str, a dict, an
object array) reading format 1; ``compact`` is that of commit 3727e62 (the compact arrays of
issue 18's first half, built from ``doc_ids.txt`` at every load); ``variable`` is that of
commit c78e751 (format 2: UTF-8 buffer, offsets, sorted hashes, permutation, bool tombstones,
memory-mapped); ``fixed`` is this code (format 3: the ids as fixed-width rows plus a
permutation, tombstone bits only once a row is deleted); ``int`` is this code with integer
ids. The old tables are read with ``git show`` (with their own ``_idstore.py`` where they had
one) and swapped in for ``indexes.base.IdTable`` in their process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

OLD = {"list+dict": "64266e7", "compact": "3727e62", "variable": "c78e751"}
#: The saved copy each variant opens (the others open the directory named after them).
COPY = {"list+dict": "format1", "compact": "format1", "variable": "format2"}
ROOT = Path(__file__).resolve().parents[2]
DIM = 96  # a multiple of 16 and 48 (PQ16, PQ48)


def _rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start the peak RSS (VmHWM) afresh from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _old_module(commit: str, name: str, replace: dict[str, str]) -> types.ModuleType:
    """``indexes/<name>.py`` of ``commit`` as a module of its own (``replace``: import lines to redirect)."""
    source = subprocess.run(["git", "show", f"{commit}:indexes/{name}.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    for old, new in replace.items():
        source = source.replace(old, new)
    module = types.ModuleType(f"{name.strip('_')}_{commit}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{module.__name__}.py", "exec"), module.__dict__)  # our own file at a pinned commit
    return module


def _old_table(commit: str) -> type:
    source = subprocess.run(["git", "show", f"{commit}:indexes/_ids.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    replace = {}
    if "from indexes._idstore import" in source:  # its own store, not today's
        replace["from indexes._idstore import"] = f"from {_old_module(commit, '_idstore', {}).__name__} import"
    old = _old_module(commit, "_ids", replace).IdTable

    class Table(old):  # type: ignore[misc, valid-type]
        @classmethod
        def read(cls, directory, manifest, *, tombstones, verify=False):  # type: ignore[no-untyped-def]
            return old.read.__func__(cls, directory, manifest, tombstones=tombstones)

        def live_mask(self):  # type: ignore[no-untyped-def]  # what indexes.base asks of a table today
            return ~self.deleted

    return Table


def _code_size(faiss_index: object) -> int:
    """Bytes of PQ code per document (``code_size``: for an IVF index without the list number,
    which ``sa_code_size()`` adds; the lists' own int64 ids count as structure)."""
    return int(faiss_index.code_size)  # type: ignore[attr-defined]


def _name(i: int) -> str:
    return f"doc-{i:07d}"


def probe(path: str, variant: str, n: int, nq: int) -> dict[str, float | str]:
    """Measure one id store on the saved index (runs in a fresh process)."""
    import indexes.base
    from indexes import FaissIndex

    rng = np.random.default_rng(1)
    queries = rng.standard_normal((nq, DIM)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: the first load imports and initialises lazily
        warm = FaissIndex(DIM, spec="Flat").add(queries, ids=[_name(i) for i in range(nq)])
        FaissIndex.load(warm.save(Path(tmp) / "warm"), verify=True)
        del warm
    if variant in OLD:
        indexes.base.IdTable = _old_table(OLD[variant])  # type: ignore[attr-defined, misc]
    pick, subset_rows = rng.choice(n, 10_000, replace=False), rng.choice(n, n // 100, replace=False)
    key = (lambda i: int(i)) if variant == "int" else _name
    lookup, subset = [key(i) for i in pick], [key(i) for i in subset_rows]
    _reset_peak()
    before = _rss()
    t = time.perf_counter()
    index = FaissIndex.load(path, verify=False)
    load_s = time.perf_counter() - t
    rss, peak = _rss() - before, _rss("VmHWM") - before
    t = time.perf_counter()
    FaissIndex.load(path, verify=True)
    verified_s = time.perf_counter() - t
    codes = _code_size(index.faiss_index) * n
    total, ids_bytes = index.memory_bytes(), index.ids_memory_bytes()
    t = time.perf_counter()
    rows = index._table.rows_of(lookup)  # the batched lookup every delete / subset runs
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    found = sum(i in index for i in lookup)
    loop_s = time.perf_counter() - t
    assert found == len(lookup) and len(rows) == len(lookup)
    index.search(queries[:2], 10, subset=subset)  # warm-up
    t = time.perf_counter()
    result = index.search(queries, 10, subset=subset)
    subset_s = time.perf_counter() - t
    t = time.perf_counter()
    hits = result.doc_ids
    ids_s = time.perf_counter() - t
    resolve = []
    for _ in range(3):  # the id half of the subset search: the subset's ids -> a mask over the rows
        t = time.perf_counter()
        index._table.subset_mask(subset)
        resolve.append(time.perf_counter() - t)
    assert set(hits[0]) <= set(subset)
    return {"variant": variant, "bytes_per_doc": total / n, "codes_per_doc": codes / n,
            "ids_bytes_per_doc": ids_bytes / n, "structure_per_doc": (total - codes - ids_bytes) / n, "rss_after_load_per_doc": rss / n, "peak_load_per_doc": peak / n,
            "load_s": load_s, "load_verified_s": verified_s, "lookup_batch_ms": batch_s * 1e3,
            "lookup_loop_ms": loop_s * 1e3, "subset_search_ms_per_query": subset_s * 1e3 / nq,
            "subset_ids_to_rows_ms": sorted(resolve)[1] * 1e3,
            "doc_ids_ms": ids_s * 1e3, "rss_at_end_per_doc": (_rss() - before) / n}


def build(path: Path, n: int, spec: str, train: int, bounded: bool) -> None:
    from indexes import FaissIndex
    from indexes.build import build_from_batches

    rng = np.random.default_rng(0)
    step = 100_000
    batches = ((np.arange(s, min(n, s + step)), rng.standard_normal((min(n, s + step) - s, DIM)).astype(np.float32))
               for s in range(0, n, step))
    if bounded:
        index = build_from_batches((([_name(i) for i in rows], x) for rows, x in batches), dim=DIM, spec=spec,
                                   train_size=train)
    else:
        index = FaissIndex(DIM, spec=spec)
        index.train(np.random.default_rng(9).standard_normal((train, DIM)).astype(np.float32))
        for rows, x in batches:
            index.add(x, ids=[_name(i) for i in rows])
    index.save(path)


def _rewrite_ids(src: Path, dst: Path, *, integer: bool, version: int = 1) -> None:
    """A copy of the saved index ``src`` with the same codes: format 1 (``doc_ids.txt``), format 2 (the
    variable layout and a bool ``deleted.npy``, as commit c78e751 saved them) or integer ids."""
    from indexes._idstore import StrStore, encode
    from indexes._io import file_table
    from indexes._io import save_array as save

    shutil.copytree(src, dst)
    raw = json.loads((dst / "manifest.json").read_text())
    for name in [k for k in raw["arrays"] if k.startswith("id_")]:
        (dst / raw["arrays"].pop(name)["file"]).unlink()
    n = raw["count"]
    if integer:
        raw["arrays"]["id_keys"] = save(dst, "id_keys", np.arange(n, dtype=np.int64))  # ascending: no permutation
    elif version == 2:
        for name, array in StrStore.build(*encode([_name(i) for i in range(n)])).arrays().items():
            raw["arrays"][name] = save(dst, name, array)
        raw["format_version"] = 2
    else:
        (dst / "doc_ids.txt").write_text("".join(f"{_name(i)}\n" for i in range(n)))
        raw["format_version"] = 1
    if not integer:  # formats 1 and 2 always saved the tombstones of a FaissIndex, one bool a row
        raw["arrays"]["deleted"] = save(dst, "deleted", np.zeros(n, dtype=bool))
    raw["files"] = file_table(dst)
    (dst / "manifest.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--spec", action="append", help="FAISS factory string (repeatable; default PQ16x8)")
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--bounded", action="store_true", help="build through indexes.build.build_from_batches")
    parser.add_argument("--variants", default="list+dict,compact,variable,fixed,int")
    parser.add_argument("--json")
    parser.add_argument("--probe", nargs=2, metavar=("PATH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe[0], args.probe[1], args.n, args.queries)))
        return
    report = []
    for spec in args.spec or ["PQ16x8"]:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            build(Path(tmp) / "fixed", args.n, spec, args.train, args.bounded)
            print(f"built {spec} over {args.n:,} docs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            _rewrite_ids(Path(tmp) / "fixed", Path(tmp) / "format1", integer=False)
            _rewrite_ids(Path(tmp) / "fixed", Path(tmp) / "format2", integer=False, version=2)
            _rewrite_ids(Path(tmp) / "fixed", Path(tmp) / "int", integer=True)
            for variant in args.variants.split(","):
                where = Path(tmp) / COPY.get(variant, variant)
                out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--queries", str(args.queries),
                                      "--probe", str(where), variant], check=True, capture_output=True, text=True,
                                     cwd=ROOT).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(f"  {variant}: done", file=sys.stderr)
        report.append({"spec": spec, "rows": rows})
        print(f"\n{spec}, n = {args.n:,}, ids 'doc-0000000' (int: 0 .. n-1)\n")
        print("| measure | " + " | ".join(str(r["variant"]) for r in rows) + " |")
        print("|---|" + "---:|" * len(rows))
        for key in list(rows[0])[1:]:
            print(f"| {key} | " + " | ".join(f"{r[key]:.3g}" for r in rows) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "report": report}, indent=1))


if __name__ == "__main__":
    main()

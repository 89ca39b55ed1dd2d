"""fast-plaid behind a pipe, for ``bench_late_interaction.py --fast-plaid``.

Runs inside the throw-away virtual environment that the benchmark creates for fast-plaid (its
torch pin differs from ours), so it imports nothing from densezip: only NumPy, torch and
fast_plaid. One JSON request per line on stdin, one JSON answer per line on stdout; everything
the libraries print goes to stderr. Requests:

  {"op": "build", "docs": "x.npy", "doc_len": 100, "index": "dir", "nbits": 4[, "centroids": "c.npy"]}
      fast-plaid's ``create`` at its defaults over the (n_docs * doc_len, dim) float32 vectors;
      answers {"build_s": seconds}. With "centroids" (K x dim, normalised float32, trained outside:
      see ``bench_late_interaction_10m.py``), its k-means step returns those, in half precision
      as its own does; everything after it is fast-plaid's own code.
  {"op": "load", "index": "dir", "queries": "q.npy"}       q.npy: (n_queries, q_len, dim) float32
  {"op": "labels", "params": {...}}       top-10 document numbers of every query, batches of 32
  {"op": "latency", "params": {...}, "n": 30}   milliseconds of the first n queries, one at a time
  {"op": "rate", "params": {...}, "n": 64}      queries per second over the first n, batches of 32
  {"op": "quit"}

``params`` are fast-plaid's search arguments (``n_ivf_probe``, ``n_full_scores``,
``n_processes``); ``--threads`` sets torch's and Rayon's thread counts before anything loads.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = _THREADS

import numpy as np  # noqa: E402
import torch  # noqa: E402

BATCH = 32


class Worker:
    def __init__(self) -> None:
        self.index = None
        self.queries = None

    def build(self, docs: str, doc_len: int, index: str, nbits: int, centroids: str | None = None) -> dict:
        from fast_plaid import search

        if centroids is not None:
            from fast_plaid.search import fast_plaid as module

            given = torch.from_numpy(np.load(centroids)).half()
            module.compute_kmeans = lambda **_: given
        vectors = np.load(docs)
        tensors = list(torch.from_numpy(vectors).reshape(-1, doc_len, vectors.shape[1]).unbind(0))  # one per document
        t0 = time.perf_counter()
        search.FastPlaid(index=index, device="cpu").create(documents_embeddings=tensors, nbits=nbits)
        return {"build_s": time.perf_counter() - t0}

    def load(self, index: str, queries: str) -> dict:
        from fast_plaid import search

        self.index = search.FastPlaid(index=index, device="cpu")
        self.queries = torch.from_numpy(np.load(queries))
        return {"n_queries": int(self.queries.shape[0])}

    def _search(self, start: int, stop: int, params: dict) -> list[list[int]]:
        hits = self.index.search(self.queries[start:stop], top_k=10, show_progress=False, **params)
        return [[int(doc) for doc, _ in row] + [-1] * (10 - len(row)) for row in hits]

    def labels(self, params: dict) -> dict:
        n = int(self.queries.shape[0])
        return {"labels": [row for s in range(0, n, BATCH) for row in self._search(s, min(s + BATCH, n), params)]}

    def latency(self, params: dict, n: int) -> dict:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            self._search(i, i + 1, params)
            out.append(1000 * (time.perf_counter() - t0))
        return {"ms": out}

    def rate(self, params: dict, n: int) -> dict:
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            self._search(s, min(s + BATCH, n), params)
        return {"qps": n / (time.perf_counter() - t0)}


def main() -> None:
    torch.set_num_threads(int(_THREADS))
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the pipe; library prints go to stderr
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    worker = Worker()
    from importlib.metadata import version

    import fast_plaid  # noqa: F401  (fails here, before the first request, when it is missing)

    answer.write(json.dumps({"fast_plaid": version("fast-plaid"), "torch": torch.__version__,
                             "threads": torch.get_num_threads()}) + "\n")
    answer.flush()
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            reply = getattr(worker, op)(**request)
        except Exception as exc:  # reported to the parent, which raises
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        answer.write(json.dumps(reply) + "\n")
        answer.flush()


if __name__ == "__main__":
    main()

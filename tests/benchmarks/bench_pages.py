"""Visual document ingestion throughput: render, encode, build, end to end, and peak RSS of 1,000 pages.

Run:  flock /tmp/densezip-cpu.lock .venv/bin/python tests/benchmarks/bench_pages.py [--json out.json]

Input: PDFs written by tests/retrieval/rag/page_fixtures.make_pdf (US Letter pages, six lines of
Helvetica text and two to five filled rectangles each), so the figures need no download.

- render: retrieval.rag.pages.iter_pages over a 100-page PDF at 100 dpi (850 x 1100 px pages).
- encode: ColPaliEncoder.encode_documents on those 100 images with the tiny random ColPali of the
  tests (2 layers, hidden size 32, 32 px input: 4 patches per page), batch 8. It measures the
  wrapper and the processor's resize of an 850 x 1100 page, not a real ColPali forward pass.
- build: MultiVectorIndex(spec) train + add on ColPali-shaped vectors: 100 pages x 1,030 patches
  x 128-d (random unit vectors with random saliency: the size of colpali-v1.3 output).
- end to end: index_pages(folder of the 100-page PDF) with the tiny model, JPEG page images on
  and off (render + encode + JPEG + index + atomic save).
- peak RSS: index_pages on a 1,000-page PDF in a fresh process, batch 8, VmHWM against the RSS
  once the modules and the model are loaded. Every repeat is a median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "tests" / "retrieval" / "rag"))

_PEAK_SCRIPT = """
import sys, time
import torch
torch.set_num_threads({threads})
from retrieval.encode.colpali import ColPaliEncoder
from retrieval.rag.page_collection import index_pages
def kib(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
enc = ColPaliEncoder({model!r}, device="cpu", batch_size=8)
enc.dim  # load the model before the baseline
base = kib("VmRSS:")
t = time.perf_counter()
build = index_pages({pdf!r}, {out!r}, model=enc, batch_size=8, images={images!r})
print(build.pages, base, kib("VmHWM:"), time.perf_counter() - t)
"""


def _median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import numpy as np
    import torch
    from page_fixtures import make_pdf, tiny_colvision

    from indexes.multivector import MultiVectorIndex
    from retrieval.encode.colpali import ColPaliEncoder
    from retrieval.rag.page_collection import index_pages
    from retrieval.rag.pages import RenderOptions, iter_pages
    from retrieval.types import MultiVectorEmbeddings

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the machine's cores)")
    parser.add_argument("--spec", default="Prune0.6,BinaryITQ")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["Quarterly revenue by region", "Operating margin and costs", "Figure 3: churn",
             "Table 2: headcount", "Outlook for the next year", "Appendix and notes"]
    results: dict[str, Any] = {"machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                               "spec": args.spec, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        docs = tmp / "docs"
        docs.mkdir()
        pdf = make_pdf(docs / "hundred.pdf", [[f"Page {i + 1}", *lines] for i in range(100)])
        model, processor = tiny_colvision("colpali")
        model.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        options = RenderOptions(dpi=100)

        render_s = _median_time(lambda: sum(1 for _ in iter_pages(pdf, options=options)), args.repeats)
        results["render_pages_per_s"] = 100 / render_s
        images = [r.image for r in iter_pages(pdf, options=options)]
        encoder = ColPaliEncoder(tmp / "model", device="cpu", batch_size=8)
        encoder.encode_documents(images[:8])  # load the model outside the timing
        encode_s = _median_time(lambda: encoder.encode_documents(images), args.repeats)
        results["encode_pages_per_s_tiny"] = 100 / encode_s

        rng = np.random.default_rng(0)
        mats = [rng.standard_normal((1030, 128)).astype(np.float32) for _ in range(100)]
        mats = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in mats]
        sal = [rng.random(1030).astype(np.float32) for _ in range(100)]
        vectors = MultiVectorEmbeddings.from_list(mats, ids=[f"p{i}" for i in range(100)], saliency=sal)

        def build() -> None:
            index = MultiVectorIndex(128, spec=args.spec)
            index.train(vectors)
            index.add(vectors)

        results["build_s_100_colpali_shaped_pages"] = _median_time(build, args.repeats)
        for images_opt in ("jpeg", None):
            run = 0

            def end_to_end(images_opt: str | None = images_opt) -> None:
                nonlocal run
                run += 1
                index_pages(docs, tmp / f"col-{images_opt}-{run}", model=encoder, batch_size=8, images=images_opt,
                            options=options)

            seconds = _median_time(end_to_end, args.repeats)
            results[f"end_to_end_pages_per_s_images_{images_opt or 'none'}"] = 100 / seconds

        big = make_pdf(tmp / "thousand.pdf", [[f"Page {i + 1}", *lines] for i in range(1000)])
        for images_opt in ("jpeg", None):
            script = _PEAK_SCRIPT.format(threads=args.threads, model=str(tmp / "model"), pdf=str(big),
                                         out=str(tmp / f"big-{images_opt}"), images=images_opt)
            out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                                 check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            pages, base_kib, peak_kib, seconds = out.stdout.split()[-4:]
            key = f"thousand_pages_images_{images_opt or 'none'}"
            results[key] = {"pages": int(pages), "rss_after_load_mib": int(base_kib) / 1024,
                            "peak_rss_mib": int(peak_kib) / 1024, "seconds": float(seconds)}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

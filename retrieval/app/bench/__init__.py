"""The benchmark harness behind ``densezip bench``: quality, size and speed of every index
kind, our wrappers against raw FAISS, and scans against the memory bandwidth, in one run.

Modules: :mod:`~retrieval.app.bench.config` (the configuration file), :mod:`~retrieval.app.bench.text`
(BEIR data sets), :mod:`~retrieval.app.bench.vector_sets` (fvecs / ivecs with ground truth),
:mod:`~retrieval.app.bench.probe` (timing, bandwidth, machine facts), :mod:`~retrieval.app.bench.report`
(Markdown and plots) and :mod:`~retrieval.app.bench.runner` (:func:`run_bench`). Shipped
configurations live in ``retrieval/app/bench/configs``.

Importing this package imports neither torch nor faiss.
"""

from __future__ import annotations

from retrieval.app.bench.config import BenchConfig, load_config, parse_config
from retrieval.app.bench.runner import run_bench

__all__ = ["BenchConfig", "load_config", "parse_config", "run_bench"]

"""The benchmark harness behind ``densezip bench``: quality, size and speed of every index
kind, our wrappers against raw FAISS, and scans against the memory bandwidth, in one run.

Modules: :mod:`~retrieval.bench.config` (the configuration file), :mod:`~retrieval.bench.text`
(BEIR data sets), :mod:`~retrieval.bench.vectors` (fvecs / ivecs with ground truth),
:mod:`~retrieval.bench.probe` (timing, bandwidth, machine facts), :mod:`~retrieval.bench.report`
(Markdown and plots) and :mod:`~retrieval.bench.runner` (:func:`run_bench`). Shipped
configurations live in ``retrieval/bench/configs``.

Importing this package imports neither torch nor faiss.
"""

from __future__ import annotations

from retrieval.bench.config import BenchConfig, load_config, parse_config
from retrieval.bench.runner import run_bench

__all__ = ["BenchConfig", "load_config", "parse_config", "run_bench"]

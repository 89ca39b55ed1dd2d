"""Run a whole benchmark configuration and write its results beside each other:
``results.json``, ``report.md`` and the PNG plots."""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrieval.app.bench.config import BenchConfig
from retrieval.app.bench.probe import machine_info, memory_bandwidth, set_threads
from retrieval.app.bench.report import render_markdown, save_plots
from retrieval.app.bench.text import EncoderFactory, default_encoder, default_token_encoder, run_text_dataset
from retrieval.app.bench.vector_sets import run_vector_dataset

__all__ = ["RESULTS_FILE", "REPORT_FILE", "run_bench"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


def run_bench(
    config: BenchConfig,
    out_dir: str | os.PathLike[str],
    *,
    command: str = "",
    encoder_factory: EncoderFactory | None = None,
    token_encoder_factory: EncoderFactory | None = None,
    progress: Callable[[str], None] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Measure every data set and index of ``config``; write results, report and plots.

    Parameters
    ----------
    config : BenchConfig
        What to run (see :mod:`retrieval.app.bench.config`).
    out_dir : str or os.PathLike
        Created if missing; receives ``results.json``, ``report.md`` and the PNG plots.
    command : str
        The command line that started the run, recorded in the results and the report.
    encoder_factory : callable, optional
        ``model -> encoder`` for text data sets; default: a CPU :class:`~retrieval.DenseEncoder`
        with the embedding cache. Tests pass a fake encoder here.
    token_encoder_factory : callable, optional
        ``model -> encoder`` of token vectors for the multi-vector kind; default: a CPU
        :class:`~retrieval.MultiVectorEncoder` (document vectors cached on disk).
    progress : callable, optional
        Receives one line per finished measurement; default: the module logger at INFO.
    plots : bool, default True
        Draw the PNG plots (needs matplotlib, the ``bench`` extra).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    say = progress or logger.info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    threads = set_threads(config.threads)
    say(f"measuring memory bandwidth ({config.bandwidth_mib} MiB buffer)")
    bandwidth = memory_bandwidth(mib=config.bandwidth_mib, repeats=max(config.repeats, 3))
    say(f"  read bandwidth {bandwidth['read_bytes_per_s'] / 1e9:.1f} GB/s")
    text = []
    for ds in config.text:
        say(f"text data set {ds.name} ({ds.path})")
        text.append(run_text_dataset(ds, config, encoder_factory=encoder_factory or default_encoder, progress=say,
                                     token_encoder_factory=token_encoder_factory or default_token_encoder))
        set_threads(config.threads)  # loading torch may have changed the thread settings
    vectors = []
    for vds in config.vectors:
        say(f"vector data set {vds.name} ({vds.base})")
        vectors.append(run_vector_dataset(vds, config, progress=say))
    result: dict[str, Any] = {
        "format": "densezip-bench", "format_version": 1, "command": command, "started": started_at,
        "seconds": time.perf_counter() - started, "config": config.as_dict(), "machine": machine_info(threads),
        "bandwidth": bandwidth, "text": text, "vectors": vectors,
    }
    (out / RESULTS_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / REPORT_FILE).write_text(render_markdown(result), encoding="utf-8")
    if plots:
        for path in save_plots(result, out):
            say(f"wrote {path}")
    return result

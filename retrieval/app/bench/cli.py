"""The ``densezip bench`` command, kept out of :mod:`retrieval.app.cli` so that file stays a thin dispatcher."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["command_line", "needs_smoke_data", "run_from_args"]


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this run, recorded in the results and the report."""
    parts = ["densezip", "bench", args.config, "--out", args.out]
    if args.data_root:
        parts += ["--data-root", args.data_root]
    if args.update_doc:
        parts += ["--update-doc", args.update_doc]
    if args.no_plots:
        parts.append("--no-plots")
    return shlex.join(parts)


def needs_smoke_data(args: argparse.Namespace) -> bool:
    """True for the shipped ``smoke`` configuration run without ``--data-root``: its tiny data
    are then written on the fly (:func:`~retrieval.app.bench.tiny.write_smoke_data`)."""
    from retrieval.app.bench.config import resolve_config_path

    if args.data_root or args.render_only:
        return False
    shipped = Path(__file__).parent / "configs" / "smoke.toml"
    return resolve_config_path(args.config).resolve() == shipped.resolve()


def run_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Load the configuration, run it, optionally splice the report into a document.

    Returns the result dict and the Markdown report; progress lines go to stderr.
    """
    if not needs_smoke_data(args):
        return _run(args, args.data_root)
    from retrieval.app.bench.tiny import SMOKE_SEED, write_smoke_data

    with tempfile.TemporaryDirectory(prefix="densezip-smoke-") as tmp:
        write_smoke_data(tmp)
        _progress(f"wrote the smoke data (seed {SMOKE_SEED}) into {tmp}; pass --data-root to use other data")
        return _run(args, tmp)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, data_root: str | None) -> tuple[dict[str, Any], str]:
    from retrieval.app.bench.config import load_config
    from retrieval.app.bench.report import check_markers, render_markdown, save_plots, splice_markdown
    from retrieval.app.bench.runner import REPORT_FILE, RESULTS_FILE, run_bench
    from retrieval.errors import ConfigError

    config = None if args.render_only else load_config(args.config, data_root=data_root)
    if args.update_doc:  # fail before a long run, not after it
        check_markers(args.update_doc)

    out = Path(args.out)
    if args.render_only:
        # Presentation only: the figures are those of the run that wrote results.json.
        try:
            result = json.loads((out / RESULTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--render-only needs {out / RESULTS_FILE} from an earlier run: {exc}") from exc
        (out / REPORT_FILE).write_text(render_markdown(result), encoding="utf-8")
        if not args.no_plots:
            save_plots(result, out)
    else:
        assert config is not None  # loaded above unless rendering only
        result = run_bench(config, out, command=command_line(args), progress=_progress, plots=not args.no_plots)
    if args.update_doc:
        doc = Path(args.update_doc)
        image_dir = Path(os.path.relpath(out.resolve(), doc.resolve().parent)).as_posix()
        splice_markdown(doc, render_markdown(result, image_dir=image_dir, heading_level=3))
        _progress(f"updated {doc}")
    return result, (out / REPORT_FILE).read_text(encoding="utf-8")

"""Turn a benchmark result into Markdown tables and matplotlib plots, and splice the Markdown
into a document between marker comments."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from retrieval.errors import ConfigError

__all__ = ["BEGIN_MARKER", "END_MARKER", "check_markers", "render_markdown", "save_plots", "splice_markdown"]

BEGIN_MARKER = "<!-- densezip bench: begin -->"
END_MARKER = "<!-- densezip bench: end -->"

QUALITY_PNG = "quality_vs_bytes.png"


def recall_png(dataset: str) -> str:
    return f"recall_vs_qps_{_slug(dataset)}.png"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f}"


def _qps(t: dict[str, Any], who: str = "ours") -> str:
    return f"{t[who]['qps']:.0f}" if who in t else "-"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items()) or "-"


# ---------------------------------------------------------------------------- markdown
def render_markdown(result: dict[str, Any], *, image_dir: str = ".", heading_level: int = 2) -> str:
    """The report as Markdown: run facts, one table per data set, scan efficiency, plots.

    Parameters
    ----------
    result : dict
        What :func:`retrieval.app.bench.run_bench` returns (and writes as ``results.json``).
    image_dir : str
        Path from the Markdown file to the directory holding the PNG plots.
    heading_level : int
        Level of the top heading (sub-sections go one deeper).
    """
    h = "#" * heading_level
    hh = h + "#"
    meta, cfg = result["machine"], result["config"]
    batches = [str(b) for b in cfg["batch_sizes"]]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    bw = result["bandwidth"]
    source = cfg["source"]
    shipped = source.replace(os.sep, "/").find("retrieval/app/bench/configs/")
    source = source[shipped:] if shipped >= 0 else source  # shipped configs: a path that means the same everywhere
    lines = [
        f"{h} `densezip bench`: every index kind in one run (generated, do not edit by hand)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Configuration `{cfg['name']}` ({source}), recorded in full in `results.json`. "
        f"Machine: {meta['cpu']} ({', '.join(meta['cpu_flags']) or 'no SIMD flags found'}), "
        f"{meta['logical_cpus']} logical CPUs, {meta['memory_bytes'] / 2**30:.0f} GiB RAM, "
        f"{'a GPU build of FAISS with a GPU' if meta['gpu'] else 'no GPU'}; {meta['threads']} FAISS/BLAS threads; "
        f"Python {meta['python']}; {versions}. Run started {result['started']} and took {result['seconds']:.0f} s.",
        "",
        f"Every QPS figure is the median of {cfg['repeats']} timed rounds over the queries after {cfg['warmup']} "
        f"warm-up round(s), k={cfg['k']}, at batch sizes {', '.join(batches)} (min and max in `results.json`); "
        "latencies p50/p95 are per batch. \"raw\" is `faiss_index.search` called directly on the very FAISS object "
        "our `FaissIndex` wraps; ours and raw take turns batch by batch within each round, and \"ours/raw\" is the "
        "median over the rounds of our QPS divided by raw QPS (1.00 = no overhead). Bytes per document: everything the loaded index holds in memory (codes, structure, "
        "string ids as Python objects) and every file of its saved directory.",
        "",
        f"Memory bandwidth measured in the same run: **{_gb(bw['read_bytes_per_s'])} GB/s** read "
        f"(best of NumPy sum on one core, {_gb(bw['numpy_sum_bytes_per_s'])} GB/s, and BLAS dot, "
        f"{_gb(bw['blas_dot_bytes_per_s'])} GB/s; {bw['buffer_bytes'] / 2**20:.0f} MiB buffer).",
        "",
    ]
    for ds in result["text"]:
        lines += _text_section(ds, batches, hh)
    if result["text"]:
        lines += [f"![quality versus bytes per document]({image_dir}/{QUALITY_PNG})", ""]
    for ds in result["vectors"]:
        lines += _vector_section(ds, batches, hh, image_dir)
    lines += _wrapper_summary(result, batches, hh)
    lines += _scan_section(result, batches, hh)
    return "\n".join(lines).rstrip() + "\n"


def _text_section(ds: dict[str, Any], batches: list[str], hh: str) -> list[str]:
    head = "| index | nDCG@10 | MRR@10 | R@100 | bytes/doc (memory) | bytes/doc (disk) | build s |"
    sep = "|---|---|---|---|---|---|---|"
    for b in batches:
        head += f" QPS b={b} (raw) | p50/p95 ms b={b} | ours/raw b={b} |"
        sep += "---|---|---|"
    lines = [
        f"{hh} Text: {ds['name']} ({ds['documents']} documents, {ds['queries']} {ds['split']} queries, "
        f"{ds['encoder']}, {ds['dim']}-d)",
        "",
        f"Quality: ir-measures on the {ds['split']} split, {ds['metrics_depth']} documents retrieved per query. "
        f"Document encoding took {ds['encode_documents_s']:.1f} s (embedding cache), queries {ds['encode_queries_s']:.1f} s; "
        "neither is in the search timings.",
        "", head, sep,
    ]
    for r in ds["rows"]:
        line = (f"| {r['label']} | {r['nDCG@10']:.4f} | {r['MRR@10']:.4f} | {r['Recall@100']:.3f} | "
                f"{r['memory_bytes_per_doc']:.0f} | {r['disk_bytes_per_doc']:.0f} | {r['build_s']:.2f} |")
        for b in batches:
            t = r["timing"][b]
            line += (f" {_qps(t)} ({_qps(t, 'raw')}) | {t['ours']['p50_ms']:.2f}/{t['ours']['p95_ms']:.2f} | "
                     f"{_ratio(t['ratio'])} |")
        lines.append(line)
    notes = []
    for r in ds["rows"]:
        if r["kind"] == "jpq":
            notes.append(f"- {r['label']}: {r['spec']}, trained in this run for {r['jpq']['train_steps']} steps on "
                         "the train split; its build time includes that training, and its queries are encoded by its "
                         "own fine-tuned query encoder.")
        if r["kind"] == "multivector":
            mv = r["multivector"]
            notes.append(f"- {r['label']}: MaxSim over {mv['token_vectors_per_doc']:.0f} stored token vectors per "
                         f"document and {mv['query_tokens_per_query']:.1f} per query (MultiVectorEncoder, cached); "
                         "its build time is codec training and encoding, not the token encoding.")
        if r.get("timing_queries", ds["queries"]) < ds["queries"]:
            notes.append(f"- {r['label']}: speed measured on the first {r['timing_queries']} queries (batches cap at "
                         "that number), quality on all.")
    return [*lines, *(["", *notes] if notes else []), ""]


def _vector_section(ds: dict[str, Any], batches: list[str], hh: str, image_dir: str) -> list[str]:
    head = "| index | params | R@1 | R@10 | bytes/vector (memory) | build s |"
    sep = "|---|---|---|---|---|---|"
    for b in batches:
        head += f" QPS b={b} (raw) | ours/raw b={b} |"
        sep += "---|---|"
    lines = [
        f"{hh} Vectors: {ds['name']} ({ds['count']} x {ds['dim']}-d, {ds['metric']}, {ds['num_queries']} queries)",
        "",
        f"Recall against the exact neighbours over all {ds['num_queries']} queries; speed over the first "
        f"{ds['timing_queries']}. Ours and raw return identical labels in every row"
        + ("" if all(r["same_results_as_raw"] for r in ds["rows"]) else " **except those marked (!)**") + ".",
        "", head, sep,
    ]
    for r in ds["rows"]:
        flag = "" if r["same_results_as_raw"] else " (!)"
        line = (f"| {r['spec']}{flag} | {_params(r['search_params'])} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | "
                f"{r['memory_bytes_per_vector']:.0f} | {r['build_s']:.2f} |")
        for b in batches:
            t = r["timing"][b]
            line += f" {_qps(t)} ({_qps(t, 'raw')}) | {_ratio(t['ratio'])} |"
        lines.append(line)
    return [*lines, "", f"![recall versus QPS, {ds['name']}]({image_dir}/{recall_png(ds['name'])})", ""]


def _wrapper_summary(result: dict[str, Any], batches: list[str], hh: str) -> list[str]:
    rows = [r for ds in result["vectors"] for r in ds["rows"]]
    if not rows:
        return []
    lines = [f"{hh} Our wrapper against raw FAISS, same index, equal recall", "",
             "Lowest and median ours/raw QPS ratio over each family's sweep (1.00 = as fast as raw FAISS; "
             "0.90 = 10% slower). Ours and raw take turns batch by batch; each point's ratio is the median over "
             "the rounds. The extra time per call (one batch, median over the family's points) is, at batch 1, the "
             "wrapper's fixed cost: the readers-writer lock, input checks, one test of the scores for overflow "
             "and padding, and the result object, which weighs against a FAISS search of a few tens of µs. At "
             "batch 64 it also holds a share of a few percent that grows with the FAISS time (largest for the "
             "exhaustive scans), whose cause is not pinned down.", ""]
    head, sep = "| data set | index family | points |", "|---|---|---|"
    for b in batches:
        head += f" lowest b={b} | median b={b} | extra µs/call b={b} |"
        sep += "---|---|---|"
    lines += [head, sep]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["family"]), []).append(r)
    for (dataset, family), members in groups.items():
        line = f"| {dataset} | {family} | {len(members)} |"
        for b in batches:
            ratios = sorted(m["timing"][b]["ratio"] for m in members)
            extra = sorted(m["timing"][b].get("extra_us_per_call", float("nan")) for m in members)
            line += f" {ratios[0]:.2f} | {ratios[len(ratios) // 2]:.2f} | {extra[len(extra) // 2]:.0f} |"
        lines.append(line)
    return [*lines, ""]


def _scan_section(result: dict[str, Any], batches: list[str], hh: str) -> list[str]:
    bw = result["bandwidth"]["read_bytes_per_s"]
    rows = [r for ds in result["text"] for r in ds["rows"]] + [r for ds in result["vectors"] for r in ds["rows"]]
    rows = [r for r in rows if r.get("scan_bytes_per_query")]
    if not rows:
        return []
    lines = [
        f"{hh} Exhaustive scans against the memory bandwidth", "",
        "An exhaustive scan reads every stored code for each query, so its logical scan rate is bytes per query x "
        f"queries per second; the share is that rate over the measured {_gb(bw)} GB/s. Above 100% the data is "
        "served from CPU caches (the database fits in L2/L3) or reused across a batch (BLAS blocks the queries), "
        "so the scan is compute-bound rather than memory-bound.", "",
    ]
    head, sep = "| data set | index | MB scanned per query |", "|---|---|---|"
    for b in batches:
        head += f" GB/s b={b} | share b={b} |"
        sep += "---|---|"
    lines += [head, sep]
    for r in rows:
        name = r.get("label") or f"{r['spec']} {_params(r['search_params'])}".replace(" -", "")
        line = f"| {r['dataset']} | {name} | {r['scan_bytes_per_query'] / 1e6:.2f} |"
        for b in batches:
            rate = r["scan_bytes_per_query"] * r["timing"][b]["ours"]["qps"]
            line += f" {_gb(rate)} | {100 * rate / bw:.0f}% |"
        lines.append(line)
    return [*lines, ""]


# ---------------------------------------------------------------------------- plots
def save_plots(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``quality_vs_bytes.png`` and one ``recall_vs_qps_<data set>.png`` per vector data set."""
    from retrieval._optional import require

    matplotlib = require("matplotlib", extra="bench", feature="densezip bench plots")
    matplotlib.use("Agg", force=True)  # files only, never a window
    plt = require("matplotlib.pyplot", extra="bench", feature="densezip bench plots")
    written: list[Path] = []
    panels = [(ds["name"], "nDCG@10", [(r["label"], r["memory_bytes_per_doc"], r["nDCG@10"]) for r in ds["rows"]])
              for ds in result["text"]]
    panels += [(ds["name"], "recall@10", [(f"{r['spec']} {_params(r['search_params'])}".replace(" -", ""),
                                           r["memory_bytes_per_vector"], r["recall@10"]) for r in ds["rows"]])
               for ds in result["vectors"]]
    if panels:
        ncols = min(2, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.8 * nrows), squeeze=False)
        fig.subplots_adjust(left=0.08, right=0.97, bottom=0.08, top=0.95, wspace=0.25, hspace=0.35)  # tight_layout costs seconds
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (name, metric, points) in zip(axes.flat, panels, strict=False):
            for label, x, y in points:
                ax.scatter(x, y, s=25)
                ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("bytes per document in memory (log)")
            ax.set_ylabel(metric)
            ax.set_title(name)
            ax.grid(True, alpha=0.3)
        written.append(_save(fig, out_dir / QUALITY_PNG, plt))
    batches = [str(b) for b in result["config"]["batch_sizes"]]
    for ds in result["vectors"]:
        fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.25)
        for ax, b in zip(axes[0], batches, strict=True):
            for i, (family, members) in enumerate(_families(ds["rows"])):
                color = f"C{i % 10}"
                pts = sorted(members, key=lambda r: r["recall@10"])
                xs = [r["recall@10"] for r in pts]
                ax.plot(xs, [r["timing"][b]["ours"]["qps"] for r in pts], "o-", color=color, label=f"{family} (ours)")
                ax.plot(xs, [r["timing"][b]["raw"]["qps"] for r in pts], "x--", color=color, alpha=0.6,
                        label=f"{family} (raw FAISS)")
            ax.set_yscale("log")
            ax.set_xlabel("recall@10")
            ax.set_ylabel("queries per second (log)")
            ax.set_title(f"{ds['name']}, batch {b}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        written.append(_save(fig, out_dir / recall_png(ds["name"]), plt))
    return written


def _families(rows: Iterable[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["family"], []).append(r)
    return list(groups.items())


def _save(fig: Any, path: Path, plt: Any) -> Path:
    # No library version in the PNG metadata: a regenerated plot changes only when its data do.
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- documents
def check_markers(doc: str | os.PathLike[str]) -> tuple[str, str]:
    """The text of ``doc`` before :data:`BEGIN_MARKER` and after :data:`END_MARKER`.

    Raises
    ------
    ConfigError
        If the file is missing or lacks exactly one pair of markers, in that order.
    """
    path = Path(doc)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path} to update it: {exc}") from exc
    if text.count(BEGIN_MARKER) != 1 or text.count(END_MARKER) != 1 or text.index(BEGIN_MARKER) > text.index(END_MARKER):
        raise ConfigError(f"{path} must hold exactly one {BEGIN_MARKER!r} line followed by one {END_MARKER!r} line; "
                          "add them where the generated section belongs.")
    head, rest = text.split(BEGIN_MARKER, 1)
    return head, rest.split(END_MARKER, 1)[1]


def splice_markdown(doc: str | os.PathLike[str], markdown: str) -> Path:
    r"""Replace the text between :data:`BEGIN_MARKER` and :data:`END_MARKER` in ``doc`` by ``markdown``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     doc = Path(tmp) / "doc.md"
    ...     _ = doc.write_text(f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\nrest\n")
    ...     _ = splice_markdown(doc, "new")
    ...     doc.read_text().splitlines()
    ['intro', '<!-- densezip bench: begin -->', 'new', '<!-- densezip bench: end -->', 'rest']
    """
    head, tail = check_markers(doc)
    path = Path(doc)
    path.write_text(f"{head}{BEGIN_MARKER}\n{markdown.rstrip()}\n{END_MARKER}{tail}", encoding="utf-8")
    return path

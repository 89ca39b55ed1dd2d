"""Score a run against relevance judgments with ir-measures (pytrec_eval underneath).

A *run* is the BEIR / pytrec_eval dict ``{query_id: {doc_id: score}}`` (higher is
better), as returned by ``SearchResult.to_trec_dict()``; *qrels* are
``{query_id: {doc_id: grade}}`` as in ``BEIRDataset.qrels``.

Conventions, fixed here so numbers are comparable:

- The mean is over **all judged queries**: a query in ``qrels`` with no results in the
  run scores 0 on every metric. Run queries without judgments are ignored.
- **Ties** in score are broken by document id, descending, for every metric. That is
  trec_eval's rule, so nDCG matches BEIR's pytrec_eval numbers; it is imposed here
  because ir-measures computes ``RR@10`` with a different backend (its ``msmarco``
  provider) that breaks ties the other way, which would rank the same run in two
  different orders within one report.
- A retrieved document whose id equals the query id is **kept** unless
  ``ignore_identical_ids=True``. BEIR's ``EvaluateRetrieval.evaluate`` and MTEB drop them
  by default (meant for ArguAna and Quora, where the query is itself a corpus document);
  on data sets where query and document ids merely share a numbering (Cranfield) that
  rule silently removes real hits.

References
----------
MacAvaney, Macdonald and Ounis, "Streamlining Evaluation with ir-measures", ECIR 2022.
Van Gysel and de Rijke, "Pytrec_eval: An Extremely Fast Python Interface to trec_eval",
SIGIR 2018.
"""

from __future__ import annotations

import math
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

from retrieval.errors import ConfigError, DataError, MissingDependencyError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["DEFAULT_METRICS", "UnjudgedRunWarning", "evaluate", "evaluate_per_query"]

DEFAULT_METRICS: tuple[str, ...] = ("nDCG@10", "MRR@10", "Recall@100")

# Spellings common in BEIR / MTEB / papers -> ir-measures names. Anything else goes to
# ir_measures.parse_measure unchanged; the caller's spelling is always the result key.
_ALIASES: dict[str, str] = {
    "mrr": "RR",
    "ndcg": "nDCG",
    "recall": "R",
    "map": "AP",
    "precision": "P",
}

_EXAMPLES = (
    "'nDCG@10', 'MRR@10', 'Recall@100', 'P@10', 'AP', 'AP@100', 'RR', 'Success@5', 'Judged@10'"
)


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = False,
) -> dict[str, float]:
    """Mean of each metric over all judged queries.

    Parameters
    ----------
    run : mapping of str to mapping of str to float
        ``{query_id: {doc_id: score}}``, higher score = better rank. Only the order of the
        scores matters; ties are broken by doc id, descending (trec_eval's rule).
    qrels : mapping of str to mapping of str to int
        ``{query_id: {doc_id: grade}}``. Grades above 0 are relevant for binary metrics;
        nDCG uses the grade as gain (pytrec_eval, as in BEIR).
    metrics : sequence of str, default ("nDCG@10", "MRR@10", "Recall@100")
        Metric names. ``"MRR@10"`` means ir-measures ``RR@10`` and ``"Recall@100"`` means
        ``R@100``; any name ``ir_measures.parse_measure`` understands is accepted too, and
        the measure name is matched case-insensitively (``"ndcg@10"``). A single string is
        treated as one metric.
    ignore_identical_ids : bool, default False
        Drop a retrieved document whose id equals the query id before scoring, as BEIR
        and MTEB do by default. Off here, see the module docstring.

    Returns
    -------
    dict of str to float
        ``{name: value}`` with the names exactly as passed in ``metrics``.

    Raises
    ------
    DataError
        If ``qrels`` is empty or malformed.
    ConfigError
        If a metric is unknown or unsupported, or a run score is not a finite number.
    MissingDependencyError
        If ir-measures is not installed.

    Notes
    -----
    ir-measures (0.3 and later) already reports a judged query that is absent from the
    run with the metric's default value, 0, so its mean runs over all judged queries
    (trec_eval's ``-c``). This function does not rely on that: it fills any missing
    (query, metric) value with 0 itself, then aggregates with each measure's own
    aggregator (the mean for every ranking metric).

    Examples
    --------
    >>> qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    >>> run = {"q1": {"d1": 0.9, "d3": 0.1}, "q2": {"d3": 0.9, "d2": 0.5}}
    >>> evaluate(run, qrels, ["MRR@10", "Recall@100"])
    {'MRR@10': 0.75, 'Recall@100': 1.0}
    >>> evaluate({"q1": {"d1": 1.0}}, qrels, ["MRR@10"])  # q2 missing: counts as 0
    {'MRR@10': 0.5}
    """
    names = _metric_names(metrics)
    irm = _ir_measures()
    measures = {name: _parse_metric(name, irm) for name in names}
    per_query = _per_query_by_measure(
        run, qrels, list(dict.fromkeys(measures.values())), irm, ignore_identical_ids
    )
    _warn_if_unjudged(run, qrels)  # after the checks above: a malformed run or qrels is an error first
    result: dict[str, float] = {}
    for name, measure in measures.items():
        agg = measure.aggregator()
        for values in per_query.values():
            agg.add(values[measure])
        result[name] = float(agg.result())
    return result


def evaluate_per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = False,
) -> dict[str, dict[str, float]]:
    """Each metric for each judged query.

    Parameters and conventions are those of :func:`evaluate`.

    Returns
    -------
    dict of str to dict of str to float
        ``{query_id: {name: value}}`` for every query in ``qrels`` that has judgments, in
        ``qrels`` order; queries missing from the run get 0 for every metric.

    Examples
    --------
    >>> evaluate_per_query({"q1": {"d2": 2.0, "d1": 1.0}}, {"q1": {"d1": 1}}, ["MRR@10"])
    {'q1': {'MRR@10': 0.5}}
    """
    names = _metric_names(metrics)
    irm = _ir_measures()
    measures = {name: _parse_metric(name, irm) for name in names}
    per_query = _per_query_by_measure(
        run, qrels, list(dict.fromkeys(measures.values())), irm, ignore_identical_ids
    )
    _warn_if_unjudged(run, qrels)  # after the checks above: a malformed run or qrels is an error first
    return {
        qid: {name: values[measure] for name, measure in measures.items()}
        for qid, values in per_query.items()
    }


# --------------------------------------------------------------------------- internals


class UnjudgedRunWarning(UserWarning):
    """No document of the run is judged in the qrels: every metric is 0 for a likely wrong reason."""


def _warn_if_unjudged(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Warn when the run retrieves documents but none of them is judged anywhere in ``qrels``.

    Zeros for every metric then say nothing about the retriever: the index and the qrels
    almost surely belong to different data sets (or their ids differ, e.g. in whitespace).
    """
    if not isinstance(run, Mapping) or not isinstance(qrels, Mapping):
        return  # malformed input: the checks below report it
    retrieved = {str(d) for docs in run.values() if isinstance(docs, Mapping) for d in docs}  # ids compare as str
    if not retrieved:
        return
    judged = {str(d) for docs in qrels.values() if isinstance(docs, Mapping) for d in docs}
    if retrieved.isdisjoint(judged):
        example = next(iter(retrieved))
        warnings.warn(
            f"none of the {len(retrieved)} documents in the run is judged in the qrels (e.g. run document "
            f"{example!r:.60} is in no judgment): every metric will be 0. The index and the qrels likely "
            "belong to different data sets, or their ids are written differently.",
            UnjudgedRunWarning, stacklevel=3,
        )



def _ir_measures() -> ModuleType:
    # Imported here, not at module level, so ``import retrieval`` stays cheap. ir-measures
    # and pytrec-eval-terrier are core dependencies, so there is no extra to name.
    try:
        import ir_measures
    except ImportError as exc:
        raise MissingDependencyError(
            f"retrieval.evaluate needs the package 'ir-measures', which is not importable ({exc}). "
            "It is a core dependency of densezip; install it with:  "
            "pip install 'ir-measures>=0.3.1' pytrec-eval-terrier"
        ) from exc
    return ir_measures


def _metric_names(metrics: Sequence[str] | str) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    try:
        names = list(metrics)
    except TypeError:
        raise ConfigError(
            f"metrics must be a sequence of metric names such as ['nDCG@10']; got {metrics!r}."
        ) from None
    if not names:
        raise ConfigError(
            f"metrics is empty; pass at least one name, e.g. {list(DEFAULT_METRICS)}."
        )
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"metric names must be strings such as 'nDCG@10'; got {name!r}.")
    return list(dict.fromkeys(names))


def _parse_metric(name: str, irm: ModuleType) -> Any:
    """Turn a caller's metric name into an ir-measures ``Measure`` or raise ConfigError."""
    text = name.strip()
    # Case-insensitive match of the measure name (the part before "@" or "(").
    cut = min((i for i in (text.find("@"), text.find("(")) if i >= 0), default=len(text))
    head, tail = text[:cut].strip(), text[cut:]
    canonical = {key.lower(): key for key in irm.measures.registry}
    head = _ALIASES.get(head.lower(), canonical.get(head.lower(), head))
    try:
        measure = irm.parse_measure(head + tail)
    except (NameError, ValueError, TypeError, AssertionError, SyntaxError) as exc:
        raise ConfigError(_unknown_metric_message(name, irm, str(exc))) from None
    cutoff = measure.params.get("cutoff")
    # pytrec_eval crashes the interpreter (segfault) on a zero cutoff, so check first.
    if isinstance(cutoff, int) and cutoff < 1:
        raise ConfigError(
            f"metric {name!r} has cutoff {cutoff}; the cutoff after '@' must be >= 1."
        )
    try:
        supported = irm.DefaultPipeline.supports(measure)
    except (AssertionError, ValueError, TypeError) as exc:
        raise ConfigError(_unknown_metric_message(name, irm, str(exc))) from None
    if not supported:
        raise ConfigError(
            _unknown_metric_message(
                name,
                irm,
                f"no installed ir-measures backend computes {measure}; it may need an "
                "extra package (see https://ir-measur.es)",
            )
        )
    return measure


def _unknown_metric_message(name: str, irm: ModuleType, reason: str) -> str:
    known = ", ".join(sorted(set(irm.measures.registry) | {"MRR", "Recall"}, key=str.lower))
    return (
        f"unknown or unsupported metric {name!r} ({reason}). Use a name such as {_EXAMPLES}; "
        f"'MRR@k' means RR@k and 'Recall@k' means R@k. Measure names known to ir-measures: "
        f"{known}."
    )


def _check_qrels(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    if not isinstance(qrels, Mapping):
        raise DataError(
            f"qrels must be a dict {{query_id: {{doc_id: grade}}}}; got {type(qrels).__name__}."
        )
    clean: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():
        if not isinstance(judged, Mapping):
            raise DataError(
                f"qrels[{qid!r}] must be a dict {{doc_id: grade}}; got {type(judged).__name__}."
            )
        row: dict[str, int] = {}
        for doc_id, grade in judged.items():
            if isinstance(grade, bool) or not isinstance(grade, Integral):
                raise DataError(
                    f"qrels[{qid!r}][{doc_id!r}] must be an integer relevance grade; got {grade!r}."
                )
            row[str(doc_id)] = int(grade)
        if row:  # a query with no judgment rows is not a judged query
            clean[str(qid)] = row
    if not clean:
        raise DataError(
            "qrels is empty: evaluation needs at least one judged query, "
            "e.g. {'q1': {'d1': 1}}. Did you load the right split?"
        )
    return clean


def _prepare_run(
    run: Mapping[str, Mapping[str, float]],
    judged: Mapping[str, Any],
    ignore_identical_ids: bool,
) -> dict[str, dict[str, float]]:
    """Keep judged queries, validate scores, and replace scores by strictly decreasing ranks."""
    if not isinstance(run, Mapping):
        raise ConfigError(
            f"run must be a dict {{query_id: {{doc_id: score}}}}; got {type(run).__name__}."
        )
    clean: dict[str, dict[str, float]] = {}
    for raw_qid, hits in run.items():
        qid = str(raw_qid)
        if qid not in judged:
            continue
        if not isinstance(hits, Mapping):
            raise ConfigError(
                f"run[{raw_qid!r}] must be a dict {{doc_id: score}}; got {type(hits).__name__}."
            )
        scored: list[tuple[float, str]] = []
        for raw_doc, score in hits.items():
            doc_id = str(raw_doc)
            if ignore_identical_ids and doc_id == qid:
                continue
            if isinstance(score, bool) or not isinstance(score, Real) or not math.isfinite(score):
                raise ConfigError(
                    f"run[{raw_qid!r}][{raw_doc!r}] must be a finite number; got {score!r}. "
                    "Check the index or encoder output for NaN / inf."
                )
            scored.append((float(score), doc_id))
        if not scored:
            continue  # empty rankings trip some ir-measures backends; missing = 0 anyway
        scored.sort(reverse=True)  # score desc, then doc id desc: trec_eval's tie rule
        n = len(scored)
        clean[qid] = {doc_id: float(n - rank) for rank, (_, doc_id) in enumerate(scored)}
    return clean


def _per_query_by_measure(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: list[Any],
    irm: ModuleType,
    ignore_identical_ids: bool,
) -> dict[str, dict[Any, float]]:
    clean_qrels = _check_qrels(qrels)
    clean_run = _prepare_run(run, clean_qrels, ignore_identical_ids)
    try:
        evaluator = irm.evaluator(measures, clean_qrels)
    except ValueError as exc:  # "Unsupported measures ..." when a backend is missing
        raise ConfigError(f"cannot compute {[str(m) for m in measures]}: {exc}") from None
    per_query: dict[str, dict[Any, float]] = {qid: {} for qid in clean_qrels}
    try:
        for metric in evaluator.iter_calc(clean_run):
            values = per_query.get(metric.query_id)
            if values is not None:
                values[metric.measure] = float(metric.value)
    except subprocess.CalledProcessError as exc:
        # ir-measures hands ERR@k and exponential-gain nDCG to gdeval.pl, a perl script
        # that rejects non-numeric query ids.
        raise ConfigError(
            f"an external ir-measures backend failed while computing {[str(m) for m in measures]} "
            f"({exc}). ERR@k and nDCG(dcg='exp-log2')@k run through gdeval.pl, which accepts "
            "numeric query ids only; use the default linear-gain nDCG@k or numeric ids."
        ) from exc
    for values in per_query.values():
        for measure in measures:
            values.setdefault(measure, 0.0)  # judged but not retrieved: counts as 0
    return per_query

"""Scoring runs against relevance judgements, through ir-measures.

Measures are ir-measures names (``"nDCG@10"``, ``"RR(rel=2)@10"``, ``"R@100"``). Every query
that has judgements counts: a query the run misses (or returns nothing for) scores 0 instead of
vanishing from the average. For graded collections such as TREC DL 2019, nDCG uses the graded
labels and binary measures take a threshold, e.g. ``RR(rel=2)@10``.

Runs are scored by their scores, as trec_eval does (ties broken by ir-measures).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from llamaindex_rerankers._imports import require

#: A run in either form: query -> [(doc, score), ...] or query -> {doc: score}.
RunLike = Mapping[str, Sequence[tuple[str, float]] | Mapping[str, float]]
QrelsLike = Mapping[str, Mapping[str, int]]

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10",)


def per_query(
    qrels: QrelsLike,
    run: RunLike,
    measures: Iterable[str] = DEFAULT_MEASURES,
    query_ids: Collection[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Score each judged query: ``{query id: {measure: value}}``.

    Args:
        qrels: query -> doc -> label.
        run: query -> ranked ``[(doc, score), ...]`` or ``{doc: score}``.
        measures: ir-measures names.
        query_ids: score only these queries (e.g. the slice a benchmark ran); default: every
            query in ``qrels``. A listed query without judgements raises ``ValueError``.

    Example:
        >>> per_query({"q": {"a": 1}}, {"q": [("b", 2.0), ("a", 1.0)]}, ["RR@10"])
        {'q': {'RR@10': 0.5}}
    """
    ir = require("ir_measures")
    names = list(dict.fromkeys(measures))
    parsed = {name: ir.parse_measure(name) for name in names}
    qids = _judged_ids(qrels, query_ids)
    sub_qrels = {q: {d: int(r) for d, r in qrels[q].items()} for q in qids}
    sub_run = {q: _as_scores(run[q]) for q in qids if q in run and len(run[q]) > 0}
    # Every judged query starts at 0: one the run misses (or returns nothing for) keeps it.
    out = {q: dict.fromkeys(names, 0.0) for q in qids}
    by_measure = {m: name for name, m in parsed.items()}
    if sub_run:
        for metric in ir.iter_calc(list(parsed.values()), sub_qrels, sub_run):
            name = by_measure.get(metric.measure, str(metric.measure))
            out[metric.query_id][name] = float(metric.value)
    return out


def evaluate(
    qrels: QrelsLike,
    run: RunLike,
    measures: Iterable[str] = DEFAULT_MEASURES,
    query_ids: Collection[str] | None = None,
) -> dict[str, float]:
    """Mean of each measure over the judged queries (missing queries count as 0).

    Args: as :func:`per_query`.

    Returns:
        ``{measure: mean}``; 0.0 for every measure when no query is scored.

    Example:
        >>> evaluate({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": [("a", 1.0)]}, ["nDCG@10"])
        {'nDCG@10': 0.5}
    """
    names = list(dict.fromkeys(measures))
    scores = per_query(qrels, run, names, query_ids)
    if not scores:
        return dict.fromkeys(names, 0.0)
    return {name: sum(s[name] for s in scores.values()) / len(scores) for name in names}


def _judged_ids(qrels: QrelsLike, query_ids: Collection[str] | None) -> list[str]:
    if query_ids is None:
        return list(qrels)
    unknown = [q for q in query_ids if q not in qrels]
    if unknown:
        raise ValueError(
            f"{len(unknown)} query ids have no judgements (e.g. {unknown[:3]}); score only "
            "queries that appear in the qrels."
        )
    return list(dict.fromkeys(query_ids))


def _as_scores(ranked: Any) -> dict[str, float]:
    if isinstance(ranked, Mapping):
        return {str(d): float(s) for d, s in ranked.items()}
    scores: dict[str, float] = {}
    for doc, score in ranked:
        scores.setdefault(str(doc), float(score))  # a repeated doc keeps its best (first) entry
    return scores

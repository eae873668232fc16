"""Evaluation: load test collections and runs (:mod:`.data`), score runs (:mod:`.metrics`).

Loading, running and scoring are separate steps so that every reranker is compared on the same
candidates. Importing this package stays light; ir-measures loads when a run is first scored.

Example:
    >>> from llamaindex_rerankers.evaluation import candidates, evaluate, load_beir, load_trec_run
    >>> ds = load_beir("../shared/data/scifact")  # doctest: +SKIP
    >>> bm25 = load_trec_run("../shared/data/scifact/runs/bm25_top100.trec")  # doctest: +SKIP
    >>> evaluate(ds.qrels, bm25, ["nDCG@10"])  # doctest: +SKIP
    {'nDCG@10': 0.6789...}
"""

from __future__ import annotations

from llamaindex_rerankers.evaluation.data import (
    Dataset,
    DatasetError,
    Doc,
    Qrels,
    Run,
    candidates,
    load_beir,
    load_qrels,
    load_trec_run,
)
from llamaindex_rerankers.evaluation.metrics import evaluate, per_query

__all__ = [
    "Dataset",
    "DatasetError",
    "Doc",
    "Qrels",
    "Run",
    "candidates",
    "evaluate",
    "load_beir",
    "load_qrels",
    "load_trec_run",
    "per_query",
]

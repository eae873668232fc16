"""``llamaindex-rerankers eval``: run rerankers side by side on a BEIR dataset and report.

Load (:mod:`llamaindex_rerankers.evaluation.data`) → run
(:mod:`~llamaindex_rerankers.evaluation.harness`) → score
(:mod:`~llamaindex_rerankers.evaluation.metrics`) → a Markdown table on
stdout, JSON with per-query and aggregate figures (``--output``), and a plot of nDCG@10 and
latency against K (``--plot``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.postprocessor.types import BaseNodePostprocessor

from llamaindex_rerankers._imports import require
from llamaindex_rerankers.base import check_weight
from llamaindex_rerankers.cli.llm_options import DEFAULT_N_CTX, add_llm_arguments, llm_endpoint
from llamaindex_rerankers.cli.parser import add_remote_arguments, positive_int, remote_arguments
from llamaindex_rerankers.cross_encoder import CROSS_ENCODER_ENV
from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint
from llamaindex_rerankers.evaluation.data import DatasetError, load_beir, load_trec_run
from llamaindex_rerankers.evaluation.harness import (
    ChromaStage,
    FirstStage,
    RunFileStage,
    ScoredRun,
    markdown_table,
    plot_against_k,
    run_rerankers,
    score_runs,
)
from llamaindex_rerankers.registry import (
    ALL_NAMES,
    ANCHOR_N_CTX,
    ANCHOR_NAMES,
    LLM_ANCHORS,
    LLM_RERANKERS,
    cascade_keep_default,
    make_anchor,
    make_reranker,
    needs_llm,
    reranker_options,
)

#: Names ``--reranker`` accepts: ours, then LlamaIndex's (the anchors).
EVAL_RERANKER_NAMES: tuple[str, ...] = ALL_NAMES


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to a (sub)parser."""
    parser.add_argument("--dataset", required=True, help="BEIR-layout folder (corpus.jsonl ...)")
    parser.add_argument("--split", default="test", help="qrels split (default: %(default)s)")
    parser.add_argument(
        "--first-stage",
        choices=("bm25-run", "chroma"),
        default="bm25-run",
        help="bm25-run: the dataset's runs/bm25_top100.trec (or --run-file); chroma: dense "
        "retrieval through our Chroma pipeline (index built once in --persist-dir) "
        "(default: %(default)s)",
    )
    parser.add_argument("--run-file", help="TREC run for --first-stage bm25-run")
    parser.add_argument(
        "--persist-dir",
        help="Chroma folder for --first-stage chroma (default: .cache/eval-chroma/<dataset>)",
    )
    parser.add_argument(
        "--top-k",
        default="20",
        help="candidates per query; a comma list (e.g. 10,20,50) runs each K (for --plot) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--top-n",
        type=positive_int,
        default=10,
        help="nodes each reranker returns, at most the largest K (default: %(default)s)",
    )
    parser.add_argument(
        "--reranker",
        default="none,cross-encoder",
        help=f"comma list of: {', '.join(EVAL_RERANKER_NAMES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--queries",
        type=positive_int,
        metavar="N",
        help="only the first N queries (default: all of the split's)",
    )
    parser.add_argument(
        "--output",
        help="write results JSON here: every figure, per query too (the table shows the main ones)",
    )
    parser.add_argument("--plot", help="write a PNG of nDCG@10 and latency against K")
    _add_reranker_settings(parser)
    add_remote_arguments(parser)
    add_llm_arguments(parser)


def _add_reranker_settings(parser: argparse.ArgumentParser) -> None:
    """The settings of the rerankers under evaluation (models, cascade, LLM judge, cache)."""
    parser.add_argument(
        "--cross-encoder-model",
        help="cross-encoder for cross-encoder, "
        "cascade and sbert (default: the library default / "
        f"${CROSS_ENCODER_ENV})",
    )
    parser.add_argument(
        "--cascade-keep",
        type=positive_int,
        default=cascade_keep_default(),
        help="candidates the cascade's LLM stage sees (default %(default)s: under a third of K=20)",
    )
    parser.add_argument(
        "--cascade-weight",
        default="auto",
        help="weight of the cross-encoder's score in the cascade's final score: a number in "
        "[0, 1] (0: the LLM alone orders the survivors) or auto (default: chosen per query from "
        "the LLM's uncertainty)",
    )
    parser.add_argument(
        "--llm-weight",
        default=None,
        metavar="W",
        help="the LLM reranker's retrieval_weight: a number in [0, 1] or auto (default: the "
        "reranker's own default, auto)",
    )
    parser.add_argument(
        "--llm-calibration",
        choices=("none", "content-free"),
        default=None,
        help="the LLM reranker's calibration (default: the reranker's own, content-free)",
    )
    parser.add_argument(
        "--llm-cache",
        metavar="SPEC",
        help="SQLite file (or redis://HOST:PORT/DB[?ttl=SECONDS], shared by machines) caching "
        "the LLM reranker's judgements (llm and cascade), shared between them and kept across "
        "runs: a rerun, or the cascade after llm, asks the LLM only what it has not judged "
        "yet. Rows with cache hits have meaningless latencies.",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _build(name: str, args: argparse.Namespace, endpoint: LLMEndpoint | None) -> Any:
    options = reranker_options(
        name,
        cross_encoder_model=args.cross_encoder_model,
        endpoint=endpoint,
        **remote_arguments(args),
    )
    if name in LLM_RERANKERS and args.llm_cache:  # our LLM judge's cache; the anchors have none
        options["cache"] = args.llm_cache
    if name in LLM_RERANKERS:
        if args.llm_calibration is not None:
            options["calibration"] = args.llm_calibration
        if args.llm_weight is not None and name == "llm":
            options["retrieval_weight"] = args.llm_weight
    if name == "cascade":
        options["keep"] = args.cascade_keep
        options["stage1_weight"] = args.cascade_weight
    make = make_anchor if name in ANCHOR_NAMES else make_reranker
    return make(name, top_n=args.top_n, **options)


def _first_stage(args: argparse.Namespace, dataset: Any) -> FirstStage:
    if args.first_stage == "chroma":
        persist = args.persist_dir or str(Path(".cache") / "eval-chroma" / dataset.name)
        return ChromaStage(dataset, persist, show_progress=not args.no_progress)
    run_file = args.run_file or str(Path(args.dataset) / "runs" / "bm25_top100.trec")
    return RunFileStage(dataset, load_trec_run(run_file))


def run_eval_command(args: argparse.Namespace) -> int:
    """Execute ``eval``; returns the exit code. Bad input raises ``ValueError``/``DatasetError``."""
    names = [n.strip() for n in args.reranker.split(",") if n.strip()]
    for name in names:  # before any endpoint starts; make_reranker knows only ours
        if name not in EVAL_RERANKER_NAMES:
            known = ", ".join(EVAL_RERANKER_NAMES)
            raise ValueError(f"--reranker: unknown reranker {name!r}; choose one of: {known}")
    try:
        ks = sorted({int(k) for k in str(args.top_k).split(",") if k.strip()})
    except ValueError:
        raise ValueError(
            f"--top-k takes integers, e.g. 20 or 10,20,50; got {args.top_k!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise ValueError("--top-k must be at least 1")
    if args.top_n < 1 or args.top_n > max(ks):
        raise ValueError(f"--top-n must be between 1 and the largest --top-k ({max(ks)})")
    for flag, value in (
        ("--cascade-weight", args.cascade_weight),
        ("--llm-weight", args.llm_weight),
    ):
        if value is not None:
            check_weight(flag, value)
    # The [eval] extra before any work: scoring and plotting come after all the reranking.
    require("ir_measures")
    if args.plot:
        require("matplotlib")
    dataset = load_beir(args.dataset, args.split)
    qids = dataset.query_ids(args.queries)
    stage = _first_stage(args, dataset)
    scored: list[ScoredRun] = []
    n_ctx = ANCHOR_N_CTX if LLM_ANCHORS.intersection(names) else DEFAULT_N_CTX
    needed = any(needs_llm(n) for n in names)
    with llm_endpoint(args, needed=needed, n_ctx=n_ctx) as endpoint:
        rerankers: dict[str, BaseNodePostprocessor | None] = {
            n: _build(n, args, endpoint) for n in names
        }
        for k in ks:
            runs = run_rerankers(
                dataset,
                stage,
                rerankers,
                top_k=k,
                top_n=min(args.top_n, k),
                query_ids=qids,
                show_progress=not args.no_progress,
                progress_desc=f"{dataset.name} {stage.name} K={k}",
            )
            scored.extend(score_runs(dataset, runs))
    rows = [s.row() for s in scored]
    print(f"\n{dataset.name} ({args.split}, {len(qids)} queries), first stage {stage.name}\n")
    print(markdown_table(rows, table_columns(rows)))
    if args.output:
        _write_json(Path(args.output), args, dataset.name, len(qids), stage.name, scored)
        print(f"\nresults: {args.output}")
    if args.plot:
        print(f"plot: {plot_against_k(scored, args.plot)}")
    return 0


#: Counters the table shows when some row has one that is not 0 (the JSON has them all).
_NOTABLE = ("total_dropped", "total_errors", "total_failures", "total_calls", "total_ce_truncated")


def table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns ``eval`` prints: what was run, the measures, the latency, and those
    counters of :data:`_NOTABLE` that are not 0 in some row; every figure is in ``--output``.

    Example:
        >>> table_columns([{"reranker": "none", "top_k": 20, "top_n": 10, "queries": 5,
        ...                 "nDCG@10": 0.5, "latency_median_s": 0.0, "latency_p95_s": 0.0,
        ...                 "load_s": None, "total_dropped": 0}])
        ['reranker', 'top_k', 'top_n', 'nDCG@10', 'latency_median_s', 'latency_p95_s']
    """
    keys = list(dict.fromkeys(k for r in rows for k in r))
    latency = ["latency_median_s", "latency_p95_s"]
    measures = keys[keys.index("queries") + 1 : keys.index(latency[0])] if rows else []
    notable = [c for c in _NOTABLE if any(r.get(c) for r in rows)]
    return ["reranker", "top_k", "top_n", *measures, *latency, *notable]


def _write_json(
    path: Path,
    args: argparse.Namespace,
    dataset: str,
    n_queries: int,
    stage: str,
    scored: Sequence[ScoredRun],
) -> None:
    from llamaindex_rerankers.cross_encoder import default_cross_encoder

    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "llamaindex-rerankers " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "dataset": dataset,
        "split": args.split,
        "queries": n_queries,
        "first_stage": stage,
        "settings": {
            "cross_encoder_model": args.cross_encoder_model or default_cross_encoder(),
            "cascade_keep": args.cascade_keep,
            "cascade_weight": args.cascade_weight,
            "llm_weight": args.llm_weight,
            "llm_calibration": args.llm_calibration,
            "llm_model": args.llm_model,
            "llm_cache": args.llm_cache,
        },
        "results": [{**s.row(), "per_query": s.per_query} for s in scored],
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


__all__ = ["ANCHOR_N_CTX", "DatasetError", "add_eval_arguments", "run_eval_command"]

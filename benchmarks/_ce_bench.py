"""What the cross-encoder benchmarks that compare two settings side by side share: their common
arguments, the model, the BM25 candidates of a dataset, the machine record, and the writing of
``results/<name>.json`` and ``.md`` (``bench_long_text.py``, ``bench_detector_cost.py``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamaindex_rerankers.cross_encoder import CROSS_ENCODER_ENV
from llamaindex_rerankers.evaluation import load_beir, load_trec_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MEASURE = "nDCG@10"


def add_arguments(p: argparse.ArgumentParser, *, queries: int) -> None:
    """--data-dir, --queries, --top-k, --threads, --model, --output-dir."""
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LLAMAINDEX_RERANKERS_DATA", str(REPO.parent / "shared" / "data")),
        help="folder with BEIR-layout datasets (default: $LLAMAINDEX_RERANKERS_DATA or "
        "../shared/data)",
    )
    p.add_argument(
        "--queries", type=int, default=queries, help=f"first N test queries (default {queries})"
    )
    p.add_argument("--top-k", type=int, default=20, help="BM25 candidates per query (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared CPU)")
    p.add_argument(
        "--model", default=None, help=f"cross-encoder path (default ${CROSS_ENCODER_ENV})"
    )
    p.add_argument("--output-dir", default=str(RESULTS), help="where to write JSON + Markdown")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.queries < 1 or args.top_k < 1 or args.threads < 1:
        p.error("--queries, --top-k and --threads must be at least 1")


def model_of(args: argparse.Namespace) -> str:
    """--model, else $LLAMAINDEX_RERANKERS_CROSS_ENCODER; exits with the fix when neither."""
    model = args.model or os.environ.get(CROSS_ENCODER_ENV)
    if not model:
        sys.exit(
            f"No cross-encoder given: pass --model PATH or set {CROSS_ENCODER_ENV}=PATH "
            "(e.g. ../shared/models/minilm-l6-ce)."
        )
    return model


def bm25_queries(args: argparse.Namespace, dataset: str) -> tuple[Any, Any, list[str]]:
    """The dataset's test split, its BM25 top-100 run, and the first ``--queries`` test queries
    that have both a run and judgements."""
    root = Path(args.data_dir).expanduser()
    ds = load_beir(root / dataset, split="test")
    bm25 = load_trec_run(root / dataset / "runs" / "bm25_top100.trec")
    qids = [q for q in ds.query_ids() if q in bm25 and q in ds.qrels][: args.queries]
    return ds, bm25, qids


def run(
    script: str,
    args: argparse.Namespace,
    measure: Callable[[Any], list[dict[str, Any]]],
    settings: list[Any],
    header: dict[str, Any],
) -> dict[str, Any]:
    """Measure every setting with torch on ``--threads`` threads; the result with its command,
    date, machine (cores, versions, load average before and after) and wall time."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = [row for setting in settings for row in measure(setting)]
    return {
        "command": " ".join([f".venv/bin/python benchmarks/{script}", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **header,
        "machine": {
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_avg_1min_start": round(load_before, 2),
            "load_avg_1min_end": round(os.getloadavg()[0], 2),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }


def write(args: argparse.Namespace, name: str, result: dict[str, Any], markdown: str) -> None:
    """``<output-dir>/<name>.json`` and ``.md``; the table is printed too."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)

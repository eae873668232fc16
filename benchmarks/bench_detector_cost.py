"""What the injection detector costs a cross-encoder call: CrossEncoderReranker with
``detect_injection`` off and on, side by side.

Both rerank the same BM25 top-K candidates of the same queries with the same model, query by
query in one process (the order alternates every query, so that load from other processes hits
both alike). For each dataset it reports the median and total seconds per call of each, their
ratio, the candidates' characters per call, the passages flagged (false alarms: these corpora
hold no attack) and nDCG@10 of both (equal unless the detector demoted a relevant passage).
``serve`` runs the detector by default (``--detect-injection``), so this is also what it adds to
a ``/v1/retrieve`` request's reranking.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_detector_cost.py [--datasets scifact,nfcorpus,trec-dl-2019]
        [--queries 30] [--top-k 20] [--threads 1]

Writes ``benchmarks/results/detector_cost.json`` and ``.md``. The model comes from ``--model``
or ``$LLAMAINDEX_RERANKERS_CROSS_ENCODER``; the data from ``--data-dir`` or
``$LLAMAINDEX_RERANKERS_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llamaindex_rerankers.cross_encoder import CROSS_ENCODER_ENV, CrossEncoderReranker
from llamaindex_rerankers.evaluation import candidates, evaluate, load_beir, load_trec_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MEASURE = "nDCG@10"
MODES = ("off", "on")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    model = args.model or os.environ.get(CROSS_ENCODER_ENV)
    if not model:
        sys.exit(
            f"No cross-encoder given: pass --model PATH or set {CROSS_ENCODER_ENV}=PATH "
            "(e.g. ../shared/models/minilm-l6-ce)."
        )
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = [_measure(model, dataset, args) for dataset in args.datasets.split(",")]
    result = {
        "command": " ".join([".venv/bin/python benchmarks/bench_detector_cost.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": model,
        "queries": args.queries,
        "top_k": args.top_k,
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
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detector_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "detector_cost.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _measure(model: str, dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.data_dir).expanduser()
    ds = load_beir(root / dataset, split="test")
    bm25 = load_trec_run(root / dataset / "runs" / "bm25_top100.trec")
    qids = [q for q in ds.query_ids() if q in bm25 and q in ds.qrels][: args.queries]
    rerankers = {
        mode: CrossEncoderReranker(model=model, device="cpu", detect_injection=mode == "on")
        for mode in MODES
    }
    warm = candidates(ds, bm25, qids[0], 4)
    for r in rerankers.values():  # load and warm up outside the measurement
        r.rerank(warm, ds.queries[qids[0]])
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    runs: dict[str, dict[str, list[tuple[str, float]]]] = {mode: {} for mode in MODES}
    chars = flagged = 0
    for i, qid in enumerate(tqdm(qids, desc=dataset)):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            nodes = candidates(ds, bm25, qid, args.top_k)
            t0 = time.perf_counter()
            result = rerankers[mode].rerank(nodes, ds.queries[qid])
            seconds[mode].append(time.perf_counter() - t0)
            k = len(result.nodes)
            runs[mode][qid] = [(n.node.node_id, float(k - j)) for j, n in enumerate(result.nodes)]
            if mode == "on":
                chars += sum(len(n.node.get_content()) for n in nodes)
                flagged += sum(
                    bool(n.node.metadata.get("rerank_injection_suspected")) for n in result.nodes
                )
    row: dict[str, Any] = {"dataset": dataset, "queries": len(qids), "candidates": args.top_k}
    for mode in MODES:
        row[mode] = {
            "median_s": round(statistics.median(seconds[mode]), 4),
            "total_s": round(sum(seconds[mode]), 2),
            "ndcg@10": round(evaluate(ds.qrels, runs[mode], [MEASURE], query_ids=qids)[MEASURE], 4),
        }
    row["ratio_median"] = round(row["on"]["median_s"] / row["off"]["median_s"], 3)
    row["chars_per_call"] = round(chars / len(qids))
    extra = sum(seconds["on"]) - sum(seconds["off"])
    row["detector_ms_per_1000_chars"] = round(1000 * extra / (chars / 1000), 2)
    row["flagged"] = flagged
    return row


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", default="scifact,nfcorpus,trec-dl-2019")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LLAMAINDEX_RERANKERS_DATA", str(REPO.parent / "shared" / "data")),
        help="folder with BEIR-layout datasets (default: $LLAMAINDEX_RERANKERS_DATA or "
        "../shared/data)",
    )
    p.add_argument("--queries", type=int, default=30, help="first N test queries (default 30)")
    p.add_argument("--top-k", type=int, default=20, help="BM25 candidates per query (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared CPU)")
    p.add_argument(
        "--model", default=None, help=f"cross-encoder path (default ${CROSS_ENCODER_ENV})"
    )
    p.add_argument("--output-dir", default=str(RESULTS), help="where to write JSON + Markdown")
    args = p.parse_args(argv)
    if args.queries < 1 or args.top_k < 1 or args.threads < 1:
        p.error("--queries, --top-k and --threads must be at least 1")
    return args


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# The injection detector's cost: CrossEncoderReranker, detect_injection off vs on",
        "",
        f"`{r['command']}`",
        "",
        f"{r['date']}; model `{Path(r['model']).name}`; BM25 top-{r['top_k']}, first "
        f"{r['queries']} test queries; {m['cores']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} thread(s); load average {m['load_avg_1min_start']} → "
        f"{m['load_avg_1min_end']}; {r['wall_seconds']} s in all.",
        "",
        "| dataset | chars per call | off: median s | on: median s | on / off | detector ms "
        "per 1,000 chars | flagged (false alarms) | nDCG@10 off | nDCG@10 on |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        off, on = row["off"], row["on"]
        lines.append(
            f"| {row['dataset']} | {row['chars_per_call']:,} | {off['median_s']:.3f} | "
            f"{on['median_s']:.3f} | {row['ratio_median']:.2f}× | "
            f"{row['detector_ms_per_1000_chars']:.2f} | {row['flagged']} | "
            f"{off['ndcg@10']:.4f} | {on['ndcg@10']:.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

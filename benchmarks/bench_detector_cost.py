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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _ce_bench import MEASURE, add_arguments, bm25_queries, check_arguments, model_of, run, write
from tqdm import tqdm

from llamaindex_rerankers.cross_encoder import CrossEncoderReranker
from llamaindex_rerankers.evaluation import candidates, evaluate
from llamaindex_rerankers.injection import SUSPECTED_KEY

MODES = ("off", "on")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    model = model_of(args)
    header = {"model": model, "queries": args.queries, "top_k": args.top_k}
    result = run(
        "bench_detector_cost.py",
        args,
        lambda dataset: [_measure(model, dataset, args)],
        args.datasets.split(","),
        header,
    )
    write(args, "detector_cost", result, _markdown(result))
    return 0


def _measure(model: str, dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    ds, bm25, qids = bm25_queries(args, dataset)
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
                flagged += sum(bool(n.node.metadata.get(SUSPECTED_KEY)) for n in result.nodes)
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
    add_arguments(p, queries=30)
    args = p.parse_args(argv)
    check_arguments(p, args)
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

"""Long passages: CrossEncoderReranker with long_text="truncate" vs long_text="windows".

Both modes rerank the same BM25 top-K candidates of the same queries with the same model, query
by query in one process (the order alternates every query, so that load from other processes
hits both alike). For each setting (dataset, max_length) it reports nDCG@10 and the cost: pairs
scored, windows, passages cut (truncate) or split (windows), and seconds in the model.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_long_text.py [--settings scifact:model,nfcorpus:model,
        scifact:128,nfcorpus:128] [--queries 50] [--top-k 20] [--overlap 0.25] [--threads 1]

or ``make bench-long-text``. ``model`` is the model's own max_length. Writes
``benchmarks/results/long_text.json`` and ``.md`` (``long_text_<tag>.*`` with ``--tag``).
The model comes from ``--model`` or ``$LLAMAINDEX_RERANKERS_CROSS_ENCODER``; the data from
``--data-dir`` or ``$LLAMAINDEX_RERANKERS_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any

from _ce_bench import MEASURE, add_arguments, bm25_queries, check_arguments, model_of, run, write
from tqdm import tqdm

from llamaindex_rerankers.cross_encoder import CrossEncoderReranker
from llamaindex_rerankers.evaluation import candidates, evaluate

MODES = ("truncate", "windows")


@dataclass
class Tally:
    """What one mode did over one setting's queries."""

    mode: str
    pairs: int = 0
    windows: int = 0
    windowed: int = 0
    truncated: int = 0
    model_seconds: float = 0.0
    run: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Truncation is counted in the table; the per-call warning would flood the progress bar.
    logging.getLogger("llamaindex_rerankers.cross_encoder").setLevel(logging.ERROR)
    model = model_of(args)
    header = {"model": model, "queries": args.queries, "top_k": args.top_k,
              "window_overlap": args.overlap}  # fmt: skip
    result = run(
        "bench_long_text.py",
        args,
        lambda setting: [_measure(model, setting[0], setting[1], args)],
        args.settings,
        header,
    )
    write(args, f"long_text_{args.tag}" if args.tag else "long_text", result, _markdown(result))
    return 0


def _measure(
    model: str, dataset: str, max_length: int | None, args: argparse.Namespace
) -> dict[str, Any]:
    ds, bm25, qids = bm25_queries(args, dataset)
    rerankers = {
        mode: CrossEncoderReranker(
            model=model,
            device="cpu",
            max_length=max_length,
            long_text=mode,
            window_overlap=args.overlap,
        )
        for mode in MODES
    }
    warm = candidates(ds, bm25, qids[0], 4)
    for r in rerankers.values():  # load and warm up outside the measurement
        r.rerank(warm, ds.queries[qids[0]])
    tallies = {mode: Tally(mode) for mode in MODES}
    length = int(rerankers["truncate"].load().max_seq_length)
    for i, qid in enumerate(tqdm(qids, desc=f"{dataset} max_length={length}")):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for mode in order:
            nodes = candidates(ds, bm25, qid, args.top_k)
            result = rerankers[mode].rerank(nodes, ds.queries[qid])
            usage = result.report.cross_encoder
            assert usage is not None
            t = tallies[mode]
            t.pairs += usage.pairs
            t.windows += usage.windows
            t.windowed += usage.windowed
            t.truncated += usage.truncated
            t.model_seconds += usage.seconds
            k = len(result.nodes)
            # Scores by rank: the evaluated order is exactly the reranker's.
            t.run[qid] = [(n.node.node_id, float(k - j)) for j, n in enumerate(result.nodes)]
    bm25_run = {q: bm25[q][: args.top_k] for q in qids}
    row: dict[str, Any] = {
        "dataset": dataset,
        "max_length": length,
        "queries": len(qids),
        "candidates": len(qids) * args.top_k,
        "bm25_ndcg@10": round(evaluate(ds.qrels, bm25_run, [MEASURE], query_ids=qids)[MEASURE], 4),
    }
    for mode, t in tallies.items():
        row[mode] = {
            "ndcg@10": round(evaluate(ds.qrels, t.run, [MEASURE], query_ids=qids)[MEASURE], 4),
            "pairs": t.pairs,
            "windows": t.windows,
            "passages_split": t.windowed,
            "passages_truncated": t.truncated,
            "model_seconds": round(t.model_seconds, 2),
        }
    return row


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--settings",
        default="scifact:model,nfcorpus:model,scifact:128,nfcorpus:128",
        help="comma-separated dataset:max_length ('model' = the model's own limit)",
    )
    add_arguments(p, queries=50)
    p.add_argument("--overlap", type=float, default=0.25, help="window_overlap of the windows mode")
    p.add_argument("--tag", default="", help="suffix of the output names: long_text_<tag>.json")
    args = p.parse_args(argv)
    check_arguments(p, args)
    settings = []
    for item in args.settings.split(","):
        dataset, _, length = item.partition(":")
        if not dataset or not (length in ("", "model") or length.isdigit()):
            p.error(f"bad setting {item!r}: use dataset:max_length, e.g. scifact:128")
        settings.append((dataset, None if length in ("", "model") else int(length)))
    args.settings = settings
    return args


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Long passages: truncate vs windows (CrossEncoderReranker)",
        "",
        f"`{r['command']}`",
        "",
        f"- date: {r['date']}; wall time {r['wall_seconds']} s",
        f"- model: `{r['model']}`; BM25 top-{r['top_k']}, first {r['queries']} test queries "
        f"per dataset; window_overlap {r['window_overlap']}",
        f"- machine: {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}; 1-min load average {m['load_avg_1min_start']} → "
        f"{m['load_avg_1min_end']} (shared machine: seconds are indicative, pairs are exact)",
        "",
        "| dataset | max_length | BM25 | truncate nDCG@10 | windows nDCG@10 | Δ | "
        "candidates cut (truncate) | distinct passages split (windows) | "
        "pairs truncate → windows | "
        "model s truncate → windows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        t, w = row["truncate"], row["windows"]
        lines.append(
            f"| {row['dataset']} | {row['max_length']} | {row['bm25_ndcg@10']:.4f} | "
            f"{t['ndcg@10']:.4f} | {w['ndcg@10']:.4f} | {w['ndcg@10'] - t['ndcg@10']:+.4f} | "
            f"{t['passages_truncated']} / {row['candidates']} | "
            f"{w['passages_split']} / {row['candidates']} | {t['pairs']} → {w['pairs']} "
            f"(×{w['pairs'] / max(t['pairs'], 1):.2f}) | "
            f"{t['model_seconds']:.1f} → {w['model_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

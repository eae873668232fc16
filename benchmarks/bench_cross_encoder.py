"""Cross-encoder speed and quality: CrossEncoderReranker vs LlamaIndex's SentenceTransformerRerank.

Both rerank the same BM25 top-K candidates of the same queries with the same model and the same
max_length, alternating query by query in one process (the order rotates every query), so that
load from other processes hits every contestant alike and the pairs/s *ratio* stays meaningful
even when absolute speed is noisy.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_cross_encoder.py [--dataset scifact] [--queries 50]
        [--top-k 100] [--precision float32,bfloat16] [--max-length 256]

or ``make bench-cross-encoder``. Writes ``benchmarks/results/cross_encoder_<dataset>.json`` and
``.md``. The model comes from ``--model`` or ``$LLAMAINDEX_RERANKERS_CROSS_ENCODER``; the data
from ``--data-dir`` or ``$LLAMAINDEX_RERANKERS_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core.schema import NodeWithScore, QueryBundle
from tqdm import tqdm

from llamaindex_rerankers.cross_encoder import CROSS_ENCODER_ENV, CrossEncoderReranker
from llamaindex_rerankers.evaluation import candidates, evaluate, load_beir, load_trec_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MEASURE = "nDCG@10"


@dataclass
class Contestant:
    """One reranker in the race and what it did."""

    name: str
    rerank: Callable[[list[NodeWithScore], str], list[NodeWithScore]]
    seconds: float = 0.0
    pairs: int = 0
    truncated: int = 0
    latencies: list[float] = field(default_factory=list)
    run: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # A benchmark script may configure logging; our per-call truncation warning would flood the
    # progress bar, so truncation is counted and reported in the table instead.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("llamaindex_rerankers.cross_encoder").setLevel(logging.ERROR)

    model = args.model or os.environ.get(CROSS_ENCODER_ENV)
    if not model:
        sys.exit(
            f"No cross-encoder given: pass --model PATH or set {CROSS_ENCODER_ENV}=PATH "
            "(e.g. ../shared/models/minilm-l6-ce)."
        )
    data_root = Path(args.data_dir).expanduser()
    ds = load_beir(data_root / args.dataset, split="test")
    bm25 = load_trec_run(data_root / args.dataset / "runs" / "bm25_top100.trec")
    qids = [q for q in ds.query_ids() if q in bm25][: args.queries]

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    contestants, max_length = _contestants(model, args)
    warm_nodes = candidates(ds, bm25, qids[0], args.top_k)
    for c in contestants:  # load models and warm up caches outside the timed loop
        c.rerank(warm_nodes[:8], ds.queries[qids[0]])

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for i, qid in enumerate(tqdm(qids, desc=f"rerank {args.dataset} top-{args.top_k}")):
        query = ds.queries[qid]
        shift = i % len(contestants)
        for c in contestants[shift:] + contestants[:shift]:
            nodes = candidates(ds, bm25, qid, args.top_k)  # fresh nodes: sbert mutates them
            t0 = time.perf_counter()
            out = c.rerank(nodes, query)
            elapsed = time.perf_counter() - t0
            c.seconds += elapsed
            c.latencies.append(elapsed)
            c.pairs += len(nodes)
            c.truncated += sum(bool(n.node.metadata.get("rerank_truncated")) for n in out)
            c.run[qid] = [(n.node.node_id, float(n.score or 0.0)) for n in out]
    wall = time.perf_counter() - started

    bm25_run = {q: bm25[q][: args.top_k] for q in qids}
    result = _result(args, model, max_length, qids, ds, bm25_run, contestants, wall, load_before)
    _print(result)
    _write(result, args.dataset, Path(args.output_dir))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="scifact", help="dataset folder under --data-dir")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LLAMAINDEX_RERANKERS_DATA", str(REPO.parent / "shared" / "data")),
        help="folder with BEIR-layout datasets (default: $LLAMAINDEX_RERANKERS_DATA or "
        "../shared/data)",
    )
    p.add_argument("--queries", type=int, default=50, help="first N test queries (default 50)")
    p.add_argument("--top-k", type=int, default=100, help="BM25 candidates per query")
    p.add_argument(
        "--precision",
        default="float32,bfloat16",
        help="comma-separated CrossEncoderReranker precisions to race (float32, bfloat16)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token limit for both rerankers (default: the model's own limit)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (both)")
    p.add_argument(
        "--model", default=None, help=f"cross-encoder path (default ${CROSS_ENCODER_ENV})"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for every contestant (default: torch's choice). On a "
        "machine shared with other jobs, 1 avoids threads waiting on each other.",
    )
    p.add_argument("--output-dir", default=str(RESULTS), help="where to write JSON + Markdown")
    args = p.parse_args(argv)
    if args.queries < 1 or args.top_k < 1 or (args.threads is not None and args.threads < 1):
        p.error("--queries, --top-k and --threads must be at least 1")
    for prec in args.precision.split(","):
        if prec not in ("float32", "bfloat16"):
            p.error(f"unknown precision {prec!r}; use float32 and/or bfloat16")
    return args


def _contestants(model: str, args: argparse.Namespace) -> tuple[list[Contestant], int]:
    from llama_index.postprocessor.sbert_rerank import SentenceTransformerRerank

    ours = [
        CrossEncoderReranker(
            model=model,
            device="cpu",
            max_length=args.max_length,
            batch_size=args.batch_size,
            precision=prec,
        )
        for prec in args.precision.split(",")
    ]
    # Same max_length for the anchor: ours resolves None to the model's own limit.
    max_length = int(ours[0].load().max_seq_length)
    sbert = SentenceTransformerRerank(
        model=model,
        device="cpu",
        top_n=args.top_k,
        cross_encoder_kwargs={"max_length": max_length},
    )

    def run_ours(r: CrossEncoderReranker) -> Callable[[list[NodeWithScore], str], list[Any]]:
        return lambda nodes, query: r.postprocess_nodes(nodes, query_str=query)

    def run_sbert(nodes: list[NodeWithScore], query: str) -> list[NodeWithScore]:
        # predict() is called with the anchor's own defaults (batch 32); only max_length is set.
        return sbert.postprocess_nodes(nodes, query_bundle=QueryBundle(query))

    out = [Contestant(f"CrossEncoderReranker ({r.precision})", run_ours(r)) for r in ours]
    out.append(Contestant("SentenceTransformerRerank (LlamaIndex)", run_sbert))
    return out, max_length


def _result(
    args: argparse.Namespace,
    model: str,
    max_length: int,
    qids: list[str],
    ds: Any,
    bm25_run: dict[str, list[tuple[str, float]]],
    contestants: list[Contestant],
    wall: float,
    load_before: float,
) -> dict[str, Any]:
    import torch

    anchor = contestants[-1]
    rows = []
    for c in contestants:
        rows.append(
            {
                "reranker": c.name,
                "pairs": c.pairs,
                "seconds": round(c.seconds, 3),
                "pairs_per_s": round(c.pairs_per_s, 2),
                "ratio_vs_sbert": round(c.pairs_per_s / anchor.pairs_per_s, 3),
                "median_latency_s": round(statistics.median(c.latencies), 3),
                "ndcg@10": round(evaluate(ds.qrels, c.run, [MEASURE], query_ids=qids)[MEASURE], 4),
                "truncated_pairs": c.truncated if c is not anchor else None,
            }
        )
    bm25_ndcg = evaluate(ds.qrels, bm25_run, [MEASURE], query_ids=qids)[MEASURE]
    anchor_scores = {q: dict(v) for q, v in anchor.run.items()}
    agreement = {
        c.name: max(abs(s - anchor_scores[q][d]) for q, ranked in c.run.items() for d, s in ranked)
        for c in contestants[:-1]
    }
    argv = " ".join(sys.argv[1:])
    return {
        "command": f".venv/bin/python benchmarks/bench_cross_encoder.py {argv}".strip(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dataset": args.dataset,
        "queries": len(qids),
        "top_k": args.top_k,
        "max_length": max_length,
        "batch_size": args.batch_size,
        "model": model,
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_avg_1min_start": round(load_before, 2),
            "load_avg_1min_end": round(os.getloadavg()[0], 2),
        },
        "wall_seconds": round(wall, 1),
        "bm25_ndcg@10": round(bm25_ndcg, 4),
        "rows": rows,
        "max_abs_score_diff_vs_sbert": {k: round(v, 6) for k, v in agreement.items()},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# Cross-encoder benchmark: {r['dataset']}",
        "",
        f"`{r['command']}`",
        "",
        f"- date: {r['date']}; wall time {r['wall_seconds']} s",
        f"- data: first {r['queries']} test queries, BM25 top-{r['top_k']} "
        f"({r['queries'] * r['top_k']} pairs per reranker)",
        f"- model: `{r['model']}`, max_length {r['max_length']} (both), batch size "
        f"{r['batch_size']}",
        f"- machine: {m['cores']} cores, {m['cpu']}; torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}; 1-min load average "
        f"{m['load_avg_1min_start']} → {m['load_avg_1min_end']} (shared machine)",
        "",
        "| reranker | pairs/s | × SentenceTransformerRerank | median s/query | nDCG@10 |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['reranker']} | {row['pairs_per_s']:.1f} | {row['ratio_vs_sbert']:.2f} | "
            f"{row['median_latency_s']:.2f} | {row['ndcg@10']:.4f} |"
        )
    lines.append(f"| BM25 (no reranking) | | | | {r['bm25_ndcg@10']:.4f} |")
    lines.append("")
    for name, diff in r["max_abs_score_diff_vs_sbert"].items():
        lines.append(f"- max |score − SentenceTransformerRerank score|, {name}: {diff:.2g}")
    truncated = [row for row in r["rows"] if row["truncated_pairs"] is not None]
    if truncated:
        lines.append(
            f"- pairs longer than max_length (truncated by both rerankers): "
            f"{truncated[0]['truncated_pairs']} of {truncated[0]['pairs']}"
        )
    return "\n".join(lines) + "\n"


def _print(r: dict[str, Any]) -> None:
    print()
    print(_markdown(r))


def _write(r: dict[str, Any], dataset: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"cross_encoder_{dataset}.json").write_text(json.dumps(r, indent=2) + "\n")
    (out_dir / f"cross_encoder_{dataset}.md").write_text(_markdown(r))
    print(f"wrote {out_dir / f'cross_encoder_{dataset}.json'} and .md")


if __name__ == "__main__":
    raise SystemExit(main())

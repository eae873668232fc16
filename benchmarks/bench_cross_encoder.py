"""Cross-encoder speed and quality: CrossEncoderReranker's backends vs LlamaIndex's
SentenceTransformerRerank.

Every contestant reranks the same BM25 top-K candidates of the same queries with the same model
and the same max_length, alternating query by query in one process (the order rotates every
query), so that load from other processes hits every contestant alike and the pairs/s *ratio*
stays meaningful even when absolute speed is noisy. Contestants (``--contestants``): ``sbert``
(SentenceTransformerRerank), ``float32`` (ours, exact torch path), ``default`` (ours, default
settings: precision="auto"), ``onnx`` (ONNX Runtime float32), ``onnx-int8`` (dynamic int8);
BM25 is the no-reranking row. Fidelity is max |Δ| of scores and logits against ``float32``.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_cross_encoder.py [--datasets scifact:50,trec-dl-2019]
        [--top-k 100] [--contestants sbert,float32,default,onnx,onnx-int8] [--max-length 256]

or ``make bench-cross-encoder``. Writes ``benchmarks/results/cross_encoder_<tag>.json`` and
``.md`` (tag: ``--tag``, default ``backends``). The model comes from ``--model`` or
``$LLAMAINDEX_RERANKERS_CROSS_ENCODER``; the data from ``--data-dir`` or
``$LLAMAINDEX_RERANKERS_DATA`` (default ``../shared/data``).
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
    logits: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget the previous dataset's measurements."""
        self.seconds, self.pairs, self.truncated = 0.0, 0, 0
        self.latencies, self.run, self.logits = [], {}, {}

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
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    contestants, max_length = _contestants(model, args)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    datasets = [_race(name, n, contestants, args) for name, n in args.datasets]
    wall = time.perf_counter() - started
    result = _result(args, model, max_length, datasets, wall, load_before)
    _print(result)
    _write(result, args.tag, Path(args.output_dir))
    return 0


def _race(
    dataset: str, n_queries: int | None, contestants: list[Contestant], args: argparse.Namespace
) -> dict[str, Any]:
    """Every contestant on one dataset's queries, alternating; the dataset's rows."""
    data_root = Path(args.data_dir).expanduser()
    ds = load_beir(data_root / dataset, split="test")
    bm25 = load_trec_run(data_root / dataset / "runs" / "bm25_top100.trec")
    qids = [q for q in ds.query_ids() if q in bm25 and q in ds.qrels][:n_queries]
    for c in contestants:
        c.reset()
    warm_nodes = candidates(ds, bm25, qids[0], args.top_k)
    for c in contestants:  # load models, export ONNX and warm up outside the timed loop
        c.rerank(warm_nodes[:8], ds.queries[qids[0]])
    started = time.perf_counter()
    for i, qid in enumerate(tqdm(qids, desc=f"rerank {dataset} top-{args.top_k}")):
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
            c.logits[qid] = {
                n.node.node_id: float(n.node.metadata["rerank_logit"])
                for n in out
                if "rerank_logit" in n.node.metadata
            }
    wall = time.perf_counter() - started
    bm25_run = {q: bm25[q][: args.top_k] for q in qids}
    return _dataset_rows(dataset, ds, qids, bm25_run, contestants, wall)


CONTESTANTS = {
    # name: CrossEncoderReranker settings (None: LlamaIndex's SentenceTransformerRerank)
    "sbert": None,
    "float32": {"precision": "float32"},
    "default": {},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx", "quantize": "int8"},
}
REFERENCE = "float32"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--datasets",
        default="scifact:50,trec-dl-2019",
        help="comma-separated dataset[:first N test queries] under --data-dir "
        "(default scifact:50,trec-dl-2019: every DL19 query)",
    )
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LLAMAINDEX_RERANKERS_DATA", str(REPO.parent / "shared" / "data")),
        help="folder with BEIR-layout datasets (default: $LLAMAINDEX_RERANKERS_DATA or "
        "../shared/data)",
    )
    p.add_argument("--top-k", type=int, default=100, help="BM25 candidates per query")
    p.add_argument(
        "--contestants",
        default=",".join(CONTESTANTS),
        help=f"comma-separated, from {', '.join(CONTESTANTS)} (sbert is the ratio's anchor)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token limit for every reranker (default: the model's own limit)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (all)")
    p.add_argument(
        "--model", default=None, help=f"cross-encoder path (default ${CROSS_ENCODER_ENV})"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for every contestant (torch and ONNX Runtime; default: each "
        "library's choice, all cores).",
    )
    p.add_argument("--output-dir", default=str(RESULTS), help="where to write JSON + Markdown")
    p.add_argument("--tag", default="backends", help="output names: cross_encoder_<tag>.json")
    args = p.parse_args(argv)
    if args.top_k < 1 or (args.threads is not None and args.threads < 1):
        p.error("--top-k and --threads must be at least 1")
    names = args.contestants.split(",")
    unknown = [n for n in names if n not in CONTESTANTS]
    if unknown or "sbert" not in names or REFERENCE not in names:
        p.error(f"--contestants: from {', '.join(CONTESTANTS)}, with sbert and {REFERENCE}")
    args.contestants = names
    datasets = []
    for item in args.datasets.split(","):
        name, _, n = item.partition(":")
        if not name or not (n == "" or n.isdigit()):
            p.error(f"bad dataset {item!r}: use name or name:N")
        datasets.append((name, int(n) if n else None))
    args.datasets = datasets
    return args


def _contestants(model: str, args: argparse.Namespace) -> tuple[list[Contestant], int]:
    from llama_index.postprocessor.sbert_rerank import SentenceTransformerRerank

    ours = {
        name: CrossEncoderReranker(
            model=model,
            device="cpu",
            max_length=args.max_length,
            batch_size=args.batch_size,
            top_n=args.top_k,
            threads=args.threads if settings.get("backend") == "onnx" else None,
            **settings,
        )
        for name, settings in CONTESTANTS.items()
        if settings is not None and name in args.contestants
    }
    # Same max_length for the anchor: ours resolves None to the model's own limit.
    max_length = int(ours[REFERENCE].load().max_seq_length)
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

    out = []
    for name in args.contestants:
        if name == "sbert":
            out.append(Contestant("SentenceTransformerRerank (LlamaIndex)", run_sbert))
            continue
        r = ours[name]
        label = f"ours {name}: backend={r.backend}, precision={r.effective_precision}"
        if r.quantize != "none":
            label += f", quantize={r.quantize}"
        c = Contestant(label, run_ours(r))
        c.settings = {"key": name, **CONTESTANTS[name]}  # type: ignore[dict-item]
        out.append(c)
    return out, max_length


def _dataset_rows(
    dataset: str,
    ds: Any,
    qids: list[str],
    bm25_run: dict[str, list[tuple[str, float]]],
    contestants: list[Contestant],
    wall: float,
) -> dict[str, Any]:
    anchor = next(c for c in contestants if not c.settings)
    reference = next(c for c in contestants if c.settings.get("key") == REFERENCE)
    ref_scores = {q: dict(v) for q, v in reference.run.items()}
    rows = []
    for c in contestants:
        row: dict[str, Any] = {
            "reranker": c.name,
            "key": c.settings.get("key", "sbert"),
            "pairs": c.pairs,
            "seconds": round(c.seconds, 3),
            "pairs_per_s": round(c.pairs_per_s, 2),
            "ratio_vs_sbert": round(c.pairs_per_s / anchor.pairs_per_s, 3),
            "median_latency_s": round(statistics.median(c.latencies), 3),
            "ndcg@10": round(evaluate(ds.qrels, c.run, [MEASURE], query_ids=qids)[MEASURE], 4),
            "truncated_pairs": c.truncated if c is not anchor else None,
            "max_abs_score_diff_vs_float32": round(
                max(abs(s - ref_scores[q][d]) for q, ranked in c.run.items() for d, s in ranked),
                6,
            ),
            "max_abs_logit_diff_vs_float32": _max_diff(c.logits, reference.logits),
        }
        rows.append(row)
    return {
        "dataset": dataset,
        "queries": len(qids),
        "wall_seconds": round(wall, 1),
        "bm25_ndcg@10": round(evaluate(ds.qrels, bm25_run, [MEASURE], query_ids=qids)[MEASURE], 4),
        "rows": rows,
    }


def _max_diff(ours: dict[str, dict[str, float]], ref: dict[str, dict[str, float]]) -> float | None:
    """max |ours − ref| over every (query, doc) both have; None when ours has no logits."""
    diffs = [abs(v - ref[q][d]) for q, by_doc in ours.items() for d, v in by_doc.items()]
    return round(max(diffs), 6) if diffs else None


def _result(
    args: argparse.Namespace,
    model: str,
    max_length: int,
    datasets: list[dict[str, Any]],
    wall: float,
    load_before: float,
) -> dict[str, Any]:
    import onnxruntime
    import torch

    from llamaindex_rerankers.cross_encoder_backends import BF16_CPU_FLAGS, cpu_flags

    argv = " ".join(sys.argv[1:])
    return {
        "command": f".venv/bin/python benchmarks/bench_cross_encoder.py {argv}".strip(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "top_k": args.top_k,
        "max_length": max_length,
        "batch_size": args.batch_size,
        "model": model,
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "bf16_flags": sorted(cpu_flags() & BF16_CPU_FLAGS),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch_threads": torch.get_num_threads(),
            "threads_option": args.threads,
            "python": platform.python_version(),
            "load_avg_1min_start": round(load_before, 2),
            "load_avg_1min_end": round(os.getloadavg()[0], 2),
        },
        "wall_seconds": round(wall, 1),
        "datasets": datasets,
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
        "# Cross-encoder benchmark: backends and precisions",
        "",
        f"`{r['command']}`",
        "",
        f"- date: {r['date']}; wall time {r['wall_seconds']} s",
        f"- model: `{r['model']}`, max_length {r['max_length']} (all), batch size "
        f"{r['batch_size']}, BM25 top-{r['top_k']}",
        f"- machine: {m['cores']} cores, {m['cpu']} (bf16 flags: "
        f"{', '.join(m['bf16_flags']) or 'none'}); torch {m['torch']} ({m['torch_threads']} "
        f"threads), onnxruntime {m['onnxruntime']}, Python {m['python']}; 1-min load average "
        f"{m['load_avg_1min_start']} → {m['load_avg_1min_end']} (shared machine)",
        "- contestants alternate query by query (order rotated every query); Δ = max |ours − "
        "ours float32 torch| over every scored pair (score = sigmoid(logit))",
    ]
    for d in r["datasets"]:
        lines += [
            "",
            f"## {d['dataset']}: {d['queries']} test queries ({d['queries'] * r['top_k']} "
            f"pairs per reranker; {d['wall_seconds']} s)",
            "",
            "| reranker | pairs/s | × SentenceTransformerRerank | median s/query | nDCG@10 | "
            "max Δscore | max Δlogit |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in d["rows"]:
            logit = row["max_abs_logit_diff_vs_float32"]
            lines.append(
                f"| {row['reranker']} | {row['pairs_per_s']:.1f} | {row['ratio_vs_sbert']:.2f} | "
                f"{row['median_latency_s']:.2f} | {row['ndcg@10']:.4f} | "
                f"{row['max_abs_score_diff_vs_float32']:.2g} | "
                f"{'' if logit is None else f'{logit:.2g}'} |"
            )
        lines.append(f"| BM25 (no reranking) | | | | {d['bm25_ndcg@10']:.4f} | | |")
        ours = [row for row in d["rows"] if row["truncated_pairs"] is not None]
        if ours:
            lines += [
                "",
                f"Pairs longer than max_length (truncated by every reranker): "
                f"{ours[0]['truncated_pairs']} of {ours[0]['pairs']}.",
            ]
    return "\n".join(lines) + "\n"


def _print(r: dict[str, Any]) -> None:
    print()
    print(_markdown(r))


def _write(r: dict[str, Any], tag: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"cross_encoder_{tag}.json").write_text(json.dumps(r, indent=2) + "\n")
    (out_dir / f"cross_encoder_{tag}.md").write_text(_markdown(r))
    print(f"wrote {out_dir / f'cross_encoder_{tag}.json'} and .md")


if __name__ == "__main__":
    raise SystemExit(main())

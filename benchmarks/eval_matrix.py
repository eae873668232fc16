"""The published evaluation matrix: the `llamaindex-rerankers eval` runs behind
the site's Evaluation runs page, and the one summary table built from their JSON.

    .venv/bin/python benchmarks/eval_matrix.py                # every run (about 2.5 h on 2 cores)
    .venv/bin/python benchmarks/eval_matrix.py --only dl19_chroma_k20,dl19_bm25_k10-100
    .venv/bin/python benchmarks/eval_matrix.py --summary-only # rebuild the summary table

Each run is one `llamaindex-rerankers eval` process writing `results/eval_<name>.json`, so its
JSON records the exact command. Runs that need an LLM share one llama.cpp server (SmolLM2-135M
from `$LLAMAINDEX_RERANKERS_LLM_GGUF`, started here on a fixed port unless `--llm-base-url` is
given) and one SQLite judgement cache, so the cascade and any rerun reuse judgements already
paid for (rows served from the cache say so in their `cache_hits` and their latency is not
an LLM's).

The summary (`results/eval_summary.md` / `.json`) takes every `results/eval_*.json`; when two
files hold the same row (dataset, first stage, queries, reranker with its settings, K), the
newer one wins.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llamaindex_rerankers.registry import LLM_BACKED as LLM_NAMES

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLI = str(Path(sys.executable).with_name("llamaindex-rerankers"))
CACHE = ".cache/llm-judgements.sqlite"

# name -> (dataset folder, eval options). LLM rows use fewer queries: one SmolLM2 judgement
# costs ~1 s on 2 CPU cores for a DL19 passage (~20 s per query at K=20) and ~3-4 s for a
# SciFact or NFCorpus abstract; LlamaIndex's LLM rerankers take ~1 min per query.
JOBS: dict[str, tuple[str, str]] = {
    # TREC DL 2019, BM25 top-20, all 43 queries: every reranker of ours and the cross-encoder anchor
    "dl19_bm25_k20": ("trec-dl-2019", "--top-k 20 --reranker none,cross-encoder,sbert,cascade,llm"),
    # the cascade at its default blend weight (0.5), then other weights: 0 is the LLM alone
    # ordering the survivors; the rest is a sensitivity check on test data, not a tuning
    # (their LLM judgements all come from the cache)
    "dl19_bm25_k20_cascade": ("trec-dl-2019", "--top-k 20 --reranker none,cross-encoder,cascade"),
    **{
        f"dl19_bm25_k20_cascade-w{w}": (
            "trec-dl-2019",
            f"--top-k 20 --reranker cascade --cascade-weight {w}",
        )
        for w in ("0", "0.25", "0.75", "0.9")
    },
    # LlamaIndex's LLM rerankers next to ours, on the first 10 queries (they take ~1 min each)
    "dl19_bm25_k20_anchors": (
        "trec-dl-2019",
        "--queries 10 --top-k 20 --reranker none,cross-encoder,llm,cascade,llmrerank,rankgpt",
    ),
    "dl19_bm25_k10-100": (
        "trec-dl-2019",
        "--top-k 10,20,50,100 --reranker none,cross-encoder,sbert "
        "--plot {results}/eval_dl19_bm25_k10-100.png",
    ),
    "dl19_chroma_k20": (
        "trec-dl-2019",
        "--first-stage chroma --top-k 20 --reranker none,cross-encoder,sbert,llm,cascade",
    ),
    "dl19_chroma_k100": (
        "trec-dl-2019",
        "--first-stage chroma --top-k 100 --reranker none,cross-encoder,sbert",
    ),
    "scifact_bm25_k20": ("scifact", "--queries 100 --top-k 20 --reranker none,cross-encoder,sbert"),
    "scifact_bm25_k100": (
        "scifact",
        "--queries 20 --top-k 100 --reranker none,cross-encoder,sbert",
    ),
    "scifact_bm25_k20_llm": (
        "scifact",
        "--queries 20 --top-k 20 --reranker none,cross-encoder,sbert,llm,cascade",
    ),
    "scifact_chroma_k20": (
        "scifact",
        "--first-stage chroma --queries 100 --top-k 20 --reranker none,cross-encoder,sbert",
    ),
    "nfcorpus_bm25_k20": (
        "nfcorpus",
        "--queries 100 --top-k 20 --reranker none,cross-encoder,sbert",
    ),
    "nfcorpus_bm25_k100": (
        "nfcorpus",
        "--queries 20 --top-k 100 --reranker none,cross-encoder,sbert",
    ),
    "nfcorpus_bm25_k20_llm": (
        "nfcorpus",
        "--queries 20 --top-k 20 --reranker none,cross-encoder,sbert,llm,cascade",
    ),
    "nfcorpus_chroma_k20": (
        "nfcorpus",
        "--first-stage chroma --queries 100 --top-k 20 --reranker none,cross-encoder,sbert",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma list of run names (default: all): " + ", ".join(JOBS))
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary")
    parser.add_argument("--data-dir", default=os.environ.get("LLAMAINDEX_RERANKERS_DATA"))
    parser.add_argument("--llm-base-url", help="an OpenAI-compatible server already running")
    parser.add_argument("--llm-model", help="model name at --llm-base-url")
    parser.add_argument("--llm-port", type=int, default=8765, help="port of the local server")
    args = parser.parse_args(argv)
    if not args.summary_only:
        names = [n for n in (args.only or ",".join(JOBS)).split(",") if n]
        unknown = sorted(set(names) - set(JOBS))
        if unknown:
            parser.error(f"unknown run(s) {unknown}; choose from {', '.join(JOBS)}")
        data = Path(args.data_dir or HERE.parent.parent / "shared" / "data")
        if not data.is_dir():
            parser.error(f"no data at {data}; pass --data-dir or set LLAMAINDEX_RERANKERS_DATA")
        needs_llm = any(LLM_NAMES & set(_rerankers(_options(n))) for n in names)
        with _llm(args, needs_llm) as llm_args:
            for name in names:
                _run(name, data, llm_args)
    rows = summary_rows(sorted(p for p in RESULTS.glob("eval_*.json") if p.stem != "eval_summary"))
    (RESULTS / "eval_summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "eval_summary.md").write_text(summary_markdown(rows) + "\n")
    summary_plot(rows, RESULTS / "eval_summary.png")
    print(summary_markdown(rows))
    return 0


def _options(name: str) -> list[str]:
    return shlex.split(JOBS[name][1].format(results=os.path.relpath(RESULTS)))


def _rerankers(options: list[str]) -> list[str]:
    return options[options.index("--reranker") + 1].split(",")


@contextlib.contextmanager
def _llm(args: argparse.Namespace, needed: bool) -> Iterator[list[str]]:
    if not needed:
        yield []
        return
    if args.llm_base_url:
        model = ["--llm-model", args.llm_model] if args.llm_model else []
        yield ["--llm-base-url", args.llm_base_url, *model, "--llm-cache", CACHE]
        return
    from llamaindex_rerankers.endpoints.llamacpp import local_llm_server
    from llamaindex_rerankers.registry import ANCHOR_N_CTX

    # A fixed port keeps the base URL, part of the cache key, the same from one run to the next.
    with local_llm_server(port=args.llm_port, n_ctx=ANCHOR_N_CTX) as server:
        yield ["--llm-base-url", server.base_url, "--llm-model", server.model, "--llm-cache", CACHE]


def _run(name: str, data: Path, llm_args: list[str]) -> None:
    dataset, options = JOBS[name][0], _options(name)
    cmd = [CLI, "eval", "--dataset", str(data / dataset), "--top-n", "10", *options]
    if LLM_NAMES & set(_rerankers(options)):
        cmd += llm_args
    cmd += ["--output", os.path.relpath(RESULTS / f"eval_{name}.json")]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True)
    print(f"== {name}: {time.monotonic() - start:.0f} s", flush=True)


def _label(row: dict[str, Any], settings: dict[str, Any]) -> str:
    name = str(row["reranker"])
    if name == "cascade":
        # Files from before the settings were recorded: keep 6, and no blending (weight 0).
        keep = settings.get("cascade_keep", 6)
        return f"cascade (keep {keep}, w {settings.get('cascade_weight', 0.0):g})"
    return name


def summary_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """One row per (dataset, first stage, queries, reranker, K), newest file first."""
    records = [json.loads(p.read_text()) | {"file": p.name} for p in paths]
    records = [r for r in records if "results" in r and "first_stage" in r]
    records.sort(key=lambda r: r["date"], reverse=True)
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        for row in rec["results"]:
            label = _label(row, rec.get("settings", {}))
            key = (rec["dataset"], rec["first_stage"], rec["queries"], label, row["top_k"])
            if key in seen:
                continue
            q = max(1, int(row["queries"]))
            # LLM calls other than retries, plus the calls the cache answered instead
            calls = row.get("total_calls", 0) - row.get("total_retries", 0)
            judged = calls + row.get("total_cache_hits", 0)
            seen[key] = {
                "dataset": rec["dataset"],
                "first_stage": rec["first_stage"],
                "queries": rec["queries"],
                "reranker": label,
                "K": row["top_k"],
                "nDCG@10": row["nDCG@10"],
                "RR@10": next(v for k, v in row.items() if k.startswith("RR")),
                "R@10": next(v for k, v in row.items() if k.startswith("R(") or k == "R@10"),
                "median_s": row["latency_median_s"],
                "p95_s": row["latency_p95_s"],
                "llm_judgements_per_query": judged / q if row["reranker"] in LLM_NAMES else None,
                "cache_hits": row.get("total_cache_hits", 0),
                "dropped": row.get("total_dropped", 0),
                "file": rec["file"],
            }
    datasets = ["trec-dl-2019", "scifact", "nfcorpus"]
    names = ["none", "cross-encoder", "sbert", "llm", "cascade", "llmrerank", "rankgpt"]

    def position(r: dict[str, Any]) -> tuple[Any, ...]:
        ds, name = r["dataset"], r["reranker"].split(" ")[0]
        return (
            datasets.index(ds) if ds in datasets else len(datasets),
            r["first_stage"],
            -r["queries"],
            r["K"],
            names.index(name) if name in names else len(names),
            r["reranker"],
        )

    return sorted(seen.values(), key=position)


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| dataset | first stage | queries | K | reranker | nDCG@10 | RR@10 | R@10 "
    head += "| median s/query | LLM calls/query | dropped | file |"
    lines = [head, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        calls = r["llm_judgements_per_query"]
        # A judgement served from the cache takes microseconds: that latency is not an LLM's.
        latency = f"{r['median_s']:.2f}"
        if r.get("cache_hits") and calls:
            share = r["cache_hits"] / (calls * r["queries"])
            latency += f" ({share:.0%} cached)"
        lines.append(
            f"| {r['dataset']} | {r['first_stage']} | {r['queries']} | {r['K']} | {r['reranker']} "
            f"| {r['nDCG@10']:.4f} | {r['RR@10']:.4f} | {r['R@10']:.4f} | {latency} "
            f"| {'–' if calls is None else f'{calls:g}'} | {r['dropped']:g} "
            f"| [json](results/{r['file']}) |"
        )
    return "\n".join(lines)


def summary_plot(rows: list[dict[str, Any]], path: Path, k: int = 20) -> Path | None:
    """Bars of nDCG@10 at K=``k``: one panel per (dataset, first stage, query set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["K"] == k:
            panels.setdefault((r["dataset"], r["first_stage"], r["queries"]), []).append(r)
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, ((dataset, stage, queries), group) in zip(axes.flat, panels.items(), strict=False):
        labels = [g["reranker"].replace(" (", "\n(") for g in group]
        values = [g["nDCG@10"] for g in group]
        colors = ["tab:gray" if g["reranker"] == "none" else "tab:blue" for g in group]
        bars = ax.barh(range(len(group)), values, color=colors)  # gray: the first stage alone
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
        ax.set_yticks(range(len(group)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, min(1.0, max(values) * 1.25 + 0.02))
        ax.set_title(f"{dataset}, {stage}, {queries} queries, K={k}", fontsize=9)
        ax.set_xlabel("nDCG@10", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())

"""LLM reranking quality on three datasets: our LLM reranker (defaults and each option), the
cascade, the cross-encoder, BM25 and LlamaIndex's LLM rerankers, same server and model.

For each dataset (DL19, SciFact, NFCorpus: the first ``--queries`` test queries, BM25 top-20,
top 10 returned) this runs ``llamaindex-rerankers eval`` once with every contestant, then once
per LLM-reranker option with the same judgement cache (``--llm-cache``): the options differ
only in how judgements are scored (calibration, fusion), so those runs ask the server only for
what the defaults did not (0 calls when nothing is new) and their latencies are not comparable.
Every LLM contestant, anchors included, talks to the local llama.cpp server started by ``eval``
(SmolLM2-135M-Instruct from ``$LLAMAINDEX_RERANKERS_LLM_GGUF``).

Nothing here chooses a default: they were chosen on the tuning split of
``benchmarks/tune_llm.py`` (SciFact and NFCorpus test queries after the first 50), and the
queries reported here are the first ones.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_llm_quality.py                 # 50 queries per dataset
    .venv/bin/python benchmarks/bench_llm_quality.py --queries 10 \
        --rerankers none,cross-encoder,llm,cascade
    .venv/bin/python benchmarks/bench_llm_quality.py --name llm_speed --datasets trec-dl-2019 \
        --queries 5 --rerankers none,llm,cascade,llmrerank,structuredllmrerank,rankgpt

(the last two are the published runs: ``results/llm_quality.md`` and ``results/llm_speed.md``).

Writes ``benchmarks/results/llm_quality.{json,md}`` and one ``eval`` JSON per run under
``benchmarks/results/llm_quality/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llamaindex_rerankers.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATASETS = ("trec-dl-2019", "scifact", "nfcorpus")
CONTESTANTS = "none,cross-encoder,llm,cascade,llmrerank,structuredllmrerank,rankgpt"
#: (label, extra eval arguments) of the LLM reranker's options, scored from the same cache.
OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llm: calibration, w=0", ("--llm-weight", "0")),
    ("llm: no calibration, w=auto", ("--llm-calibration", "none")),
    ("llm: no calibration, w=0", ("--llm-calibration", "none", "--llm-weight", "0")),
    ("llm: calibration, w=0.3", ("--llm-weight", "0.3")),
)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    n = max(int(row.get("queries") or 1), 1)

    def per_query(key: str) -> float | None:
        value = row.get(f"total_{key}")
        return None if value is None else value / n

    return {
        "queries": row.get("queries"),
        "nDCG@10": row.get("nDCG@10"),
        # ours: judgements asked per query whether or not the cache answered (what an uncached
        # run sends, retries aside); the anchors have no cache: their calls
        "LLM calls / query": (
            per_query("calls")
            if row.get("total_judgements") is None
            else (row["total_judgements"] + row.get("total_calibration_judgements", 0)) / n
        ),
        "calls sent / query (this run)": per_query("calls"),
        "prompt tokens / query": per_query("prompt_tokens"),
        "evaluated prompt tokens / query": per_query("prompt_tokens_evaluated"),
        "median s / query": row.get("latency_median_s"),
        "nodes dropped": row.get("total_dropped"),
        "mean w": row.get("mean_retrieval_weight"),  # eval reports the mean itself
    }


def _eval(dataset: Path, out: Path, args: argparse.Namespace, rerankers: str,
          extra: Sequence[str]) -> list[dict[str, Any]]:  # fmt: skip
    argv = [
        "eval", "--dataset", str(dataset), "--queries", str(args.queries), "--top-k", "20",
        "--top-n", "10", "--reranker", rerankers, "--llm-cache", args.cache, "--output", str(out),
        *extra,
    ]  # fmt: skip
    if args.no_progress:
        argv.append("--no-progress")
    code = cli(argv)
    if code != 0:
        raise SystemExit(f"eval failed ({code}): {' '.join(argv)}")
    return list(json.loads(out.read_text())["results"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("LLAMAINDEX_RERANKERS_DATA", str(REPO.parent / "shared" / "data"))
    p.add_argument("--data-dir", default=default_data)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--queries", type=int, default=50, help="first N test queries per dataset")
    p.add_argument("--rerankers", default=CONTESTANTS)
    p.add_argument("--cache", default=str(REPO / ".cache" / "llm_quality.sqlite"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--fresh", action="store_true", help="drop earlier runs' rows")
    p.add_argument("--name", default="llm_quality", help="results: benchmarks/results/NAME.*")
    args = p.parse_args(argv)
    runs = RESULTS / args.name
    runs.mkdir(parents=True, exist_ok=True)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    table: list[dict[str, Any]] = []
    for name in args.datasets.split(","):
        folder = Path(args.data_dir) / name
        rows = _eval(folder, runs / f"{name}.json", args, args.rerankers, ())
        for row in rows:
            row["contestant"] = row["reranker"]
        for label, extra in OPTIONS if "llm" in args.rerankers.split(",") else ():
            slug = label.replace(" ", "").replace(":", "_").replace(",", "_").replace("=", "")
            (opt,) = _eval(folder, runs / f"{name}_{slug}.json", args, "llm", extra)
            opt["contestant"] = label
            rows.append(opt)
        for row in rows:
            table.append({"dataset": name, "contestant": row["contestant"], **_summary(row)})
    command = "python benchmarks/bench_llm_quality.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    run = {
        "command": command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": time.monotonic() - started,
        "queries": args.queries,
        "datasets": args.datasets.split(","),
    }
    # Earlier runs' rows stay unless this run measured the same contestant on the same dataset.
    path = RESULTS / f"{args.name}.json"
    old = json.loads(path.read_text()) if path.exists() and not args.fresh else {"runs": []}
    fresh = {(r["dataset"], r["contestant"]) for r in table}
    kept = [r for r in old.get("rows", []) if (r["dataset"], r["contestant"]) not in fresh]
    record = {"runs": [*old.get("runs", []), run], "rows": kept + table}
    path.write_text(json.dumps(record, indent=1))
    table = record["rows"]
    from llamaindex_rerankers.evaluation.harness import markdown_table

    md = [
        "# LLM reranking quality: SmolLM2-135M, BM25 top-20, first test queries per dataset",
        "",
        *[f"- `{r['command']}` ({r['date']}, {r['wall_s'] / 60:.0f} min)" for r in record["runs"]],
        "",
        "Option rows reuse the defaults' judgement cache: their calls count only what was "
        "new, and their latencies are not comparable.",
        "",
        markdown_table(table),
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

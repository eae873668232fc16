"""Choose the LLM reranker's defaults on queries that are never reported: the tuning split.

The tuning split is a split of our own: test queries 51 to 50 + N (file order) of SciFact and
NFCorpus, BM25 top-K. The published benchmark (``bench_llm_quality.py``) reports the *first
50* test queries of SciFact and NFCorpus and all of DL19, so nothing chosen here is tuned on
what is reported (DL19 has no queries to spare, so nothing is tuned on DL19 at all).

Two steps, both from one command:

1. **Collect.** For each prompt variant (``--variants``), the LLM reranker (fusion off,
   calibration off) judges every candidate of every tuning query, plus the content-free
   passages used by calibration; the raw label probabilities are written to
   ``benchmarks/results/tune_llm_raw.json``. Judgements go through a SQLite cache
   (``--cache``), so a rerun asks the server nothing it has answered before.
2. **Score offline.** From those probabilities alone: nDCG@10 of every (prompt variant,
   calibration, fusion) combination: ``calibration`` none / content-free; fusion weight fixed
   (0, 0.3, 0.5, 1 = BM25) or ``auto`` with the formula of :func:`fusion_weight`.
   Written as ``benchmarks/results/tune_llm.{json,md}``.

Run (from the repository root; starts a local llama.cpp server unless --base-url is given):

    .venv/bin/python benchmarks/tune_llm.py --queries 25
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.endpoints.llamacpp import local_llm_server
from llamaindex_rerankers.evaluation.data import candidates, load_beir, load_trec_run
from llamaindex_rerankers.evaluation.harness import markdown_table
from llamaindex_rerankers.evaluation.metrics import per_query
from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.calibration import calibrate, content_free_prior
from llamaindex_rerankers.llm.labels import DEFAULT_LABELS, expected_relevance
from llamaindex_rerankers.llm.prompts import FEW_SHOT_EXAMPLES, V1_JUDGE_PROMPT, V1_SYSTEM_PROMPT
from llamaindex_rerankers.scoring import fuse, fusion_weight, normalized_entropy, rank_prior

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATASETS = ("scifact", "nfcorpus")
#: The content-free passages of "Calibrate Before Use" (Zhao et al. 2021), all judged here so that
#: which of them calibration uses can be chosen offline; the reranker uses the empty one.
CONTENT_FREE_PASSAGES = ("N/A", "", "[MASK]")
#: Which of them the offline scoring calibrates with (indices into CONTENT_FREE_PASSAGES).
CALIBRATE_WITH = (1,)

#: Prompt variants: what each part of the prompt buys.
VARIANTS: dict[str, dict[str, Any]] = {
    # prompt v1: long wording and three worked examples
    "examples3": {
        "examples": FEW_SHOT_EXAMPLES,
        "system_prompt": V1_SYSTEM_PROMPT,
        "judge_prompt": V1_JUDGE_PROMPT,
    },
    "examples0": {"system_prompt": V1_SYSTEM_PROMPT, "judge_prompt": V1_JUDGE_PROMPT},
    # prompt v2 (the default): compact wording, no examples
    "compact0": {},
    "compact1": {"examples": FEW_SHOT_EXAMPLES[:1]},
}


def tuning_queries(dataset: Any, offset: int, n: int) -> list[str]:
    return dataset.query_ids()[offset : offset + n]


def collect(args: argparse.Namespace, base_url: str, model: str, namespace: str) -> dict[str, Any]:
    data_dir = Path(args.data_dir)
    raw: dict[str, Any] = {}
    for name in args.datasets.split(","):
        ds = load_beir(data_dir / name)
        run = load_trec_run(data_dir / name / "runs" / "bm25_top100.trec")
        qids = tuning_queries(ds, args.offset, args.queries)
        raw[name] = {"queries": {}}
        for variant in args.variants.split(","):
            settings = {**VARIANTS[variant]}
            reranker = LLMReranker(
                model=model, base_url=base_url, api_key="local", cache=args.cache,
                cache_namespace=namespace, concurrency=args.concurrency, show_progress=False,
                retrieval_weight=0.0, calibration="none", **settings,
            )  # fmt: skip
            started = time.monotonic()
            for n, qid in enumerate(qids, 1):
                nodes = candidates(ds, run, qid, args.top_k)
                free = [NodeWithScore(node=TextNode(text=t), score=0.0)
                        for t in CONTENT_FREE_PASSAGES]  # fmt: skip
                query = ds.queries[qid]
                result = reranker.rerank(nodes + free, query)
                probs = {
                    out.node.node_id if i is None else f"cf{i}": out.node.metadata[
                        "rerank_label_probs"
                    ]
                    for out in result.nodes
                    for i in [_free_index(out, free)]
                }
                entry = raw[name]["queries"].setdefault(
                    qid, {"docs": [x.node.node_id for x in nodes], "variants": {}}
                )
                entry["variants"][variant] = {
                    "probs": probs,
                    "prompt_tokens": result.report.llm.prompt_tokens if result.report.llm else 0,
                    "calls": result.report.llm.calls if result.report.llm else 0,
                }
                print(f"{name} {variant} {n}/{len(qids)} {time.monotonic() - started:.0f}s",
                      file=sys.stderr, flush=True)  # fmt: skip
            reranker.close()
    return raw


def _free_index(out: NodeWithScore, free: Sequence[NodeWithScore]) -> int | None:
    for i, f in enumerate(free):
        if out.node.node_id == f.node.node_id:
            return i
    return None


def score_offline(raw: Mapping[str, Any], data_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, block in raw.items():
        ds = load_beir(data_dir / name)
        qids = list(block["queries"])
        variants = sorted({v for q in block["queries"].values() for v in q["variants"]})
        bm25 = {q: [(d, -i) for i, d in enumerate(block["queries"][q]["docs"])] for q in qids}
        base = per_query(ds.qrels, bm25, ["nDCG@10"], qids)
        rows.append({"dataset": name, "prompt": "-", "calibration": "-", "fusion": "bm25",
                     "nDCG@10": _mean(base), "mean w": 1.0})  # fmt: skip
        for variant in variants:
            for calibration in ("none", "content-free"):
                for fusion in ("0", "0.3", "0.5", "auto"):
                    run, weights, entropies, tokens = {}, [], [], []
                    for q in qids:
                        entry = block["queries"][q]
                        judged = entry["variants"].get(variant)
                        if judged is None:
                            continue
                        docs = entry["docs"]
                        probs = [judged["probs"][d] for d in docs]
                        tokens.append(judged["prompt_tokens"] / max(len(docs), 1))
                        if calibration == "content-free":
                            free = [judged["probs"][f"cf{i}"] for i in CALIBRATE_WITH]
                            prior = content_free_prior(free)
                            probs = [calibrate(p, prior) if prior else p for p in probs]
                        ents = [normalized_entropy(p) for p in probs]
                        w = fusion_weight(ents) if fusion == "auto" else float(fusion)
                        weights.append(w)
                        entropies.append(statistics.fmean(ents))
                        scores = [expected_relevance(p, DEFAULT_LABELS) for p in probs]
                        k = len(docs)
                        fused = [fuse(s, rank_prior(i, k), w) for i, s in enumerate(scores)]
                        run[q] = list(zip(docs, fused, strict=True))
                    ndcg = _mean(per_query(ds.qrels, run, ["nDCG@10"], qids))
                    rows.append({
                        "dataset": name, "prompt": variant, "calibration": calibration,
                        "fusion": fusion, "nDCG@10": ndcg,
                        "mean w": statistics.fmean(weights) if weights else math.nan,
                        "mean entropy": statistics.fmean(entropies) if entropies else math.nan,
                        "prompt tokens / judgement": _fmean(tokens),
                    })  # fmt: skip
    return rows


def _fmean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _mean(scores: Mapping[str, Mapping[str, float]]) -> float:
    return statistics.fmean(s["nDCG@10"] for s in scores.values()) if scores else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LLAMAINDEX_RERANKERS_DATA", str(REPO.parent / "shared" / "data")),
    )
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument(
        "--offset", type=int, default=50, help="tuning queries start after the reported 50"
    )
    p.add_argument("--queries", type=int, default=25)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--cache", default=str(REPO / ".cache" / "tune_llm.sqlite"))
    p.add_argument("--base-url")
    p.add_argument("--model", default="local")
    p.add_argument("--namespace", default=None)
    p.add_argument("--score-only", action="store_true", help="re-score the saved raw file")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw_path = RESULTS / "tune_llm_raw.json"
    started = dt.datetime.now(dt.UTC)
    if not args.score_only:
        Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
        if args.base_url:
            raw = collect(args, args.base_url, args.model, args.namespace or args.model)
        else:
            with local_llm_server() as server:
                raw = collect(args, server.base_url, server.model, server.namespace)
        raw_path.write_text(json.dumps(raw))
    raw = json.loads(raw_path.read_text())
    rows = score_offline(raw, Path(args.data_dir))
    command = "python benchmarks/tune_llm.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    (RESULTS / "tune_llm.json").write_text(
        json.dumps({"command": command, "date": started.isoformat(), "rows": rows}, indent=1)
    )
    span = f"{args.offset + 1}-{args.offset + args.queries}"
    md = [f"# LLM reranker tuning split (test queries {span}, BM25 top-{args.top_k})", "",
          f"`{command}`", "", markdown_table(rows)]  # fmt: skip
    (RESULTS / "tune_llm.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

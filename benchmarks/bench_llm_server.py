"""Local LLM servers compared: llama-cpp-python's server vs llama.cpp's llama-server.

    .venv/bin/python benchmarks/bench_llm_server.py          # or: make bench-llm-server

``LLMReranker`` with its defaults (concurrency 8, no judgement cache hits: a fresh reranker per
query) judges the BM25 top-``--top-k`` passages of DL19 queries through each server of
``--servers``; every server runs the same GGUF (SmolLM2-135M-Instruct by default), all of them
are started first and stay up, and the rounds alternate between them (rotating the order), each
round on queries that no server has seen yet, so that no server meets a query twice. Reported
per server: seconds per query, judgements per second, prompt tokens sent per judgement and, for
llama-server, the prompt tokens it evaluated and reused from its cache per judgement (its
``timings``), and the largest difference of a passage's score and label probabilities from
llama-cpp-python's (the same model and prompt must give the same labels).

Servers (``--servers``, comma-separated): ``lcp`` (llama-cpp-python), ``ls1`` / ``ls2`` / ``ls4``
/ ``ls8`` (llama-server with 1, 2, 4, 8 slots), with ``-poll0`` appended: llama-server's
``--poll 0`` (its threads sleep instead of spinning while they wait for work), with ``-kvu``:
``--kv-unified`` (one KV buffer for all slots). Every server is started with
``cpu_extra_buffers="auto"`` (the default); when the probe keeps the extra buffers on for
llama-server, ``ls4-nobuf`` (4 slots, extra buffers off) is added to measure what they bring.

Writes ``benchmarks/results/llm_server.json`` and ``.md`` (``--tag`` changes the name).
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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.endpoints.llamacpp import (
    LocalLLMServer,
    find_llama_server,
    local_llm_server,
)
from llamaindex_rerankers.evaluation.data import load_beir, load_trec_run
from llamaindex_rerankers.llm import LLMReranker

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = "make bench-llm-server  # .venv/bin/python benchmarks/bench_llm_server.py"


def server_settings(name: str) -> dict[str, Any]:
    """``lcp``, or ``ls<slots>`` with optional ``-nobuf`` (extra CPU buffers off), ``-poll0``
    (llama-server's ``--poll 0``: worker threads sleep instead of spinning between jobs) and
    ``-kvu`` (``--kv-unified``: one KV buffer shared by the slots)."""
    if name == "lcp":
        return {"server": "llama-cpp-python"}
    slots, *flags = name.split("-")
    if not (slots.startswith("ls") and slots[2:].isdigit()) or set(flags) - {
        "nobuf",
        "poll0",
        "kvu",
    }:
        raise SystemExit(f"unknown server {name!r}: lcp, ls1, ls4, ls4-nobuf, ls4-poll0 ...")
    settings: dict[str, Any] = {"server": "llama-server", "parallel": int(slots[2:])}
    if "nobuf" in flags:
        settings["cpu_extra_buffers"] = False
    settings["extra_args"] = (
        *(("--poll", "0") if "poll0" in flags else ()),
        *(("--kv-unified",) if "kvu" in flags else ()),
    )
    return settings


def judge(srv: LocalLLMServer, query: str, nodes: list[NodeWithScore]) -> dict[str, Any]:
    reranker = LLMReranker(model=srv.model, base_url=srv.base_url, cache=None)
    load = os.getloadavg()[0]  # other processes on the machine show here
    started = time.perf_counter()
    result = reranker.rerank(nodes, query)
    seconds = time.perf_counter() - started
    llm = result.report.llm
    assert llm is not None
    return {
        "seconds": seconds,
        "load_before": round(load, 2),
        "llm": llm.to_dict(),
        "scores": {n.node.id_: n.score for n in result.nodes},
        "probs": {n.node.id_: n.node.metadata.get("rerank_label_probs") for n in result.nodes},
        "sources": sorted({str(n.node.metadata.get("rerank_source")) for n in result.nodes}),
    }


def max_delta(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    worst = 0.0
    for doc, value in a[key].items():
        other = b[key].get(doc)
        if value is None or other is None:
            continue
        if key == "probs":
            worst = max([worst, *(abs(value[k] - other.get(k, 0.0)) for k in value)])
        else:
            worst = max(worst, abs(value - other))
    return worst


def summarise(name: str, meta: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    judged = sum(r["llm"]["judgements"] for r in runs)
    # Answered requests: attempts less the retried and the finally failed ones (only answers
    # carry token counts).
    answered = sum(r["llm"]["calls"] - r["llm"]["retries"] - r["llm"]["failures"] for r in runs)
    seconds = [r["seconds"] for r in runs]
    reports = sum(r["llm"]["prompt_cache_reports"] for r in runs)

    def per_answer(field: str) -> float:
        return round(sum(r["llm"][field] for r in runs) / max(answered, 1), 1)

    return {
        "server": name,
        **meta,
        "queries": len(runs),
        "judgements": judged,
        "calls": sum(r["llm"]["calls"] for r in runs),
        "retries": sum(r["llm"]["retries"] for r in runs),
        "failures": sum(r["llm"]["failures"] for r in runs),
        "s_per_query_median": round(statistics.median(seconds), 2),
        "s_per_query_mean": round(statistics.fmean(seconds), 2),
        "judgements_per_s": round(judged / sum(seconds), 2),
        "max_in_flight": max(r["llm"]["max_in_flight"] for r in runs),
        "prompt_tokens_sent_per_answer": per_answer("prompt_tokens"),
        "prompt_tokens_evaluated_per_answer": per_answer("prompt_tokens_evaluated")
        if reports
        else None,
        "prompt_tokens_cached_per_answer": per_answer("prompt_tokens_cached") if reports else None,
        "sources": sorted({s for r in runs for s in r["sources"]}),
    }


def rows_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    results = payload["per_query"]
    rows = []
    for name, runs in results.items():
        row = summarise(name, payload["servers"][name], list(runs.values()))
        if "lcp" in results and name != "lcp":
            pairs = [(runs[q], results["lcp"][q]) for q in runs if q in results["lcp"]]
            row["max_abs_delta_score"] = round(max(max_delta(a, b, "scores") for a, b in pairs), 4)
            row["max_abs_delta_label_prob"] = round(
                max(max_delta(a, b, "probs") for a, b in pairs), 4
            )
        rows.append(row)
    return rows


def markdown(payload: dict[str, Any]) -> str:
    head = (
        "| server | slots | extra CPU buffers | s/query (median) | judgements/s | "
        "prompt tokens sent / answer | evaluated | from cache | retries | max abs Δscore vs lcp | "
        "max abs Δ label prob |"
    )
    lines = [
        f"# Local LLM servers: {payload['model_file']}",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"{payload['date']}, {payload['machine']}; DL19, BM25 top-{payload['top_k']}, "
        f"{payload['queries_per_server']} queries per server ({payload['rounds']} alternating "
        f"rounds), LLMReranker defaults (concurrency {payload['concurrency']}).",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for row in payload["rows"]:
        lines.append(
            f"| {row['server']} ({row['kind']}) | {row['parallel']} | {row['cpu_extra_buffers']} "
            f"| {row['s_per_query_median']} | {row['judgements_per_s']} "
            f"| {row['prompt_tokens_sent_per_answer']} "
            f"| {row['prompt_tokens_evaluated_per_answer']} "
            f"| {row['prompt_tokens_cached_per_answer']} | {row['retries']} "
            f"| {row.get('max_abs_delta_score')} | {row.get('max_abs_delta_label_prob')} |"
        )
    names = list(payload["per_query"])
    lines += [
        "",
        "Seconds per query, by query (in run order); in brackets the 1-minute load average when "
        "the query started (2 = the two cores busy; more = other processes competing):",
        "",
        "| query | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for qid in payload["query_ids"]:
        cells = []
        for name in names:
            r = payload["per_query"][name].get(qid)
            load = r.get("load_before") if r else None
            cells.append(
                "" if r is None else f"{r['seconds']:.1f}" + (f" ({load})" if load else "")
            )
        lines.append(f"| {qid} | " + " | ".join(cells) + " |")
    lines += ["", *payload["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="lcp,ls1,ls2,ls4")
    p.add_argument("--queries", type=int, default=1, help="queries per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--gguf", default=None, help="default: $LLAMAINDEX_RERANKERS_LLM_GGUF")
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--tag", default="")
    p.add_argument(
        "--render", metavar="JSON", help="only re-write the Markdown (and rows) of a saved run"
    )
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LLAMAINDEX_RERANKERS_DATA", str(Path.cwd().parent / "shared/data")),
    )
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        payload = json.loads(path.read_text())
        payload["rows"] = rows_of(payload)
        path.write_text(json.dumps(payload, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(payload))
        print(markdown(payload))
        return 0

    names = args.servers.split(",")
    data = Path(args.data_dir) / "trec-dl-2019"
    ds = load_beir(data, split="test")
    run = load_trec_run(data / "runs" / "bm25_top100.trec")
    qids = [q for q in ds.queries if q in run][: args.queries * args.rounds]

    def nodes_of(qid: str) -> list[NodeWithScore]:
        return [
            NodeWithScore(node=TextNode(text=ds.corpus[d].content, id_=d), score=s)
            for d, s in run[qid][: args.top_k]
        ]

    results: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
    with ExitStack() as stack:
        servers: dict[str, LocalLLMServer] = {}
        for name in list(names):
            srv = stack.enter_context(
                local_llm_server(
                    args.gguf, n_ctx=args.n_ctx, startup_timeout=300, **server_settings(name)
                )
            )
            servers[name] = srv
            print(f"{name}: {srv.kind}, {srv.parallel} slots, extra buffers "
                  f"{srv.cpu_extra_buffers}", file=sys.stderr)  # fmt: skip
            if name == "ls4" and srv.cpu_extra_buffers and "ls4-nobuf" not in names:
                names.append("ls4-nobuf")
                results["ls4-nobuf"] = {}
                servers["ls4-nobuf"] = stack.enter_context(
                    local_llm_server(args.gguf, n_ctx=args.n_ctx, startup_timeout=300,
                                     **server_settings("ls4-nobuf"))
                )  # fmt: skip
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for qid in qids[r * args.queries : (r + 1) * args.queries]:
                for name in order:
                    out = judge(servers[name], ds.queries[qid], nodes_of(qid))
                    results[name][qid] = out
                    print(f"round {r} {qid} {name}: {out['seconds']:.2f} s", file=sys.stderr)

        meta = {
            name: {"kind": srv.kind, "parallel": srv.parallel,
                   "cpu_extra_buffers": srv.cpu_extra_buffers}
            for name, srv in servers.items()
        }  # fmt: skip
        model_file = Path(servers[names[0]].model).name

    notes = [
        "Prompt tokens: *sent* is what the server counted in each request (usage.prompt_tokens); "
        "*evaluated* and *from cache* are llama-server's timings.prompt_n and cache_n (sent = "
        "evaluated + from cache); llama-cpp-python's server does not report them.",
        f"llama-server binary: {find_llama_server()}.",
    ]
    payload = {
        "command": COMMAND,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "model_file": model_file,
        "top_k": args.top_k,
        "rounds": args.rounds,
        "queries_per_server": len(qids),
        "concurrency": LLMReranker.model_fields["concurrency"].default,
        "query_ids": qids,
        "servers": meta,
        "notes": notes,
        "per_query": results,
    }
    payload["rows"] = rows_of(payload)
    RESULTS.mkdir(exist_ok=True)
    stem = "llm_server" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

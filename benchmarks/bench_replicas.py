"""Two ``serve`` replicas sharing one Redis, under concurrent chat and retrieve clients.

One command starts a ``redis-server`` (Debian's) on a free port, a local llama.cpp server
(SmolLM2, ``$LLAMAINDEX_RERANKERS_LLM_GGUF``), indexes the sample corpus once into an embedded
Chroma folder, and starts two ``serve`` replicas on it with the LLM reranker,
``--llm-cache redis://...`` and ``--session-store redis://...``. Then, per phase (8 and 50
clients, ``--seconds`` each), every simulated user sends its next request when the previous one
is answered, alternating the replicas as a round-robin load balancer would: even users ask
``/v1/retrieve`` (ten questions, so most are repeats), odd users hold a chat session
(``/v1/chat`` with a ``session_id``, ``stream: false``) whose turns land on both replicas. A
user that gets a 503 waits its Retry-After.

Reported per phase: requests, 200s, 503s with Retry-After, errors (anything else: the target
is 0), p50/p95; the LLM calls per repeated question (from each response's report: the
judgements its replica asked the endpoint for; a repeat is a request for a question whose
first answer had arrived before it was sent, so the target is 0; requests sent while the
first was still being judged are counted apart, as concurrent first asks); and the chat turns
after a session's first that found its history (``timings.condense_s`` set), whichever replica
served the turn before. Run from the repository root:

    source scripts/offline-env.sh
    .venv/bin/python benchmarks/bench_replicas.py [--seconds 25] [--clients 8,50]

Writes ``benchmarks/results/bench_replicas.json`` and ``.md``. This is a benchmark, not a
test: the figures depend on the machine and on what else runs on it (the load average before
and after each phase is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from load_serve import (
    HOST,
    QUESTIONS,
    RESULTS,
    Tally,
    _quantile,
    free_port,
    start_serve,
    stop,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[1]
COLLECTION = "replicas"


@dataclass
class Repeats:
    """When each question was first answered, and the LLM calls of the requests for it."""

    #: Shared by the phases: a question answered in an earlier phase is a repeat in the next.
    first_answered: dict[str, float]
    first_calls: list[int] = field(default_factory=list)
    concurrent_calls: list[int] = field(default_factory=list)
    repeat_calls: list[int] = field(default_factory=list)

    def record(self, question: str, sent: float, calls: int) -> None:
        answered = self.first_answered.get(question)
        if answered is None:
            self.first_answered[question] = time.monotonic()
            self.first_calls.append(calls)
        elif sent >= answered:
            self.repeat_calls.append(calls)
        else:
            self.concurrent_calls.append(calls)

    def summary(self) -> dict[str, Any]:
        repeats = self.repeat_calls
        return {
            "questions": len(self.first_calls),
            "llm_calls_first": sum(self.first_calls),
            "concurrent_first_asks": len(self.concurrent_calls),
            "llm_calls_concurrent_first_asks": sum(self.concurrent_calls),
            "repeats": len(repeats),
            "llm_calls_repeats": sum(repeats),
            "llm_calls_per_repeat": sum(repeats) / len(repeats) if repeats else None,
        }


@dataclass
class Phase:
    repeats: Repeats
    tallies: dict[str, Tally] = field(default_factory=dict)
    later_turns: int = 0
    later_turns_with_history: int = 0
    turns_by_replica: dict[str, int] = field(default_factory=dict)


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: make system-deps (apt, as root)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=(work / "redis.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, f"redis://{HOST}:{port}/0"


async def run_phase(
    urls: list[str], clients: int, seconds: float, timeout: float, answered: dict[str, float]
) -> Phase:
    phase = Phase(Repeats(answered))
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        end = time.monotonic() + seconds

        async def user(u: int) -> None:
            session = f"bench-{uuid.uuid4().hex}"
            turns = 0
            n = 0
            while time.monotonic() < end:
                replica = urls[(u + n) % len(urls)]
                question = QUESTIONS[(u + n) % len(QUESTIONS)]
                n += 1
                if u % 2 == 0:
                    path, body = "/v1/retrieve", {"query": question}
                else:
                    path = "/v1/chat"
                    body = {"session_id": session, "stream": False,
                            "messages": [{"role": "user", "content": question}]}  # fmt: skip
                tally = phase.tallies.setdefault(path, Tally())
                sent = time.monotonic()
                status, data, wait = await _request(client, tally, replica + path, body)
                if status == 200 and data is not None:
                    if path == "/v1/retrieve":
                        calls = int((data["report"].get("llm") or {}).get("calls", 0))
                        phase.repeats.record(question, sent, calls)
                    else:
                        if turns:
                            phase.later_turns += 1
                            has_history = data["timings"]["condense_s"] is not None
                            phase.later_turns_with_history += has_history
                        turns += 1
                        name = "a" if replica == urls[0] else "b"
                        phase.turns_by_replica[name] = phase.turns_by_replica.get(name, 0) + 1
                if wait:
                    await asyncio.sleep(min(wait, max(0.0, end - time.monotonic())))

        await asyncio.gather(*(user(u) for u in range(clients)))
    return phase


async def _request(
    client: httpx.AsyncClient, tally: Tally, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any] | None, float]:
    """One request: (status, JSON body of a 200, seconds to wait before the next one)."""
    started = time.perf_counter()
    try:
        response = await client.post(url, json=body)
        data = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        tally.error(f"{type(exc).__name__}: {exc}")
        return 0, None, 0.0
    if response.status_code == 200:
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - started)
        return 200, data, 0.0
    if response.status_code == 503 and response.headers.get("retry-after"):
        tally.overloaded += 1
        return 503, None, float(response.headers["retry-after"])
    tally.error(f"HTTP {response.status_code}: {response.text[:120]}")
    return response.status_code, None, 0.0


def summarise(phase: Phase, clients: int, seconds: float, load: tuple[float, float]) -> dict:
    endpoints = {}
    for path, t in sorted(phase.tallies.items()):
        lat = sorted(t.latencies)
        endpoints[path] = {
            "requests": t.total, "ok": t.ok, "overloaded_503": t.overloaded,
            "errors": t.errors, "error_examples": t.error_examples,
            "p50_s": _quantile(lat, 0.5), "p95_s": _quantile(lat, 0.95),
        }  # fmt: skip
    return {
        "clients": clients,
        "seconds": seconds,
        "load_average_1min": {"before": load[0], "after": load[1]},
        "endpoints": endpoints,
        "repeated_questions": phase.repeats.summary(),
        "chat_sessions": {
            "later_turns": phase.later_turns,
            "later_turns_with_history": phase.later_turns_with_history,
            "turns_by_replica": phase.turns_by_replica,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="8,50", help="clients per phase (default: 8,50)")
    parser.add_argument("--seconds", type=float, default=25.0, help="per phase (default: 25)")
    parser.add_argument("--top-k", type=int, default=4, help="candidates judged per question")
    parser.add_argument("--answer-max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300.0, help="client timeout, seconds")
    parser.add_argument(
        "--server-timeout", type=float, default=120.0, help="the replicas' request and chat timeout"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_replicas")
    args = parser.parse_args(argv)

    from llamaindex_rerankers import local_llm_server
    from llamaindex_rerankers.pipeline import ChromaConfig, index_folder, make_embed_model

    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    print(f"logs: {work}", file=sys.stderr)
    wall = time.monotonic()
    corpus = resources.files("llamaindex_rerankers") / "sample_corpus"
    with resources.as_file(corpus) as src:
        index_folder(src, ChromaConfig(persist_dir=str(work / "chroma"), collection=COLLECTION),
                     embed_model=make_embed_model(), show_progress=False)  # fmt: skip
    redis_process, redis_url = start_redis(work)
    phases = {}
    replicas: list[tuple[subprocess.Popen[bytes], str]] = []
    exit_codes: list[int] = []
    try:
        with local_llm_server(n_ctx=2048) as llm:
            replica_args = [
                "--persist-dir", str(work / "chroma"), "--collection", COLLECTION,
                "--reranker", "llm", "--top-k", str(args.top_k), "--top-n", "2",
                "--abstain-below", "0",
                "--llm-base-url", llm.base_url, "--llm-model", llm.model,
                "--llm-context-window", "2048",
                "--answer-max-tokens", str(args.answer_max_tokens),
                "--llm-cache", redis_url, "--session-store", redis_url,
                # One small LLM on shared cores judges for both replicas: a cold question
                # waits behind the others' judgements for longer than the default 60 s.
                "--request-timeout", str(args.server_timeout),
                "--chat-timeout", str(args.server_timeout),
                # Sized for one small LLM on two shared cores: what does not fit is refused at
                # once (503 + Retry-After) instead of queueing into a 504.
                "--max-concurrent", "2", "--max-queue", "2",
                "--max-chats", "1", "--max-chat-queue", "1", "--llm-concurrency", "2",
            ]  # fmt: skip
            for name in ("a", "b"):
                # No OpenAI settings leak in: every LLM call goes to the local server.
                replicas.append(
                    start_serve(
                        replica_args,
                        work / f"replica-{name}.log",
                        unset=("OPENAI_API_KEY", "OPENAI_BASE_URL"),
                        wait=False,
                    )
                )
            for (process, url), name in zip(replicas, "ab", strict=True):
                wait_ready(process, url, work / f"replica-{name}.log")
            urls = [url for _, url in replicas]
            answered: dict[str, float] = {}
            for clients in (int(c) for c in args.clients.split(",")):
                print(f"{clients} clients x {args.seconds:.0f} s", file=sys.stderr)
                before = os.getloadavg()[0]
                phase = asyncio.run(run_phase(urls, clients, args.seconds, args.timeout, answered))
                load = (before, os.getloadavg()[0])
                phases[f"{clients} clients"] = summarise(phase, clients, args.seconds, load)
            exit_codes = [stop(process) for process, _ in replicas]
    finally:
        for process, _ in replicas:
            stop(process)
        stop(redis_process)

    result = {
        "command": "source scripts/offline-env.sh && .venv/bin/python benchmarks/bench_replicas.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": time.monotonic() - wall,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "replicas": 2,
            "reranker": "llm (SmolLM2-135M on one local llama-server)",
            "top_k": args.top_k,
            "server_timeout_s": args.server_timeout,
            "admission_per_replica": "max_concurrent 2, max_queue 2, max_chats 1, "
            "max_chat_queue 1, llm_concurrency 2",
            "state": "one redis-server: --llm-cache and --session-store",
            "index": "one embedded Chroma folder (sample corpus)",
            "replica_exit_codes_after_sigterm": exit_codes,
        },
        "phases": phases,
    }
    result["rows"] = rows(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    errors = sum(e["errors"] for p in phases.values() for e in p["endpoints"].values())
    return 0 if errors == 0 else 1


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per phase and endpoint (the docs' Benchmarks page shows these)."""
    out = []
    for name, phase in result["phases"].items():
        repeats, sessions = phase["repeated_questions"], phase["chat_sessions"]
        for path, e in phase["endpoints"].items():
            row: dict[str, Any] = {
                "phase": name,
                "endpoint": path,
                "load avg before": phase["load_average_1min"]["before"],
                "load avg after": phase["load_average_1min"]["after"],
            }
            row |= {k: v for k, v in e.items() if k != "error_examples"}
            if path == "/v1/retrieve":
                row |= {
                    "repeats": repeats["repeats"],
                    "LLM calls per repeat": repeats["llm_calls_per_repeat"],
                    "concurrent first asks": repeats["concurrent_first_asks"],
                }
            else:
                row |= {
                    "later turns": sessions["later_turns"],
                    "with history": sessions["later_turns_with_history"],
                }
            out.append(row)
    return out


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Two `serve` replicas sharing one Redis (judgements and sessions)",
        "",
        f"`{result['command']}`",
        "",
        f"- date: {result['date']}; wall time {result['wall_s']:.0f} s; "
        f"{result['machine']['cpus']} cores shared with other jobs (the clients, both "
        "replicas, llama-server and Redis run on them)",
        f"- {result['setup']['reranker']}, top_k {result['setup']['top_k']}, request and chat "
        f"timeout {result['setup']['server_timeout_s']:.0f} s; per replica "
        f"{result['setup']['admission_per_replica']}; "
        f"{result['setup']['state']}; {result['setup']['index']}",
        "",
        "| phase | load avg before → after | endpoint | requests | 200 | 503 + Retry-After "
        "| errors | p50 s | p95 s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, phase in result["phases"].items():
        load = phase["load_average_1min"]
        for path, e in phase["endpoints"].items():
            lines.append(
                f"| {name} | {load['before']:.2f} → {load['after']:.2f} | `{path}` | "
                f"{e['requests']} | {e['ok']} | {e['overloaded_503']} | {e['errors']} | "
                f"{_s(e['p50_s'])} | {_s(e['p95_s'])} |"
            )
    lines += [
        "",
        "| phase | questions | LLM calls, first asks | concurrent first asks (calls) "
        "| repeats | LLM calls on repeats | per repeat | chat turns after the first "
        "| with their history |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, phase in result["phases"].items():
        r, c = phase["repeated_questions"], phase["chat_sessions"]
        per = "–" if r["llm_calls_per_repeat"] is None else f"{r['llm_calls_per_repeat']:.2f}"
        lines.append(
            f"| {name} | {r['questions']} | {r['llm_calls_first']} | "
            f"{r['concurrent_first_asks']} ({r['llm_calls_concurrent_first_asks']}) | "
            f"{r['repeats']} | {r['llm_calls_repeats']} | {per} | {c['later_turns']} | "
            f"{c['later_turns_with_history']} |"
        )
    lines += [
        "",
        "LLM calls are the judgements each `/v1/retrieve` response reports its replica asked "
        "the endpoint for (calibration's content-free judgement included). A repeat was sent "
        "after the question's first answer arrived (in this phase or an earlier one), from "
        "either replica: its judgements come "
        "from Redis. A concurrent first ask was sent while the first was still being judged, "
        "so it judged too (the cache holds finished judgements only); a judgement that failed "
        "(an LLM timeout: the passage is left unjudged) is not cached, so a repeat asks for "
        "it again. A chat turn after a "
        "session's first alternates replicas; 'with their history' counts the turns whose "
        "replica found the session in Redis (the question was condensed with it).",
    ]
    examples = [x for p in result["phases"].values() for e in p["endpoints"].values()
                for x in e["error_examples"]]  # fmt: skip
    if examples:
        lines += ["", "Errors seen: " + "; ".join(examples)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

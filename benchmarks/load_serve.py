"""Load test of ``serve``: a real server process on 127.0.0.1, many concurrent HTTP clients.

One command starts ``python -m llamaindex_rerankers.server --demo`` (the cross-encoder on the
sample corpus, answers from the local SmolLM2 llama.cpp server it starts), then runs two phases
with a bounded asyncio + httpx client, one task per simulated user, each sending its next request
when the previous one is answered (and waiting ``Retry-After`` seconds after a 503, as a polite
client does):

1. ``--clients`` users (50) for ``--seconds`` (60) alternating ``/v1/retrieve`` and
   ``/v1/rerank`` (20 sample-corpus documents per rerank), twice (``--search-rounds``), so
   that the memory after the second round shows whether it settles;
2. ``--chat-clients`` users (4) for ``--chat-seconds`` (40) on streamed ``/v1/chat``.

Every request is accounted for: answered 200, answered 503 with Retry-After (overload, by
design), or an error (any other status, a 503 without Retry-After, a broken stream, a
connection failure or a client timeout: a lost request). Requests still in flight when a phase
ends are waited for and counted. It reports requests/s, p50/p95/p99 latency of the 200s, errors,
503s, and the server's resident memory (its own process, not the llama.cpp child) before and
after each phase. Run from the repository root:

    source scripts/offline-env.sh
    .venv/bin/python benchmarks/load_serve.py [--clients 50] [--seconds 60]
        [--chat-clients 4] [--chat-seconds 40] [--skip-chat]

Writes ``benchmarks/results/load_serve.json`` and ``.md``. The cross-encoder comes from
``$LLAMAINDEX_RERANKERS_CROSS_ENCODER`` (default: ``../shared/models/minilm-l6-ce`` when present),
the embedding model and the GGUF from ``scripts/offline-env.sh``.

This is a benchmark, not a test: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HOST = "127.0.0.1"
#: The phases run by default (see --phases).
PHASES = (
    "rerank:1",
    "rerank:8",
    "rerank:50",
    "rerank:50:eager",
    "retrieve:1",
    "retrieve:8",
    "retrieve:50",
    "retrieve:50:eager",
    "large",
)
#: The large-request phase: requests of this many documents of this many characters.
LARGE_DOCUMENTS = 1000
LARGE_CHARS = 3900
QUESTIONS = (
    "best practices for pruning apple trees",
    "why are my apples so small?",
    "is Apple stock a good buy after the earnings report?",
    "how do I replace the timing belt on a diesel van?",
    "how do I graft a fruit tree?",
    "when should I fertilize apple trees?",
    "how do I store apples over winter?",
    "what pests attack an orchard?",
    "how to train an espalier",
    "how to keep a MacBook battery healthy",
)


@dataclass
class Tally:
    """Outcomes of one endpoint in one phase."""

    latencies: list[float] = field(default_factory=list)
    refusal_latencies: list[float] = field(default_factory=list)
    retry_afters: list[float] = field(default_factory=list)
    ok: int = 0
    overloaded: int = 0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(what)

    @property
    def total(self) -> int:
        return self.ok + self.overloaded + self.errors

    def summary(self, seconds: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        refused = sorted(self.refusal_latencies)
        return {
            "requests": self.total,
            "ok": self.ok,
            "overloaded_503": self.overloaded,
            "errors": self.errors,
            "error_examples": self.error_examples,
            "requests_per_s": self.total / seconds if seconds else 0.0,
            "ok_per_s": self.ok / seconds if seconds else 0.0,
            "p50_s": _quantile(lat, 0.50),
            "p95_s": _quantile(lat, 0.95),
            "p99_s": _quantile(lat, 0.99),
            "max_s": lat[-1] if lat else None,
            "refusal_p95_s": _quantile(refused, 0.95),
            "refusal_max_s": refused[-1] if refused else None,
            "retry_after_min_max": [min(self.retry_afters), max(self.retry_afters)]
            if self.retry_afters
            else None,
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_serve(
    args: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    unset: Sequence[str] = (),
    wait: bool = True,
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m llamaindex_rerankers.server ARGS`` on a free port of ``HOST``, its output in
    ``log``, this checkout on its path, the hub offline, ``env`` added and ``unset`` removed;
    returns it with its URL once ``/readyz`` answers (at once with ``wait=False``: then call
    :func:`wait_ready`, e.g. after starting several)."""
    port = free_port()
    command = [sys.executable, "-m", "llamaindex_rerankers.server", "--host", HOST,
               "--port", str(port), "--no-access-log", *args]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    for name in unset:
        full_env.pop(name, None)
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://{HOST}:{port}"
    if wait:
        wait_ready(process, url, log)
    return process, url


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, up to 60 s to exit, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``serve --demo`` with the cross-encoder and this benchmark's settings."""
    command = [
        "--demo", "--reranker", "cross-encoder",
        "--top-k", str(args.top_k), "--top-n", str(args.top_n),
        "--answer-max-tokens", str(args.answer_max_tokens), *args.server_args.split(),
    ]  # fmt: skip
    if args.skip_chat:
        command.append("--no-answers")
    env = {}
    shared_ce = REPO.parent / "shared" / "models" / "minilm-l6-ce"
    if not os.environ.get("LLAMAINDEX_RERANKERS_CROSS_ENCODER") and shared_ce.exists():
        env["LLAMAINDEX_RERANKERS_CROSS_ENCODER"] = str(shared_ce)
    return start_serve(command, log, env=env)


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log: Path, probe: str = "/readyz"
) -> None:
    """Return once ``url + probe`` answers 200; raise with the process's log when it exits
    first or does not answer within 300 s (then it is killed)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + probe, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{url}{probe} did not answer within 300 s:\n{log.read_text()}")


def corpus_documents() -> list[str]:
    folder = REPO / "llamaindex_rerankers" / "sample_corpus"
    return [p.read_text() for p in sorted(folder.glob("*.md"))]


async def _one(
    client: httpx.AsyncClient, tally: Tally, method: str, path: str, body: dict[str, Any]
) -> float:
    """Send one request; returns the seconds to wait before the next one (Retry-After)."""
    started = time.perf_counter()
    try:
        if body.get("stream"):
            async with client.stream(method, path, json=body) as r:
                text = "".join([chunk async for chunk in r.aiter_text()])
            status = r.status_code
            complete = text.rstrip().endswith("data: [DONE]") and '"type":"error"' not in text
        else:
            r = await client.request(method, path, json=body)
            status, complete = r.status_code, True
            if status == 200:
                r.json()
    except (httpx.HTTPError, ValueError) as exc:
        tally.error(f"{type(exc).__name__}: {exc}")
        return 0.0
    elapsed = time.perf_counter() - started
    if status == 200 and complete:
        tally.ok += 1
        tally.latencies.append(elapsed)
        return 0.0
    if status == 503 and r.headers.get("retry-after"):
        tally.overloaded += 1
        tally.refusal_latencies.append(elapsed)
        tally.retry_afters.append(float(r.headers["retry-after"]))
        return float(r.headers["retry-after"])
    tally.error(f"HTTP {status}{'' if complete else ' (incomplete stream)'}")
    return 0.0


async def run_phase(
    url: str,
    clients: int,
    seconds: float,
    requests: Callable[[int, int], tuple[str, dict[str, Any]]],
    timeout: float,
    honour_retry_after: bool = True,
) -> tuple[dict[str, Tally], float]:
    """``clients`` users for ``seconds``; user u's n-th request is ``requests(u, n)``; after a
    503 a user waits its Retry-After, or (``honour_retry_after=False``) retries at once."""
    tallies: dict[str, Tally] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        started = time.monotonic()
        end = started + seconds

        async def user(u: int) -> None:
            n = 0
            while time.monotonic() < end:
                path, body = requests(u, n)
                n += 1
                wait = await _one(client, tallies.setdefault(path, Tally()), "POST", path, body)
                if wait and honour_retry_after:
                    await asyncio.sleep(min(wait, max(0.0, end - time.monotonic())))

        await asyncio.gather(*(user(u) for u in range(clients)))
        elapsed = time.monotonic() - started
    return tallies, elapsed


async def large_phase(url: str, docs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Four requests of 1,000 documents of 3,900 characters at once, and 2 s later a 4-document
    rerank: how each is answered and how long the small one takes."""
    text = "\n".join(docs)
    big = [
        (text * (LARGE_CHARS // len(text) + 2))[i : i + LARGE_CHARS] for i in range(LARGE_DOCUMENTS)
    ]
    small = {"query": QUESTIONS[0], "documents": [d[:300] for d in docs[:4]]}
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout) as client:

        async def send(body: dict[str, Any]) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                r = await client.post("/v1/rerank", json=body)
            except httpx.HTTPError as exc:
                return {"error": type(exc).__name__, "s": time.perf_counter() - started}
            out = {"status": r.status_code, "s": time.perf_counter() - started}
            if r.headers.get("retry-after"):
                out["retry_after"] = r.headers["retry-after"]
            return out

        large = [
            asyncio.ensure_future(send({"query": QUESTIONS[i], "documents": big})) for i in range(4)
        ]
        await asyncio.sleep(2.0)
        small_result = await send(small)
        large_results = await asyncio.gather(*large)
    return {"large": large_results, "small_during_large": small_result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phases",
        nargs="+",
        default=list(PHASES),
        help="ENDPOINT:CLIENTS[:eager] (rerank or retrieve; eager: clients retry a 503 at "
        "once instead of waiting its Retry-After), or 'large'; default: all of " + " ".join(PHASES),
    )
    parser.add_argument("--phase-seconds", type=float, default=60.0, help="per phase")
    parser.add_argument(
        "--server-args", default="", help="more serve arguments, e.g. '--max-queue-wait 3'"
    )
    parser.add_argument("--chat-clients", type=int, default=4)
    parser.add_argument("--chat-seconds", type=float, default=40.0)
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--rerank-documents", type=int, default=4)
    parser.add_argument("--answer-max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0, help="client timeout, seconds")
    parser.add_argument("--output", type=Path, default=RESULTS / "load_serve")
    args = parser.parse_args(argv)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp(prefix="load-serve-")) / "server.log"
    print(f"server log: {log}", file=sys.stderr)
    wall = time.monotonic()
    load_before = os.getloadavg()[0]
    process, url = start_server(args, log)
    docs = corpus_documents()
    phases: dict[str, Any] = {}
    try:
        memory = {"ready": rss_mib(process.pid)}
        # Warm-up: a few requests, so first-call costs are not in the figures.
        for q in QUESTIONS[:3]:
            httpx.post(url + "/v1/retrieve", json={"query": q}, timeout=120).raise_for_status()
        memory["before"] = rss_mib(process.pid)

        def retrieve(u: int, n: int) -> tuple[str, dict[str, Any]]:
            return "/v1/retrieve", {"query": QUESTIONS[(u + n) % len(QUESTIONS)]}

        def rerank(u: int, n: int) -> tuple[str, dict[str, Any]]:
            query = QUESTIONS[(u + n) % len(QUESTIONS)]
            start = (u * 7 + n) % len(docs)
            chosen = [docs[(start + i) % len(docs)][:300] for i in range(args.rerank_documents)]
            return "/v1/rerank", {"query": query, "documents": chosen}

        for spec in args.phases:
            endpoint, _, rest = spec.partition(":")
            clients_text, _, mode = rest.partition(":")
            if endpoint == "large":
                print("large: four 1,000-document reranks and a small one", file=sys.stderr)
                phases["large"] = asyncio.run(large_phase(url, docs, args))
                phases["large"]["rss_mib_after"] = rss_mib(process.pid)
                phases["large"]["load_average_1min"] = os.getloadavg()[0]
                continue
            clients = int(clients_text)
            honour = mode != "eager"
            requests = {"rerank": rerank, "retrieve": retrieve}[endpoint]
            name = f"{endpoint}, {clients} clients" + ("" if honour else ", retrying at once")
            print(f"{name}: {args.phase_seconds:.0f} s", file=sys.stderr)
            refusals_before = server_refusals(url)
            tallies, elapsed = asyncio.run(
                run_phase(url, clients, args.phase_seconds, requests, args.timeout, honour)
            )
            phases[name] = _phase(tallies, elapsed, clients, args.phase_seconds)
            phases[name]["server_refusals"] = server_refusals(url, since=refusals_before)
            phases[name]["rss_mib_after"] = rss_mib(process.pid)
            phases[name]["load_average_1min"] = os.getloadavg()[0]
            memory[f"after {name}"] = phases[name]["rss_mib_after"]

        if not args.skip_chat:

            def chat(u: int, n: int) -> tuple[str, dict[str, Any]]:
                question = QUESTIONS[(u + n) % 3]  # three answerable questions
                body = {"messages": [{"role": "user", "content": question}], "stream": True}
                return "/v1/chat", body

            print(f"chat: {args.chat_clients} clients x {args.chat_seconds:.0f} s", file=sys.stderr)
            tallies, elapsed = asyncio.run(
                run_phase(url, args.chat_clients, args.chat_seconds, chat, args.timeout)
            )
            memory["after_chat"] = rss_mib(process.pid)
            phases["chat"] = _phase(tallies, elapsed, args.chat_clients, args.chat_seconds)
        metrics = httpx.get(url + "/metrics", timeout=30).text
    finally:
        exit_code = stop(process)

    result = {
        "command": "source scripts/offline-env.sh && .venv/bin/python benchmarks/load_serve.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": time.monotonic() - wall,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min_before": load_before,
            "load_average_1min_after": os.getloadavg()[0],
        },
        "server": {
            "reranker": "cross-encoder",
            "top_k": args.top_k,
            "top_n": args.top_n,
            "defaults": "max_concurrent 8, max_queue 32, max_queue_wait 0.5, max_chats 4, "
            "max_chat_queue 16, pool_threads 2",
            "server_args": args.server_args,
            "exit_code_after_sigterm": exit_code,
            "rss_mib": memory,
            "rejected_overloaded": _sum_metric(metrics, "rejected_requests_total", "overloaded"),
        },
        "phases": phases,
    }
    # with_name, not with_suffix: "load_wait_0.5" is a name, not "load_wait_0" and ".5".
    json_file = args.output.with_name(args.output.name + ".json")
    json_file.write_text(json.dumps(result, indent=2) + "\n")
    args.output.with_name(args.output.name + ".md").write_text(markdown(result))
    print(markdown(result))
    lost = sum(t["errors"] for p in phases.values() for t in p.get("endpoints", {}).values()) + sum(
        "error" in r for r in phases.get("large", {}).get("large", [])
    )
    return 0 if lost == 0 and exit_code == 0 else 1


def _phase(
    tallies: dict[str, Tally], elapsed: float, clients: int, seconds: float
) -> dict[str, Any]:
    total = Tally()
    for t in tallies.values():
        total.latencies += t.latencies
        total.ok += t.ok
        total.overloaded += t.overloaded
        total.errors += t.errors
        total.error_examples += t.error_examples
    return {
        "clients": clients,
        "seconds": seconds,
        "elapsed_s": elapsed,
        "endpoints": {path: t.summary(elapsed) for path, t in sorted(tallies.items())},
        "all": total.summary(elapsed),
    }


def server_refusals(url: str, since: dict[str, float] | None = None) -> dict[str, float]:
    """The server's own timing of its 503s (``refusal_duration_seconds``, every endpoint):
    count, how many within 50 ms and the mean, minus ``since`` (an earlier reading)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    name = "llamaindex_rerankers_refusal_duration_seconds"
    now = {"count": 0.0, "within_50ms": 0.0, "sum_s": 0.0}
    for line in text.splitlines():
        value = line.rpartition(" ")[2]
        if line.startswith(name + "_count{"):
            now["count"] += float(value)
        elif line.startswith(name + "_sum{"):
            now["sum_s"] += float(value)
        elif line.startswith(name + "_bucket{") and 'le="0.05"' in line:
            now["within_50ms"] += float(value)
    if since is None:
        return now
    diff = {k: now[k] - since.get(k, 0.0) for k in now}
    diff["mean_s"] = diff["sum_s"] / diff["count"] if diff["count"] else 0.0
    return diff


def _sum_metric(text: str, name: str, reason: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(f"llamaindex_rerankers_{name}{{") and f'reason="{reason}"' in line
    )


def _range(values: list[float] | None) -> str:
    return "–" if not values else f"{values[0]:g}–{values[1]:g}"


def _within(phase: dict[str, Any]) -> str:
    refusals = phase.get("server_refusals")
    if not refusals or not refusals["count"]:
        return "–"
    return f"{refusals['within_50ms'] / refusals['count']:.1%} (mean {refusals['mean_s']:.3f} s)"


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    mem = result["server"]["rss_mib"]
    lines = [
        "# Load test: `serve --demo` (cross-encoder, sample corpus)",
        "",
        f"`{result['command']}`",
        "",
        f"- date: {result['date']}; wall time {result['wall_s']:.0f} s",
        f"- machine: {m['cpus']} cores (shared with other jobs; 1-min load average "
        f"{m['load_average_1min_before']:.2f} → {m['load_average_1min_after']:.2f}), "
        f"Python {m['python']}; the load client runs on the same cores",
        f"- server: top_k {result['server']['top_k']}, top_n {result['server']['top_n']}, "
        f"{result['server']['defaults']}; exit code after SIGTERM: "
        f"{result['server']['exit_code_after_sigterm']}",
        "",
        "| phase | endpoint | clients × s | requests | answered/s | 200 | 200/s "
        "| 503 + Retry-After | errors (lost) | p50 s | p95 s | p99 s | 503 answered in "
        "(p95) s | server: 503s within 50 ms | Retry-After s | load avg | RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, phase in result["phases"].items():
        if "endpoints" not in phase:
            continue
        rows = [*phase["endpoints"].items()]
        if len(rows) > 1:
            rows.append(("all", phase["all"]))
        for path, t in rows:
            lines.append(
                f"| {name} | `{path}` | {phase['clients']} × {phase['seconds']:.0f} | "
                f"{t['requests']} | {t['requests_per_s']:.1f} | {t['ok']} | {t['ok_per_s']:.2f} | "
                f"{t['overloaded_503']} | {t['errors']} | {_s(t['p50_s'])} | {_s(t['p95_s'])} | "
                f"{_s(t['p99_s'])} | {_s(t['refusal_p95_s'])} | {_within(phase)} | "
                f"{_range(t['retry_after_min_max'])} | {phase.get('load_average_1min', 0):.2f} | "
                f"{phase.get('rss_mib_after', 0):.0f} |"
            )
    large = result["phases"].get("large")
    if large:
        answers = ", ".join(
            f"{r.get('status', r.get('error'))} in {r['s']:.1f} s"
            + (f" (Retry-After {r['retry_after']})" if "retry_after" in r else "")
            for r in large["large"]
        )
        small = large["small_during_large"]
        lines += [
            "",
            f"Large requests ({LARGE_DOCUMENTS} documents of {LARGE_CHARS} characters, four at "
            f"once): {answers}. A 4-document rerank sent 2 s later: "
            f"{small.get('status', small.get('error'))} in {small['s']:.2f} s. Load average "
            f"{large['load_average_1min']:.2f}, RSS after {large['rss_mib_after']:.0f} MiB.",
        ]
    lines += [
        "",
        "Latencies are of the 200 answers (a streamed chat until its `[DONE]`). Server memory "
        "(resident, the serve process without the llama.cpp child), MiB: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in mem.items())
        + ".",
    ]
    client_503 = sum(p["all"]["overloaded_503"] for p in result["phases"].values() if "all" in p)
    lines += [
        "",
        f"503s seen by the clients: {client_503}; overload refusals counted by the server "
        f'(`rejected_requests_total{{reason="overloaded"}}`): '
        f"{result['server']['rejected_overloaded']:.0f}. A 503 client waits its Retry-After "
        "(computed by the server from the work ahead) before its next request, except in the "
        "phases marked 'retrying at once'. '503 answered in' is timed by the client, which "
        "shares the 2 cores with the server; 'server: 503s within 50 ms' is the server's own "
        "timing (`refusal_duration_seconds`, from the request reaching the application to its "
        "last byte: the time in the kernel's accept queue and in the client is not in it).",
    ]
    examples = [
        e for p in result["phases"].values() if "all" in p for e in p["all"]["error_examples"]
    ]
    if examples:
        lines += ["", "Errors seen: " + "; ".join(examples)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

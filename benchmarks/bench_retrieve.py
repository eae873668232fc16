"""``/v1/retrieve`` from one client against the speed of its parts, and where the time goes.

Starts ``serve --demo --persist-dir D --no-answers`` (the cross-encoder, the demo index in D),
copies D once the server is ready, and opens the copy in this process with the server's own
:class:`~llamaindex_rerankers.server.Backend` and settings (the same models, the same reranker
options, the injection detector included). Then, for each demo question in rotation,
``--repeats`` times, one after the other (one client, nothing else running):

- **parts**: the query embedding and Chroma query (``index.as_retriever(top_k).retrieve``),
  then the reranker's ``rerank`` on those candidates, each timed in this process;
- **pipeline**: ``Backend.search`` as the endpoint runs it (admitted by the search gate, its
  work in the backend's thread pool taking turns, the result assembled), in this process;
- **HTTP**: ``POST /v1/retrieve`` timed by the client (FastAPI, validation, JSON both ways),
  with the server's own ``timings``.

The target of issue 20: the HTTP median within 1.3x of the parts' median. The differences say
where the time goes: pipeline − parts is the thread pool, the turns and assembling the result;
HTTP − pipeline is the web framework, the JSON and the loopback. A cProfile of the parts (in
this thread) lists the functions that take their time.

    source scripts/offline-env.sh
    .venv/bin/python benchmarks/bench_retrieve.py [--repeats 15]

Writes ``benchmarks/results/retrieve_parts.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from load_serve import QUESTIONS, start_serve, stop
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def start_server(folder: Path, top_k: int, top_n: int, log: Path) -> tuple[Any, str]:
    """``serve --demo`` with the cross-encoder, its demo index kept in ``folder``."""
    args = ["--demo", "--persist-dir", str(folder), "--reranker", "cross-encoder",
            "--top-k", str(top_k), "--top-n", str(top_n), "--no-answers"]  # fmt: skip
    return start_serve(args, log)


def in_process_backend(folder: Path, top_k: int, top_n: int) -> Any:
    from llamaindex_rerankers.server import Backend
    from llamaindex_rerankers.server.command import DEMO_COLLECTION
    from llamaindex_rerankers.server.settings import ServerSettings

    settings = ServerSettings.from_env(
        persist_dir=str(folder),
        collection=DEMO_COLLECTION,
        reranker="cross-encoder",
        top_k=top_k,
        top_n=top_n,
        answers=False,
    )
    backend = Backend(settings)
    backend.load()
    return backend


def parts(backend: Any, query: str, top_k: int) -> tuple[float, float]:
    """Seconds of the retrieval (embedding + Chroma) and of the rerank, called directly."""
    started = time.perf_counter()
    nodes = backend.index.as_retriever(similarity_top_k=top_k).retrieve(query)
    retrieved = time.perf_counter()
    backend.reranker.rerank(nodes, query)
    return retrieved - started, time.perf_counter() - retrieved


async def pipeline(backend: Any, query: str, top_k: int, top_n: int) -> float:
    """Seconds of ``Backend.search`` as ``/v1/retrieve`` runs it (admitted, with turns)."""
    started = time.perf_counter()
    job = backend.admit_retrieve(top_k)
    try:
        await backend.search_gate.start(job)
        await backend.search(query, top_k=top_k, top_n=top_n, job=job)
    finally:
        job.finish()
    return time.perf_counter() - started


#: What each timing is, in the order of the table.
STAGES = {
    "retrieve": "embedding + Chroma query",
    "rerank": "rerank (cross-encoder + injection detector)",
    "parts": "parts (the two above, same call)",
    "pipeline": "pipeline: Backend.search (admission, thread pool, turns, result)",
    "http": "HTTP: POST /v1/retrieve, one client",
    "server_total": "the server's own timings.total_s",
}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds over the questions")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "retrieve_parts")
    args = parser.parse_args(argv)
    wall = time.monotonic()
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="bench-retrieve-"))
    process, url = start_server(workdir / "index", args.top_k, args.top_n, workdir / "serve.log")
    samples: dict[str, list[float]] = {
        k: [] for k in ("retrieve", "rerank", "parts", "pipeline", "http", "server_total")
    }
    try:
        shutil.copytree(workdir / "index", workdir / "copy")
        backend = in_process_backend(workdir / "copy", args.top_k, args.top_n)
        loop = asyncio.new_event_loop()
        client = httpx.Client(base_url=url, timeout=120)
        questions = list(QUESTIONS)
        for q in questions[:3]:  # warm-up: first calls load lazily
            parts(backend, q, args.top_k)
            loop.run_until_complete(pipeline(backend, q, args.top_k, args.top_n))
            client.post("/v1/retrieve", json={"query": q}).raise_for_status()
        rounds = [q for _ in range(args.repeats) for q in questions]
        for q in tqdm(rounds, desc="retrieve: parts, pipeline, HTTP", unit="question"):
            retrieve_s, rerank_s = parts(backend, q, args.top_k)
            samples["retrieve"].append(retrieve_s)
            samples["rerank"].append(rerank_s)
            samples["parts"].append(retrieve_s + rerank_s)
            samples["pipeline"].append(
                loop.run_until_complete(pipeline(backend, q, args.top_k, args.top_n))
            )
            started = time.perf_counter()
            r = client.post("/v1/retrieve", json={"query": q})
            samples["http"].append(time.perf_counter() - started)
            r.raise_for_status()
            samples["server_total"].append(r.json()["timings"]["total_s"])
        profiler = cProfile.Profile()
        profiler.enable()
        for q in questions:
            parts(backend, q, args.top_k)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        client.close()
        loop.close()
        backend.close()
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)

    medians = {k: _median(v) for k, v in samples.items()}
    result = {
        "command": "source scripts/offline-env.sh && .venv/bin/python benchmarks/bench_retrieve.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.monotonic() - wall, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min_before": load_before,
            "load_average_1min_after": os.getloadavg()[0],
        },
        "top_k": args.top_k,
        "top_n": args.top_n,
        "calls_each": len(samples["http"]),
        "median_s": medians,
        "http_over_parts": medians["http"] / medians["parts"],
        "pipeline_over_parts": medians["pipeline"] / medians["parts"],
        "rows": [
            {"stage": STAGES[k], "median_ms": round(medians[k] * 1000, 1), "over_parts": None}
            for k in STAGES
        ],
        "notes": [],
        "profile_of_parts": out.getvalue(),
    }
    for row, key in zip(result["rows"], STAGES, strict=True):
        if key in ("pipeline", "http", "server_total"):
            row["over_parts"] = round(medians[key] / medians["parts"], 2)
    result["notes"] = [
        f"HTTP over parts {result['http_over_parts']:.2f}x (target <= 1.3x); pipeline over "
        f"parts {result['pipeline_over_parts']:.2f}x. Medians of {len(samples['http'])} calls "
        "each, one client, the three measured in rotation on the same questions.",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# `/v1/retrieve` against its parts (one client)",
        "",
        f"`{result['command']}`",
        "",
        f"- date: {result['date']}; wall time {result['wall_s']:.0f} s; {result['calls_each']} "
        f"calls each, top_k {result['top_k']}, top_n {result['top_n']}, demo corpus",
        f"- machine: {m['cpus']} cores, Python {m['python']}, 1-min load average "
        f"{m['load_average_1min_before']:.2f} → {m['load_average_1min_after']:.2f}",
        "",
        "| stage | median ms | × parts |",
        "|---|---:|---:|",
        *(
            f"| {r['stage']} | {r['median_ms']:.1f} | {r['over_parts'] or ''} |"
            for r in result["rows"]
        ),
        "",
        f"HTTP / parts: **{result['http_over_parts']:.2f}×** (target ≤ 1.3×); pipeline / parts: "
        f"{result['pipeline_over_parts']:.2f}×.",
        "",
        "cProfile of the parts (tottime, top 12):",
        "",
        "```text",
        *[line for line in result["profile_of_parts"].splitlines() if line.strip()][-16:],
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

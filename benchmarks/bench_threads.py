"""Thread settings of ``CrossEncoderReranker`` on a shared CPU: the default against ``threads=1``.

A web worker calls the reranker in its main thread while other processes use the cores. This
benchmark measures that: each setting runs in a fresh process (OpenMP reads its environment
once), calling ``CrossEncoderReranker.rerank`` in the main thread on 4 short sample-corpus
passages (and on 20, a retrieve's candidates) for ``--seconds``, first on the machine as it is
("quiet"), then while ``--hogs`` processes (default: one per core) spin in pure Python ("busy").
``SentenceTransformerRerank`` (LlamaIndex's own) runs the same calls on the quiet machine, for the
speed target (the default must stay at least 2x faster than it).

Settings: ``default`` (the class defaults; the package sets ``OMP_WAIT_POLICY=PASSIVE`` before
torch loads, so OpenMP threads sleep instead of spinning between parallel regions),
``threads=1``, ``threads=2``, and the default with ``OMP_WAIT_POLICY=ACTIVE`` (spinning threads,
as an application that sets it, or libgomp's own spin-then-sleep default, gets).

    source scripts/offline-env.sh
    .venv/bin/python benchmarks/bench_threads.py [--seconds 8] [--hogs N]

Writes ``benchmarks/results/cross_encoder_threads.json`` and ``.md``. The cross-encoder comes
from ``$LLAMAINDEX_RERANKERS_CROSS_ENCODER``. A benchmark, not a test: the figures depend on the
machine and on what else runs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUERY = "best practices for pruning apple trees"
#: name -> (reranker options, extra environment)
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "default": ({}, {}),
    "threads=1": ({"threads": 1}, {}),
    "threads=2": ({"threads": 2}, {}),
    "default, OMP_WAIT_POLICY=ACTIVE": ({}, {"OMP_WAIT_POLICY": "ACTIVE"}),
}


def passages(n: int) -> list[str]:
    import llamaindex_rerankers

    corpus = Path(llamaindex_rerankers.__file__).parent / "sample_corpus"
    texts = [p.read_text()[:700] for p in sorted(corpus.glob("*.md"))]
    return (texts * (n // len(texts) + 1))[:n]


def worker(kind: str, options: dict[str, Any], docs: int, seconds: float) -> dict[str, Any]:
    """Calls per second in this process's main thread."""
    from llama_index.core.schema import NodeWithScore, TextNode

    nodes = [NodeWithScore(node=TextNode(text=t)) for t in passages(docs)]
    if kind == "sentence-transformers":
        from llama_index.core.postprocessor import SentenceTransformerRerank

        model = os.environ["LLAMAINDEX_RERANKERS_CROSS_ENCODER"]
        st = SentenceTransformerRerank(model=model, top_n=docs)

        def call() -> None:
            st.postprocess_nodes(nodes, query_str=QUERY)

    else:
        from llamaindex_rerankers import CrossEncoderReranker

        reranker = CrossEncoderReranker(**options)
        reranker.load()

        def call() -> None:
            reranker.rerank(nodes, QUERY)

    for _ in range(3):  # warm-up
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    import torch

    return {
        "calls_per_s": round(len(times) / sum(times), 2),
        "p50_ms": round(statistics.median(times) * 1000, 1),
        "calls": len(times),
        "torch_threads": torch.get_num_threads(),
    }


def run_setting(kind: str, name: str, docs: int, seconds: float) -> dict[str, Any]:
    options, env = SETTINGS.get(name, ({}, {}))
    spec = json.dumps({"kind": kind, "options": options, "docs": docs, "seconds": seconds})
    out = subprocess.run(
        [sys.executable, __file__, "--worker", spec],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def hogs(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per setting and condition")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy processes")
    parser.add_argument("--docs", type=int, nargs="+", default=[4, 20])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(spec["kind"], spec["options"], spec["docs"], spec["seconds"])))
        return
    started = time.time()
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for docs in args.docs:
        st = run_setting("sentence-transformers", "", docs, args.seconds)
        rows.append(
            {"docs": docs, "condition": "quiet", "setting": "SentenceTransformerRerank", **st}
        )
        for condition in ("quiet", "busy"):
            for name in SETTINGS:
                spinning = hogs(args.hogs) if condition == "busy" else []
                try:
                    result = run_setting("ours", name, docs, args.seconds)
                finally:
                    for p in spinning:
                        p.kill()
                        p.wait()
                row = {"docs": docs, "condition": condition, "setting": name, **result}
                row["load_avg_1min"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    for docs in args.docs:
        for condition in ("quiet", "busy"):
            group = [
                r
                for r in rows
                if r["docs"] == docs and r["condition"] == condition and r["setting"] in SETTINGS
            ]
            best = max(r["calls_per_s"] for r in group)
            for r in group:
                r["slower_than_best"] = round(best / r["calls_per_s"], 2)
        st_rate = next(
            r["calls_per_s"]
            for r in rows
            if r["docs"] == docs and r["setting"] == "SentenceTransformerRerank"
        )
        for r in rows:
            if r["docs"] == docs and r["condition"] == "quiet" and r["setting"] in SETTINGS:
                r["x_sentence_transformers"] = round(r["calls_per_s"] / st_rate, 2)
    import torch

    data = {
        "command": "python benchmarks/bench_threads.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": os.environ.get("LLAMAINDEX_RERANKERS_CROSS_ENCODER", ""),
        "machine": {
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "load_avg_1min_start": round(load_start, 2),
            "load_avg_1min_end": round(os.getloadavg()[0], 2),
        },
        "seconds_per_setting": args.seconds,
        "hogs": args.hogs,
        "wall_seconds": round(time.time() - started, 1),
        "rows": rows,
        "notes": [
            "Calls in the main thread of a fresh process per setting; busy = --hogs processes "
            "spinning in pure Python meanwhile. slower_than_best: the best setting's calls/s "
            "over this one's, within the same docs and condition; x_sentence_transformers: "
            "calls/s over SentenceTransformerRerank's on the quiet machine.",
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cross_encoder_threads.json").write_text(json.dumps(data, indent=2) + "\n")
    keys = [
        "docs",
        "condition",
        "setting",
        "calls_per_s",
        "p50_ms",
        "torch_threads",
        "slower_than_best",
        "x_sentence_transformers",
        "load_avg_1min",
    ]
    lines = [
        "# Cross-encoder thread settings on a shared CPU",
        "",
        f"`{data['command']}`, {data['date']}, {data['machine']}",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    (RESULTS / "cross_encoder_threads.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "cross_encoder_threads.md").read_text())


if __name__ == "__main__":
    main()

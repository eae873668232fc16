"""Thread settings of ``CrossEncoderReranker`` on a shared CPU: the default against ``threads=1``.

A web worker calls the reranker in its main thread while other processes use the cores. This
benchmark measures that: each setting runs in a fresh process (OpenMP reads its environment
once), calling ``CrossEncoderReranker.rerank`` in the main thread on 4 short sample-corpus
passages (and on 20, a retrieve's candidates) for ``--seconds``, first on the machine as it is
("quiet"), then while ``--hogs`` processes (default: one per core) spin in pure Python ("busy").
On the quiet machine every call alternates with one of ``SentenceTransformerRerank`` (LlamaIndex's
own) on the same nodes in the same process, for the speed target (the default must stay at least
2x faster than it), measured side by side.

Settings: ``default`` (the class defaults; the package sets ``OMP_WAIT_POLICY=PASSIVE`` before
torch loads, so OpenMP threads sleep instead of spinning between parallel regions),
``threads=1``, ``threads=2``, the default with ``OMP_WAIT_POLICY=ACTIVE`` (spinning threads, as
an application that sets it gets), and with ``GOMP_SPINCOUNT`` 10000 and 300000 (spin that many
times, then sleep; 300000 is libgomp's own default when no wait policy is set).

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
    # libgomp spins GOMP_SPINCOUNT times before it sleeps (it wins over OMP_WAIT_POLICY);
    # 300000 (about 3 ms) is its own default when no wait policy is set.
    "default, GOMP_SPINCOUNT=10000": ({}, {"GOMP_SPINCOUNT": "10000"}),
    "default, GOMP_SPINCOUNT=300000": ({}, {"GOMP_SPINCOUNT": "300000"}),
}


def passages(n: int) -> list[str]:
    import llamaindex_rerankers

    corpus = Path(llamaindex_rerankers.__file__).parent / "sample_corpus"
    texts = [p.read_text()[:700] for p in sorted(corpus.glob("*.md"))]
    return (texts * (n // len(texts) + 1))[:n]


def worker(options: dict[str, Any], docs: int, seconds: float, compare: bool) -> dict[str, Any]:
    """Calls per second of ``CrossEncoderReranker(**options)`` in this process's main thread;
    with ``compare``, each of its calls alternates with one of ``SentenceTransformerRerank`` on
    the same nodes, so that the ratio is measured side by side (same process, same moment)."""
    from llama_index.core.schema import NodeWithScore, TextNode

    from llamaindex_rerankers import CrossEncoderReranker

    nodes = [NodeWithScore(node=TextNode(text=t)) for t in passages(docs)]
    reranker = CrossEncoderReranker(**options)
    reranker.load()
    calls = {"ours": lambda: reranker.rerank(nodes, QUERY)}
    if compare:
        from llama_index.core.postprocessor import SentenceTransformerRerank

        model = os.environ["LLAMAINDEX_RERANKERS_CROSS_ENCODER"]
        st = SentenceTransformerRerank(model=model, top_n=docs)
        calls["sentence_transformers"] = lambda: st.postprocess_nodes(nodes, query_str=QUERY)
    for call in calls.values():
        for _ in range(3):  # warm-up
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    end = time.perf_counter() + seconds * len(calls)
    while time.perf_counter() < end or len(times["ours"]) < 3:
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    import torch

    ours = times["ours"]
    result: dict[str, Any] = {
        "calls_per_s": round(len(ours) / sum(ours), 2),
        "p50_ms": round(statistics.median(ours) * 1000, 1),
        "calls": len(ours),
        "torch_threads": torch.get_num_threads(),
    }
    if compare:
        theirs = times["sentence_transformers"]
        result["st_calls_per_s"] = round(len(theirs) / sum(theirs), 2)
        result["x_sentence_transformers"] = round(sum(theirs) / sum(ours), 2)
    return result


def run_setting(name: str, docs: int, seconds: float, compare: bool) -> dict[str, Any]:
    options, env = SETTINGS[name]
    spec = json.dumps({"options": options, "docs": docs, "seconds": seconds, "compare": compare})
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
        print(json.dumps(worker(spec["options"], spec["docs"], spec["seconds"], spec["compare"])))
        return
    started = time.time()
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for docs in args.docs:
        for condition in ("quiet", "busy"):
            for name in SETTINGS:
                spinning = hogs(args.hogs) if condition == "busy" else []
                try:
                    result = run_setting(name, docs, args.seconds, compare=condition == "quiet")
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
            group = [r for r in rows if r["docs"] == docs and r["condition"] == condition]
            best = max(r["calls_per_s"] for r in group)
            for r in group:
                r["slower_than_best"] = round(best / r["calls_per_s"], 2)
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
            "over this one's, within the same docs and condition; x_sentence_transformers "
            "(quiet only): SentenceTransformerRerank's time over ours, its calls alternating "
            "with ours in the same process on the same nodes (st_calls_per_s: its rate there).",
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
        "st_calls_per_s",
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

"""Render every ``benchmarks/results`` JSON file into the site's Benchmarks pages.

Run by mkdocs-gen-files at build time (``mkdocs.yml``), so the tables on the site are the
committed results, never a copy that can drift from them. Each page is a hand-written
introduction (``docs/benchmarks/intro/<page>.md``: what the benchmark does and how to read it)
followed by one section per results file: the command that produced it, when and where it ran,
and its rows as tables.

Every JSON file under ``benchmarks/results/`` must belong to a page (``PAGES``); one that does not
stops the build, so a new result cannot be left off the site.

Run it directly (``python docs/gen_benchmarks.py OUT_DIR``) to write the pages to a folder.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
INTROS = Path(__file__).resolve().parent / "benchmarks" / "intro"
REPO_URL = "https://github.com/llamaindex-rerankers/llamaindex-rerankers"
BLOB = f"{REPO_URL}/blob/main/benchmarks/results"

# page slug -> (title, patterns of result stems, in page order). A stem matches the first page
# with a pattern that matches it (fnmatch-like: a trailing * matches any suffix).
PAGES: dict[str, tuple[str, list[str]]] = {
    "cross-encoder": (
        "Cross-encoder benchmarks",
        [
            "cross_encoder_backends",
            "cross_encoder_scifact",
            "cross_encoder_scifact_2threads",
            "long_text",
            "long_text_overlap0",
            "long_text_overlap0.5",
            "detector_cost",
            "cross_encoder_threads",
        ],
    ),
    "llm": (
        "LLM reranker benchmarks",
        [
            "llm_quality",
            "llm_quality_dl19_43",
            "llm_speed",
            "tune_llm",
            "tune_llm_raw",
            "llm_server",
            "llm_ours",
            "llm_anchors_dl19",
        ],
    ),
    "injection": (
        "Prompt injection benchmarks",
        [
            "injection_validation",
            "injection_holdout_blind",
            "injection_holdout2_blind",
            "injection_holdout3",
            "injection_train",
            "injection_*",
        ],
    ),
    "evaluation": ("Evaluation runs", ["eval_summary", "eval_*"]),
    "serving": (
        "Serving benchmarks",
        ["load_serve", "load_serve_wait*", "retrieve_parts", "remote_rerank", "bench_replicas"],
    ),
}

# Files that do not record the command that wrote them: who writes them, and with what.
WRITTEN_BY = {
    "eval_summary": "python benchmarks/eval_matrix.py --summary-only  # from results/eval_*.json",
    "tune_llm_raw": "python benchmarks/tune_llm.py --queries 5  # raw label probabilities",
}

# Keys that hold per-query or per-passage detail: kept in the JSON, left off the pages.
DETAIL_KEYS = {"per_query", "error_examples", "sources", "query_ids", "servers"}

_TRANSPOSE_ABOVE = 10  # columns; a table this wide with few rows reads better turned


def slug(stem: str) -> str:
    """A results file's anchor: ``long_text_overlap0.5`` -> ``long_text_overlap0-5``."""
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower())


def _matches(stem: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return stem.startswith(pattern[:-1])
    return stem == pattern


def assign(stems: Iterable[str]) -> dict[str, list[str]]:
    """Group result stems by page, in each page's order; raise on a stem no page takes."""
    pages: dict[str, list[str]] = {name: [] for name in PAGES}
    unassigned = []
    for stem in sorted(stems):
        for name, (_title, patterns) in PAGES.items():
            if any(_matches(stem, p) for p in patterns):
                pages[name].append(stem)
                break
        else:
            unassigned.append(stem)
    if unassigned:
        raise SystemExit(
            f"benchmarks/results has files no Benchmarks page shows: {unassigned}; "
            "add them to PAGES in docs/gen_benchmarks.py"
        )
    for name, (_title, patterns) in PAGES.items():

        def order(stem: str, patterns: list[str] = patterns) -> tuple[int, str]:
            return (next(i for i, p in enumerate(patterns) if _matches(stem, p)), stem)

        pages[name].sort(key=order)
    return pages


def fmt(value: Any) -> str:
    """One table cell: floats to 4 decimals (1 above 1000), None as a dash, | escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) < 1e6:
            return f"{value:.0f}" if abs(value) >= 1000 else f"{value:g}"
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    """Scalar columns of one row; a dict of scalars becomes ``key.sub`` columns."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in DETAIL_KEYS:
            continue
        if isinstance(value, dict):
            if all(not isinstance(v, dict | list) for v in value.values()):
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = v
        elif isinstance(value, list):
            if len(value) <= 6 and all(not isinstance(v, dict | list) for v in value):
                out[key] = value
        else:
            out[key] = value
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of rows (dicts); wide tables of few rows are transposed."""
    flat = [_flatten(r) for r in rows]
    columns: list[str] = []
    for r in flat:
        columns.extend(k for k in r if k not in columns)
    if not columns:
        return ""
    if len(columns) > _TRANSPOSE_ABOVE and len(flat) <= 3:
        head = "| | " + " | ".join(f"row {i + 1}" for i in range(len(flat))) + " |"
        lines = [head, "|---|" + "---:|" * len(flat)]
        lines += [f"| {c} | " + " | ".join(fmt(r.get(c)) for r in flat) + " |" for c in columns]
        return "\n".join(lines)
    numeric = [
        all(isinstance(r.get(c), int | float) or r.get(c) is None for r in flat) for c in columns
    ]
    lines = [
        "| " + " | ".join(fmt(c) for c in columns) + " |",
        "|" + "".join("---:|" if n else "---|" for n in numeric),
    ]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in flat]
    return "\n".join(lines)


def collapsed(text: str, label: str) -> str:
    """A Material collapsible block (closed) around Markdown text."""
    body = "\n".join(("    " + line) if line else "" for line in text.splitlines())
    return f'??? abstract "{label}"\n\n{body}'


def _code(command: str) -> str:
    return f"```bash\n{command}\n```"


def _meta(data: dict[str, Any]) -> str:
    keys = [
        "date",
        "model",
        "model_file",
        "dataset",
        "split",
        "first_stage",
        "queries",
        "top_k",
        "max_length",
        "batch_size",
        "window_overlap",
        "concurrency",
        "rounds",
        "wall_seconds",
        "wall_s",
        "elapsed_s",
    ]
    parts = [f"{k}: {fmt(data[k])}" for k in keys if k in data and data[k] is not None]
    machine = data.get("machine")
    if isinstance(machine, dict):
        parts.append("machine: " + ", ".join(f"{k} {fmt(v)}" for k, v in machine.items()))
    elif machine:
        parts.append(f"machine: {fmt(machine)}")
    settings = data.get("settings")
    if isinstance(settings, dict):
        parts.append("settings: " + ", ".join(f"{k} {fmt(v)}" for k, v in settings.items()))
    return "; ".join(parts)


def _load_serve(data: dict[str, Any]) -> list[str]:
    rows = []
    large: list[str] = []
    for phase, p in data["phases"].items():
        if "endpoints" not in p:  # the large-request phase: each answer, and the small one's
            large.append(f"{phase}: " + json.dumps(p))
            continue
        for endpoint, figures in [*p["endpoints"].items(), ("all", p["all"])]:
            rows.append(
                {
                    "phase": phase,
                    "endpoint": endpoint,
                    "clients × s": f"{p['clients']} × {p['seconds']:g}",
                }
                | figures
                | _server_refusals(p.get("server_refusals"))
            )
    server = data["server"]
    return [
        table(rows),
        "Server: "
        + ", ".join(f"{k} {fmt(v)}" for k, v in server.items() if not isinstance(v, dict))
        + "; memory (RSS, MiB): "
        + ", ".join(f"{k} {fmt(v)}" for k, v in server.get("rss_mib", {}).items())
        + ".",
        *large,
    ]


def _server_refusals(refusals: dict[str, float] | None) -> dict[str, Any]:
    """The server's own timing of a phase's 503s (runs before 2026-12-05 21:30 lack it)."""
    if not refusals or not refusals.get("count"):
        return {}
    return {
        "server: 503s within 50 ms": f"{refusals['within_50ms'] / refusals['count']:.1%}",
        "server: 503 mean s": refusals["mean_s"],
    }


def _tune_raw(data: dict[str, Any]) -> list[str]:
    rows = [
        {
            "dataset": dataset,
            "queries": len(v.get("queries", {})),
            "query ids": ", ".join(v.get("queries", {})),
        }
        for dataset, v in data.items()
    ]
    return [
        "The raw label probabilities per query, passage and prompt variant that "
        "[`tune_llm.json`](#tune_llm) scores offline; what it holds:",
        table(rows),
    ]


def _run_files(stem: str) -> list[str]:
    """The per-run files of a multi-run result (``llm_quality/`` beside ``llm_quality.json``)."""
    folder = RESULTS / stem
    if not folder.is_dir():
        return []
    out = [f"Per-run files (`{stem}/`), one `llamaindex-rerankers eval` run each:"]
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        rows = [
            {k: v for k, v in r.items() if not k.startswith("total_") or k == "total_dropped"}
            for r in data.get("results", [])
        ]
        out.append(
            collapsed(
                f"[JSON]({BLOB}/{stem}/{path.name}): {_meta(data)}\n\n" + table(rows),
                f"{stem}/{path.name}",
            )
        )
    return out


def render(path: Path) -> str:
    """One results file as a Markdown section: command, metadata, tables."""
    stem = path.stem
    data = json.loads(path.read_text())
    parts = [f"## `{path.name}` {{#{slug(stem)}}}", f"[JSON]({BLOB}/{path.name})"]
    commands: list[str] = []
    if isinstance(data, dict) and isinstance(data.get("command"), str):
        commands.append(data["command"])
    if isinstance(data, dict):
        commands += [r["command"] for r in data.get("runs", []) if "command" in r]
    if not commands and stem in WRITTEN_BY:
        commands.append(WRITTEN_BY[stem])
    if not commands:
        raise SystemExit(
            f"{path.name} records no command; add one to WRITTEN_BY in docs/gen_benchmarks.py"
        )
    parts.append("Made by:\n\n" + _code("\n".join(commands)))
    if isinstance(data, list):
        parts.append(table(data))
        return "\n\n".join(parts) + "\n"
    for run in data.get("runs", []):
        parts.append(_meta(run))
    meta = _meta(data)
    if meta:
        parts.append(meta)
    if isinstance(data.get("note"), str):
        parts.append(f"Note: {data['note']}")
    if stem.startswith("load_serve"):
        parts += _load_serve(data)
    elif stem == "tune_llm_raw":
        parts += _tune_raw(data)
    else:
        for key in ("rows", "results"):
            if isinstance(data.get(key), list) and data[key]:
                text = table(data[key])
                long = (len(data[key]) > 12 or len(text) > 4000) and stem != "eval_summary"
                parts.append(collapsed(text, f"{len(data[key])} rows") if long else text)
        for ds in data.get("datasets", []):
            if isinstance(ds, dict) and "rows" in ds:
                head = {k: v for k, v in ds.items() if k != "rows"}
                parts += [
                    f"**{ds.get('dataset', '')}**: "
                    + ", ".join(f"{k} {fmt(v)}" for k, v in head.items()),
                    table(ds["rows"]),
                ]
        if isinstance(data.get("injection"), dict) and data["injection"]:
            parts.append("Prompt-injection check: " + json.dumps(data["injection"]))
    for note in data.get("notes", []):
        parts.append(f"- {note}")
    parts += _run_files(stem)
    return "\n\n".join(p for p in parts if p) + "\n"


def build_pages() -> dict[str, str]:
    """Every Benchmarks page, as ``{"benchmarks/<page>.md": markdown}``."""
    stems = [p.stem for p in RESULTS.glob("*.json")]
    pages = {}
    for name, stems_of_page in assign(stems).items():
        title = PAGES[name][0]
        intro_path = INTROS / f"{name}.md"
        intro = intro_path.read_text() if intro_path.exists() else ""
        toc = "Results files on this page: " + ", ".join(
            f"[`{s}`](#{slug(s)})" for s in stems_of_page
        )
        body = [f"# {title}", intro.strip(), toc]
        body += [render(RESULTS / f"{s}.json") for s in stems_of_page]
        pages[f"benchmarks/{name}.md"] = "\n\n".join(b for b in body if b) + "\n"
    return pages


def images() -> dict[str, bytes]:
    """The committed plots, for the pages that show them (``benchmarks/img/<name>.png``)."""
    return {f"benchmarks/img/{p.name}": p.read_bytes() for p in sorted(RESULTS.glob("*.png"))}


def main() -> None:
    """Write the pages into mkdocs' virtual files, or into the folder given as argument."""
    if __name__ == "<run_path>":
        import mkdocs_gen_files

        for name, text in build_pages().items():
            with mkdocs_gen_files.open(name, "w") as f:
                f.write(text)
            mkdocs_gen_files.set_edit_path(name, "gen_benchmarks.py")
        for name, blob in images().items():
            with mkdocs_gen_files.open(name, "wb") as f:
                f.write(blob)
        return
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "site-benchmarks")
    for name, text in build_pages().items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    print(f"wrote {len(build_pages())} pages to {out}")


if __name__ in {"__main__", "<run_path>"}:
    main()

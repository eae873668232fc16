"""The notebooks: each one runs top to bottom in a real Jupyter kernel (top-level ``await``,
``display``, relative paths and all), and the committed files were saved executed, in order,
without errors, and without machine paths or secrets in their outputs.

The kernel runs this interpreter (the venv's) with the kernel's working folder set to
``notebooks/``, as Jupyter does; the notebooks read a small slice from ``NOTEBOOK_*`` variables.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

#: What the tests run: enough to exercise every cell, small enough for 2 CPU cores.
SLICE = {
    "NOTEBOOK_TOP_K": "6",  # 01, 04: first-stage candidates
    "NOTEBOOK_TOP_N": "2",  # 01, 04: chunks the LLM reads
    "NOTEBOOK_ANSWER_TOKENS": "24",  # 01, 04: longest answer
    "NOTEBOOK_QUERIES": "3",  # 02: calibration queries; 03: evaluation queries
    "NOTEBOOK_PASSAGES": "4",  # 02: BM25 candidates per calibration query
    "NOTEBOOK_KS": "10,20",  # 03: the K sweep
}

#: What a reader must find in each notebook's outputs, whatever its settings. Regexes.
EXPECTED: dict[str, list[str]] = {
    "01_quickstart": [
        r"sample_corpus: 33 files indexed into \d+ chunks",
        r"second run: 33 unchanged, 0 chunks embedded",
        r"\| # \| retrieval order \| cosine \| reranked order \| rerank score \| was # \|",
        r"'retrieval_rank': 1",  # the best chunk's metadata
        r"\*\*Q:\*\* and which branches should I cut first\?",  # the chat engine's 2nd turn
        r"abstained: True",
        r"\*\*A:\*\* No relevant context found\.",
        r"\*\*Q:\*\* how do I get bigger apples\?",  # the aquery answer
        r"\| query \| best source \| candidates \| returned \| best score \| pairs scored \|",
        r"\| is Apple stock a good buy after the earnings report\? \| Apple Inc\. Shares",
        r"'cross_encoder': \{'pairs'",
    ],
    "02_llm_labels": [
        r"labels: A = unlikely \(0\.0\), B = likely \(0\.5\), C = very likely \(1\.0\)",
        r"\*\*system\*\*",
        r"<passage>\n# Pruning Apple Trees",
        r"\| passage \| label \| P\(unlikely\) \| P\(likely\) \| P\(very likely\) \| Σ p·value \|",
        r"\| logprobs \|",
        r"\| text \|",
        # The cache: a second run on the same reranker, and a new one on the same file, call
        # the LLM 0 times and serve all 6 passages and the content-free one from the cache.
        r"\| first \| 6 \| 7 \| 0 \|",
        r"\| same reranker again \| 6 \| 0 \| 7 \| 0 \| 0 \|",
        r"\| new reranker, same SQLite file \| 6 \| 0 \| 7 \| 0 \| 0 \|",
        r"trec-dl-2019: \d+ queries x BM25 top \d+; \d+ passages with a human grade",
        r"\| human grade \| passages \| mean P\(unlikely\) \|",
        r"\| query \| passages \| LLM calls \| cache hits \| prompt tokens \| completion tokens \|",
        r"per 1,000 queries \(illustrative price\)",
    ],
    "03_choose_k_and_reranker": [
        r"trec-dl-2019: 4297 passages, \d+ of 43 queries",
        r"\| reranker \| top_k \| nDCG@10 \| RR\(rel=2\)@10 \|",
        r"\| cross-encoder \| 10 \|",
        # The cascade: the LLM judges keep=6 of the K candidates and one content-free passage,
        # the cross-encoder all K.
        r"\| cascade \| 20 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| 20 \| 7\.0000 \|",
        r"\| reranker \| helped \| hurt \| unchanged \|",
        r"cross-encoder vs BM25 on \d+ queries",
    ],
    "04_chatbot_backend": [
        r"serving the sample corpus at http://127\.0\.0\.1:\d+, ready after \d+ s",
        r"x-vercel-ai-ui-message-stream: v1",
        # The stream's parts in order: the sources before the answer, the report after it.
        r"\[data-sources\] status=answered, query='best practices for pruning apple trees', "
        r"\d+ sources\n+(\[source-document\] .+\n+)+\[start-step\] \n+\[text-start\]",
        r"\[text-end\] after \d+ text-delta parts",
        r"\[data-report\] status=answered, \d+ candidates reranked, \d+ returned",
        r"\| rank \| title \| id \| rerank score \| label \| was # \| cosine \|",
        r"\| 1 \| Pruning Apple Trees: When and How \| pruning-apple-trees\.md#0 \|",
        r"status: answered; 2 sources",  # the non-streamed chat
        r"\| 1 \| Apple Inc\. Shares Climb After Record Quarter \|",  # /v1/retrieve
        r"\| index \| relevance_score \| document \|",  # /v1/rerank
        r"cohere SDK [\d.]+: RerankResponse|cohere not installed",
        r"status: abstained; abstained: True",
        r"\*\*A:\*\* I found nothing relevant to this question in the documents",
        r'llamaindex_rerankers_http_requests_total\{endpoint="/v1/chat",method="POST",'
        r'status="200"\} 3\.0',
        r"server stopped: exit code 0",
    ],
}
#: The notebooks whose outputs are tables and text only; the others must show a PNG plot.
NO_PLOT = {"01_quickstart", "04_chatbot_backend"}

#: Strings that must not appear in any output: machine paths and secrets.
FORBIDDEN = re.compile(r"/work/|/root/|/home/|/tmp/|\bsk-\w|Authorization")
#: Saved stderr that is noise to a reader: progress bars and Python warnings (a logged warning
#: of this package, such as pairs truncated, says something and may stay).
NOISE = re.compile(r"it/s\]|\b\w+Warning: ")


def _outputs_text(nb: Any) -> str:
    """Every output of every code cell as one string (text, Markdown, plain reprs, errors)."""
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(_join(out["text"]))
            for mime, value in out.get("data", {}).items():
                if not mime.startswith("image/"):
                    parts.append(_join(value) if not isinstance(value, dict) else json.dumps(value))
            parts += [out.get("ename", ""), out.get("evalue", ""), *out.get("traceback", [])]
    return "\n".join(parts)


def _join(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


def _pngs(nb: Any) -> list[str]:
    return [
        _join(out["data"]["image/png"])
        for cell in nb["cells"]
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]


#: The records each notebook must show printed (so that the check below cannot pass because a
#: notebook stopped printing them). Names are those of :func:`current_records`.
SHOWS_RECORDS: dict[str, set[str]] = {
    "01_quickstart": {"RerankReport.to_dict()", "CrossEncoderUsage.to_dict()"},
    "02_llm_labels": set(),
    "03_choose_k_and_reranker": set(),
    "04_chatbot_backend": {
        "serve: data-report part",
        "serve: chat response",
        "serve: timings",
        "RerankReport.to_dict()",
        "CrossEncoderUsage.to_dict()",
    },
}


@functools.cache
def current_records() -> dict[str, frozenset[str]]:
    """The keys of every record a notebook may print, as the current code builds them: the rerank
    report and its backends' figures (no model needed), and the chat backend's report part,
    non-streamed response and timings (built from an empty search, no server needed)."""
    from llamaindex_rerankers.types import CrossEncoderUsage, LLMUsage, RerankReport

    report = RerankReport(query="q", cross_encoder=CrossEncoderUsage(), llm=LLMUsage())
    records = {
        "RerankReport.to_dict()": report.to_dict(),
        "CrossEncoderUsage.to_dict()": CrossEncoderUsage().to_dict(),
        "LLMUsage.to_dict()": LLMUsage().to_dict(),
    }
    try:
        from llamaindex_rerankers.server.backend import Search
        from llamaindex_rerankers.server.chat import ChatTurn
    except ImportError:  # no server extra: its records are not known, notebook 04 cannot run
        pass
    else:
        search = Search("q", [], [], report, 0.0, 0.0, abstained=False, failed=False)
        turn = ChatTurn("id", None, "q", search, "answered", time.perf_counter(), None)
        records["serve: data-report part"] = turn.report_event()
        records["serve: chat response"] = turn.document()
        records["serve: timings"] = turn.timings()
    return {name: frozenset(value) for name, value in records.items()}


def _literals(text: str) -> Iterator[Any]:
    """Every Python literal dict or list printed in ``text`` (a pretty-printed ``repr``, possibly
    over several lines and inside a longer line), outermost first."""
    i = 0
    while i < len(text):
        if text[i] not in "{[":
            i += 1
            continue
        end = _closing(text, i)
        if end is not None:
            try:
                value = ast.literal_eval(text[i : end + 1])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                value = None
            if isinstance(value, (dict, list)):
                yield value
                i = end + 1
                continue
        i += 1


def _closing(text: str, start: int, limit: int = 20_000) -> int | None:
    """The index of the bracket closing the one at ``start`` (quotes respected), or None when
    there is none within ``limit`` characters (prose with an apostrophe, say)."""
    depth, quote, i = 0, "", start
    while i < min(len(text), start + limit):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _key_sets(value: Any) -> Iterator[frozenset[str]]:
    """The keys of every dict in ``value`` (nested ones included), and every list of three or
    more strings (a printed ``sorted(response)``), as sets."""
    if isinstance(value, dict):
        if value and all(isinstance(k, str) for k in value):
            yield frozenset(value)
        for v in value.values():
            yield from _key_sets(v)
    elif isinstance(value, list):
        if len(value) >= 3 and all(isinstance(v, str) for v in value):
            yield frozenset(value)
        for v in value:
            yield from _key_sets(v)


def printed_records(nb: Any) -> tuple[set[str], list[str]]:
    """Which known records the notebook's outputs print, and how each stale one differs.

    A printed dict (or list of keys) is taken for a record when it shares at least half of the
    union of their keys; it must then have exactly the record's keys. So a key added to, or
    removed from, a report makes every notebook that printed the old report fail here until it
    is re-executed (``make notebooks``).
    """
    records = current_records()
    found: set[str] = set()
    stale: list[str] = []
    for value in _literals(_outputs_text(nb)):
        for keys in _key_sets(value):
            name, now = max(records.items(), key=lambda r: len(keys & r[1]) / len(keys | r[1]))
            if len(keys & now) / len(keys | now) < 0.5:
                continue  # not a record we know
            found.add(name)
            if keys != now:
                stale.append(
                    f"{name}: printed without {sorted(now - keys)}, with {sorted(keys - now)}"
                )
    return found, stale


def check_outputs(name: str, nb: Any) -> None:
    """What every executed notebook must show: run in order, no errors, the expected tables and
    a plot, no machine paths or secrets."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{name}: execution counts {counts}: re-execute it top to bottom (make notebooks)"
    )
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{name}: error outputs {[e['ename'] for e in errors]}"
    text = _outputs_text(nb)
    leaks = [text[max(0, m.start() - 60) : m.end() + 60] for m in FORBIDDEN.finditer(text)]
    assert not leaks, f"{name}: outputs show paths or keys (print names instead): {leaks[:3]}"
    missing = [pattern for pattern in EXPECTED[name] if not re.search(pattern, text)]
    assert not missing, f"{name}: outputs lack {missing}"
    found, stale = printed_records(nb)
    assert not stale, (
        f"{name}: printed reports differ from what the current code returns; re-execute it "
        f"(make notebooks): {stale}"
    )
    assert SHOWS_RECORDS[name] <= found, (
        f"{name}: outputs print no {sorted(SHOWS_RECORDS[name] - found)} any more"
    )
    if name not in NO_PLOT:  # 02 and 03 plot
        pngs = _pngs(nb)
        assert pngs and all(p.startswith("iVBORw0KGgo") for p in pngs), f"{name}: no PNG plot"


def test_every_notebook_is_checked() -> None:
    assert sorted(p.stem for p in PATHS) == sorted(EXPECTED) == sorted(SHOWS_RECORDS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_parameters_are_read_in_the_first_code_cell(path: Path) -> None:
    code = [
        "".join(c["source"])
        for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
        if c["cell_type"] == "code"
    ]
    assert "NOTEBOOK_" in code[0], f"{path.name}: the first code cell reads no NOTEBOOK_* setting"
    later = [i for i, source in enumerate(code[1:], start=2) if "NOTEBOOK_" in source]
    assert not later, f"{path.name}: code cells {later} read NOTEBOOK_* (first cell only)"
    read = set(re.findall(r"NOTEBOOK_[A-Z_]+", code[0]))
    assert read <= set(SLICE), f"{path.name} reads {read - set(SLICE)}, which the tests never set"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_committed_notebook_was_saved_executed_and_clean(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    check_outputs(path.stem, nb)
    noise = [
        _join(o["text"])[:200]
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.get("name") == "stderr" and NOISE.search(_join(o["text"]))
    ]
    assert not noise, f"{path.name}: progress bars or Python warnings in the outputs: {noise}"


def _kernel_manager(kernel_dir: Path) -> Any:
    """A kernel manager whose ``python3`` kernel is this interpreter (the venv's), whatever
    kernelspecs the machine or the user has installed elsewhere."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = kernel_dir / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}), "utf-8"
    )
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


#: Appended to the notebook under test: which interpreter and package the kernel really used.
_WHERE = "import sys, llamaindex_rerankers\nprint(sys.prefix)\nprint(llamaindex_rerankers.__file__)"


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs_in_a_jupyter_kernel(
    path: Path,
    tmp_path: Path,
    data_dir: Path,
    ce_model_path: str,
    embed_model_path: str,
    gguf_path: str,
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    env = {
        **os.environ,
        **SLICE,
        "LLAMAINDEX_RERANKERS_DATA": str(data_dir),
        "LLAMAINDEX_RERANKERS_CROSS_ENCODER": ce_model_path,
        "LLAMAINDEX_RERANKERS_EMBED_MODEL": embed_model_path,
        "LLAMAINDEX_RERANKERS_LLM_GGUF": gguf_path,
    }
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # start from a clean notebook, as a reader who runs it does
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(_WHERE))
    before = sorted(NOTEBOOKS.iterdir())
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path / "kernels"),
        timeout=600,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel's cwd, as in Jupyter
    )
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed in a Jupyter kernel:\n{exc}", pytrace=False)

    where = nb.cells.pop()
    prefix, package = _join(where.outputs[0]["text"]).split()
    assert Path(prefix) == Path(sys.prefix), "the kernel did not run the venv's interpreter"
    assert REPO in Path(package).resolve().parents, (
        f"the kernel imported llamaindex_rerankers from {package}, not from this checkout: "
        "`pip install -e .` here, or set PYTHONPATH to it"
    )
    check_outputs(path.stem, nb)
    assert sorted(NOTEBOOKS.iterdir()) == before, "the notebook wrote files into notebooks/"


def test_a_printed_report_with_old_keys_is_stale() -> None:
    """The staleness check itself: the current report passes, printed as a pretty ``repr`` or
    inside a line of text; the same report without a key, or with one the code no longer has,
    is reported with the keys that differ."""
    from pprint import pformat

    nbformat = pytest.importorskip("nbformat")
    from llamaindex_rerankers.types import CrossEncoderUsage, RerankReport

    def notebook(value: dict[str, Any]) -> Any:
        cell = nbformat.v4.new_code_cell("report", execution_count=1)
        cell.outputs = [
            nbformat.v4.new_output(
                "execute_result", {"text/plain": pformat(value)}, execution_count=1
            ),
            nbformat.v4.new_output("stream", name="stdout", text=f"report: {value}\n"),
        ]
        return nbformat.v4.new_notebook(cells=[cell])

    current = RerankReport(query="q", n_candidates=2, cross_encoder=CrossEncoderUsage()).to_dict()
    assert printed_records(notebook(current)) == (
        {"RerankReport.to_dict()", "CrossEncoderUsage.to_dict()"},
        [],
    )
    old = {k: v for k, v in current.items() if k != "retrieval_weight"}
    old["cross_encoder"] = {**current["cross_encoder"], "batches": 1}
    found, stale = printed_records(notebook(old))
    assert found == {"RerankReport.to_dict()", "CrossEncoderUsage.to_dict()"}
    assert stale == 2 * [
        "RerankReport.to_dict(): printed without ['retrieval_weight'], with []",
        "CrossEncoderUsage.to_dict(): printed without [], with ['batches']",
    ]

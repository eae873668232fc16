"""One extra per backend: without it the rest of the package works, and using the backend raises
an ImportError that names the extra to install.

Each case runs in a fresh interpreter in which the extra's packages are hidden (``sys.modules``
entries set to ``None`` make every import of them fail, as if they were not installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Top-level modules each extra brings.
HIDDEN = {
    "cross-encoder": ["torch", "sentence_transformers"],
    "llm": ["openai", "tiktoken"],
    "chroma": ["chromadb", "llama_index.vector_stores.chroma"],
    "eval": ["ir_measures", "matplotlib"],
}
EVERY_OPTIONAL = sorted({m for mods in HIDDEN.values() for m in mods} | {"llama_cpp", "fastapi"})

NODES = """
from llama_index.core.schema import NodeWithScore, TextNode
nodes = [NodeWithScore(node=TextNode(text=t, id_=t), score=0.5) for t in ("a b", "c d")]
"""


def run_hidden(hidden: list[str], code: str) -> subprocess.CompletedProcess[str]:
    prelude = f"import sys\nfor _m in {hidden!r}:\n    sys.modules[_m] = None\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def import_error_of(result: subprocess.CompletedProcess[str]) -> str:
    """The last line of the traceback, which must be an ImportError."""
    assert result.returncode != 0, f"expected an ImportError, got success: {result.stdout}"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(("ImportError", "ModuleNotFoundError")), result.stderr[-3000:]
    return last


def test_the_package_imports_and_builds_rerankers_with_no_optional_package() -> None:
    result = run_hidden(
        EVERY_OPTIONAL,
        """
        import json, sys
        import llamaindex_rerankers as lr
        from llamaindex_rerankers.cli import main
        ce = lr.CrossEncoderReranker(model="some/model", top_n=2)
        llm = lr.LLMReranker(model="m", base_url="http://127.0.0.1:9/v1")
        cascade = lr.CascadeReranker(first=ce, second=llm, keep=1)
        print(json.dumps({"top_n": ce.top_n, "keep": cascade.keep}))
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"top_n": 2, "keep": 1}


def test_cross_encoder_without_its_extra_names_the_extra(ce_model_path: str) -> None:
    result = run_hidden(
        HIDDEN["cross-encoder"],
        NODES
        + f"""
from llamaindex_rerankers import CrossEncoderReranker
CrossEncoderReranker(model={ce_model_path!r}).rerank(nodes, "a")
""",
    )
    assert "llamaindex-rerankers[cross-encoder]" in import_error_of(result)


def test_llm_reranker_without_its_extra_names_the_extra() -> None:
    # Loud: a missing client library is a broken setup, not an "unknown" label per passage.
    result = run_hidden(
        HIDDEN["llm"],
        NODES
        + """
from llamaindex_rerankers import LLMReranker
LLMReranker(model="m", base_url="http://127.0.0.1:9/v1", cache=None).rerank(nodes, "a")
""",
    )
    assert "llamaindex-rerankers[llm]" in import_error_of(result)


def test_chroma_pipeline_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    result = run_hidden(
        HIDDEN["chroma"],
        f"""
from llamaindex_rerankers.pipeline import ChromaConfig, load_index
load_index(ChromaConfig(persist_dir={str(tmp_path)!r}), create=True)
""",
    )
    assert "llamaindex-rerankers[chroma]" in import_error_of(result)


def test_evaluation_without_its_extra_names_the_extra() -> None:
    result = run_hidden(
        HIDDEN["eval"],
        """
from llamaindex_rerankers.evaluation.metrics import evaluate
evaluate({"q": {"d": 1}}, {"q": {"d": 1.0}}, ["nDCG@10"])
""",
    )
    assert "llamaindex-rerankers[eval]" in import_error_of(result)


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("sentence_transformers", "cross-encoder"),
        ("openai", "llm"),
        ("llama_index.llms.openai_like", "llm"),
        ("chromadb", "chroma"),
        ("llama_index.embeddings.huggingface", "chroma"),
        ("ir_measures", "eval"),
        ("llama_cpp", "local-llm"),
        ("fastapi", "server"),
        ("llama_index.postprocessor.rankgpt_rerank", "anchors"),
    ],
)
def test_every_optional_module_maps_to_an_extra_that_pyproject_defines(
    module: str, extra: str
) -> None:
    import tomllib

    from llamaindex_rerankers._imports import install_hint

    assert install_hint(module) == f"pip install 'llamaindex-rerankers[{extra}]'"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extra in extras


@pytest.mark.parametrize(
    "setup",
    [
        "kwargs = {'server': 'llama-cpp-python'}",
        # "auto" with no llama-server to be found falls back to llama-cpp-python's server.
        "import os, pathlib, llamaindex_rerankers.endpoints.llamacpp_files as s\n"
        "s.LLAMA_SERVER_CACHE = pathlib.Path('/nonexistent')\n"
        "os.environ.pop(s.LLAMA_SERVER_ENV, None); os.environ['PATH'] = '/nonexistent'\n"
        "kwargs = {}",
    ],
    ids=["llama-cpp-python", "auto-without-llama-server"],
)
def test_the_local_llm_server_without_its_extra_names_the_extra(setup: str) -> None:
    result = run_hidden(
        ["llama_cpp"],
        setup
        + """
from llamaindex_rerankers import local_llm_server
with local_llm_server("/nonexistent.gguf", **kwargs):
    pass
""",
    )
    error = import_error_of(result)
    assert "llamaindex-rerankers[local-llm]" in error and "make llama-server" in error

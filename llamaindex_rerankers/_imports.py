"""The one place where heavy optional modules are imported, lazily.

``import llamaindex_rerankers`` stays light: torch, sentence-transformers, chromadb and openai
load only when a reranker or pipeline first needs them, and a missing one raises an error that
says which package (or extra) to install.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

#: OpenMP's wait policy set (unless the environment sets one) before torch first loads: its
#: threads sleep between parallel regions instead of spinning. With spinning threads, a call on
#: a CPU that other processes keep busy collapses (each parallel region waits for a spinner
#: the OS has preempted): ``benchmarks/bench_threads.py`` measured it.
OMP_WAIT_POLICY = "PASSIVE"
#: Modules whose import loads torch (and so OpenMP, which reads its environment once).
_LOADS_TORCH = ("torch", "sentence_transformers", "transformers", "llama_index.embeddings")

#: The extra that provides each optional top-level module.
EXTRAS = {
    "torch": "cross-encoder",
    "sentence_transformers": "cross-encoder",
    "openai": "llm",
    "tiktoken": "llm",
    "chromadb": "chroma",
    "ir_measures": "eval",
    "matplotlib": "eval",
    "fastapi": "server",
    "uvicorn": "server",
    "prometheus_client": "server",
    "llama_cpp": "local-llm",
    "httpx": "remote",
}
#: Modules inside the ``llama_index`` namespace that come from an extra's integration package.
_LLAMA_INDEX_EXTRAS = {
    "llama_index.vector_stores.chroma": "chroma",
    "llama_index.embeddings.huggingface": "chroma",
    "llama_index.llms.openai_like": "llm",
    "llama_index.llms.openai": "llm",
    "llama_index.postprocessor.sbert_rerank": "anchors",
    "llama_index.postprocessor.rankgpt_rerank": "anchors",
}


def install_hint(module: str) -> str:
    """The pip command that brings ``module``: the extra that provides it, else the package.

    Example:
        >>> install_hint("sentence_transformers")
        "pip install 'llamaindex-rerankers[cross-encoder]'"
    """
    extra = next(
        (e for prefix, e in _LLAMA_INDEX_EXTRAS.items() if module.startswith(prefix)), None
    ) or EXTRAS.get(module.split(".")[0])
    if extra is not None:
        return f"pip install 'llamaindex-rerankers[{extra}]'"
    return f"pip install {module.split('.')[0]}"


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says how to install it.

    Example:
        >>> torch = require("torch")  # doctest: +SKIP
    """
    if module.startswith(_LOADS_TORCH) and "torch" not in sys.modules:
        # Too late once torch is loaded (by the application first): then its setting stands.
        os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module!r} is needed here but could not be imported ({exc}). Install it with: "
            f"{install_hint(module)}"
        ) from exc

"""The one place where heavy optional modules are imported, lazily.

``import llamaindex_rerankers`` stays light: torch, sentence-transformers, chromadb and openai
load only when a reranker or pipeline first needs them, and a missing one raises an error that
says which package (or extra) to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_INSTALL_HINTS = {
    "torch": "pip install torch",
    "sentence_transformers": "pip install sentence-transformers",
    "chromadb": "pip install chromadb",
    "openai": "pip install openai",
    "tiktoken": "pip install tiktoken",
    "ir_measures": "pip install 'llamaindex-rerankers[eval]'",
    "matplotlib": "pip install 'llamaindex-rerankers[eval]'",
    "llama_cpp": "pip install 'llamaindex-rerankers[local-llm]'",
    "llama_index": "pip install 'llamaindex-rerankers[anchors]'",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says how to install it.

    Example:
        >>> torch = require("torch")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = _INSTALL_HINTS.get(top, f"pip install {top}")
        raise ImportError(
            f"{module!r} is needed here but could not be imported ({exc}). Install it with: {hint}"
        ) from exc

"""The LLM reranker: graded likelihood labels from an OpenAI-compatible chat model.

Example:
    >>> from llamaindex_rerankers.llm import LLMReranker
    >>> reranker = LLMReranker(model="gpt-4o-mini", top_n=3)
"""

from __future__ import annotations

from llamaindex_rerankers.llm.cache import CachedJudgement, JudgementCache, MemoryCache, SQLiteCache
from llamaindex_rerankers.llm.labels import DEFAULT_LABELS, UNKNOWN, Label
from llamaindex_rerankers.llm.prompts import PROMPT_VERSION
from llamaindex_rerankers.llm.reranker import LLMReranker
from llamaindex_rerankers.llm.server import (
    LLM_GGUF_ENV,
    LocalLLMServer,
    LocalLLMServerError,
    local_llm_server,
    serve_forever,
)

__all__ = [
    "DEFAULT_LABELS",
    "LLM_GGUF_ENV",
    "PROMPT_VERSION",
    "UNKNOWN",
    "CachedJudgement",
    "JudgementCache",
    "LLMReranker",
    "Label",
    "LocalLLMServer",
    "LocalLLMServerError",
    "MemoryCache",
    "SQLiteCache",
    "local_llm_server",
    "serve_forever",
]

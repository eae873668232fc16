"""The LLM reranker: graded likelihood labels from a chat model.

The layer, one job per module: :mod:`~.types` (chat data types, the ``ChatClient`` protocol),
:mod:`~.retry` (backoff maths), :mod:`~.capabilities` (which endpoints give logprobs),
:mod:`~.openai_client` (the only importer of ``openai``), :mod:`~.llamaindex_client` (any
LlamaIndex LLM), :mod:`~.labels` and :mod:`~.prompts` (pure), :mod:`~.cache`, :mod:`~.tokens`,
:mod:`~.loop` (the background event loop), :mod:`~.codes` (answer codes, datamarking),
:mod:`~.reranker` (the settings) and :mod:`~.judging` (the per-call engine). The local
llama.cpp server (``local_llm_server`` ...) lives in :mod:`llamaindex_rerankers.endpoints` and
is re-exported here.

Example:
    >>> from llamaindex_rerankers.llm import LLMReranker
    >>> reranker = LLMReranker(model="gpt-4o-mini", top_n=3)
"""

from __future__ import annotations

from llamaindex_rerankers.endpoints.llamacpp import (
    LLM_GGUF_ENV,
    LocalLLMServer,
    LocalLLMServerError,
    gguf_namespace,
    local_llm_server,
    serve_forever,
)
from llamaindex_rerankers.llm.cache import (
    CachedJudgement,
    JudgementCache,
    MemoryCache,
    RedisCache,
    SQLiteCache,
)
from llamaindex_rerankers.llm.capabilities import logprobs_supported, record_logprobs_support
from llamaindex_rerankers.llm.labels import DEFAULT_LABELS, UNKNOWN, Label
from llamaindex_rerankers.llm.llamaindex_client import LlamaIndexChatClient
from llamaindex_rerankers.llm.openai_client import OpenAIChatClient
from llamaindex_rerankers.llm.prompts import PROMPT_VERSION
from llamaindex_rerankers.llm.reranker import LLMReranker
from llamaindex_rerankers.llm.types import ChatClient, ChatClientError, ChatResult

__all__ = [
    "DEFAULT_LABELS",
    "LLM_GGUF_ENV",
    "PROMPT_VERSION",
    "UNKNOWN",
    "CachedJudgement",
    "ChatClient",
    "ChatClientError",
    "ChatResult",
    "JudgementCache",
    "LLMReranker",
    "Label",
    "LlamaIndexChatClient",
    "LocalLLMServer",
    "LocalLLMServerError",
    "MemoryCache",
    "OpenAIChatClient",
    "RedisCache",
    "SQLiteCache",
    "gguf_namespace",
    "local_llm_server",
    "logprobs_supported",
    "record_logprobs_support",
    "serve_forever",
]

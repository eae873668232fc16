"""Where an LLM lives: an OpenAI-compatible endpoint, how options resolve to one, and the local
llama.cpp launcher (:mod:`~.llamacpp`).

The command line, the chatbot backend, the evaluation and the notebooks all resolve their LLM
here; none of it parses arguments.

Example:
    >>> from llamaindex_rerankers.endpoints import LLMEndpoint, resolve_llm_endpoint
    >>> with resolve_llm_endpoint("http://127.0.0.1:8080/v1", "m", None) as endpoint:
    ...     endpoint.reranker_options()["llm_model"]
    'm'
"""

from __future__ import annotations

from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint
from llamaindex_rerankers.endpoints.llamacpp import (
    LLM_GGUF_ENV,
    LocalLLMServer,
    LocalLLMServerError,
    find_llama_server,
    gguf_namespace,
    llama_server_cache,
    local_llm_server,
    serve_forever,
)
from llamaindex_rerankers.endpoints.resolve import DEFAULT_N_CTX, resolve_llm_endpoint

__all__ = [
    "DEFAULT_N_CTX",
    "LLM_GGUF_ENV",
    "LLMEndpoint",
    "LocalLLMServer",
    "LocalLLMServerError",
    "find_llama_server",
    "gguf_namespace",
    "llama_server_cache",
    "local_llm_server",
    "resolve_llm_endpoint",
    "serve_forever",
]

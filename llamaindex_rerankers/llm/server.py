"""Moved to :mod:`llamaindex_rerankers.endpoints.llamacpp` (the local llama.cpp launcher is
where an LLM lives, not part of the judge); this module re-exports it so that older imports keep
working."""

from __future__ import annotations

from llamaindex_rerankers.endpoints.llamacpp import (
    CACHE_ENV,
    DEFAULT_PARALLEL,
    LLAMA_SERVER_CACHE,
    LLAMA_SERVER_ENV,
    LLAMA_SERVER_VERSION,
    LLM_GGUF_ENV,
    LocalLLMServer,
    LocalLLMServerError,
    ServerKind,
    build_llama_server,
    find_llama_server,
    gguf_namespace,
    llama_server_cache,
    llama_server_command,
    local_llm_server,
    resolve_model_path,
    serve_forever,
    server_command,
    sigterm_as_interrupt,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_PARALLEL",
    "LLAMA_SERVER_CACHE",
    "LLAMA_SERVER_ENV",
    "LLAMA_SERVER_VERSION",
    "LLM_GGUF_ENV",
    "LocalLLMServer",
    "LocalLLMServerError",
    "ServerKind",
    "build_llama_server",
    "find_llama_server",
    "gguf_namespace",
    "llama_server_cache",
    "llama_server_command",
    "local_llm_server",
    "resolve_model_path",
    "serve_forever",
    "server_command",
    "sigterm_as_interrupt",
]

"""A real llama.cpp server with SmolLM2-135M for the LLM reranker tests, one per session:
llama-server where it is built (``make llama-server``), else llama-cpp-python's server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llamaindex_rerankers.endpoints.llamacpp import LocalLLMServer, local_llm_server


@pytest.fixture(scope="session")
def llm_server(gguf_path: str) -> Iterator[LocalLLMServer]:
    """An OpenAI-compatible server on 127.0.0.1 (a free port), stopped at the end; its ``kind``
    says which server it is."""
    with local_llm_server(gguf_path, startup_timeout=180) as server:
        yield server

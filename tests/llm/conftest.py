"""A real llama.cpp server with SmolLM2-135M for the LLM reranker tests, one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llamaindex_rerankers.llm.server import LocalLLMServer, local_llm_server


@pytest.fixture(scope="session")
def llm_server(gguf_path: str) -> Iterator[LocalLLMServer]:
    """An OpenAI-compatible server on 127.0.0.1 (a free port), stopped at the end."""
    with local_llm_server(gguf_path, startup_timeout=180) as server:
        yield server

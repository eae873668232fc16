"""An OpenAI-compatible endpoint as the command line, the server and the notebooks resolve it:
where it is, which model, and what its judgements are cached under.

How the options pick one is :func:`llamaindex_rerankers.endpoints.resolve_llm_endpoint`
(for ``query``, ``demo``, ``eval`` and ``serve`` alike).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LLMEndpoint:
    """An OpenAI-compatible chat endpoint.

    Attributes:
        base_url: root URL ending in ``/v1``; ``None`` is OpenAI's API.
        model: model name to request; ``None`` leaves the reranker's default.
        api_key: key; ``None`` reads ``OPENAI_API_KEY``.
        local: a llama.cpp server this process started (and stops).
        namespace: what the LLM reranker's judgement cache files judgements under
            (``cache_namespace``); ``None`` uses ``base_url|model``. A local server's is its
            GGUF file's digest, so that a cache written through one server (on a random port)
            is hit through the next.
    """

    base_url: str | None
    model: str | None
    api_key: str | None
    local: bool = False
    namespace: str | None = None

    def reranker_options(self) -> dict[str, Any]:
        """Options for the registry's LLM-backed rerankers (``llm_base_url`` ...)."""
        options: dict[str, Any] = {
            "llm_base_url": self.base_url,
            "llm_model": self.model,
            "llm_api_key": self.api_key,
        }
        if self.namespace is not None:
            options["llm_cache_namespace"] = self.namespace
        return options

    def as_llama_index_llm(self, **overrides: Any) -> Any:
        """This endpoint as a LlamaIndex LLM (``OpenAILike``): the response synthesizer's, and
        the LLM of LlamaIndex's own LLM rerankers. ``overrides`` replace ``OpenAILike`` options
        (defaults: temperature 0, at most 256 generated tokens).

        Example:
            >>> endpoint = LLMEndpoint("http://127.0.0.1:8000/v1", "m", None)
            >>> llm = endpoint.as_llama_index_llm(max_tokens=None)  # doctest: +SKIP
        """
        from llamaindex_rerankers._imports import require

        openai_like = require("llama_index.llms.openai_like")
        options: dict[str, Any] = {
            "api_base": self.base_url or "https://api.openai.com/v1",
            "model": self.model or "gpt-4o-mini",
            "api_key": self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            "is_chat_model": True,
            "temperature": 0.0,
            "max_tokens": 256,
        }
        return openai_like.OpenAILike(**{**options, **overrides})

"""Which LLM endpoint a set of options names: the resolution that ``query``, ``demo``, ``eval``
and ``serve`` share (their flags are only one way to pass the options).

Resolution, first match wins: a ``base_url`` (any OpenAI-compatible server: vLLM, Ollama, Azure,
a llama.cpp server already running); ``OPENAI_API_KEY`` in the environment (OpenAI's API, the
given ``model`` or the reranker's default); otherwise a local llama.cpp server is started for the
duration of a ``with`` block on the GGUF ``gguf`` / ``$LLAMAINDEX_RERANKERS_LLM_GGUF``.

Example:
    >>> with resolve_llm_endpoint("http://127.0.0.1:8080/v1", "m", None) as endpoint:
    ...     endpoint.base_url
    'http://127.0.0.1:8080/v1'
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Literal

from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint
from llamaindex_rerankers.endpoints.llamacpp import LLM_GGUF_ENV

#: Context window of a local llama.cpp server: enough for pointwise judgements.
DEFAULT_N_CTX = 2048
#: The API key given for a local server, which checks none: explicit, so that a client never
#: falls back to ``OPENAI_API_KEY`` and sends a real key to it. Defined here, not imported from
#: the LLM client, so that ``endpoints`` does not depend on ``llm`` (``llm`` re-exports the
#: launcher).
LOCAL_API_KEY = "not-needed"


@contextlib.contextmanager
def resolve_llm_endpoint(
    base_url: str | None,
    model: str | None,
    api_key: str | None,
    gguf: str | None = None,
    *,
    n_ctx: int = DEFAULT_N_CTX,
    none_without_gguf: bool = False,
    announce: bool = False,
    llama_server: str | None = None,
    extra_buffers: bool | Literal["auto"] = "auto",
) -> Iterator[LLMEndpoint | None]:
    """The endpoint that a base URL, model, API key and GGUF name, for the duration of a
    ``with`` block (the resolution of the module docstring).

    ``base_url``, else ``OPENAI_API_KEY`` (unless a ``gguf`` is given), is used as it is;
    otherwise a local llama.cpp server on ``gguf`` (else ``$LLAMAINDEX_RERANKERS_LLM_GGUF``) is
    started with context window ``n_ctx`` and stopped on exit. Its endpoint is ``local`` and
    carries the GGUF's ``namespace``, so that judgement caches are hit across runs.

    Args:
        base_url: an OpenAI-compatible endpoint ending in ``/v1`` (``--llm-base-url``).
        model: the model name at the endpoint (``--llm-model``).
        api_key: the endpoint's key (``--llm-api-key``); ``None`` reads ``OPENAI_API_KEY``.
        gguf: the local server's GGUF file (``--llm-gguf``).
        n_ctx: the local server's context window.
        none_without_gguf: when no GGUF is given either, yield ``None`` instead of failing to
            start a server (``serve`` then runs without answers).
        announce: say on stderr that a local server is starting (it takes seconds).
        llama_server: the local server's llama-server binary (``--llama-server``).
        extra_buffers: the local server's ``cpu_extra_buffers`` (``--cpu-extra-buffers``).

    Raises:
        LocalLLMServerError: the local server has no GGUF or does not start.
        ImportError: the local server's package is missing.
    """
    if base_url or (os.environ.get("OPENAI_API_KEY") and not gguf):
        yield LLMEndpoint(base_url, model, api_key)
        return
    from llamaindex_rerankers.endpoints.llamacpp import local_llm_server

    if none_without_gguf and not (gguf or os.environ.get(LLM_GGUF_ENV)):
        yield None
        return
    if announce:
        # An application's choice (serve asks for it); the library stays silent otherwise.
        print("starting a local LLM server (llama.cpp) ...", file=sys.stderr, flush=True)
    with local_llm_server(
        gguf, n_ctx=n_ctx, llama_server=llama_server, cpu_extra_buffers=extra_buffers
    ) as server:
        yield LLMEndpoint(
            server.base_url,
            server.model,
            LOCAL_API_KEY,
            local=True,
            namespace=server.namespace,
        )

"""The command line's LLM endpoint options: ``--llm-base-url`` ... and the endpoint they name.

Resolution, first match wins: ``--llm-base-url`` (any OpenAI-compatible server: vLLM, Ollama,
Azure, a llama.cpp server already running); ``OPENAI_API_KEY`` in the environment (OpenAI's API,
model ``--llm-model`` or the reranker's default); otherwise a local llama.cpp server is started
for the duration of the command on the GGUF of ``--llm-gguf`` / ``$LLAMAINDEX_RERANKERS_LLM_GGUF``.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_llm_arguments(parser)
    >>> with llm_endpoint(parser.parse_args([]), needed=False) as endpoint:
    ...     endpoint is None
    True
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Literal

from llamaindex_rerankers.llm.endpoint import LLMEndpoint
from llamaindex_rerankers.llm.openai_client import PLACEHOLDER_API_KEY
from llamaindex_rerankers.llm.server import LLAMA_SERVER_ENV, LLM_GGUF_ENV

#: Context window of a local llama.cpp server: enough for pointwise judgements.
DEFAULT_N_CTX = 2048


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--llm-base-url``, ``--llm-model``, ``--llm-api-key`` and ``--llm-gguf``."""
    group = parser.add_argument_group("LLM endpoint (LLM reranker, cascade, anchors, answers)")
    group.add_argument(
        "--llm-base-url",
        metavar="URL",
        help="OpenAI-compatible endpoint "
        "ending in /v1; default: OpenAI if OPENAI_API_KEY is set, else a local "
        "llama.cpp server started for this command",
    )
    group.add_argument("--llm-model", metavar="NAME", help="model name at the endpoint")
    group.add_argument("--llm-api-key", metavar="KEY", help="API key (default: $OPENAI_API_KEY)")
    group.add_argument(
        "--llm-gguf",
        metavar="PATH",
        help=f"GGUF for the local server (default: ${LLM_GGUF_ENV})",
    )
    add_local_server_arguments(group)


def add_local_server_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--llama-server`` and ``--cpu-extra-buffers``: how a local llama.cpp server runs."""
    parser.add_argument(
        "--llama-server",
        metavar="PATH",
        help=f"llama-server binary for the local server (default: ${LLAMA_SERVER_ENV}, else one "
        f"built by `llamaindex-rerankers llm-server --build`, else llama-server on PATH, else "
        "llama-cpp-python's server)",
    )
    parser.add_argument(
        "--cpu-extra-buffers",
        choices=("auto", "on", "off"),
        default="auto",
        help="llama.cpp's extra CPU buffer types (weight repacking, AMX): auto tries them and "
        "restarts the server without them if it fails; off skips that probe on machines where "
        "they crash (default: %(default)s)",
    )


def cpu_extra_buffers(value: str) -> bool | Literal["auto"]:
    """``--cpu-extra-buffers`` as ``local_llm_server``'s ``cpu_extra_buffers``."""
    return "auto" if value == "auto" else value == "on"


@contextlib.contextmanager
def llm_endpoint(
    args: argparse.Namespace, *, needed: bool, n_ctx: int = DEFAULT_N_CTX
) -> Iterator[LLMEndpoint | None]:
    """The endpoint the options describe, for the duration of a ``with`` block.

    Yields ``None`` when no LLM is ``needed``. A local server (context window ``n_ctx``) is
    started only when neither ``--llm-base-url`` nor ``OPENAI_API_KEY`` is given, and stopped on
    exit (see :func:`resolve_llm_endpoint`).
    """
    if not needed:
        yield None
        return
    with resolve_llm_endpoint(
        getattr(args, "llm_base_url", None),
        getattr(args, "llm_model", None),
        getattr(args, "llm_api_key", None),
        getattr(args, "llm_gguf", None),
        n_ctx=n_ctx,
        llama_server=getattr(args, "llama_server", None),
        extra_buffers=cpu_extra_buffers(getattr(args, "cpu_extra_buffers", "auto")),
    ) as endpoint:
        yield endpoint


@contextlib.contextmanager
def resolve_llm_endpoint(
    base_url: str | None,
    model: str | None,
    api_key: str | None,
    gguf: str | None,
    *,
    n_ctx: int = DEFAULT_N_CTX,
    none_without_gguf: bool = False,
    announce: bool = False,
    llama_server: str | None = None,
    extra_buffers: bool | Literal["auto"] = "auto",
) -> Iterator[LLMEndpoint | None]:
    """The endpoint that ``--llm-base-url`` / ``--llm-model`` / ``--llm-api-key`` / ``--llm-gguf``
    values name, for the duration of a ``with`` block (the resolution of the module docstring).

    ``base_url``, else ``OPENAI_API_KEY`` (unless a ``gguf`` is given), is used as it is;
    otherwise a local llama.cpp server on ``gguf`` (else ``$LLAMAINDEX_RERANKERS_LLM_GGUF``) is
    started with context window ``n_ctx`` and stopped on exit. Its endpoint is ``local`` and
    carries the GGUF's ``namespace``, so that judgement caches are hit across runs.

    Args:
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
    from llamaindex_rerankers.llm.server import local_llm_server

    if none_without_gguf and not (gguf or os.environ.get(LLM_GGUF_ENV)):
        yield None
        return
    if announce:
        print("starting a local LLM server (llama.cpp) ...", file=sys.stderr, flush=True)
    with local_llm_server(
        gguf, n_ctx=n_ctx, llama_server=llama_server, cpu_extra_buffers=extra_buffers
    ) as server:
        yield LLMEndpoint(
            server.base_url,
            server.model,
            PLACEHOLDER_API_KEY,
            local=True,
            namespace=server.namespace,
        )

"""The command line's LLM endpoint options: ``--llm-base-url`` ... and the endpoint they name.

Resolution, first match wins: ``--llm-base-url`` (any OpenAI-compatible server: vLLM, Ollama,
Azure, a llama.cpp server already running); ``OPENAI_API_KEY`` in the environment (OpenAI's API,
model ``--llm-model`` or the reranker's default); otherwise a local llama.cpp server is started
for the duration of the command on the GGUF of ``--llm-gguf`` / ``$LLAMAINDEX_RERANKERS_LLM_GGUF``.
The resolution itself is :func:`llamaindex_rerankers.endpoints.resolve_llm_endpoint` (re-exported
here); this module only turns flags into its arguments.

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
from collections.abc import Iterator
from typing import Literal

from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint
from llamaindex_rerankers.endpoints.llamacpp import LLAMA_SERVER_ENV, LLM_GGUF_ENV
from llamaindex_rerankers.endpoints.resolve import DEFAULT_N_CTX, resolve_llm_endpoint

__all__ = [
    "DEFAULT_N_CTX",
    "add_llm_arguments",
    "add_local_server_arguments",
    "cpu_extra_buffers",
    "llm_endpoint",
    "resolve_llm_endpoint",
]


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

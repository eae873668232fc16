"""``llamaindex-rerankers serve``: its arguments and what it runs.

:func:`add_serve_arguments` adds one argument per :class:`ServerSettings` field (generated from
the settings table, so arguments, environment variables and docs agree) plus ``--demo`` and
``--llm-gguf``; :func:`run_serve_command` loads everything first (a missing model or index fails
in seconds, with one line), then serves with uvicorn until SIGTERM or Ctrl-C, finishing the
requests in flight. Importing this module imports neither FastAPI nor any model.

Example:
    .. code-block:: console

        $ llamaindex-rerankers serve --demo                       # sample corpus, offline
        $ llamaindex-rerankers serve --persist-dir ./chroma --reranker cross-encoder \\
              --top-k 20 --top-n 5 --llm-base-url http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from llamaindex_rerankers.endpoints.llamacpp import sigterm_as_interrupt
from llamaindex_rerankers.registry import REMOTE_APIS
from llamaindex_rerankers.server.settings import SERVER_RERANKERS, ServerSettings, env_name

logger = logging.getLogger(__name__)

#: The collection ``--demo`` indexes the sample corpus into.
DEMO_COLLECTION = "llamaindex_rerankers_demo"
#: Context window of the local llama.cpp server ``serve`` starts for answers.
LOCAL_LLM_N_CTX = 2048


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` arguments to ``parser``: one per setting (except ``api_key``, which is
    read from ``$LLAMAINDEX_RERANKERS_SERVE_API_KEY`` only), ``--demo`` and ``--llm-gguf``.

    Every setting argument defaults to ``None`` so that the environment variable, then the
    setting's default, applies when it is not given.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_serve_arguments(p)
        >>> p.parse_args(["--demo", "--top-n", "3"]).top_n
        3
    """
    parser.add_argument(
        "--demo",
        action="store_true",
        help="index the bundled sample corpus into an embedded Chroma and serve it: a "
        "temporary one, or --persist-dir D to keep it (works offline)",
    )
    groups = {
        "host": parser.add_argument_group("listening"),
        "persist_dir": parser.add_argument_group("index"),
        "reranker": parser.add_argument_group("reranking"),
        "llm_base_url": parser.add_argument_group(
            "LLM endpoint (answers; the llm and cascade rerankers)"
        ),
        "max_concurrent": parser.add_argument_group("limits and timeouts"),
        "session_ttl": parser.add_argument_group("sessions"),
        "cors_origins": parser.add_argument_group("security"),
    }
    group: Any = parser
    for f in dataclasses.fields(ServerSettings):
        group = groups.get(f.name, group)
        if not f.metadata.get("cli"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not None else "none"
        if isinstance(default, tuple):
            default = ",".join(default) or "none"
        env = f" [${env_name(f.name)}]" if f.metadata.get("env") else ""
        shown = "" if "default" in f.metadata["help"] else f" (default: {default})"
        text = f"{f.metadata['help']}{shown}{env}".replace("%", "%%")
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        group.add_argument(
            flag,
            dest=f.name,
            type=_argparse_type(f.metadata["parse"]),
            default=None,
            metavar=f.metadata.get("metavar"),
            help=text,
            **({"choices": SERVER_RERANKERS} if f.name == "reranker" else {}),
            **({"choices": REMOTE_APIS} if f.name == "remote_api" else {}),
        )
        if f.name == "llm_api_key":
            group.add_argument(
                "--llm-gguf",
                metavar="PATH",
                default=None,
                help="GGUF for the local llama.cpp server started when no --llm-base-url or "
                "OPENAI_API_KEY is given (default: $LLAMAINDEX_RERANKERS_LLM_GGUF)",
            )


def run_serve_command(args: argparse.Namespace) -> int:
    """Run ``serve`` with parsed arguments; returns the exit code (0 after a clean shutdown).

    Raises:
        ValueError: conflicting or missing arguments (the message says what to pass).
        ModelLoadError, ConnectionError, ImportError: a model, the index, Chroma or the server
            extra is missing (the message says how to fix it).
    """
    settings = settings_from_args(args)
    demo = bool(getattr(args, "demo", False))
    if demo and settings.chroma_host:
        raise ValueError("--demo indexes into its own embedded Chroma; drop --chroma-host")
    if not demo and not settings.persist_dir and not settings.chroma_host:
        raise ValueError(
            "serve needs an index: pass --persist-dir D (an embedded Chroma folder), "
            "--chroma-host H (a Chroma server), or --demo (the sample corpus)"
        )
    if not demo and not settings.chroma_host and not Path(str(settings.persist_dir)).is_dir():
        raise ValueError(
            f"no index at --persist-dir {settings.persist_dir!r}; build one first with "
            f"`llamaindex-rerankers index PATH --persist-dir {settings.persist_dir}`, or use --demo"
        )
    from llamaindex_rerankers._imports import require

    uvicorn = require("uvicorn")
    _quiet_third_parties()
    with contextlib.ExitStack() as stack:
        # While loading, SIGTERM interrupts like Ctrl-C, so the local LLM server and the demo's
        # temporary index are cleaned up instead of left behind.
        stack.enter_context(sigterm_as_interrupt())
        endpoint, settings = _endpoint(args, settings, stack)
        if demo:
            # --demo --persist-dir D keeps the demo index in D (re-indexing is incremental).
            folder = settings.persist_dir or stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix="llamaindex-rerankers-serve-", ignore_cleanup_errors=True
                )
            )
            settings = dataclasses.replace(settings, persist_dir=folder, collection=DEMO_COLLECTION)
        from llamaindex_rerankers.server import Backend, create_app

        backend = Backend(settings, endpoint=endpoint)
        # Fail fast: a missing model ends here, before anything is indexed or served.
        backend.load_reranker()
        if demo:
            _index_demo(settings)
        backend.load()
        app = create_app(backend=backend)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            access_log=settings.access_log,
            timeout_graceful_shutdown=settings.graceful_timeout,
            log_level="info",
        )
        server = uvicorn.Server(config)
        print(
            f"serving at http://{settings.host}:{settings.port}/ (chat page), API docs at "
            f"/docs; reranker: {backend.reranker_name}; Ctrl-C or SIGTERM stops",
            file=sys.stderr,
            flush=True,
        )
        with _signals_noted():
            server.run()
    return 0


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings: arguments given, then ``$LLAMAINDEX_RERANKERS_SERVE_*``, then defaults."""
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ServerSettings)
        if f.metadata.get("cli") and getattr(args, f.name, None) is not None
    }
    return ServerSettings.from_env(**overrides)


def _argparse_type(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value").lstrip("_")
    return convert


def _endpoint(
    args: argparse.Namespace, settings: ServerSettings, stack: contextlib.ExitStack
) -> tuple[Any, ServerSettings]:
    """The LLM endpoint for answers (and the LLM rerankers): --llm-base-url, else OpenAI with
    $OPENAI_API_KEY, else a local llama.cpp server on a GGUF, else none (answers off)."""
    from llamaindex_rerankers.endpoints import resolve_llm_endpoint
    from llamaindex_rerankers.endpoints.llamacpp import LLM_GGUF_ENV
    from llamaindex_rerankers.registry import needs_llm

    llm_reranker = needs_llm(settings.reranker)
    if not settings.answers and not llm_reranker:
        return None, settings
    endpoint = stack.enter_context(
        resolve_llm_endpoint(
            settings.llm_base_url,
            settings.llm_model,
            settings.llm_api_key,
            getattr(args, "llm_gguf", None),
            n_ctx=LOCAL_LLM_N_CTX,
            none_without_gguf=True,
            announce=True,
        )
    )
    if endpoint is None:
        if llm_reranker:
            raise ValueError(
                f"the {settings.reranker} reranker needs an LLM: pass --llm-base-url URL, set "
                f"OPENAI_API_KEY, or give a GGUF with --llm-gguf / ${LLM_GGUF_ENV}"
            )
        logger.warning(
            "no LLM endpoint (--llm-base-url, OPENAI_API_KEY or $%s): /v1/chat answers 501; "
            "/v1/retrieve and /v1/rerank work",
            LLM_GGUF_ENV,
        )
        return None, dataclasses.replace(settings, answers=False)
    if not endpoint.local:
        return endpoint, settings
    window = settings.llm_context_window or LOCAL_LLM_N_CTX
    return endpoint, dataclasses.replace(settings, llm_context_window=window)


def _index_demo(settings: ServerSettings) -> None:
    """Index the bundled sample corpus into the (temporary) embedded Chroma of ``settings``."""
    from llamaindex_rerankers.pipeline import ChromaConfig, index_folder, make_embed_model

    config = ChromaConfig(persist_dir=settings.persist_dir, collection=DEMO_COLLECTION)
    corpus = resources.files("llamaindex_rerankers") / "sample_corpus"
    with resources.as_file(corpus) as src:
        stats = index_folder(
            src,
            config,
            embed_model=make_embed_model(settings.embed_model),
            required_exts=[".md"],
            show_progress=False,
        )
    print(
        f"demo: indexed the sample corpus ({stats.chunks} chunks) into {config.describe()}",
        file=sys.stderr,
        flush=True,
    )


def _quiet_third_parties() -> None:
    """Silence start-up noise that says nothing to a server's operator."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    # Warns once per file read that llama-index-readers-file (PDF, DOCX ...) is absent.
    logging.getLogger("llama_index.core.readers.file.base").setLevel(logging.ERROR)


@contextlib.contextmanager
def _signals_noted() -> Iterator[None]:
    """uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish requests in flight), then
    raises the signal again for the handler it found; this handler lets the command return and
    clean up instead of dying there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _noted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _noted(signum: int, frame: Any) -> None:
    logger.info("received %s after shutdown", signal.Signals(signum).name)

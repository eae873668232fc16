"""The argument parser of ``llamaindex-rerankers``, its argument types and the cross-argument
checks argparse cannot express. Parsing loads no model and opens no index.

Example:
    >>> args = build_parser().parse_args(["query", "pruning", "--persist-dir", "./chroma"])
    >>> args.command, args.top_k, args.reranker
    ('query', 20, 'cross-encoder')
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from llamaindex_rerankers.cli.llm_options import (
    DEFAULT_N_CTX,
    add_llm_arguments,
    add_local_server_arguments,
)
from llamaindex_rerankers.cross_encoder import CROSS_ENCODER_ENV, DEFAULT_CROSS_ENCODER
from llamaindex_rerankers.endpoints.llamacpp import CACHE_ENV, LLM_GGUF_ENV
from llamaindex_rerankers.pipeline.chroma import DEFAULT_COLLECTION
from llamaindex_rerankers.pipeline.embeddings import DEFAULT_EMBED_MODEL, EMBED_MODEL_ENV
from llamaindex_rerankers.registry import REMOTE_APIS, RERANKER_NAMES

PROG = "llamaindex-rerankers"

# What ``add_subparsers`` returns; each subcommand's arguments are added by one function below.
_Subcommands = argparse._SubParsersAction


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage dump) and do not exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``llamaindex-rerankers`` (subcommands ``index``, ``query``,
    ``demo``, ``eval``, ``llm-server``, ``serve``).

    Example:
        >>> build_parser().parse_args(["demo"]).command
        'demo'
    """
    parser = _Parser(
        prog=PROG,
        description="Index documents into Chroma and rerank what retrieval finds.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_index(sub)
    _add_query(sub)
    _add_demo(sub)
    _add_llm_server(sub)
    _add_eval(sub)
    _add_serve(sub)
    return parser


def _add_index(sub: _Subcommands) -> None:
    """``index``: a folder into Chroma."""
    text = "index (or re-index) a folder of documents into Chroma; unchanged files are skipped"
    p = sub.add_parser("index", help=text, description=text)
    p.add_argument("path", metavar="PATH", help="folder of .md/.txt/... files (recursive)")
    _add_store_args(p, persist_required=True)
    _add_embed_arg(p)
    p.add_argument(
        "--chunk-size", type=positive_int, default=512, help="tokens per chunk (default: 512)"
    )
    p.add_argument(
        "--chunk-overlap",
        type=non_negative_int,
        default=64,
        help="tokens shared by neighbouring chunks (default: 64)",
    )


def _add_query(sub: _Subcommands) -> None:
    """``query``: retrieve, rerank, print (and answer)."""
    text = "retrieve the top K chunks, rerank them, print the top N sources"
    p = sub.add_parser("query", help=text, description=text)
    p.add_argument("question", metavar="QUESTION", help="what to ask, in quotes")
    _add_store_args(p, persist_required=False)
    _add_embed_arg(p)
    p.add_argument(
        "--top-k",
        metavar="K",
        type=positive_int,
        default=20,
        help="first-stage candidates (default: %(default)s)",
    )
    p.add_argument(
        "--top-n",
        metavar="N",
        type=positive_int,
        default=5,
        help="sources to print, at most K (default: %(default)s)",
    )
    p.add_argument(
        "--reranker",
        choices=RERANKER_NAMES,
        default="cross-encoder",
        help="none keeps the retrieval order (default: %(default)s)",
    )
    _add_cross_encoder_arg(p)
    add_remote_arguments(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print only JSON: a list of sources with id, "
        "rerank_score, retrieval_rank, retrieval_score, text",
    )
    p.add_argument(
        "--answer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write an answer from the top N sources with the LLM endpoint (default: on "
        "when --llm-base-url is given, else off; --no-answer only reranks, e.g. with "
        "--reranker llm through --llm-base-url)",
    )
    add_llm_arguments(p)


def _add_demo(sub: _Subcommands) -> None:
    """``demo``: the sample corpus, retrieval against reranked order."""
    text = "index the bundled sample corpus and compare retrieval and reranked orders"
    p = sub.add_parser("demo", help=text, description=text)
    p.add_argument(
        "--persist-dir", metavar="D", help="Chroma folder to keep the index in (default: temporary)"
    )
    p.add_argument("--collection", default=None, help="Chroma collection name (default: demo)")
    _add_embed_arg(p)
    p.add_argument(
        "--top-k",
        metavar="K",
        type=positive_int,
        default=8,
        help="first-stage candidates, all reranked (default: %(default)s)",
    )
    p.add_argument(
        "--reranker",
        choices=[n for n in RERANKER_NAMES if n != "none"],
        default="cross-encoder",
        help="the reranker to compare with retrieval's order (default: %(default)s)",
    )
    _add_cross_encoder_arg(p)
    add_remote_arguments(p)
    p.add_argument(
        "--question",
        action="append",
        metavar="Q",
        help="ask this instead of the built-in questions (repeatable)",
    )
    add_llm_arguments(p)


def _add_llm_server(sub: _Subcommands) -> None:
    """``llm-server``: a local GGUF served OpenAI-compatibly, or ``--build``."""
    text = "serve a local GGUF model OpenAI-compatibly (llama.cpp) until interrupted"
    p = sub.add_parser(
        "llm-server",
        help=text,
        description=f"{text}. With --build: compile llama.cpp's llama-server (parallel slots, "
        "about twice as fast as llama-cpp-python's server) into the user cache, where it is "
        "found from then on, and exit.",
    )
    p.add_argument(
        "--build",
        action="store_true",
        help="print the llama-server binary the local server runs and exit, first building "
        "one (4-5 min; needs cmake and a C++ compiler) when none is found: into "
        f"${CACHE_ENV}/llama-server, else $XDG_CACHE_HOME/llamaindex-rerankers/llama-server "
        "(default: ~/.cache/llamaindex-rerankers/llama-server)",
    )
    p.add_argument("--model-path", metavar="GGUF", help=f"default: ${LLM_GGUF_ENV}")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="listen port (default: %(default)s)")
    p.add_argument(
        "--n-ctx",
        type=positive_int,
        default=DEFAULT_N_CTX,
        help="context window in tokens (default: %(default)s, enough for pointwise judgements; "
        "LlamaIndex's listwise RankGPTRerank needs ~8192 for 20 passages)",
    )
    add_local_server_arguments(p)


def _add_eval(sub: _Subcommands) -> None:
    """``eval``: its arguments live with the command (:mod:`.evaluate`)."""
    from llamaindex_rerankers.cli.evaluate import add_eval_arguments

    text = "rerank a BEIR dataset's first-stage candidates side by side and score the runs"
    p = sub.add_parser("eval", help=text, description=text)
    add_eval_arguments(p)


def _add_serve(sub: _Subcommands) -> None:
    """``serve``: its arguments live with the command (:mod:`.serve`)."""
    from llamaindex_rerankers.cli.serve import add_serve_arguments

    text = "serve the RAG chatbot backend (chat, retrieve, Cohere-compatible rerank, a chat page)"
    p = sub.add_parser("serve", help=text, description=text)
    add_serve_arguments(p)


def _add_store_args(p: argparse.ArgumentParser, *, persist_required: bool) -> None:
    p.add_argument(
        "--persist-dir",
        metavar="D",
        help="folder of the embedded Chroma index (not needed with --chroma-host)",
    )
    p.add_argument(
        "--collection",
        default=None,
        help=f"Chroma collection name (default: {DEFAULT_COLLECTION})",
    )
    p.add_argument("--chroma-host", metavar="H", help="use the Chroma server at this host")
    p.add_argument(
        "--chroma-port",
        metavar="P",
        type=_port,
        default=8000,
        help="the Chroma server's port (default: %(default)s)",
    )
    p.set_defaults(persist_required=persist_required)


def _add_embed_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embed-model",
        metavar="M",
        default=None,
        help=f"embedding model id or local path (default: ${EMBED_MODEL_ENV}, "
        f"else {DEFAULT_EMBED_MODEL}); query with the model you indexed with",
    )


def _add_cross_encoder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cross-encoder-model",
        metavar="M",
        default=None,
        help=f"cross-encoder id or local path (default: ${CROSS_ENCODER_ENV}, "
        f"else {DEFAULT_CROSS_ENCODER})",
    )


def add_remote_arguments(p: argparse.ArgumentParser) -> None:
    """``--remote-url``, ``--remote-api``, ``--remote-model``: the rerank service of
    ``--reranker remote`` (each defaults to its ``$LLAMAINDEX_RERANKERS_REMOTE_*`` variable)."""
    p.add_argument(
        "--remote-url",
        metavar="URL",
        default=None,
        help="rerank service root for --reranker remote, e.g. http://127.0.0.1:8080 "
        "(default: $LLAMAINDEX_RERANKERS_REMOTE_URL)",
    )
    p.add_argument(
        "--remote-api",
        choices=REMOTE_APIS,
        default=None,
        help="the rerank service's API (default: $LLAMAINDEX_RERANKERS_REMOTE_API, else cohere)",
    )
    p.add_argument(
        "--remote-model",
        metavar="M",
        default=None,
        help="model name sent to the rerank service (default: $LLAMAINDEX_RERANKERS_REMOTE_MODEL)",
    )


def remote_arguments(args: argparse.Namespace) -> dict[str, str | None]:
    """The rerank service options of ``--reranker remote`` (``None`` where not given)."""
    keys = ("remote_url", "remote_api", "remote_model")
    return {k: getattr(args, k, None) for k in keys}


def package_version() -> str:
    """This package's version, from its installed metadata (``__version__`` when it runs from a
    source folder that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llamaindex-rerankers")
    except PackageNotFoundError:
        from llamaindex_rerankers import __version__

        return __version__


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def check_args(args: argparse.Namespace) -> None:
    """Cross-argument checks argparse cannot express."""
    if args.command == "query":
        if not args.question.strip():
            raise UsageError(f"{PROG} query: QUESTION is empty; ask something")
        if args.top_n > args.top_k:
            raise UsageError(
                f"{PROG} query: --top-n {args.top_n} is larger than --top-k {args.top_k}; the "
                "reranker can only return candidates that retrieval found (raise --top-k)"
            )
    if args.command in ("index", "query") and not args.chroma_host and not args.persist_dir:
        raise UsageError(
            f"{PROG} {args.command}: pass --persist-dir D (an embedded Chroma folder) or "
            "--chroma-host H (a Chroma server)"
        )
    if args.command == "index" and args.chunk_overlap >= args.chunk_size:
        raise UsageError(
            f"{PROG} index: --chunk-overlap {args.chunk_overlap} must be smaller than "
            f"--chunk-size {args.chunk_size}"
        )
    if args.command == "demo" and args.question and any(not q.strip() for q in args.question):
        raise UsageError(f"{PROG} demo: --question is empty; ask something")

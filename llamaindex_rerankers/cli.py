"""``llamaindex-rerankers``: index a folder into Chroma, query it with a reranker, run the demo.

Example:
    .. code-block:: console

        $ llamaindex-rerankers index docs/ --persist-dir ./chroma
        $ llamaindex-rerankers query "best practices for pruning apple trees" \\
              --persist-dir ./chroma --top-k 20 --top-n 5 --reranker cross-encoder
        $ llamaindex-rerankers demo

Models come from the library defaults, or from ``LLAMAINDEX_RERANKERS_CROSS_ENCODER`` and
``LLAMAINDEX_RERANKERS_EMBED_MODEL`` (local paths on offline machines), or from
``--cross-encoder-model`` / ``--embed-model``. Bad input and models that cannot be loaded end
with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from llamaindex_rerankers.cross_encoder import ModelLoadError
from llamaindex_rerankers.llm.endpoint import LLMEndpoint, add_llm_arguments, llm_endpoint
from llamaindex_rerankers.registry import RERANKER_NAMES, make_reranker

if TYPE_CHECKING:
    from llama_index.core.llms import LLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import NodeWithScore

    from llamaindex_rerankers.pipeline import ChromaConfig

PROG = "llamaindex-rerankers"
#: Exit code for bad input and for models that cannot be loaded.
EXIT_USAGE = 2

# Errors that mean "the user asked for something that cannot work": shown as one line, no
# traceback. Anything else is a bug and keeps its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelLoadError,
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    ConnectionError,
    ImportError,
)


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage dump) and do not exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or missing model).

    Example:
        >>> main(["query", "pruning apple trees", "--persist-dir", "./chroma"])  # doctest: +SKIP
        0
    """
    try:
        args = build_parser().parse_args(argv)
        _check(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(args.verbose)
    try:
        code: int = args.run(args)
        return code
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _USER_ERRORS as exc:
        print(f"error: {_one_line(exc)}{_cli_hint(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``llamaindex-rerankers`` (subcommands ``index``, ``query``,
    ``demo``, ``eval``, ``llm-server``).

    Example:
        >>> build_parser().parse_args(["demo"]).command
        'demo'
    """
    parser = _Parser(
        prog=PROG,
        description="Index documents into Chroma and rerank what retrieval finds.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    text = "index (or re-index) a folder of documents into Chroma; unchanged files are skipped"
    p = sub.add_parser("index", help=text, description=text)
    p.add_argument("path", metavar="PATH", help="folder of .md/.txt/... files (recursive)")
    _add_store_args(p, persist_required=True)
    _add_embed_arg(p)
    p.add_argument("--chunk-size", type=_positive_int, default=512, help="tokens per chunk")
    p.add_argument("--chunk-overlap", type=_non_negative_int, default=64, help="overlap tokens")
    p.set_defaults(run=_cmd_index)

    text = "retrieve the top K chunks, rerank them, print the top N sources"
    p = sub.add_parser("query", help=text, description=text)
    p.add_argument("question", metavar="QUESTION")
    _add_store_args(p, persist_required=False)
    _add_embed_arg(p)
    p.add_argument(
        "--top-k",
        metavar="K",
        type=_positive_int,
        default=20,
        help="first-stage candidates (default: %(default)s)",
    )
    p.add_argument(
        "--top-n",
        metavar="N",
        type=_positive_int,
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
    p.add_argument(
        "--json",
        action="store_true",
        help="print only JSON: a list of sources with id, "
        "rerank_score, retrieval_rank, retrieval_score, text",
    )
    p.add_argument(
        "--answer",
        action="store_true",
        help="also write an answer from the top N sources with the LLM endpoint (implied by "
        "--llm-base-url)",
    )
    add_llm_arguments(p)
    p.set_defaults(run=_cmd_query)

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
        type=_positive_int,
        default=8,
        help="first-stage candidates, all reranked (default: %(default)s)",
    )
    p.add_argument(
        "--reranker", choices=[n for n in RERANKER_NAMES if n != "none"], default="cross-encoder"
    )
    _add_cross_encoder_arg(p)
    p.add_argument(
        "--question",
        action="append",
        metavar="Q",
        help="ask this instead of the built-in questions (repeatable)",
    )
    add_llm_arguments(p)
    p.set_defaults(run=_cmd_demo)

    text = "serve a local GGUF model OpenAI-compatibly (llama.cpp) until interrupted"
    p = sub.add_parser("llm-server", help=text, description=text)
    p.add_argument("--model-path", metavar="GGUF", help="default: $LLAMAINDEX_RERANKERS_LLM_GGUF")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="listen port (default: %(default)s)")
    p.add_argument(
        "--n-ctx",
        type=_positive_int,
        default=2048,
        help="context window in tokens (default: %(default)s, enough for pointwise judgements; "
        "LlamaIndex's listwise RankGPTRerank needs ~8192 for 20 passages)",
    )
    p.set_defaults(run=_cmd_llm_server)

    from llamaindex_rerankers.evaluation.command import add_eval_arguments

    text = "rerank a BEIR dataset's first-stage candidates side by side and score the runs"
    p = sub.add_parser("eval", help=text, description=text)
    add_eval_arguments(p)
    p.set_defaults(run=_cmd_eval)
    return parser


def _add_store_args(p: argparse.ArgumentParser, *, persist_required: bool) -> None:
    p.add_argument(
        "--persist-dir",
        metavar="D",
        help="folder of the embedded Chroma index (not needed with --chroma-host)",
    )
    p.add_argument(
        "--collection", default=None, help="Chroma collection name (default: llamaindex_rerankers)"
    )
    p.add_argument("--chroma-host", metavar="H", help="use the Chroma server at this host")
    p.add_argument("--chroma-port", metavar="P", type=_port, default=8000, help="its port")
    p.set_defaults(persist_required=persist_required)


def _add_embed_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embed-model",
        metavar="M",
        default=None,
        help="embedding model id or local path (default: $LLAMAINDEX_RERANKERS_EMBED_MODEL, "
        "else sentence-transformers/all-MiniLM-L6-v2); query with the model you indexed with",
    )


def _add_cross_encoder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cross-encoder-model",
        metavar="M",
        default=None,
        help="cross-encoder id or local path (default: $LLAMAINDEX_RERANKERS_CROSS_ENCODER, "
        "else cross-encoder/ms-marco-MiniLM-L-6-v2)",
    )


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
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


def _check(args: argparse.Namespace) -> None:
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


# -- commands ---------------------------------------------------------------------------------


def _cmd_index(args: argparse.Namespace) -> int:
    from llamaindex_rerankers.pipeline import index_folder, make_embed_model

    folder = Path(args.path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{PROG} index: {str(folder)!r} is not a folder; pass a folder of files")
    config = _config(args)
    _quiet_third_parties()
    embed = make_embed_model(args.embed_model)
    stats = index_folder(
        folder,
        config,
        embed_model=embed,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        show_progress=True,
    )
    print(
        f"Indexed {folder} into {config.describe()}: {stats.added} added, {stats.updated} "
        f"updated, {stats.removed} removed, {stats.unchanged} unchanged; {stats.embedded} "
        f"chunks embedded, {stats.chunks} chunks in the collection."
    )
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.host:
        where = Path(str(config.persist_dir)).expanduser()
        if not where.is_dir():
            raise UsageError(
                f"{PROG} query: no index at --persist-dir {str(where)!r}; build one first with "
                f"`{PROG} index PATH --persist-dir {where}`"
            )
    wants_answer = (args.answer or bool(args.llm_base_url)) and not args.json
    with llm_endpoint(args, needed=_needs_llm(args.reranker) or wants_answer) as endpoint:
        return _query(args, config, endpoint, wants_answer)


def _query(
    args: argparse.Namespace, config: ChromaConfig, endpoint: LLMEndpoint | None, answer: bool
) -> int:
    from llamaindex_rerankers.pipeline import load_index, make_embed_model, retrieve_and_rerank
    from llamaindex_rerankers.presentation import format_sources, ranked_sources

    reranker = _reranker(args, top_n=args.top_n, endpoint=endpoint)
    _quiet_third_parties()
    embed = make_embed_model(args.embed_model)
    index = load_index(config, embed_model=embed)
    result = retrieve_and_rerank(index, args.question, top_k=args.top_k, reranker=reranker)
    if not result.retrieved:
        raise UsageError(
            f"{PROG} query: the index {config.describe()} is empty; index documents into it "
            f"with `{PROG} index PATH` and the same --persist-dir/--chroma-host and --collection"
        )
    sources = ranked_sources(result, top_n=args.top_n)
    if args.json:
        print(json.dumps([s.to_json() for s in sources], indent=2, ensure_ascii=False))
        return 0
    text = None
    if answer and endpoint is not None:
        text = _answer(endpoint.as_llama_index_llm(), args.question, result.reranked[: args.top_n])
    print(format_sources(sources, width=_width(), answer=text))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    with llm_endpoint(args, needed=_needs_llm(args.reranker)) as endpoint:
        return _demo(args, endpoint)


def _demo(args: argparse.Namespace, endpoint: LLMEndpoint | None) -> int:
    from llamaindex_rerankers.demo import DEMO_COLLECTION, DEMO_QUESTIONS, run_demo
    from llamaindex_rerankers.pipeline import make_embed_model
    from llamaindex_rerankers.presentation import format_demo

    reranker = _reranker(args, top_n=None, endpoint=endpoint)
    _quiet_third_parties()
    # The reranker's model first: a missing model fails before anything is embedded.
    load = getattr(reranker, "load", None)
    if callable(load):
        load()
    report = run_demo(
        persist_dir=args.persist_dir,
        collection=args.collection or DEMO_COLLECTION,
        questions=args.question or DEMO_QUESTIONS,
        top_k=args.top_k,
        reranker=reranker,
        embed_model=make_embed_model(args.embed_model),
    )
    print(format_demo(report, width=_width()))
    return 0


def _cmd_llm_server(args: argparse.Namespace) -> int:
    from llamaindex_rerankers.llm.server import serve_forever

    print(f"serving at http://{args.host}:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr)
    return serve_forever(args.model_path, args.host, args.port, n_ctx=args.n_ctx)


def _cmd_eval(args: argparse.Namespace) -> int:
    from llamaindex_rerankers.evaluation.command import run_eval_command

    _quiet_third_parties()
    # Per-call truncation warnings would repeat for every query; the table's total_truncated
    # column reports them instead.
    logging.getLogger("llamaindex_rerankers.cross_encoder").setLevel(logging.ERROR)
    return run_eval_command(args)


# -- helpers ----------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> ChromaConfig:
    from llamaindex_rerankers.pipeline import DEFAULT_COLLECTION, ChromaConfig

    return ChromaConfig(
        persist_dir=args.persist_dir,
        collection=args.collection or DEFAULT_COLLECTION,
        host=args.chroma_host,
        port=args.chroma_port,
    )


def _needs_llm(reranker: str) -> bool:
    from llamaindex_rerankers.evaluation.command import LLM_RERANKERS

    return reranker in LLM_RERANKERS


def _reranker(
    args: argparse.Namespace, *, top_n: int | None, endpoint: LLMEndpoint | None = None
) -> BaseNodePostprocessor | None:
    options: dict[str, Any] = {}
    if args.cross_encoder_model and args.reranker in ("cross-encoder", "sbert"):
        options["model"] = args.cross_encoder_model
    if args.cross_encoder_model and args.reranker == "cascade":
        options["cross_encoder_model"] = args.cross_encoder_model
    if endpoint is not None and _needs_llm(args.reranker):
        options.update(endpoint.reranker_options())
    return make_reranker(args.reranker, top_n=top_n, **options)


def _answer(llm: LLM, question: str, nodes: Sequence[NodeWithScore]) -> str:
    from llama_index.core import get_response_synthesizer

    synthesizer = get_response_synthesizer(llm=llm)
    return str(synthesizer.synthesize(question, nodes=list(nodes)))


def _width() -> int:
    """Terminal width, capped at 100 columns (the layout's design width)."""
    import shutil

    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def _configure_logging(verbose: bool) -> None:
    # The CLI is an application: it may configure logging (the library never does).
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _quiet_third_parties() -> None:
    """Silence third-party chatter that is noise on a terminal; our own logs stay."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    noisy = (
        "chromadb",
        "httpx",
        "sentence_transformers",
        "transformers",
        "huggingface_hub",
        # Warns once per file read that llama-index-readers-file (PDF, DOCX, ...) is absent.
        "llama_index.core.readers.file.base",
    )
    for name in noisy:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from huggingface_hub import utils as hub_utils
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hub_bars_were_off = hub_utils.are_progress_bars_disabled()
    # transformers draws a "Loading weights" bar for every model it loads; that is noise. Its
    # switch also turns off the hub's download bars, which are worth keeping: turn them back on.
    hf_logging.disable_progress_bar()
    if not hub_bars_were_off:
        hub_utils.enable_progress_bars()
    hf_logging.set_verbosity_error()


def _cli_hint(exc: BaseException) -> str:
    """The command-line spelling of the option a model error names."""
    if not isinstance(exc, ModelLoadError):
        return ""
    from llamaindex_rerankers.pipeline import EmbedModelLoadError

    flag = "--embed-model" if isinstance(exc, EmbedModelLoadError) else "--cross-encoder-model"
    return f" On the command line: {flag} M."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())

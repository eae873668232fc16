"""What each subcommand of ``llamaindex-rerankers`` does, once its arguments are parsed.

Heavy modules (models, Chroma, the evaluation harness) are imported inside the commands, so that
``--help`` and input errors answer at once.

Example:
    >>> from llamaindex_rerankers.cli.parser import build_parser
    >>> run_command(build_parser().parse_args(["demo", "--top-k", "5"]))  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llamaindex_rerankers.cli.llm_options import llm_endpoint
from llamaindex_rerankers.cli.parser import PROG, UsageError, remote_arguments
from llamaindex_rerankers.registry import make_reranker, needs_llm, reranker_options

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from llama_index.core.llms import LLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import NodeWithScore

    from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint
    from llamaindex_rerankers.pipeline import ChromaConfig


def run_command(args: argparse.Namespace) -> int:
    """Run the subcommand ``args.command`` (parsed by
    :func:`~llamaindex_rerankers.cli.parser.build_parser`); returns its exit code."""
    return COMMANDS[args.command](args)


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
    answer = wants_answer(args)
    with llm_endpoint(args, needed=needs_llm(args.reranker) or answer) as endpoint:
        return _query(args, config, endpoint, answer)


def wants_answer(args: argparse.Namespace) -> bool:
    """Whether ``query`` writes an answer: ``--answer``/``--no-answer`` when given, else whenever
    ``--llm-base-url`` is (its documented meaning); never with ``--json``."""
    if args.json:
        return False
    return bool(args.llm_base_url) if args.answer is None else bool(args.answer)


class AnswerError(RuntimeError):
    """The LLM endpoint could not write ``query``'s answer (down, wrong model, refused key)."""


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
        nodes = result.reranked[: args.top_n]
        try:
            text = _answer(endpoint.as_llama_index_llm(), args.question, nodes)
        except Exception as exc:
            # The SDK's own error (openai.APIConnectionError ...) with its traceback is noise for
            # a user whose endpoint is down; -v logs the traceback.
            logger.info("the answer failed", exc_info=True)
            where = endpoint.base_url or "OpenAI's API"
            raise AnswerError(
                f"{PROG} query: could not write the answer with the LLM at {where} "
                f"({type(exc).__name__}: {exc}); check --llm-base-url and --llm-model, or pass "
                "--no-answer to print only the reranked sources"
            ) from exc
    print(format_sources(sources, width=_width(), answer=text))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    with llm_endpoint(args, needed=needs_llm(args.reranker)) as endpoint:
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
    from llamaindex_rerankers.cli.llm_options import cpu_extra_buffers
    from llamaindex_rerankers.endpoints.llamacpp import (
        build_llama_server,
        find_llama_server,
        serve_forever,
    )

    if args.build:
        found = find_llama_server(args.llama_server)
        if found is None:
            print("building llama-server (4-5 min) ...", file=sys.stderr, flush=True)
            found = str(build_llama_server())
        print(found)
        return 0
    print(f"serving at http://{args.host}:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr)
    return serve_forever(
        args.model_path,
        args.host,
        args.port,
        n_ctx=args.n_ctx,
        cpu_extra_buffers=cpu_extra_buffers(args.cpu_extra_buffers),
        llama_server=args.llama_server,
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from llamaindex_rerankers.cli.evaluate import run_eval_command

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


def _reranker(
    args: argparse.Namespace, *, top_n: int | None, endpoint: LLMEndpoint | None = None
) -> BaseNodePostprocessor | None:
    options = reranker_options(
        args.reranker,
        cross_encoder_model=args.cross_encoder_model,
        endpoint=endpoint,
        **remote_arguments(args),
    )
    return make_reranker(args.reranker, top_n=top_n, **options)


def _answer(llm: LLM, question: str, nodes: Sequence[NodeWithScore]) -> str:
    from llama_index.core import get_response_synthesizer

    synthesizer = get_response_synthesizer(llm=llm)
    return str(synthesizer.synthesize(question, nodes=list(nodes)))


def _width() -> int:
    """Terminal width, capped at 100 columns (the layout's design width)."""
    import shutil

    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


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
        # Warns at each retry of the answer LLM; if it fails for good, one error line says so.
        "llama_index.llms.openai.utils",
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from llamaindex_rerankers.cli.serve import run_serve_command

    return run_serve_command(args)


#: Subcommand name -> what runs it.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "index": _cmd_index,
    "query": _cmd_query,
    "demo": _cmd_demo,
    "llm-server": _cmd_llm_server,
    "eval": _cmd_eval,
    "serve": _cmd_serve,
}

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

The package: :mod:`.parser` (arguments and their checks), :mod:`.commands` (what each
subcommand does), :mod:`.llm_options` (the LLM endpoint options shared with ``eval``); this
module runs them and turns user errors into one line on stderr.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from llamaindex_rerankers._errors import one_line
from llamaindex_rerankers._models import ModelLoadError
from llamaindex_rerankers.cli.commands import AnswerError, run_command
from llamaindex_rerankers.cli.parser import PROG, UsageError, build_parser, check_args
from llamaindex_rerankers.endpoints.llamacpp import LocalLLMServerError

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
    LocalLLMServerError,  # a GGUF that is missing or does not start
    AnswerError,  # the LLM endpoint that should write query's answer failed
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or missing model).

    Example:
        >>> main(["query", "pruning apple trees", "--persist-dir", "./chroma"])  # doctest: +SKIP
        0
    """
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.verbose)
    try:
        return run_command(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _USER_ERRORS as exc:
        print(f"error: {one_line(exc)}{_cli_hint(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def configure_logging(verbose: bool) -> None:
    """Log to stderr, at INFO with ``-v``/``--verbose`` and WARNING otherwise: the command line's
    logging, also that of ``python -m llamaindex_rerankers.server``."""
    # The CLI is an application: it may configure logging (the library never does).
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cli_hint(exc: BaseException) -> str:
    """The command-line spelling of the option a model error names."""
    if not isinstance(exc, ModelLoadError):
        return ""
    from llamaindex_rerankers.pipeline import EmbedModelLoadError

    flag = "--embed-model" if isinstance(exc, EmbedModelLoadError) else "--cross-encoder-model"
    return f" On the command line: {flag} M."


__all__ = ["EXIT_USAGE", "PROG", "UsageError", "build_parser", "configure_logging", "main"]

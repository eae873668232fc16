"""``python -m llamaindex_rerankers.server``: the ``serve`` command on its own (same arguments).

Exit codes: 0 after a clean shutdown (SIGTERM, Ctrl-C), 2 for bad arguments or a model, index
or package that is missing (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llamaindex_rerankers._models import ModelLoadError
from llamaindex_rerankers.cli import configure_logging
from llamaindex_rerankers.endpoints.llamacpp import LocalLLMServerError
from llamaindex_rerankers.server.command import add_serve_arguments, run_serve_command

_USER_ERRORS = (
    ModelLoadError,
    ValueError,
    FileNotFoundError,
    ConnectionError,
    ImportError,
    LocalLLMServerError,  # a GGUF that is missing or does not start
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llamaindex_rerankers.server",
        description="Serve the RAG chatbot backend (as `llamaindex-rerankers serve`).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return run_serve_command(args)
    except _USER_ERRORS as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m llamaindex_rerankers.server``: the ``serve`` command on its own (same arguments).

A thin entry point: it runs ``llamaindex-rerankers serve ARGS`` through the command line's one
``main`` (:func:`llamaindex_rerankers.cli.main`), so that both spellings share the arguments, the
logging and the list of errors shown as one line. Exit codes: 0 after a clean shutdown (SIGTERM,
Ctrl-C), 2 for bad arguments or a model, index or package that is missing (one line on stderr,
no traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``serve`` with ``argv`` (default: this process's arguments); returns the exit code."""
    # The one application import of this package, on purpose: this module is a process entry
    # point, not part of the backend (tests/llm/test_module_boundaries.py names it).
    from llamaindex_rerankers.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    # -v/--verbose is the top-level parser's; accept it here, where it used to be.
    verbose = [a for a in args if a in ("-v", "--verbose")]
    rest = [a for a in args if a not in ("-v", "--verbose")]
    return cli_main([*verbose[:1], "serve", *rest])


if __name__ == "__main__":
    sys.exit(main())

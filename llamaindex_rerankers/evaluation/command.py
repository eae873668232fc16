"""Moved to :mod:`llamaindex_rerankers.cli.evaluate`: every argparse lives in the command line,
and the evaluation harness never imports it. This module only re-exports it so that older
imports keep working; nothing in the package imports it (``tests/llm/test_module_boundaries.py``
checks)."""

from __future__ import annotations

from llamaindex_rerankers.cli.evaluate import (
    EVAL_RERANKER_NAMES,
    add_eval_arguments,
    run_eval_command,
)

__all__ = ["EVAL_RERANKER_NAMES", "add_eval_arguments", "run_eval_command"]

"""Moved to :mod:`llamaindex_rerankers.cli.serve`: every argparse lives in the command line, and
the chatbot backend never imports it. This module only re-exports it so that older imports keep
working; nothing in the package imports it (``tests/llm/test_module_boundaries.py`` checks)."""

from __future__ import annotations

from llamaindex_rerankers.cli.serve import (
    DEMO_COLLECTION,
    LOCAL_LLM_N_CTX,
    add_serve_arguments,
    run_serve_command,
    settings_from_args,
)

__all__ = [
    "DEMO_COLLECTION",
    "LOCAL_LLM_N_CTX",
    "add_serve_arguments",
    "run_serve_command",
    "settings_from_args",
]

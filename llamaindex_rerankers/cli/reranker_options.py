"""From options to a reranker's factory options: now part of the one registry,
:mod:`llamaindex_rerankers.registry` (the server and ``eval`` use it too, and it is not a
command-line concern); re-exported here so that older imports keep working.

Example:
    >>> needs_llm("cross-encoder"), needs_llm("rankgpt")
    (False, True)
"""

from __future__ import annotations

from llamaindex_rerankers.registry import LLM_BACKED, needs_llm, reranker_options

__all__ = ["LLM_BACKED", "needs_llm", "reranker_options"]

"""LlamaIndex's own rerankers, the anchors ours are compared against: now in the one registry,
:mod:`llamaindex_rerankers.registry`, with ours; re-exported here so that older imports keep
working.

Example:
    >>> from llamaindex_rerankers.evaluation.anchors import ANCHOR_NAMES
    >>> ANCHOR_NAMES
    ('sbert', 'llmrerank', 'structuredllmrerank', 'rankgpt')
"""

from __future__ import annotations

from llamaindex_rerankers.registry import (
    ANCHOR_MAX_TOKENS,
    ANCHOR_N_CTX,
    ANCHOR_NAMES,
    LLM_ANCHORS,
    Factory,
    make_anchor,
)

__all__ = [
    "ANCHOR_MAX_TOKENS",
    "ANCHOR_NAMES",
    "ANCHOR_N_CTX",
    "LLM_ANCHORS",
    "Factory",
    "make_anchor",
]

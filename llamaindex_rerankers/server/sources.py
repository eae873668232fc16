"""Reranked nodes as the API's source records (:class:`~.schemas.SourceOut`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import NodeWithScore

from llamaindex_rerankers.base import RERANK_SCORE, RETRIEVAL_RANK, RETRIEVAL_SCORE
from llamaindex_rerankers.injection import SIGNALS_KEY, SUSPECTED_KEY
from llamaindex_rerankers.presentation import node_title, text_snippet

#: Characters of a source's text shown as its snippet.
SNIPPET_CHARS = 280
# Node metadata not shown to clients: the reranker's own keys are fields of their own, and
# server-local paths and indexing fingerprints are nobody's business.
_HIDDEN_PREFIXES = ("rerank_",)
_HIDDEN_KEYS = frozenset(
    {RERANK_SCORE, RETRIEVAL_RANK, RETRIEVAL_SCORE, "file_path", "source_hash", "ref_doc_index"}
)


def suspected(node: NodeWithScore) -> bool:
    """Whether the reranker's injection detector flagged this source."""
    return bool(node.node.metadata.get(SUSPECTED_KEY))


def source_records(nodes: Sequence[NodeWithScore]) -> list[dict[str, Any]]:
    """One JSON-ready record per reranked node, best first.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> node = TextNode(text="# Pruning\\nCut in winter.", id_="a#0",
        ...                 metadata={"rerank_score": 0.9, "retrieval_rank": 2})
        >>> record = source_records([NodeWithScore(node=node, score=0.9)])[0]
        >>> record["title"], record["snippet"], record["retrieval_rank"]
        ('Pruning', 'Cut in winter.', 2)
    """
    return [_record(n, rank) for rank, n in enumerate(nodes, start=1)]


def _record(n: NodeWithScore, rank: int) -> dict[str, Any]:
    meta = n.node.metadata
    text = n.node.get_content()
    probs = meta.get("rerank_label_probs")
    return {
        "id": n.node.node_id,
        "rank": rank,
        "title": node_title(n, file_path=False),
        "snippet": text_snippet(text, SNIPPET_CHARS),
        "text": text,
        "metadata": {
            k: v
            for k, v in meta.items()
            if k not in _HIDDEN_KEYS and not k.startswith(_HIDDEN_PREFIXES)
        },
        "rerank_score": _float(meta.get(RERANK_SCORE)),
        "rerank_label": meta.get("rerank_label"),
        "rerank_label_probs": (
            {str(k): float(v) for k, v in probs.items()} if isinstance(probs, dict) else None
        ),
        "rerank_injection_suspected": (
            bool(meta[SUSPECTED_KEY]) if SUSPECTED_KEY in meta else None
        ),
        "rerank_injection_signals": [str(s) for s in meta.get(SIGNALS_KEY, ())],
        "retrieval_rank": int(meta.get(RETRIEVAL_RANK, rank)),
        "retrieval_score": _float(meta.get(RETRIEVAL_SCORE)),
    }


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None

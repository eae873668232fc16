"""Rerankers for LlamaIndex: a cross-encoder and an LLM likelihood-label reranker.

Importing this package is light: torch, sentence-transformers, chromadb and openai are imported
only when a model, index or client is first used.

Example:
    >>> from llamaindex_rerankers import CrossEncoderReranker
    >>> reranker = CrossEncoderReranker(top_n=3)
"""

from __future__ import annotations

from llamaindex_rerankers._models import ModelLoadError
from llamaindex_rerankers.base import BaseReranker, RerankerEndEvent
from llamaindex_rerankers.cascade import CascadeReranker
from llamaindex_rerankers.cross_encoder import CrossEncoderReranker
from llamaindex_rerankers.llm import LLMReranker, local_llm_server
from llamaindex_rerankers.remote import RemoteReranker, RemoteRerankError
from llamaindex_rerankers.types import (
    CrossEncoderUsage,
    Judgement,
    LLMUsage,
    RemoteUsage,
    RerankReport,
    RerankResult,
)

__all__ = [
    "BaseReranker",
    "CascadeReranker",
    "CrossEncoderReranker",
    "CrossEncoderUsage",
    "Judgement",
    "LLMReranker",
    "LLMUsage",
    "ModelLoadError",
    "RemoteRerankError",
    "RemoteReranker",
    "RemoteUsage",
    "RerankReport",
    "RerankResult",
    "RerankerEndEvent",
    "local_llm_server",
]
__version__ = "0.1.0"

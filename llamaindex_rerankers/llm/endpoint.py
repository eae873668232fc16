"""Moved to :mod:`llamaindex_rerankers.endpoints.endpoint`; re-exported here so that older
imports keep working."""

from __future__ import annotations

from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint

__all__ = ["LLMEndpoint"]

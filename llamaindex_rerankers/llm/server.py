"""Moved to :mod:`llamaindex_rerankers.endpoints.llamacpp` (the local llama.cpp launcher is
where an LLM lives, not part of the judge); this module re-exports it so that older imports keep
working."""

from __future__ import annotations

from llamaindex_rerankers.endpoints import llamacpp as _llamacpp
from llamaindex_rerankers.endpoints.llamacpp import *  # noqa: F403 (the same public names)

__all__ = list(_llamacpp.__all__)

"""Kept for older imports: the background loop moved to :mod:`llamaindex_rerankers.http.loop`,
since the rerank service client runs on it too."""

from __future__ import annotations

from llamaindex_rerankers.http.loop import (
    THREAD_NAME,
    background_loop,
    on_background_loop,
    run_async,
    run_sync,
)

__all__ = ["THREAD_NAME", "background_loop", "on_background_loop", "run_async", "run_sync"]

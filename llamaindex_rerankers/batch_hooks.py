"""Per-call hooks around each forward pass: how a caller stops or paces a long rerank.

A caller that runs rerankers for others (a web server) needs two things from a long call: that
it stops at the next batch once nobody waits for it (a timeout, a client gone), and that its
batches can take turns with other calls' batches instead of holding the CPU for the whole call.
Both belong to the call, never to the reranker instance: the hook is set for the current
context (thread or asyncio task) with :func:`batch_hook`, and the cross-encoder calls it before
and after each batch. Async calls carry it into their worker thread (the context is copied).

Example:
    >>> class Stop:
    ...     def before_batch(self, pairs: int, tokens: int) -> None:
    ...         raise CallCancelled("nobody waits for this call any more")
    ...     def after_batch(self) -> None:
    ...         pass
    >>> with batch_hook(Stop()):
    ...     current_batch_hook() is not None
    True
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol

__all__ = ["BatchHook", "CallCancelled", "batch_hook", "current_batch_hook"]


class CallCancelled(Exception):
    """Raised by a hook (and so by the rerank call) when the call should stop: nobody waits for
    its result any more."""


class BatchHook(Protocol):
    """What a reranker calls around each forward pass of one call.

    ``before_batch`` may block (waiting for a turn) or raise :class:`CallCancelled` (the call
    stops there, its remaining batches never run); ``after_batch`` follows every batch whose
    ``before_batch`` returned, also when the batch failed.
    """

    def before_batch(self, pairs: int, tokens: int) -> None:
        """Before a batch of ``pairs`` (query, passage) pairs, ``tokens`` model positions in all
        (pairs times the padded width)."""

    def after_batch(self) -> None:
        """After that batch."""


_HOOK: contextvars.ContextVar[BatchHook | None] = contextvars.ContextVar(
    "llamaindex_rerankers_batch_hook", default=None
)


@contextlib.contextmanager
def batch_hook(hook: BatchHook | None) -> Iterator[None]:
    """Call ``hook`` around every forward pass of the rerank calls made in this block (in this
    thread or task, and in the worker threads its async calls use); ``None`` sets none."""
    token = _HOOK.set(hook)
    try:
        yield
    finally:
        _HOOK.reset(token)


def current_batch_hook() -> BatchHook | None:
    """The hook set by the innermost :func:`batch_hook` of this context, if any."""
    return _HOOK.get()

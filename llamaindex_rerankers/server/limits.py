"""Bounded concurrency: what keeps one server safe for many users (the bounded chat sessions
are in :mod:`~llamaindex_rerankers.server.sessions`).

The gates live on one event loop and never await while changing their state, so they need no
lock.

Example:
    >>> gate = AdmissionGate("search", limit=2, queue=0)
    >>> gate.capacity
    2
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Overloaded(Exception):
    """Every slot and every queue place is taken: answer 503 with Retry-After at once."""

    def __init__(self, gate: str) -> None:
        super().__init__(f"the server is at capacity ({gate}); retry shortly")
        self.gate = gate


class AdmissionGate:
    """At most ``limit`` requests run at once and at most ``queue`` wait; the next one is turned
    away at once (:class:`Overloaded`) instead of waiting without bound.

    Args:
        name: for errors and metrics (``search``, ``chat``).
        limit: requests processed at once.
        queue: requests allowed to wait for a slot.
    """

    def __init__(self, name: str, *, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError(f"limit must be >= 1 and queue >= 0, got {limit} and {queue}")
        self.name = name
        self.limit = limit
        self.queue = queue
        self.active = 0
        self.waiting = 0
        self._semaphore: asyncio.Semaphore | None = None

    @property
    def capacity(self) -> int:
        """Requests admitted at once, running and waiting together."""
        return self.limit + self.queue

    async def acquire(self) -> Ticket:
        """Take a slot, waiting in the queue if need be; release it with ``ticket.release()``.

        Raises:
            Overloaded: every slot and queue place is taken (raised before any waiting).
        """
        if self.active + self.waiting >= self.capacity:
            raise Overloaded(self.name)
        if self._semaphore is None:  # created on the loop that serves the requests
            self._semaphore = asyncio.Semaphore(self.limit)
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        return Ticket(self)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with`` (see :meth:`acquire`)."""
        ticket = await self.acquire()
        try:
            yield
        finally:
            ticket.release()

    def _release(self) -> None:
        self.active -= 1
        assert self._semaphore is not None
        self._semaphore.release()


class Ticket:
    """One held slot; :meth:`release` may be called any number of times (a streamed response
    releases it when its body ends and again, harmlessly, when the response closes)."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate: AdmissionGate | None = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release()

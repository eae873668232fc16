"""One long-lived event loop, in a daemon thread, on which every HTTP request of the process's
rerankers runs (LLM judgements, rerank-service calls).

Why: the limits of an :class:`~llamaindex_rerankers.llm.reranker.LLMReranker` or a
:class:`~llamaindex_rerankers.remote.RemoteReranker` (its semaphore, its HTTP client and
connection pool) are asyncio objects bound to one loop. Running all of an
instance's calls on the same loop, whichever thread or event loop they come from, makes those
objects the instance's: ``concurrency`` bounds the requests in flight across all its concurrent
calls, and connections are reused from one pool instead of one per call.

* Sync callers block on the result (:func:`run_sync`); this works inside a running event loop
  too (Jupyter, an async web handler calling the sync API), since the work runs on another
  thread's loop.
* Async callers await it (:func:`run_async`) through :func:`asyncio.wrap_future`; cancelling the
  caller cancels the work on the background loop.
* The caller's :mod:`contextvars` are copied to the work (``run_coroutine_threadsafe`` schedules
  it from the caller's thread), so instrumentation spans stay attached.

The loop is started on first use, and again in a forked child (which inherits no threads).

Example:
    >>> async def answer() -> int:
    ...     return 42
    >>> run_sync(answer())
    42
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: Name of the background loop's thread (in thread dumps and logs).
THREAD_NAME = "llamaindex-rerankers-http-loop"


# Why not anyio's blocking portal (``anyio.from_thread.start_blocking_portal``), which starts
# the same kind of loop thread: measured with anyio 4.16 on Python 3.11, a forked child (the
# default multiprocessing start method on Linux) hangs for good on its first call, inside the
# new portal's start (the caller waits on a call that the new portal's loop, idle in
# ``select``, never runs; tests/llm/test_loop.py), where this loop is simply made again. Per
# call the portal was slower (78 vs 51 us per run_sync), which would not matter: one rerank
# call is one run_sync, and each of its judgements takes milliseconds. Nor does it save code:
# the fork check, the self-wait guard, the cancel on KeyboardInterrupt and the thread name stay
# ours (the portal version was 4 lines longer).
class _Background:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def usable(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive() and not self.loop.is_closed()

    def stop(self) -> None:
        if self.usable:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


_LOCK = threading.Lock()
_CURRENT: _Background | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use.

    Example:
        >>> isinstance(background_loop(), asyncio.AbstractEventLoop)
        True
    """
    global _CURRENT
    with _LOCK:
        if _CURRENT is None or not _CURRENT.usable:
            _CURRENT = _Background()
        return _CURRENT.loop


def on_background_loop() -> bool:
    """Whether the calling code runs on the background loop's thread."""
    current = _CURRENT
    return current is not None and current.usable and current.thread is threading.current_thread()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and block until it is done.

    Raises:
        RuntimeError: when called from the background loop itself (it would wait for itself);
            await :func:`run_async` there instead.
    """
    if on_background_loop():
        coro.close()
        raise RuntimeError(
            "a sync rerank was called from the rerankers' own background event loop (from a "
            "ChatClient or cache?); use `await reranker.arerank(...)` there instead."
        )
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()  # KeyboardInterrupt while waiting: stop the work too (no-op when done)
        raise


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on the background loop; cancelling the caller cancels it there."""
    if on_background_loop():
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, background_loop()))


async def gather_all(coroutines: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently and return the results in order. If one raises (a misconfiguration,
    not a counted failure) or the caller is cancelled, the others are cancelled and awaited
    (so that they release their request slots). The first error is raised as itself, not
    wrapped in the task group's ``ExceptionGroup``: callers catch it by its type.

    (Not ``except*``: before CPython 3.11.4 an exception raised in an ``except*`` clause comes
    out wrapped in a new ``ExceptionGroup`` anyway, gh-103590.)
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return [task.result() for task in tasks]


@atexit.register
def _stop_at_exit() -> None:
    current = _CURRENT
    if current is not None:
        current.stop()

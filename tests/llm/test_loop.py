"""The background event loop: one per process, made again in a forked child (the reason we keep
our own instead of anyio's blocking portal, which hangs there; see llm/loop.py)."""

from __future__ import annotations

import contextvars
import multiprocessing
import threading

import pytest

from llamaindex_rerankers.llm.loop import THREAD_NAME, run_async, run_sync


async def _thread_name() -> str:
    return threading.current_thread().name


def _in_child(queue: multiprocessing.Queue[str]) -> None:
    queue.put(run_sync(_thread_name()))


def test_a_forked_child_gets_a_loop_of_its_own() -> None:
    assert run_sync(_thread_name()) == THREAD_NAME  # the parent's loop is running
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on its first run_sync")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == THREAD_NAME


async def test_async_callers_run_on_the_same_loop_with_their_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read() -> tuple[str, str]:
        return var.get(), threading.current_thread().name

    var.set("caller")
    assert await run_async(read()) == ("caller", THREAD_NAME)
    assert run_sync(read()) == ("caller", THREAD_NAME)

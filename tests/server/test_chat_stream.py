"""The answer's stream in-process, at the moments that used to break it: the deadline passing
and the client leaving while the server awaits the next delta. The stream is LlamaIndex's own
``StreamingAgentChatResponse`` with its writer task, as the chat engine makes it; the LLM behind
it is a slow generator (a fault: an LLM slower than the chat's deadline)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.chat_engine.types import StreamingAgentChatResponse
from llama_index.core.memory import ChatMemoryBuffer

from llamaindex_rerankers.server.chat import ChatTurn, _deltas

#: The slow LLM: a delta every 50 ms, 5 s in all.
PACE, TOKENS = 0.05, 100


async def slow_llm(stopped: list[float]) -> AsyncIterator[ChatResponse]:
    text = ""
    try:
        for i in range(TOKENS):
            await asyncio.sleep(PACE)
            text += f"w{i} "
            yield ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=f"w{i} "
            )
    finally:
        stopped.append(time.monotonic())  # the LLM's request ended (finished or cancelled)


def streamed_turn(stopped: list[float]) -> ChatTurn:
    """A turn whose answer streams as CondensePlusContextChatEngine.astream_chat returns it."""
    response = StreamingAgentChatResponse(achat_stream=slow_llm(stopped))
    response.awrite_response_to_history_task = asyncio.create_task(
        response.awrite_response_to_history(ChatMemoryBuffer.from_defaults())
    )
    search: Any = None  # not read by the deltas
    turn = ChatTurn("msg_1", None, "q", search, "answered", time.perf_counter(), None)
    turn.stream = response
    return turn


async def test_the_deadline_ends_the_deltas_and_the_llm_request_at_once() -> None:
    stopped: list[float] = []
    turn = streamed_turn(stopped)
    started = time.monotonic()
    deltas = [d async for d in _deltas(turn, started + 0.5)]
    ended = time.monotonic()
    assert 2 <= len(deltas) < TOKENS
    assert turn.error is not None and "--chat-timeout" in turn.error
    assert ended - started < 1.0  # not when the LLM would have finished (5 s)
    assert stopped and stopped[0] - started < 1.0  # the LLM's request was cancelled


async def test_a_client_leaving_while_a_delta_is_awaited_cancels_cleanly() -> None:
    """Starlette cancels the response's task through an anyio cancel scope when the client
    leaves; anyio delivers that cancellation again on every loop turn until it is honoured.
    The answer's reader must not be closed while it still runs ("aclose(): asynchronous
    generator is already running"), and the LLM's request must end with it."""
    stopped: list[float] = []
    turn = streamed_turn(stopped)
    received: list[str] = []
    started = time.monotonic()
    with anyio.CancelScope() as scope:
        async for delta in _deltas(turn, started + 60):
            received.append(delta)
            scope.cancel()  # the next delta is awaited under the cancellation
    left = time.monotonic()
    assert scope.cancelled_caught and received == ["w0 "]
    assert left - started < 1.0
    await asyncio.sleep(0.2)
    assert stopped and stopped[0] - started < 1.0

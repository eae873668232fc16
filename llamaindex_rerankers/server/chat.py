"""One chat turn: LlamaIndex's condense-plus-context chat engine over our reranked retrieval.

The engine rewrites a follow-up into a standalone question, retrieves, and writes the answer from
the sources. Its retriever here is :class:`_RerankingRetriever`, which retrieves and reranks
through the :class:`~llamaindex_rerankers.server.backend.Backend` and keeps that call's result,
so every response carries its own report (a node postprocessor inside the engine would hand back
nodes only). When nothing is relevant (abstain) or nothing could be judged (an outage), the
retriever stops the engine before it calls the LLM: no answer is invented from junk, and an
outage is never reported as "nothing relevant". Sources the reranker's injection detector
flagged are listed (marked) but not given to the answer LLM; when every relevant source is
flagged, no answer is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.chat_engine.types import StreamingAgentChatResponse
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.schema import NodeWithScore, QueryBundle

from llamaindex_rerankers._errors import one_line
from llamaindex_rerankers.server import streaming
from llamaindex_rerankers.server.backend import Backend, Search
from llamaindex_rerankers.server.errors import ApiError
from llamaindex_rerankers.server.sources import source_records, suspected

logger = logging.getLogger(__name__)

#: The answer when no source reaches the relevance threshold.
ABSTAIN_MESSAGE = (
    "I found nothing relevant to this question in the documents, so I will not guess an answer."
)
#: The answer when the reranker could not judge any source (e.g. its LLM is unreachable).
FAILED_MESSAGE = (
    "The reranker could not judge any of the retrieved sources (its LLM did not answer), so I "
    "cannot tell which of them are relevant and have not written an answer. Please try again "
    "later."
)
#: The answer when every source kept was flagged by the injection detector.
SUSPECTED_MESSAGE = (
    "Every source found for this question was flagged as carrying instructions aimed at an AI "
    "(possible prompt injection), so I have not written an answer from them. The sources are "
    "listed, marked as suspected."
)
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly, using only the documents given."
CONTEXT_PROMPT = (
    "Answer the user's question using only these documents. If they do not contain the "
    "answer, say that you do not know.\n\nDocuments:\n{context_str}"
)


class _Answerless(Exception):
    """Raised by the retriever to stop the engine before the LLM writes anything."""


class _RerankingRetriever(BaseRetriever):
    """Retrieve and rerank through the backend; keep this call's :class:`Search`."""

    def __init__(self, backend: Backend, top_k: int, top_n: int) -> None:
        super().__init__()
        self._backend = backend
        self._top_k = top_k
        self._top_n = top_n
        self.search: Search | None = None
        self.started: float | None = None

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        raise NotImplementedError("the server's chat engine retrieves asynchronously")

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.started = time.perf_counter()
        # Admitted by the search gate like /v1/retrieve: its forward passes take turns with
        # the others, it counts in their estimated waits, and it is refused (503, by the
        # handler of Refused) when its wait would exceed --max-queue-wait. Cancelling the turn
        # (timeout, client gone) stops it at its next batch.
        backend = self._backend
        job = backend.admit_retrieve(self._top_k)
        try:
            await backend.search_gate.start(job)
            self.search = await backend.search(
                query_bundle.query_str, top_k=self._top_k, top_n=self._top_n, job=job
            )
        finally:
            job.finish()
        if self.search.failed or self.search.abstained or _withheld(self.search):
            raise _Answerless
        return [n for n in self.search.nodes if not suspected(n)]


def _withheld(search: Search) -> bool:
    """Every source kept is suspected: the answer LLM gets nothing to read."""
    return bool(search.nodes) and all(suspected(n) for n in search.nodes)


@dataclass
class ChatTurn:
    """A chat turn after retrieval: its sources, and its answer or the stream of it."""

    message_id: str
    session_id: str | None
    question: str
    search: Search
    status: str
    started: float
    condense_seconds: float | None
    answer: str = ""
    stream: StreamingAgentChatResponse | None = None
    answer_seconds: float | None = None
    error: str | None = None

    def sources(self) -> list[dict[str, Any]]:
        return source_records(self.search.nodes)

    def abandon(self) -> None:
        """Cancel the LLM's answer if its stream was never read (the response never started):
        nobody would read what it writes."""
        writer = self.stream.awrite_response_to_history_task if self.stream else None
        if writer is not None and not writer.done():
            writer.cancel()
            writer.add_done_callback(lambda t: t.cancelled() or t.exception())

    @property
    def abstained(self) -> bool:
        """No answer was written for want of a relevant (and unsuspected) source."""
        return self.status == "abstained"

    def sources_event(self) -> dict[str, Any]:
        return {
            "query": self.search.query,
            "status": self.status,
            "abstained": self.abstained,
            "reranker_failed": self.search.failed,
            "sources": self.sources(),
        }

    def timings(self) -> dict[str, Any]:
        s = self.search
        return {
            "condense_s": self.condense_seconds,
            "retrieve_s": s.retrieve_seconds,
            "rerank_s": s.rerank_seconds,
            "answer_s": self.answer_seconds,
            "total_s": time.perf_counter() - self.started,
        }

    def report_event(self) -> dict[str, Any]:
        return {
            "status": self.status if self.error is None else "error",
            "session_id": self.session_id,
            "report": self.search.report.to_dict(),
            "timings": self.timings(),
        }

    def document(self) -> dict[str, Any]:
        """The non-streamed response (``"stream": false``)."""
        return {
            "id": self.message_id,
            "session_id": self.session_id,
            "status": self.status,
            "answer": self.answer,
            "query": self.search.query,
            "abstained": self.abstained,
            "reranker_failed": self.search.failed,
            "sources": self.sources(),
            "report": self.search.report.to_dict(),
            "timings": self.timings(),
        }


def history_messages(messages: Sequence[dict[str, str]]) -> list[ChatMessage]:
    roles = {"user": MessageRole.USER, "assistant": MessageRole.ASSISTANT}
    return [ChatMessage(role=roles[m["role"]], content=m["content"]) for m in messages]


async def begin_turn(
    backend: Backend,
    question: str,
    history: Sequence[dict[str, str]],
    *,
    top_k: int,
    top_n: int,
    stream: bool,
    message_id: str,
    session_id: str | None,
) -> ChatTurn:
    """Condense, retrieve and rerank; then the answer (``stream=False``) or its stream.

    Raises:
        ApiError: 502 when the answer LLM fails before streaming starts.
    """
    llm = backend.answer_llm
    if llm is None:
        raise ApiError(
            501, "answers_disabled", "this server writes no answers; use /v1/retrieve for sources"
        )
    retriever = _RerankingRetriever(backend, top_k, top_n)
    engine = CondensePlusContextChatEngine(
        retriever=retriever,
        llm=llm,
        memory=ChatMemoryBuffer.from_defaults(chat_history=history_messages(history), llm=llm),
        context_prompt=CONTEXT_PROMPT,
        system_prompt=SYSTEM_PROMPT,
    )
    started = time.perf_counter()
    response: Any = None
    try:
        response = await (engine.astream_chat(question) if stream else engine.achat(question))
    except _Answerless:
        pass
    except Exception as exc:
        if retriever.started is not None and retriever.search is None:
            raise  # retrieval or reranking failed: not the answer LLM's fault
        stage = "rewriting the question" if retriever.search is None else "writing the answer"
        logger.warning("the answer LLM failed while %s: %s", stage, exc)
        raise ApiError(
            502, "llm_unavailable", f"the answer LLM failed while {stage} ({type(exc).__name__})"
        ) from exc
    search = retriever.search
    assert search is not None and retriever.started is not None
    condense = retriever.started - started if history else None
    withheld = not search.failed and not search.abstained and _withheld(search)
    status = (
        "reranker_failed"
        if search.failed
        else "abstained"
        if search.abstained or withheld
        else "answered"
    )
    turn = ChatTurn(message_id, session_id, question, search, status, started, condense)
    if search.failed:
        turn.answer = FAILED_MESSAGE
    elif search.abstained:
        turn.answer = ABSTAIN_MESSAGE
    elif withheld:
        turn.answer = SUSPECTED_MESSAGE
    elif stream:
        turn.stream = response
    else:
        turn.answer = str(response.response).strip()
        turn.answer_seconds = time.perf_counter() - started - search.retrieve_seconds
        turn.answer_seconds -= search.rerank_seconds + (condense or 0.0)
        backend.metrics.stage.labels("answer").observe(turn.answer_seconds)
    if condense is not None:
        backend.metrics.stage.labels("condense").observe(condense)
    return turn


async def stream_turn(turn: ChatTurn, backend: Backend, deadline: float) -> AsyncIterator[str]:
    """The turn as a UI message stream: start, sources, the answer's text, report, finish."""
    text_id = f"text_{turn.message_id}"
    yield streaming.sse(streaming.start(turn.message_id))
    yield streaming.sse(streaming.data("sources", turn.sources_event()))
    for source in turn.sources():
        yield streaming.sse(streaming.source_document(source["id"], source["title"]))
    yield streaming.sse(streaming.START_STEP)
    yield streaming.sse(streaming.text_start(text_id))
    if turn.stream is None:
        yield streaming.sse(streaming.text_delta(text_id, turn.answer))
    else:
        answer_started = time.perf_counter()
        async for delta in _deltas(turn, deadline):
            turn.answer += delta
            yield streaming.sse(streaming.text_delta(text_id, delta))
        turn.answer_seconds = time.perf_counter() - answer_started
        backend.metrics.stage.labels("answer").observe(turn.answer_seconds)
    yield streaming.sse(streaming.text_end(text_id))
    yield streaming.sse(streaming.FINISH_STEP)
    # The report before the error: the AI SDK's Chat (useChat) stops reading at an `error`
    # part, so whatever follows it never reaches the client's message.
    yield streaming.sse(streaming.data("report", turn.report_event()))
    if turn.error is not None:
        yield streaming.sse(streaming.error(turn.error))
        yield streaming.sse(streaming.finish("error"))
    else:
        yield streaming.sse(streaming.FINISH)
    yield streaming.DONE


async def _deltas(turn: ChatTurn, deadline: float) -> AsyncIterator[str]:
    """The answer's text deltas until ``deadline`` (``time.monotonic()``); a timeout or an LLM
    failure ends them with ``turn.error``. Ended early (deadline, failure, or the client gone),
    the LLM's request is cancelled, which closes its connection: the LLM stops generating."""
    assert turn.stream is not None
    stream = turn.stream
    # The engine's writer task reads the LLM's HTTP stream into the response's queue. We own it:
    # LlamaIndex's reader would otherwise await it to its end when closed, holding a timed-out
    # or abandoned answer until the LLM has written all of it.
    writer = stream.awrite_response_to_history_task
    stream.awrite_response_to_history_task = None
    deltas = stream.async_response_gen()
    loop = asyncio.get_running_loop()
    when = loop.time() + (deadline - time.monotonic())
    finished = False
    try:
        while True:
            # Awaited in this task (not a task of its own, as wait_for would make): a
            # cancellation reaches the reader itself, so it is never closed while still
            # running (a repeated cancellation used to leave wait_for's task running, and
            # aclose() then raised "asynchronous generator is already running").
            try:
                async with asyncio.timeout_at(when):
                    delta = await anext(deltas)
            except StopAsyncIteration:
                break
            if delta:
                yield delta
        if writer is not None:
            async with asyncio.timeout_at(when):
                await writer  # the history write after the last token, or the LLM's failure
        finished = True
    except TimeoutError:
        turn.error = "the answer took longer than the server's --chat-timeout"
    except Exception as exc:
        logger.warning("the answer LLM failed while streaming: %s", one_line(exc))
        turn.error = f"the answer LLM failed while writing the answer ({type(exc).__name__})"
    finally:
        await deltas.aclose()
        if writer is not None and not finished:
            await _cancel(writer)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and give it a moment to close its connection; never raises."""
    task.cancel()
    # Its exception, if any, was reported through the reader.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    current = asyncio.current_task()
    if current is None or not current.cancelling():
        await asyncio.wait({task}, timeout=1.0)


def completed(turn: ChatTurn) -> bool:
    """Whether the turn's answer (once streamed to its end) is worth keeping in a session."""
    return turn.error is None and turn.status != "reranker_failed"

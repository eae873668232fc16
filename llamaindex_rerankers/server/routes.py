"""The HTTP endpoints. Each validates its input against the server's limits, takes a slot in its
gate (or answers 503 at once), and runs under a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask

from llamaindex_rerankers.server import streaming
from llamaindex_rerankers.server.admission import Job
from llamaindex_rerankers.server.backend import Backend
from llamaindex_rerankers.server.chat import begin_turn, completed, stream_turn
from llamaindex_rerankers.server.errors import ApiError, invalid, overloaded
from llamaindex_rerankers.server.limits import AdmissionGate, Overloaded, Ticket
from llamaindex_rerankers.server.schemas import (
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
    RerankDocument,
    RerankRequest,
    RerankRequestV2,
    RerankResponse,
    RetrieveRequest,
    RetrieveResponse,
)
from llamaindex_rerankers.server.sessions import SessionsUnavailable
from llamaindex_rerankers.server.settings import ServerSettings
from llamaindex_rerankers.server.sources import source_records

STATIC = Path(__file__).with_name("static")
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "The body is not valid JSON (or cannot be parsed).",
        401: "Missing or wrong API key (when the server requires one).",
        413: "The request body is larger than --max-body-bytes.",
        415: "The body is not sent as JSON (Content-Type must be application/json).",
        422: "A field is missing, unknown, of the wrong type, empty, too long, out of range or "
        "not valid text; `field` names it.",
        500: "A fault of the server's own (never the request's): the server log has the details.",
        503: "At capacity (or still loading, or the index is unavailable): retry after the "
        "Retry-After header's seconds.",
        504: "The request took longer than the server's timeout.",
    }.items()
}

_CHAT_STREAM_EXAMPLE = (
    'data: {"type":"start","messageId":"msg_1f3a"}\n\n'
    'data: {"type":"data-sources","data":{"query":"best practices for pruning apple trees",'
    '"status":"answered","abstained":false,"reranker_failed":false,"sources":[...]}}\n\n'
    'data: {"type":"source-document","sourceId":"apple-pruning.md#0","mediaType":"text/plain",'
    '"title":"Pruning Apple Trees"}\n\n'
    'data: {"type":"start-step"}\n\n'
    'data: {"type":"text-start","id":"text_msg_1f3a"}\n\n'
    'data: {"type":"text-delta","id":"text_msg_1f3a","delta":"Prune in late winter"}\n\n'
    'data: {"type":"text-end","id":"text_msg_1f3a"}\n\n'
    'data: {"type":"finish-step"}\n\n'
    'data: {"type":"data-report","data":{"status":"answered","session_id":null,'
    '"report":{...},"timings":{...}}}\n\n'
    'data: {"type":"finish"}\n\n'
    "data: [DONE]\n\n"
)


def backend_of(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def require_api_key(request: Request) -> None:
    """With an API key configured, ``Authorization: Bearer <key>`` must match it (compared in
    constant time, on digests so that not even the length leaks)."""
    expected = backend_of(request).settings.api_key
    if not expected:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = hashlib.sha256(token.strip().encode()).digest()
    wanted = hashlib.sha256(expected.encode()).digest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, wanted):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong API key: send the header Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_json(request: Request) -> None:
    """A body sent as anything but JSON is a 415 (FastAPI would otherwise read it as bytes and
    answer 422 "valid dictionary"). A request without a Content-Type is read as JSON."""
    kind = request.headers.get("content-type")
    if kind is None:
        return
    mime = kind.split(";", 1)[0].strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body is sent as {mime or 'an empty Content-Type'}; send JSON with the "
            "header Content-Type: application/json",
        )


router = APIRouter()
api = APIRouter(dependencies=[Depends(require_api_key), Depends(require_json)], responses=_ERRORS)


# -- limits -----------------------------------------------------------------------------------


def check_text(value: str, field: str, settings: ServerSettings) -> str:
    if not value.strip():
        raise invalid(field, "is empty; send a question")
    if len(value) > settings.max_query_chars:
        raise invalid(
            field,
            f"is {len(value)} characters long; the limit is {settings.max_query_chars} "
            "(--max-query-chars)",
        )
    return value


def k_and_n(top_k: int | None, top_n: int | None, settings: ServerSettings) -> tuple[int, int]:
    k = settings.top_k if top_k is None else top_k
    if not 1 <= k <= settings.max_top_k:
        raise invalid("top_k", f"must be in 1..{settings.max_top_k}, got {k}")
    # As in Cohere's rerank, asking for more than there are gives all there are.
    n = min(settings.top_n if top_n is None else top_n, k)
    if n < 1:
        raise invalid("top_n", f"must be at least 1, got {n}")
    return k, n


async def _run_job(
    request: Request, backend: Backend, job: Job, work: Callable[[], Awaitable[T]]
) -> T:
    """Run an admitted request's ``work`` within ``--request-timeout`` (waiting for a place
    included). When the time runs out or the client disconnects, the work is cancelled: it stops
    at its next batch, and its place is freed when its thread has stopped."""
    deadline = time.monotonic() + backend.settings.request_timeout

    async def started() -> T:
        await backend.search_gate.start(job)
        return await work()

    task = asyncio.ensure_future(started())
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait(
            {task, gone},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            return task.result()  # CallCancelled (the shutdown) is answered by its handler
        if gone in done:
            raise ApiError(499, "client_gone", "the client closed the connection")
        raise _timeout()
    finally:
        for t in (task, gone):
            t.cancel()
            # Whatever it ends with now is nobody's business: keep asyncio from logging it.
            t.add_done_callback(lambda t: t.cancelled() or t.exception())
        job.finish()


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next ASGI message is
    the disconnect, sent when the connection closes or the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _admit(gate: AdmissionGate, settings: ServerSettings, deadline: float) -> Ticket:
    try:
        return await asyncio.wait_for(gate.acquire(), max(0.0, deadline - time.monotonic()))
    except Overloaded:
        raise overloaded(settings.retry_after, gate.name) from None
    except TimeoutError:
        raise _timeout() from None


def _timeout() -> ApiError:
    return ApiError(504, "timeout", "the request took longer than the server's timeout")


# -- health -----------------------------------------------------------------------------------


@router.get(
    "/healthz",
    response_model=HealthResponse,
    tags=["health"],
    summary="Liveness: the process serves HTTP",
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    tags=["health"],
    summary="Readiness: models loaded, Chroma and the LLM endpoint answering",
    responses={503: {"model": ReadyResponse, "description": "A check failed."}},
)
async def readyz(request: Request) -> JSONResponse:
    checks = await backend_of(request).readiness()
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    dependencies=[Depends(require_api_key)],
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    },
)
async def metrics(request: Request) -> Response:
    registry = backend_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# -- /v1/retrieve ---------------------------------------------------------------------------


@api.post(
    "/v1/retrieve",
    response_model=RetrieveResponse,
    tags=["retrieval"],
    summary="The reranked sources for a query, without an answer",
)
async def retrieve(body: RetrieveRequest, request: Request) -> dict[str, Any]:
    backend = backend_of(request)
    settings = backend.settings
    query = check_text(body.query, "query", settings)
    top_k, top_n = k_and_n(body.top_k, body.top_n, settings)
    started = time.perf_counter()
    job = backend.admit_retrieve(top_k)
    search = await _run_job(
        request,
        backend,
        job,
        lambda: backend.search(query, top_k=top_k, top_n=top_n, job=job),
    )
    return {
        "query": query,
        "status": search.status,
        "abstained": search.abstained,
        "reranker_failed": search.failed,
        "sources": source_records(search.nodes),
        "report": search.report.to_dict(),
        "timings": {
            "retrieve_s": search.retrieve_seconds,
            "rerank_s": search.rerank_seconds,
            "total_s": time.perf_counter() - started,
        },
    }


# -- /v1/rerank (Cohere) -----------------------------------------------------------------------


def _field_text(doc: RerankDocument, fields: list[str], where: str) -> str:
    """The ``field: value`` lines of ``doc``'s ``fields`` (those it has); numbers and booleans
    as JSON writes them, objects and arrays refused (their repr is not text to score)."""
    values = doc.model_dump()
    lines = []
    for name in fields:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            raise invalid(
                f"{where}.{name}",
                "is an object or array; rank_fields must name fields whose values are text",
            )
        lines.append(f"{name}: {value if isinstance(value, str) else json.dumps(value)}")
    return "\n".join(lines)


def _document_texts(body: RerankRequest | RerankRequestV2, settings: ServerSettings) -> list[str]:
    if not body.documents:
        raise invalid("documents", "is empty; send at least one document")
    if len(body.documents) > settings.max_documents:
        raise invalid(
            "documents",
            f"has {len(body.documents)} documents; the limit is {settings.max_documents} "
            "(--max-documents)",
        )
    texts = []
    for i, doc in enumerate(body.documents):
        if isinstance(doc, str):
            text = doc
        else:
            if doc.text is not None and len(doc.text) > settings.max_document_chars:
                # Checked whether or not rank_fields reads it: the schema states the limit.
                raise invalid(
                    f"documents[{i}].text",
                    f"is {len(doc.text)} characters long; the limit is "
                    f"{settings.max_document_chars} (--max-document-chars)",
                )
            # A document with none of the fields has no text: it comes back unjudged.
            fields = getattr(body, "rank_fields", None) or ["text"]
            text = _field_text(doc, fields, f"documents[{i}]")
        if len(text) > settings.max_document_chars:
            raise invalid(
                f"documents[{i}]",
                f"is {len(text)} characters long; the limit is {settings.max_document_chars} "
                "(--max-document-chars)",
            )
        texts.append(text)
    return texts


async def _rerank(
    body: RerankRequest | RerankRequestV2, request: Request, version: str
) -> dict[str, Any]:
    backend = backend_of(request)
    settings = backend.settings
    query = check_text(body.query, "query", settings)
    texts = _document_texts(body, settings)
    if not backend.reranks:
        raise ApiError(501, "no_reranker", "this server runs without a reranker (--reranker none)")
    gate = backend.search_gate
    job = gate.admit("rerank", gate.estimate_rerank(len(query), [len(t) for t in texts]))
    result = await _run_job(
        request, backend, job, lambda: backend.rerank_texts(query, texts, job=job)
    )
    if result.report.failed:
        raise ApiError(
            503,
            "reranker_failed",
            "the reranker could not judge any document (its LLM did not answer); retry later",
            headers={"Retry-After": str(settings.retry_after)},
        )
    nodes = result.nodes if body.top_n is None else result.nodes[: body.top_n]
    results = []
    for n in nodes:
        index = int(n.node.metadata["ref_doc_index"])
        item: dict[str, Any] = {"index": index, "relevance_score": n.score}
        if isinstance(body, RerankRequest) and body.return_documents:
            doc = body.documents[index]
            item["document"] = {"text": doc} if isinstance(doc, str) else doc.model_dump()
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {
            "api_version": {"version": version},
            "billed_units": {"search_units": 1},
            "model": backend.reranker_name,
            "report": result.report.to_dict(),
        },
    }


@api.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_unset=True,  # `document` only when asked; a null score stays
    tags=["rerank"],
    summary="Cohere-compatible rerank (v1)",
    responses={501: {"model": ErrorResponse, "description": "The server runs no reranker."}},
    description="Cohere's rerank API over this server's reranker: point a Cohere client (or "
    "any framework's Cohere reranker) at this server's base URL. Documents the reranker "
    "could not judge have relevance_score null and come last; when it could judge none, the "
    "answer is 503 reranker_failed.",
)
async def rerank_v1(body: RerankRequest, request: Request) -> dict[str, Any]:
    return await _rerank(body, request, "1")


@api.post(
    "/v2/rerank",
    response_model=RerankResponse,
    response_model_exclude_unset=True,  # `document` only when asked; a null score stays
    tags=["rerank"],
    summary="Cohere-compatible rerank (v2: documents are strings, none returned)",
    responses={501: {"model": ErrorResponse, "description": "The server runs no reranker."}},
)
async def rerank_v2(body: RerankRequestV2, request: Request) -> dict[str, Any]:
    return await _rerank(body, request, "2")


# -- /v1/chat ---------------------------------------------------------------------------------


def _chat_texts(body: ChatRequest, settings: ServerSettings) -> tuple[list[str], str]:
    """The messages' texts and the question (the last, the user's), checked against the limits.

    Raises:
        ApiError: 422 naming the message (or part) that is empty, too long or not the user's.
    """
    if not body.messages:
        raise invalid("messages", "is empty; send at least the user's question")
    if len(body.messages) > settings.max_messages:
        raise invalid(
            "messages",
            f"has {len(body.messages)} messages; the limit is {settings.max_messages} "
            "(--max-messages)",
        )
    for i, message in enumerate(body.messages):
        # Every text the schema bounds, whichever of content and parts the server reads.
        for j, part in enumerate(message.parts or ()):
            if part.text is not None and len(part.text) > settings.max_query_chars:
                check_text(part.text, f"messages[{i}].parts[{j}].text", settings)
    texts = [m.text() for m in body.messages]
    for i, text in enumerate(texts[:-1]):
        if len(text) > settings.max_query_chars:
            check_text(text, f"messages[{i}].content", settings)
    last = len(texts) - 1
    if body.messages[last].role != "user":
        raise invalid(f"messages[{last}].role", "the last message must be the user's question")
    return texts, check_text(texts[last], f"messages[{last}].content", settings)


@api.post(
    "/v1/chat",
    response_model=ChatResponse,
    tags=["chat"],
    summary="Answer a question from the reranked sources (streams AI SDK UI message events)",
    description="With `stream: true` (the default) the answer is a server-sent event stream "
    "in the Vercel AI SDK's UI message stream protocol v1 (header "
    "`x-vercel-ai-ui-message-stream: v1`): `start`, `data-sources` (our source records, "
    "whether the answer abstained or the reranker failed), one `source-document` per source, "
    "`start-step`, `text-start`, `text-delta`s, `text-end`, `finish-step`, `data-report` (the "
    "reranker's report of this call and the time per stage), `finish`, `[DONE]`. An AI SDK "
    "`useChat` front end can use this endpoint as its `api`. With `stream: false` the same "
    "content comes as one JSON document.",
    responses={
        200: {
            "content": {
                "text/event-stream": {"example": _CHAT_STREAM_EXAMPLE},
                "application/json": {},
            },
            "description": "The answer: an event stream, or JSON with stream=false.",
        },
        501: {"model": ErrorResponse, "description": "The server writes no answers."},
        502: {"model": ErrorResponse, "description": "The answer LLM failed."},
    },
)
async def chat(body: ChatRequest, request: Request) -> Response:
    backend = backend_of(request)
    settings = backend.settings
    if not settings.answers:
        raise ApiError(
            501, "answers_disabled", "this server writes no answers; use /v1/retrieve for sources"
        )
    texts, question = _chat_texts(body, settings)
    last = len(texts) - 1
    top_k, top_n = k_and_n(body.top_k, body.top_n, settings)
    session_id = body.session_id
    history = await _session_history(backend, session_id) if session_id else []
    history += [
        {"role": m.role, "content": t} for m, t in zip(body.messages[:last], texts, strict=False)
    ]
    message_id = f"msg_{uuid.uuid4().hex}"
    deadline = time.monotonic() + settings.chat_timeout
    ticket = await _admit(backend.chat_gate, settings, deadline)
    try:
        turn = await asyncio.wait_for(
            begin_turn(
                backend,
                question,
                history,
                top_k=top_k,
                top_n=top_n,
                stream=body.stream,
                message_id=message_id,
                session_id=session_id,
            ),
            max(0.0, deadline - time.monotonic()),
        )
    except TimeoutError:
        ticket.release()
        raise _timeout() from None
    except BaseException:
        ticket.release()
        raise

    async def remember() -> None:
        if session_id and completed(turn):
            exchange = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": turn.answer},
            ]
            with contextlib.suppress(SessionsUnavailable):  # logged once per outage by the store
                await backend.sessions.aappend(session_id, exchange)

    if not body.stream:
        ticket.release()
        await remember()
        return JSONResponse(turn.document())

    async def events() -> AsyncIterator[str]:
        try:
            async for event in stream_turn(turn, backend, deadline):
                yield event
            await remember()
        finally:
            ticket.release()

    def release() -> None:  # also when the body never started
        turn.abandon()
        ticket.release()

    return StreamingResponse(
        events(),
        media_type=streaming.MEDIA_TYPE,
        headers=streaming.STREAM_HEADERS,
        background=BackgroundTask(release),
    )


async def _session_history(backend: Backend, session_id: str) -> list[dict[str, str]]:
    """The session's history; 503 with Retry-After when the session store is unreachable."""
    try:
        return await backend.sessions.ahistory(session_id)
    except SessionsUnavailable:
        raise ApiError(
            503,
            "sessions_unavailable",
            "the session store is unreachable, so session_id cannot be used right now: retry "
            "after Retry-After seconds, or send the whole conversation in messages without a "
            "session_id",
            headers={"Retry-After": str(backend.settings.retry_after)},
        ) from None


# -- the chat page ----------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")

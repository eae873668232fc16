"""``create_app(settings) -> FastAPI``: the chatbot backend as an app to run or to mount."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamaindex_rerankers.server.backend import Backend
from llamaindex_rerankers.server.errors import ApiError, install_error_handlers
from llamaindex_rerankers.server.metrics import MetricsMiddleware, count_rejection
from llamaindex_rerankers.server.routes import STATIC, api, router
from llamaindex_rerankers.server.schemas import apply_limits
from llamaindex_rerankers.server.settings import ServerSettings

DESCRIPTION = """
A RAG chatbot backend over a Chroma index with this package's rerankers.

- `POST /v1/chat`: an answer from the reranked sources, streamed in the Vercel AI SDK's UI
  message stream protocol (or one JSON document with `"stream": false`).
- `POST /v1/retrieve`: the reranked sources only.
- `POST /v1/rerank`, `POST /v2/rerank`: Cohere's rerank API over the server's reranker.
- `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus).

Errors are JSON (`message`, `code`, `field`, `errors`), never a stack trace. With an API key
configured, `/v1/*`, `/v2/*` and `/metrics` need `Authorization: Bearer <key>`.
"""


def create_app(
    settings: ServerSettings | None = None,
    *,
    backend: Backend | None = None,
    **components: Any,
) -> FastAPI:
    """The FastAPI app of the chatbot backend.

    Models load in a worker thread when the app starts (``/healthz`` answers at once,
    ``/readyz`` once they are loaded); when the app is mounted inside another one, whose
    lifespan does not run ours, they load on the first request.

    Args:
        settings: the settings; ``None`` reads them from the environment
            (:meth:`ServerSettings.from_env`).
        backend: a prepared :class:`~llamaindex_rerankers.server.backend.Backend` (already
            loaded, as ``serve`` does to fail fast); otherwise one is built from ``settings``.
        **components: passed to the Backend built here: ``reranker``, ``index``, ``endpoint``,
            ``answer_llm`` (to use objects you already have instead of the settings').

    Example:
        >>> from llamaindex_rerankers.server import ServerSettings, create_app
        >>> app = create_app(ServerSettings(persist_dir="./chroma"))
        >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    if backend is None:
        backend = Backend(settings or ServerSettings.from_env(), **components)
    elif components or (settings is not None and settings is not backend.settings):
        raise ValueError("pass either backend=... or settings and components, not both")
    the_backend = backend

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_backend.start()
        try:
            yield
        finally:
            the_backend.close()

    app = FastAPI(
        title="llamaindex-rerankers serve",
        description=DESCRIPTION,
        version=_version(),
        lifespan=lifespan,
    )
    app.state.backend = backend
    app.state.metrics = backend.metrics
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    s = backend.settings
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # The limits are settings, so they are written into the generated schema once.
        if app.openapi_schema is None:
            apply_limits(generate(), s)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if s.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(s.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After", "x-vercel-ai-ui-message-stream"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=s.max_body_bytes, metrics=backend.metrics)
    app.add_middleware(MetricsMiddleware, metrics=backend.metrics)
    return app


class BodyLimitMiddleware:
    """413 for request bodies over ``limit`` bytes: at once from ``Content-Length``, else while
    reading a chunked body."""

    def __init__(self, app: Any, *, limit: int, metrics: Any) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            count_rejection(self.metrics, scope, "payload_too_large")
            error = ApiError(413, "payload_too_large", self._message())
            await error.response()(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI re-raises HTTP exceptions met while reading the body.
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit} bytes (--max-body-bytes)"


def _version() -> str:
    from llamaindex_rerankers import __version__

    return __version__

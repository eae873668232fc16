"""One error shape for every failure (:class:`~llamaindex_rerankers.server.schemas.ErrorResponse`),
field paths for validation errors, and never a stack trace in a response (they go to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamaindex_rerankers.batch_hooks import CallCancelled
from llamaindex_rerankers.server.admission import Refused
from llamaindex_rerankers.server.backend import IndexUnavailable, NotReady
from llamaindex_rerankers.server.metrics import count_rejection
from llamaindex_rerankers.server.schemas import InvalidText

logger = logging.getLogger(__name__)

# Validation locations name union members by their type; they are not fields.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "RerankDocument"})


class ApiError(Exception):
    """An error answered as JSON with ``status``; raise it from routes and dependencies.

    Example:
        >>> error = ApiError(422, "invalid_request", "query: is empty", field="query")
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.errors = list(errors) or ([{"field": field, "message": message}] if field else [])
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {
            "message": self.message,
            "code": self.code,
            "field": self.field,
            "errors": self.errors,
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid(field: str, message: str) -> ApiError:
    """A 422 about one request field."""
    return ApiError(
        422,
        "invalid_request",
        f"{field}: {message}",
        field=field,
        errors=[{"field": field, "message": message}],
    )


def overloaded(retry_after: int, what: str) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"the server is at capacity ({what}); retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def field_path(loc: Sequence[Any]) -> str | None:
    """``("body", "messages", 2, "content")`` → ``"messages[2].content"``.

    Example:
        >>> field_path(("body", "documents", 3, "str"))
        'documents[3]'
    """
    path = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and (part in _TYPE_TAGS or "[" in part):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or None


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str | None] = set()
    for error in exc.errors():
        field = field_path(error.get("loc", ()))
        kind = error.get("type", "")
        if kind == "extra_forbidden":
            message = "unknown field (see /docs for the fields this endpoint takes)"
        elif kind == "missing":
            message = "required"
        elif kind == "string_pattern_mismatch":
            message = "is empty or only whitespace; send text"
        elif kind in ("string_too_short", "too_short"):
            message = "is empty"
        else:
            message = str(error.get("msg", "invalid value"))
        # A union (string or object) fails once per member: one error per field is enough.
        if field not in seen:
            seen.add(field)
            out.append({"field": field, "message": message})
    return out


def install_error_handlers(app: FastAPI) -> None:
    """JSON answers for our errors, validation errors, HTTP errors and anything unexpected."""

    def answer(request: Request, error: ApiError) -> JSONResponse:
        count_rejection(getattr(request.app.state, "metrics", None), request.scope, error.code)
        return error.response()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(InvalidText)
    async def _invalid_text(request: Request, exc: InvalidText) -> JSONResponse:
        if exc.field is None:
            return answer(request, ApiError(422, "invalid_request", exc.message))
        return answer(request, invalid(exc.field, exc.message))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        kinds = {e.get("type") for e in exc.errors()}
        if "json_invalid" in kinds:
            return answer(
                request, ApiError(400, "invalid_request", "the request body is not valid JSON")
            )
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        where = f"{first['field']}: " if first["field"] else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return answer(
            request,
            ApiError(
                422,
                "invalid_request",
                f"{where}{first['message']}{more}",
                field=first["field"],
                errors=errors,
            ),
        )

    def retry_later(request: Request, code: str, exc: Exception) -> JSONResponse:
        settings = getattr(getattr(request.app.state, "backend", None), "settings", None)
        seconds = str(getattr(settings, "retry_after", 1))
        return answer(request, ApiError(503, code, str(exc), headers={"Retry-After": seconds}))

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        # The search gate's admission (/v1/retrieve, /v1/rerank, a chat's retrieval).
        return answer(request, overloaded(exc.retry_after, exc.gate))

    @app.exception_handler(CallCancelled)
    async def _cancelled(request: Request, exc: CallCancelled) -> JSONResponse:
        # A timeout or a departed client is answered before its work is cancelled; work that
        # stops with nobody having answered was cancelled by the shutdown.
        settings = getattr(getattr(request.app.state, "backend", None), "settings", None)
        return answer(request, overloaded(getattr(settings, "retry_after", 1), "shutting down"))

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return retry_later(request, "not_ready", exc)

    @app.exception_handler(IndexUnavailable)
    async def _index_unavailable(request: Request, exc: IndexUnavailable) -> JSONResponse:
        return retry_later(request, "index_unavailable", exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        return answer(
            request,
            ApiError(
                exc.status_code,
                codes.get(exc.status_code, "http_error"),
                str(exc.detail),
                headers=getattr(exc, "headers", None),
            ),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log, never into the response.
        logger.exception("unexpected error in %s %s", request.method, request.url.path)
        return answer(
            request,
            ApiError(500, "internal_error", "internal error; the server log has the details"),
        )

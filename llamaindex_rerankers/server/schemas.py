"""Request and response models of the HTTP API; their descriptions and examples are the OpenAPI
documentation at ``/docs``.

Requests reject unknown fields (``extra="forbid"``) so a typo is a 422 that names it instead of a
silently ignored option. Limits that depend on the server's settings (query length, number of
documents) are checked by the routes, with the same error shape.

Why one module over 600 lines: every request and response model of the HTTP API, from which the
OpenAPI document is generated; one place to read what the server accepts and returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

_QUESTION = "best practices for pruning apple trees"

#: Deepest nesting of arrays and objects a request may have: far beyond any real request, and
#: well inside what the JSON encoder can write back (an echoed document nested ~300 deep made
#: the response's serialisation fail with a 500).
MAX_DEPTH = 32

_SURROGATE = re.compile("[\ud800-\udfff]")

# Strict types: JSON `true` is not the number 1 and `0` is not false; a value of the wrong type
# is a 422 that names the field, never a silent coercion.
Text = Annotated[StrictStr, Field()]
#: A text that must say something: at least one character that is not whitespace.
NonBlank = Annotated[StrictStr, Field(min_length=1, pattern=r"\S")]


def _whole_number(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``5.0``; it excludes ``true`` and ``"5"``, which
    pydantic's lax mode would take (strict mode would refuse ``5.0``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise PydanticCustomError("int_from_float", "Input should be a whole number")
        return int(value)
    return value


NonNegative = Annotated[int, Field(ge=0), BeforeValidator(_whole_number)]
Count = Annotated[int, Field(ge=1), BeforeValidator(_whole_number)]


class InvalidText(Exception):
    """A request whose JSON pydantic would accept but that the server cannot process (an
    unpaired UTF-16 surrogate, nesting deeper than :data:`MAX_DEPTH`): answered 422 naming
    ``field``. Deliberately not a ``ValueError``, so that pydantic lets it through with the
    field's path intact instead of reporting it at the model's root."""

    def __init__(self, field: str | None, message: str) -> None:
        # A key may hold the surrogate: the path is written with escapes, so that the error
        # answer itself can be encoded.
        field = field.encode("utf-8", "backslashreplace").decode() if field else None
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any, int]]:
    """Every value inside ``value`` (keys included, as strings) with its path and depth;
    iterative, so a hostile depth cannot exhaust the stack."""
    stack: list[tuple[str, Any, int]] = [(path, value, 0)]
    while stack:
        where, item, depth = stack.pop()
        yield where, item, depth
        # Pushed in reverse, so that values come out in the request's own order.
        if isinstance(item, dict):
            for key, sub in reversed(item.items()):
                child = f"{where}.{key}" if where else str(key)
                stack.append((child, sub, depth + 1))
                stack.append((child, key, depth + 1))
        elif isinstance(item, list):
            for i in range(len(item) - 1, -1, -1):
                stack.append((f"{where}[{i}]", item[i], depth + 1))


def check_json_text(data: Any) -> None:
    """Raise :class:`InvalidText` for the first string holding an unpaired surrogate (Python's
    JSON parser lets ``"\\ud800"`` through; no tokenizer or encoder takes it), a number that is
    not finite, and nesting deeper than :data:`MAX_DEPTH`.

    Example:
        >>> check_json_text({"query": "ok", "documents": ["fine"]})
    """
    for where, item, depth in _walk(data):
        if depth > MAX_DEPTH:
            raise InvalidText(
                where or None, f"is nested deeper than {MAX_DEPTH} levels of arrays and objects"
            )
        if isinstance(item, float) and not math.isfinite(item):
            # Python's parser reads NaN, Infinity and 1e999; JSON has no such numbers, and an
            # echoed document holding one could not be written back.
            raise InvalidText(where or None, f"is {item!r}, a number JSON has no way to write")
        if isinstance(item, str) and _SURROGATE.search(item):
            raise InvalidText(
                where or None,
                "contains an unpaired UTF-16 surrogate (e.g. \\ud800), which is not text; "
                "send valid Unicode",
            )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Body(_Request):
    """A whole request body: its text and nesting are checked once, before the fields."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        check_json_text(data)
        return data


class _Open(BaseModel):
    """Response records: fields added to the reports later pass through unchanged."""

    model_config = ConfigDict(extra="allow")


# -- errors -----------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str | None = Field(
        description="The request field at fault, as a path (`messages[2].content`); null when "
        "the error is about the whole request.",
        examples=["query"],
    )
    message: str = Field(description="What is wrong and how to fix it.")


class ErrorResponse(BaseModel):
    """Every error answer has this shape; it never contains a stack trace."""

    message: str = Field(
        description="What went wrong, in one sentence.",
        examples=["query is 4812 characters long; the limit is 2000"],
    )
    code: str = Field(
        description="Stable machine-readable code: invalid_request, unauthorized, not_found, "
        "payload_too_large, unsupported_media_type, method_not_allowed, overloaded, timeout, "
        "not_ready, "
        "index_unavailable, reranker_failed, llm_unavailable, answers_disabled, no_reranker, "
        "internal_error.",
        examples=["invalid_request"],
    )
    field: str | None = Field(
        default=None, description="The first field at fault, if any.", examples=["query"]
    )
    errors: list[FieldError] = Field(
        default_factory=list, description="Every field at fault, when there are several."
    )


# -- reports ----------------------------------------------------------------------------------


class CrossEncoderUsageOut(_Open):
    pairs: int = Field(description="(query, passage) pairs the cross-encoder scored.")
    deduplicated: int = Field(description="Repeated passages scored once.")
    truncated: int = Field(description="Pairs longer than the model's max_length (cut).")
    windowed: int = Field(description="Passages split into several windows (long_text=windows).")
    windows: int = Field(description="Windows of those passages scored (included in pairs).")
    seconds: float = Field(description="Time in the cross-encoder.")


class LLMUsageOut(_Open):
    judgements: int = Field(description="Passages the LLM judged (asked or from the cache).")
    calls: int = Field(description="HTTP requests to the LLM, retries included.")
    prompt_tokens: int = Field(description="Prompt tokens the LLM endpoint reported.")
    completion_tokens: int = Field(description="Generated tokens the LLM endpoint reported.")
    cache_hits: int = Field(description="Judgements served from the judgement cache.")
    deduplicated: int = Field(description="Repeated passages judged once.")
    failures: int = Field(description="Judgements whose request failed for good.")
    retries: int = Field(description="HTTP requests that repeated a failed one.")
    parse_failures: int = Field(description="Answers from which no label could be read.")
    truncated: int = Field(description="Passages (or the query) cut to their token budget.")
    unknown: int = Field(description="Passages whose judgement ended as unknown.")
    windowed: int = Field(description="Passages split into several windows (long_text=windows).")
    windows: int = Field(description="Windows of those passages judged (in judgements).")
    calibration_judgements: int = Field(
        description="Content-free judgements asked for calibration (their requests in calls)."
    )
    uncalibrated: int = Field(description="Judged passages left uncalibrated.")
    max_in_flight: int = Field(description="The most requests this call had in flight at once.")
    seconds: float = Field(description="Time spent judging.")
    prompt_tokens_evaluated: int = Field(
        description="Prompt tokens the endpoint said it computed (the rest came from its cache)."
    )
    prompt_tokens_cached: int = Field(
        description="Prompt tokens the endpoint said it reused from its prefix cache."
    )
    prompt_cache_reports: int = Field(
        description="Answers that reported the two figures above; 0 means they are unknown."
    )


class RemoteUsageOut(_Open):
    documents: int = Field(description="Distinct passages sent to the rerank service.")
    deduplicated: int = Field(description="Repeated passages sent once.")
    requests: int = Field(description="HTTP requests to the rerank service, retries included.")
    retries: int = Field(description="HTTP requests that repeated a failed one.")
    failures: int = Field(description="Requests that failed for good (passages unjudged).")
    unjudged: int = Field(description="Passages left unjudged (failed request, unusable answer).")
    truncated: int = Field(description="Passages the service said it truncated (if it says).")
    max_in_flight: int = Field(description="The most requests this call had in flight at once.")
    seconds: float = Field(description="Time spent on the service's requests.")


class ReportOut(_Open):
    """The reranker's report of this call alone (`RerankReport.to_dict()`)."""

    query: str = Field(description="The query the reranker scored against.")
    n_candidates: int = Field(description="First-stage candidates the reranker received.")
    n_returned: int = Field(description="Sources returned.")
    n_judged: int = Field(description="Candidates the reranker scored.")
    n_unjudged: int = Field(
        description="Candidates it could not score (kept, after the judged ones, score null)."
    )
    n_pruned: int = Field(description="Candidates a cascade kept from its second stage.")
    n_skipped: int = Field(
        description="Candidates with no text to judge (unjudged, counted in n_unjudged)."
    )
    best_score: float | None = Field(description="Highest rerank score; null if none judged.")
    retrieval_weight: float | None = Field(
        description="The first-stage weight this call fused with; null when it fused none."
    )
    seconds: float = Field(description="Wall-clock time of the rerank call.")
    cross_encoder: CrossEncoderUsageOut | None = Field(
        default=None, description="The cross-encoder's figures; null when none ran."
    )
    llm: LLMUsageOut | None = Field(
        default=None, description="The LLM judge's figures; null when none ran."
    )
    remote: RemoteUsageOut | None = Field(
        default=None, description="The rerank service's figures; null when none was called."
    )


class TimingsOut(BaseModel):
    """Seconds per stage of this request."""

    condense_s: float | None = Field(
        default=None,
        description="Chat only: rewriting a follow-up into a standalone question (LLM).",
    )
    retrieve_s: float = Field(description="Query embedding and the Chroma search.")
    rerank_s: float = Field(description="The reranker (cross-encoder and/or LLM judging).")
    answer_s: float | None = Field(default=None, description="Chat only: writing the answer.")
    total_s: float = Field(description="The whole request.")


# -- sources ----------------------------------------------------------------------------------


class SourceOut(BaseModel):
    """One reranked source."""

    id: str = Field(description="The chunk's id in the index.", examples=["apple-pruning.md#0"])
    rank: int = Field(description="1-based position after reranking.", examples=[1])
    title: str = Field(description="The document's title.", examples=["Pruning Apple Trees"])
    snippet: str = Field(description="The start of the chunk's text, on one line.")
    text: str = Field(description="The chunk's full text.")
    metadata: dict[str, Any] = Field(
        description="The chunk's own metadata (file name, source id ...), without the "
        "rerank_* keys (they are fields here) and without server-local paths.",
        examples=[{"file_name": "apple-pruning.md", "source_id": "apple-pruning.md"}],
    )
    rerank_score: float | None = Field(
        description="The reranker's score in [0, 1]; null when it could not judge this source "
        "(or no reranker runs).",
        examples=[0.93],
    )
    rerank_label: str | None = Field(
        description="LLM reranker only: unlikely, likely, very likely, or unknown.",
        examples=["very likely"],
    )
    rerank_label_probs: dict[str, float] | None = Field(
        description="LLM reranker only: the label probabilities.",
        examples=[{"unlikely": 0.02, "likely": 0.18, "very likely": 0.8}],
    )
    rerank_injection_suspected: bool | None = Field(
        description="The reranker's detector found instructions aimed at an LLM in this source "
        "(possible prompt injection): it is ranked after the clean sources and the answer LLM "
        "does not read it. null when no detector runs (--no-detect-injection, --reranker "
        "none).",
        examples=[False],
    )
    rerank_injection_signals: list[str] = Field(
        description="What the detector found (override, persona, order, hidden, ...); empty "
        "for a clean source.",
        examples=[[]],
    )
    retrieval_rank: int = Field(
        description="1-based position in the first-stage (embedding) order.", examples=[3]
    )
    retrieval_score: float | None = Field(description="First-stage similarity.", examples=[0.61])


# -- /v1/retrieve -------------------------------------------------------------------------------


class RetrieveRequest(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"query": _QUESTION, "top_n": 3}]}
    )

    query: NonBlank = Field(
        description="The question (at most --max-query-chars characters).", examples=[_QUESTION]
    )
    top_k: Count | None = Field(
        default=None,
        description="First-stage candidates (default: the server's --top-k; at most --max-top-k).",
        examples=[20],
    )
    top_n: Count | None = Field(
        default=None,
        description="Sources returned after reranking (default: the server's --top-n); a value "
        "above top_k returns top_k sources.",
        examples=[5],
    )


class RetrieveResponse(BaseModel):
    query: str = Field(description="The query.")
    status: Literal["ok", "abstained", "reranker_failed"] = Field(
        description="ok; abstained: no source reached the relevance threshold; "
        "reranker_failed: the reranker could not judge any source (e.g. the LLM is down): "
        "the sources are in retrieval order, unjudged."
    )
    abstained: bool = Field(description="No source reached the server's --abstain-below.")
    reranker_failed: bool = Field(description="Nothing could be judged (an outage).")
    sources: list[SourceOut] = Field(description="The reranked sources, best first.")
    report: ReportOut
    timings: TimingsOut


# -- /v1/rerank (Cohere-compatible) ----------------------------------------------------------


class RerankDocument(BaseModel):
    """A document as an object: ``text`` is read, other fields come back unchanged."""

    model_config = ConfigDict(extra="allow")

    text: Text | None = Field(
        default=None,
        description="The text to score (or use rank_fields to pick fields). A document with "
        "no text to score is returned unjudged (relevance_score null, after the judged ones).",
    )


_DOCS_EXAMPLE: list[JsonValue] = [
    "Prune apple trees in late winter while they are dormant.",
    "Apple Inc. shares rose 2% after the earnings report.",
]


class _RerankFields(_Body):
    """The fields v1 and v2 share; each version adds its own documents."""

    model: Text | None = Field(
        default=None,
        description="Accepted for compatibility; the server's reranker is used whatever it says "
        "(the response's meta names it).",
        examples=["rerank-v3.5"],
    )
    query: NonBlank = Field(
        description="The search query (at most --max-query-chars characters).",
        examples=[_QUESTION],
    )
    top_n: Count | None = Field(
        default=None,
        description="Results returned (default: all; values above the number of documents "
        "return all).",
        examples=[3],
    )
    max_tokens_per_doc: Count | None = Field(
        default=None,
        description="Accepted for compatibility and not used: long documents are cut to the "
        "reranker's token limit.",
    )
    priority: NonNegative | None = Field(
        default=None,
        description="Accepted for compatibility and not used (requests are served in arrival "
        "order; beyond the queue the answer is 503).",
    )


class RerankRequest(_RerankFields):
    """Cohere's rerank request, v1: documents are strings or objects."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "query": _QUESTION,
                    "documents": _DOCS_EXAMPLE,
                    "top_n": 1,
                    "return_documents": True,
                }
            ]
        },
    )

    documents: list[Text | RerankDocument] = Field(
        min_length=1,
        description="Strings, or objects with a `text` field (other fields are returned as "
        "they came); at most --max-documents, each at most --max-document-chars characters. "
        "An empty document is returned unjudged.",
    )
    return_documents: StrictBool = Field(
        default=False, description="Return each result's document."
    )
    rank_fields: list[NonBlank] | None = Field(
        default=None,
        min_length=1,
        description="For object documents: the fields whose values are scored, in order "
        "(joined as `field: value` lines); the values must be strings or numbers. Default: "
        "`text`.",
    )
    max_chunks_per_doc: Count | None = Field(
        default=None,
        description="Accepted for compatibility and not used: long documents are cut to the "
        "reranker's token limit instead of being chunked.",
    )


class RerankRequestV2(_RerankFields):
    """Cohere's rerank request, v2: documents are strings, and none is returned."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "rerank-v3.5", "query": _QUESTION, "documents": _DOCS_EXAMPLE, "top_n": 1}
            ]
        },
    )

    documents: list[Text] = Field(
        min_length=1,
        description="The documents as strings; at most --max-documents, each at most "
        "--max-document-chars characters. An empty document is returned unjudged.",
    )


class RerankResultOut(BaseModel):
    index: int = Field(description="Position of the document in the request.", examples=[0])
    relevance_score: float | None = Field(
        description="Score in [0, 1]; null for a document the reranker could not judge (an "
        "LLM failure), which comes after every judged one.",
        examples=[0.97],
    )
    document: dict[str, Any] | None = Field(
        default=None, description="The document (with return_documents=true)."
    )


class RerankResponse(BaseModel):
    id: str = Field(description="This request's id.")
    results: list[RerankResultOut] = Field(description="The documents, most relevant first.")
    meta: dict[str, Any] = Field(
        description="Cohere's `api_version` and `billed_units` (one search unit per request), "
        "plus `model` (the reranker that ran) and `report` (its report of this call)."
    )


# -- /v1/chat ---------------------------------------------------------------------------------


class MessagePart(BaseModel):
    """A part of an AI SDK ``UIMessage``; only ``text`` parts are read."""

    model_config = ConfigDict(extra="allow")

    type: Text = Field(description="Part type; `text` parts are read, others ignored.")
    text: Text | None = Field(default=None, description="The text of a `text` part.")


class ChatMessageIn(_Request):
    """A message: ``content`` (plain) or ``parts`` (the AI SDK's UIMessage)."""

    role: Literal["user", "assistant"] = Field(
        description="user or assistant (the system prompt is the server's).", examples=["user"]
    )
    content: Text | None = Field(
        default=None,
        description="The text (at most --max-query-chars characters).",
        examples=[_QUESTION],
    )
    parts: list[MessagePart] | None = Field(
        default=None, description="AI SDK UIMessage parts (instead of content)."
    )
    id: Text | None = Field(default=None, description="Client message id (ignored).")
    metadata: Any = Field(default=None, description="Client metadata (ignored).")

    def text(self) -> str:
        if self.content is not None:
            return self.content
        return "".join(p.text or "" for p in self.parts or () if p.type == "text")


class ChatRequest(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"messages": [{"role": "user", "content": _QUESTION}], "stream": True},
                {
                    "messages": [{"role": "user", "content": "and when should I do it?"}],
                    "session_id": "3f0c9a4e-7a51-4c1e-9e62-0d8a2b6f1c55",
                    "stream": False,
                },
            ]
        },
    )

    messages: list[ChatMessageIn] = Field(
        min_length=1,
        description="The conversation, oldest first (at most --max-messages); the last one must "
        "be the user's question, with text. With session_id, send only the new message: the "
        "server prepends the stored history.",
    )
    session_id: StrictStr | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{8,128}$",
        description="Keep the history on the server under this id (8-128 characters of "
        "A-Z a-z 0-9 _ -; use a random UUID). Sessions expire after --session-ttl seconds "
        "unused.",
    )
    stream: StrictBool = Field(
        default=True,
        description="true: an AI SDK UI message stream (server-sent events); false: one JSON "
        "document with the same content.",
    )
    top_k: Count | None = Field(
        default=None, description="First-stage candidates (at most --max-top-k)."
    )
    top_n: Count | None = Field(
        default=None,
        description="Sources given to the answer; a value above top_k gives top_k sources.",
    )
    id: Text | None = Field(default=None, description="AI SDK chat id (accepted, ignored).")
    trigger: Text | None = Field(default=None, description="AI SDK trigger (accepted, ignored).")
    messageId: Text | None = Field(  # the AI SDK's field name
        default=None, description="AI SDK message id (accepted, ignored)."
    )


class ChatResponse(BaseModel):
    id: str = Field(description="The answer's message id (the stream's messageId).")
    session_id: str | None = Field(description="The session, when one was used.")
    status: Literal["answered", "abstained", "reranker_failed"] = Field(
        description="answered; abstained: no source was relevant (or every source kept was "
        "flagged as a possible prompt injection), so no answer was invented; "
        "reranker_failed: the reranker could not judge any source (e.g. the LLM is down), so "
        "no answer was written."
    )
    answer: str = Field(description="The answer, or the abstain / failure message.")
    query: str = Field(description="The standalone question retrieval used (condensed).")
    abstained: bool
    reranker_failed: bool
    sources: list[SourceOut]
    report: ReportOut
    timings: TimingsOut


# -- health -----------------------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["ok"] = Field(description="The process is alive and serving HTTP.")


class CheckOut(BaseModel):
    ok: bool
    detail: str = Field(description="What was checked, or why it failed.")


class ReadyResponse(BaseModel):
    ready: bool = Field(description="Every check passed.")
    checks: dict[str, CheckOut] = Field(
        description="models (reranker and embedding model loaded), chroma (the collection "
        "answers), llm (the endpoint answers GET /models; only when one is configured)."
    )


# -- limits that depend on the settings ---------------------------------------------------------


def _limit(prop: dict[str, Any], kind: str, **limits: Any) -> None:
    """Add ``limits`` to the branch of ``prop`` whose JSON type is ``kind``."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == kind:
            branch.update(limits)


def apply_limits(openapi: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Write the server's own limits (``--max-query-chars``, ``--max-documents`` ...) into the
    request schemas of ``openapi``, in place, so that the schema states what the routes enforce.

    Example:
        >>> from llamaindex_rerankers.server import ServerSettings, create_app
        >>> schema = create_app(ServerSettings(max_documents=50)).openapi()
        >>> schema["components"]["schemas"]["RerankRequest"]["properties"]["documents"]["maxItems"]
        50
    """
    models = openapi.get("components", {}).get("schemas", {})

    def props(name: str) -> dict[str, Any]:
        found: dict[str, Any] = models.get(name, {}).get("properties", {})
        return found

    query, docs = settings.max_query_chars, settings.max_document_chars
    for name in ("RetrieveRequest", "RerankRequest", "RerankRequestV2"):
        if "query" in props(name):
            _limit(props(name)["query"], "string", maxLength=query)
    for name in ("RetrieveRequest", "ChatRequest"):
        if "top_k" in props(name):
            _limit(props(name)["top_k"], "integer", maximum=settings.max_top_k)
    for name in ("RerankRequest", "RerankRequestV2"):
        documents = props(name).get("documents")
        if documents is not None:
            documents["maxItems"] = settings.max_documents
            _limit(documents.get("items", {}), "string", maxLength=docs)
    if "text" in props("RerankDocument"):
        _limit(props("RerankDocument")["text"], "string", maxLength=docs)
    if "messages" in props("ChatRequest"):
        props("ChatRequest")["messages"]["maxItems"] = settings.max_messages
    if "content" in props("ChatMessageIn"):
        _limit(props("ChatMessageIn")["content"], "string", maxLength=query)
    if "text" in props("MessagePart"):
        _limit(props("MessagePart")["text"], "string", maxLength=query)
    return openapi

"""Request and response models of the HTTP API; their descriptions and examples are the OpenAPI
documentation at ``/docs``.

Requests reject unknown fields (``extra="forbid"``) so a typo is a 422 that names it instead of a
silently ignored option. Limits that depend on the server's settings (query length, number of
documents) are checked by the routes, with the same error shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_QUESTION = "best practices for pruning apple trees"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        "payload_too_large, method_not_allowed, overloaded, timeout, not_ready, "
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
    seconds: float = Field(description="Time in the cross-encoder.")


class LLMUsageOut(_Open):
    judgements: int = Field(description="Passages the LLM judged (asked or from the cache).")
    calls: int = Field(description="HTTP requests to the LLM, retries included.")
    prompt_tokens: int = Field(description="Prompt tokens the LLM endpoint reported.")
    completion_tokens: int = Field(description="Generated tokens the LLM endpoint reported.")
    cache_hits: int = Field(description="Judgements served from the judgement cache.")
    failures: int = Field(description="Judgements whose request failed for good.")
    seconds: float = Field(description="Time spent judging.")


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
    best_score: float | None = Field(description="Highest rerank score; null if none judged.")
    seconds: float = Field(description="Wall-clock time of the rerank call.")
    cross_encoder: CrossEncoderUsageOut | None = Field(
        default=None, description="The cross-encoder's figures; null when none ran."
    )
    llm: LLMUsageOut | None = Field(
        default=None, description="The LLM judge's figures; null when none ran."
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


class RetrieveRequest(_Request):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"query": _QUESTION, "top_n": 3}]}
    )

    query: str = Field(description="The question.", examples=[_QUESTION])
    top_k: int | None = Field(
        default=None,
        description="First-stage candidates (default: the server's --top-k; at most --max-top-k).",
        examples=[20],
    )
    top_n: int | None = Field(
        default=None,
        description="Sources returned after reranking (default: the server's --top-n; at most "
        "top_k).",
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

    text: str | None = Field(
        default=None, description="The text to score (or use rank_fields to pick fields)."
    )


class RerankRequest(_Request):
    """Cohere's rerank request (v1 and v2)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "query": _QUESTION,
                    "documents": [
                        "Prune apple trees in late winter while they are dormant.",
                        "Apple Inc. shares rose 2% after the earnings report.",
                    ],
                    "top_n": 1,
                    "return_documents": True,
                }
            ]
        },
    )

    model: str | None = Field(
        default=None,
        description="Accepted for compatibility; the server's reranker is used whatever it says "
        "(the response's meta names it).",
        examples=["rerank-v3.5"],
    )
    query: str = Field(description="The search query.", examples=[_QUESTION])
    documents: list[str | RerankDocument] = Field(
        description="Strings, or objects with a `text` field (other fields are returned as "
        "they came).",
    )
    top_n: int | None = Field(
        default=None,
        description="Results returned (default: all; values above the number of documents "
        "return all).",
        examples=[3],
    )
    return_documents: bool = Field(default=False, description="Return each result's document (v1).")
    rank_fields: list[str] | None = Field(
        default=None,
        description="For object documents: the fields whose values are scored, in order "
        "(joined as `field: value` lines). Default: `text`.",
    )
    max_chunks_per_doc: int | None = Field(
        default=None,
        description="Accepted for compatibility and not used: long documents are cut to the "
        "reranker's token limit instead of being chunked.",
    )
    max_tokens_per_doc: int | None = Field(
        default=None,
        description="v2: accepted for compatibility and not used (see max_chunks_per_doc).",
    )
    priority: int | None = Field(
        default=None,
        description="v2: accepted for compatibility and not used (requests are served in "
        "arrival order; beyond the queue the answer is 503).",
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

    type: str = Field(description="Part type; `text` parts are read, others ignored.")
    text: str | None = Field(default=None, description="The text of a `text` part.")


class ChatMessageIn(_Request):
    """A message: ``content`` (plain) or ``parts`` (the AI SDK's UIMessage)."""

    role: Literal["user", "assistant"] = Field(
        description="user or assistant (the system prompt is the server's).", examples=["user"]
    )
    content: str | None = Field(default=None, description="The text.", examples=[_QUESTION])
    parts: list[MessagePart] | None = Field(
        default=None, description="AI SDK UIMessage parts (instead of content)."
    )
    id: str | None = Field(default=None, description="Client message id (ignored).")
    metadata: Any = Field(default=None, description="Client metadata (ignored).")

    def text(self) -> str:
        if self.content is not None:
            return self.content
        return "".join(p.text or "" for p in self.parts or () if p.type == "text")


class ChatRequest(_Request):
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
        description="The conversation, oldest first; the last one is the user's question. "
        "With session_id, send only the new message: the server prepends the stored history.",
    )
    session_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{8,128}$",
        description="Keep the history on the server under this id (8-128 characters of "
        "A-Z a-z 0-9 _ -; use a random UUID). Sessions expire after --session-ttl seconds "
        "unused.",
    )
    stream: bool = Field(
        default=True,
        description="true: an AI SDK UI message stream (server-sent events); false: one JSON "
        "document with the same content.",
    )
    top_k: int | None = Field(default=None, description="First-stage candidates.")
    top_n: int | None = Field(default=None, description="Sources given to the answer.")
    id: str | None = Field(default=None, description="AI SDK chat id (accepted, ignored).")
    trigger: str | None = Field(default=None, description="AI SDK trigger (accepted, ignored).")
    messageId: str | None = Field(  # the AI SDK's field name
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

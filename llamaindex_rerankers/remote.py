"""Rerank through a rerank service over HTTP: Cohere's rerank API or Hugging Face TEI's.

The service runs the cross-encoder (TEI, Infinity, vLLM, Jina, Cohere, or this package's own
``serve``); :class:`RemoteReranker` sends it the passages and reads the scores back, so that a
fleet of stateless application replicas shares one model instead of loading one each.

The two HTTP shapes:

* ``api="cohere"`` (``POST {base_url}/v2/rerank``, or ``/v1/rerank`` with ``api_version="v1"``):
  ``{model, query, documents: [str], max_tokens_per_doc}`` →
  ``{results: [{index, relevance_score}]}``. Cohere's scores are probabilities in [0, 1] and are
  kept as they are (``scores="auto"`` reads them as probabilities).
* ``api="tei"`` (``POST {base_url}/rerank``): ``{query, texts, truncate, raw_scores}`` →
  ``[{index, score}]``. The reranker asks for ``raw_scores=true`` (logits) and maps them through
  a sigmoid, as :class:`~llamaindex_rerankers.cross_encoder.CrossEncoderReranker` does, so that
  the raw logit is kept too (``rerank_logit``).

Only this module and the server's probes import ``httpx`` (extra ``remote``).

Why one module over 600 lines: one reranker, the request and response shapes of its three APIs and
the validation that keeps every score on its own passage; retries are in http/retry.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr, model_validator

from llamaindex_rerankers._imports import require
from llamaindex_rerankers.base import RERANK_ERROR, BaseReranker, Once
from llamaindex_rerankers.http.loop import gather_all, run_async, run_sync
from llamaindex_rerankers.http.retry import (
    GaveUp,
    RetryableError,
    RetryPolicy,
    call_with_retries,
    is_retryable_status,
    retry_after_from_headers,
)
from llamaindex_rerankers.injection import flag_injections
from llamaindex_rerankers.scoring import sigmoid
from llamaindex_rerankers.types import Judgement, RemoteUsage, RerankReport

logger = logging.getLogger(__name__)

#: Environment variable: the service's root URL when ``base_url`` is not given.
URL_ENV = "LLAMAINDEX_RERANKERS_REMOTE_URL"
#: Environment variable: the model name sent when ``model`` is not given.
MODEL_ENV = "LLAMAINDEX_RERANKERS_REMOTE_MODEL"
#: Environment variable: the API key when ``api_key`` is not given (read at each request).
API_KEY_ENV = "LLAMAINDEX_RERANKERS_REMOTE_API_KEY"
#: Metadata key of the number the service returned for a passage, before any mapping.
RAW_SCORE = "rerank_raw_score"

#: Statuses that say the reranker's settings are wrong: every request would fail alike.
_SETTINGS_STATUSES = {
    401: "check api_key / $" + API_KEY_ENV,
    403: "check that the key may use this model (api_key / $" + API_KEY_ENV + ")",
    404: "check base_url (the service's root, e.g. http://host:8080, without /v1), api, "
    "api_version and the model name (model / $" + MODEL_ENV + ")",
}


class RemoteRerankError(RuntimeError):
    """The rerank service refused the reranker's settings (HTTP 401, 403, 404): retrying
    cannot fix it, and every request would fail alike, so the call raises with what to fix."""


class RemoteReranker(BaseReranker):
    """Rerank nodes through a rerank service (Cohere's rerank API or TEI's ``/rerank``).

    Passages are split into requests of at most ``max_documents_per_request`` (a repeated
    passage is sent once) that run concurrently, at most ``max_in_flight`` at a time across
    *all* concurrent calls of the instance (threads and asyncio tasks share the bound, and one
    connection pool). Each output node keeps the service's own number as ``rerank_raw_score``
    and, when that number is a logit, as ``rerank_logit`` too.

    Scores (``scores``): ``"probability"`` keeps the service's number, which must lie in
    [0, 1] (Cohere's API, and TEI with ``raw_scores=false``); ``"logit"`` maps it through a
    sigmoid (TEI with ``raw_scores=true``, services that return raw logits); ``"auto"`` is
    ``"probability"`` for ``api="cohere"`` and ``"logit"`` for ``api="tei"``.

    Failures: transient ones (HTTP 408, 429, 5xx, timeouts, connection errors, a body that is
    not the API's JSON) are retried with the package's one retry policy
    (:mod:`llamaindex_rerankers.http.retry`: full-jitter backoff, the server's ``Retry-After``
    honoured up to ``backoff_max``, no new attempt after ``deadline``). A request that fails
    for good, or is refused (400, 413, 422: e.g. a passage too long for the service), leaves
    its passages unjudged: ``score=None``, after the judged nodes, the reason in
    ``rerank_error``, never dropped, never 0.0. An answer that cannot be matched to the
    passages with certainty (a wrong number of results, an index missing, repeated or out of
    range) leaves every passage of that request unjudged, so that a score can never be paired
    with the wrong passage; a score that is not a number (or not a probability, where one is
    expected) leaves its passage unjudged. HTTP 401, 403 and 404 raise
    :class:`RemoteRerankError`: the key, the URL or the model name is wrong.

    Truncation is the service's: ``truncate`` (TEI) and ``max_tokens_per_doc`` (Cohere v2) are
    passed through, nothing is tokenized locally, and ``report.remote.truncated`` counts the
    passages the service says it cut (only services that say so, such as this package's
    ``serve``).

    Untrusted corpora: ``detect_injection=True`` flags instruction-like passages as
    :class:`~llamaindex_rerankers.cross_encoder.CrossEncoderReranker` does (locally: the
    service sees only the text).

    Secrets: ``api_key`` (else ``$LLAMAINDEX_RERANKERS_REMOTE_API_KEY``, read at each request)
    is never serialised or shown. ``base_url`` and ``model`` default to
    ``$LLAMAINDEX_RERANKERS_REMOTE_URL`` and ``$LLAMAINDEX_RERANKERS_REMOTE_MODEL``.

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> reranker = RemoteReranker(base_url="http://127.0.0.1:8080", api="tei", top_n=1)
        >>> nodes = [NodeWithScore(node=TextNode(text=t)) for t in ["Prune in winter.", "AAPL"]]
        >>> reranker.rerank(nodes, "how to prune apple trees").nodes[0].score  # doctest: +SKIP
        0.93
    """

    api: Literal["cohere", "tei"] = Field(
        default="cohere",
        description="The service's HTTP shape: 'cohere' (Cohere's rerank API, also served by "
        "Jina, vLLM, Infinity, LiteLLM and this package's serve) or 'tei' (Hugging Face Text "
        "Embeddings Inference's /rerank).",
    )
    api_version: Literal["v1", "v2"] = Field(
        default="v2",
        description="Cohere's API version (api='cohere'): the path /v1/rerank or /v2/rerank.",
    )
    base_url: str | None = Field(
        default_factory=lambda: os.environ.get(URL_ENV) or None,
        description=f"The service's root URL, e.g. http://127.0.0.1:8080 (no /v1). Default: "
        f"${URL_ENV}.",
    )
    path: str | None = Field(
        default=None,
        description="The rerank endpoint's path under base_url; None: /v1/rerank or /v2/rerank "
        "(cohere), /rerank (tei). Infinity serves Cohere's shape at /rerank.",
    )
    model: str | None = Field(
        default_factory=lambda: os.environ.get(MODEL_ENV) or None,
        description=f"Model name sent with each request (Cohere's API needs one; a service that "
        f"serves one model ignores it). Default: ${MODEL_ENV}.",
    )
    api_key: str | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description=f"Bearer token for the service; None uses ${API_KEY_ENV} (read at each "
        "request). Never serialised or shown.",
    )
    max_documents_per_request: int = Field(
        default=32,
        ge=1,
        description="Most passages in one request (TEI's default client batch limit is 32); "
        "more are split into several requests, merged back in order.",
    )
    max_in_flight: int = Field(
        default=4,
        ge=1,
        description="Most requests in flight at once, across all concurrent calls of this "
        "instance.",
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds allowed per HTTP attempt.")
    max_retries: int = Field(
        default=4, ge=0, description="Retries after the first attempt of a request (0: none)."
    )
    backoff_base: float = Field(
        default=0.5, ge=0, description="Ceiling of the first jittered wait, in seconds."
    )
    backoff_max: float = Field(
        default=20.0,
        ge=0,
        description="Longest wait between attempts, in seconds, Retry-After included.",
    )
    deadline: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a call may take: no request starts, and no retry is made, after "
        "it; the passages still waiting are left unjudged. None: no limit.",
    )
    truncate: bool = Field(
        default=True,
        description="TEI: let the service truncate passages longer than its model takes "
        "(false: it refuses them, and they stay unjudged).",
    )
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=1,
        description="Cohere: the service cuts each passage to this many tokens; None: the "
        "service's default.",
    )
    scores: Literal["auto", "probability", "logit"] = Field(
        default="auto",
        description="What the service's numbers are: 'probability' (kept, must be in [0, 1]), "
        "'logit' (mapped through a sigmoid; TEI is asked for raw_scores=true), 'auto' "
        "(probability for cohere, logit for tei).",
    )

    detect_injection: bool = Field(
        default=False,
        description="Flag passages with instruction-like text (injection.injection_signals) "
        "as rerank_injection_suspected in the node metadata, as CrossEncoderReranker does, for "
        "untrusted corpora whose top passages go on to an LLM.",
    )
    suspected_penalty: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="A suspected passage's final score is multiplied by (1 - penalty): 0 only "
        "flags, 1 (the default) puts it after every unsuspected passage. Needs "
        "detect_injection.",
    )

    _live: _Live = PrivateAttr(default_factory=lambda: _Live())
    _failure_warned: Once = PrivateAttr(default_factory=Once)

    @classmethod
    def class_name(cls) -> str:
        return "RemoteReranker"

    @model_validator(mode="after")
    def _check_settings(self) -> RemoteReranker:
        if self.api == "tei" and self.max_tokens_per_doc is not None:
            raise ValueError(
                "max_tokens_per_doc is Cohere's option; TEI truncates to its model's limit with "
                "truncate=True."
            )
        if self.base_url is not None:
            url = self.base_url.strip().rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"base_url must start with http:// or https://, got {self.base_url!r}."
                )
            tail = url.rsplit("/", 1)[-1]
            if self.path is None and tail in ("v1", "v2", "rerank"):
                raise ValueError(
                    f"base_url is the service's root, without /{tail}: pass "
                    f"base_url={url.rsplit('/', 1)[0]!r} (and api_version='{tail}' for "
                    "Cohere's versions, or path=... for another endpoint)."
                )
        return self

    # -- settings read at use -------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return f"{self.api}:{self.model or self.base_url or 'unset'}"

    @property
    def score_kind(self) -> Literal["probability", "logit"]:
        """What the service's numbers are, ``"auto"`` resolved from ``api``."""
        if self.scores != "auto":
            return self.scores
        return "logit" if self.api == "tei" else "probability"

    @property
    def url(self) -> str:
        """The rerank endpoint's full URL.

        Raises:
            ValueError: no ``base_url`` and no ``$LLAMAINDEX_RERANKERS_REMOTE_URL``.
        """
        if not self.base_url:
            raise ValueError(
                f"RemoteReranker needs the rerank service's URL: pass base_url='http://HOST:PORT' "
                f"or set ${URL_ENV}."
            )
        path = self.path
        if path is None:
            path = "/rerank" if self.api == "tei" else f"/{self.api_version}/rerank"
        return self.base_url.strip().rstrip("/") + "/" + path.lstrip("/")

    def _request_body(self, query: str, texts: Sequence[str]) -> dict[str, Any]:
        if self.api == "tei":
            return {
                "query": query,
                "texts": list(texts),
                "truncate": self.truncate,
                "raw_scores": self.score_kind == "logit",
                "return_text": False,
            }
        body: dict[str, Any] = {"query": query, "documents": list(texts)}
        if self.model:
            body["model"] = self.model
        if self.max_tokens_per_doc is not None:
            body["max_tokens_per_doc"] = self.max_tokens_per_doc
        if self.api_version == "v1":
            body["return_documents"] = False
        return body

    def _headers(self) -> dict[str, str]:
        key = self.api_key or os.environ.get(API_KEY_ENV)
        return {"Authorization": f"Bearer {key}"} if key else {}

    # -- copies and pickling: the live parts are an instance's own --------------------------

    def __copy__(self) -> Any:
        copied = super().__copy__()
        copied._live = _Live()
        return copied

    # -- judging ------------------------------------------------------------------------

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        return run_sync(self._judge_on_loop(query, texts, report))

    async def _ajudge(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        return await run_async(self._judge_on_loop(query, texts, report))

    async def _judge_on_loop(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        """Every distinct passage judged once, in requests of ``max_documents_per_request``
        that share the instance's ``max_in_flight`` slots; runs on the background loop."""
        started = time.perf_counter()
        url = self.url  # raises before any request when there is none
        deadline = None if self.deadline is None else time.monotonic() + self.deadline
        unique = list(dict.fromkeys(texts))
        step = self.max_documents_per_request
        chunks = [unique[i : i + step] for i in range(0, len(unique), step)]
        call = _Call(url, query, deadline, RemoteUsage(documents=len(unique)))
        call.usage.deduplicated = len(texts) - len(unique)
        answers = await gather_all([self._request(call, chunk) for chunk in chunks])
        by_text = {t: j for answer, chunk in zip(answers, chunks, strict=True)
                   for t, j in zip(chunk, answer, strict=True)}  # fmt: skip
        usage = call.usage
        usage.unjudged = sum(j.score is None for j in by_text.values())
        usage.seconds = time.perf_counter() - started
        report.remote = usage
        if usage.unjudged and self._failure_warned.first():
            reason = next(j.metadata[RERANK_ERROR] for j in by_text.values() if j.score is None)
            logger.warning(
                "%s left %d of %d passages unjudged (kept after the judged ones, reason in "
                "their 'rerank_error'; logged once per reranker): %s",
                self.model_name,
                usage.unjudged,
                len(unique),
                reason,
            )
        judged = [by_text[t] for t in texts]
        if not self.detect_injection:
            return judged
        return flag_injections(texts, judged, self.suspected_penalty)

    async def _request(self, call: _Call, chunk: list[str]) -> list[Judgement]:
        """One request's judgements, in ``chunk``'s order (unjudged ones when it failed)."""
        limiter = self._live.limiter(self.max_in_flight)
        left = None if call.deadline is None else call.deadline - time.monotonic()
        try:
            async with asyncio.timeout(left):
                await limiter.acquire()
        except TimeoutError:
            return _unjudged(
                chunk,
                f"the deadline ({self.deadline} s) passed while waiting for one of the "
                f"{self.max_in_flight} request slots (max_in_flight) this reranker's calls share",
            )
        try:
            call.in_flight += 1
            call.usage.max_in_flight = max(call.usage.max_in_flight, call.in_flight)
            return await self._send(call, chunk)
        finally:
            call.in_flight -= 1
            limiter.release()

    async def _send(self, call: _Call, chunk: list[str]) -> list[Judgement]:
        client = self._live.client()
        payload = self._request_body(call.query, chunk)
        headers = self._headers()
        httpx = require("httpx")

        async def attempt(number: int) -> Any:
            timeout = self.timeout
            if call.deadline is not None:  # the retry loop starts no attempt past the deadline
                timeout = max(0.001, min(timeout, call.deadline - time.monotonic()))
            call.usage.requests += 1
            call.usage.retries += number > 1
            try:
                response = await client.post(
                    call.url, json=payload, headers=headers, timeout=timeout
                )
            except httpx.TimeoutException as exc:
                raise RetryableError(f"timed out after {timeout:.3g} s") from exc
            except httpx.TransportError as exc:
                raise RetryableError(f"connection error: {exc!r}") from exc
            status = response.status_code
            if status >= 400:
                message = f"HTTP {status}: {_error_text(response)}"
                if is_retryable_status(status):
                    retry_after = retry_after_from_headers(response.headers)
                    raise RetryableError(message, status, retry_after)
                raise self._refused(call.url, status, message)
            try:
                answer = response.json()
            except ValueError as exc:  # a proxy's error page, a cut-off body
                raise RetryableError(
                    f"malformed answer: not JSON: {_preview(response.text)}", status
                ) from exc
            try:
                return _read_answer(self.api, answer)
            except _Malformed as exc:
                raise RetryableError(f"malformed answer: {exc}", status) from exc

        policy = RetryPolicy(self.max_retries, self.backoff_base, self.backoff_max)
        try:
            retried = await call_with_retries(
                attempt, policy, deadline=call.deadline, name=call.url
            )
        except GaveUp as exc:
            call.usage.failures += 1
            return _unjudged(chunk, f"the rerank service at {call.url} {exc}")
        except _Refused as exc:
            call.usage.failures += 1
            return _unjudged(chunk, str(exc))
        entries, truncated = retried.value
        call.usage.truncated += truncated
        return judgements(entries, len(chunk), self.score_kind)

    def _refused(self, url: str, status: int, message: str) -> Exception:
        fix = _SETTINGS_STATUSES.get(status)
        if fix is not None:
            return RemoteRerankError(
                f"the rerank service at {url} refused the request with {message}, which "
                f"retrying cannot fix: {fix}."
            )
        if status in (413, 422):
            hint = (
                "a passage (or the request) is too long for the service: "
                + (
                    "pass truncate=True"
                    if self.api == "tei"
                    else "pass max_tokens_per_doc=N (Cohere v2)"
                )
                + " or lower max_documents_per_request"
            )
        else:
            hint = "check model and the request options against the service's API"
        return _Refused(f"the rerank service at {url} refused the request with {message} ({hint})")

    async def aclose(self) -> None:
        """Close the instance's HTTP connections (a later call opens new ones)."""
        await run_async(self._live.aclose())

    def close(self) -> None:
        """Sync :meth:`aclose`."""
        run_sync(self._live.aclose())


# -- one call's state, the instance's live parts --------------------------------------------


@dataclass
class _Call:
    """One call's request settings and figures (per call, never on the instance)."""

    url: str
    query: str
    deadline: float | None
    usage: RemoteUsage
    in_flight: int = 0


class _Live:
    """The instance's HTTP client and request slots, made on the background loop at first use.

    A copy of a reranker gets new ones (its own slots); pickling leaves them out.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limiter: tuple[int, asyncio.Semaphore] | None = None
        self._client: Any = None

    def limiter(self, size: int) -> asyncio.Semaphore:
        with self._lock:
            # Made again only when max_in_flight changed; the background loop never changes
            # within a process (a forked child starts a new loop and inherits no _Live use).
            if self._limiter is None or self._limiter[0] != size:
                self._limiter = (size, asyncio.Semaphore(size))
            return self._limiter[1]

    def client(self) -> Any:
        with self._lock:
            if self._client is None or self._client.is_closed:
                httpx = require("httpx")
                # Pool as large as any max_in_flight in use; the timeout is set per request.
                self._client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=32))
            return self._client

    async def aclose(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Live:
        return _Live()

    def __copy__(self) -> _Live:
        return _Live()

    def __reduce__(self) -> tuple[type[_Live], tuple[()]]:
        return (_Live, ())


# -- reading answers: pure functions --------------------------------------------------------


class _Refused(Exception):
    """A 4xx answer that retrying cannot fix but that concerns this request only."""


class _Malformed(Exception):
    """A 200 answer whose JSON is not the API's shape."""


def _read_answer(api: str, body: Any) -> tuple[list[Any], int]:
    """The list of results in a JSON answer, and the passages the service says it truncated.

    Raises:
        _Malformed: the JSON is not the API's shape.
    """
    if api == "tei":
        if not isinstance(body, list):
            raise _Malformed(f"JSON that is not TEI's list of results: {_preview(body)}")
        return [_entry(e, "score") for e in body], 0
    if not isinstance(body, Mapping) or not isinstance(body.get("results"), list):
        raise _Malformed(f"JSON without Cohere's 'results' list: {_preview(body)}")
    return [_entry(e, "relevance_score") for e in body["results"]], _truncated(body.get("meta"))


def _entry(entry: Any, key: str) -> tuple[Any, Any]:
    """``(index, score)`` of one result as given (checked by :func:`judgements`)."""
    if not isinstance(entry, Mapping):
        return (None, None)
    return (entry.get("index"), entry.get(key))


def _truncated(meta: Any) -> int:
    """Passages truncated, from a ``meta.report`` as this package's ``serve`` sends it."""
    report = meta.get("report") if isinstance(meta, Mapping) else None
    total = 0
    for part in ("cross_encoder", "remote"):
        usage = report.get(part) if isinstance(report, Mapping) else None
        value = usage.get("truncated") if isinstance(usage, Mapping) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            total += value
    return total


def judgements(
    entries: Sequence[tuple[Any, Any]], n: int, kind: Literal["probability", "logit"]
) -> list[Judgement]:
    """One judgement per sent passage from a service's ``(index, score)`` results.

    The results must name each of the ``n`` passages exactly once: if they do not (a wrong
    number of results, an index missing, repeated, out of range or not an integer), no result
    can be trusted to belong to its passage, and every passage is unjudged with the reason. A
    score that is not a finite number (or, for ``kind="probability"``, not in [0, 1]) leaves
    only its passage unjudged; ``null`` is the service's own "not judged".

    Example:
        >>> [j.score for j in judgements([(1, 0.2), (0, 0.9)], 2, "probability")]
        [0.9, 0.2]
        >>> reason = judgements([(0, 0.9), (0, 0.2)], 2, "probability")[1].metadata["rerank_error"]
        >>> reason.startswith("the rerank service returned index 0 twice and no result for index 1")
        True
    """
    indices = [i for i, _ in entries]
    problem = _index_problem(indices, n)
    if problem is not None:
        reason = (
            f"the rerank service returned {problem}: its results cannot be matched to the "
            "passages with certainty, so none of this request's is used"
        )
        return _unjudged([""] * n, reason)
    out: list[Judgement] = [Judgement(None)] * n
    for index, raw in entries:
        out[index] = _judgement(raw, kind)
    return out


def _index_problem(indices: Sequence[Any], n: int) -> str | None:
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        return f"a result whose index is not an integer ({bad[0]!r})"
    outside = sorted({i for i in indices if not 0 <= i < n})
    if outside:
        return f"index {outside[0]} for a request of {n} passages (out of range)"
    counts = Counter(indices)
    twice = sorted(i for i, c in counts.items() if c > 1)
    missing = sorted(set(range(n)) - set(counts))
    if twice:
        tail = f" and no result for index {missing[0]}" if missing else ""
        return f"index {twice[0]} twice{tail}"
    if len(indices) != n or missing:
        return f"{len(indices)} results for {n} passages"
    return None


def _judgement(raw: Any, kind: Literal["probability", "logit"]) -> Judgement:
    if raw is None:
        return Judgement(None, {RERANK_ERROR: "the rerank service did not judge it (score null)"})
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return Judgement(
            None, {RERANK_ERROR: f"the rerank service's score is not a number: {_preview(raw)}"}
        )
    value = float(raw)
    if kind == "logit":
        return Judgement(sigmoid(value), {RAW_SCORE: value, "rerank_logit": value})
    if not 0.0 <= value <= 1.0:
        return Judgement(
            None,
            {
                RERANK_ERROR: f"the rerank service's score {value!r} is not a probability in "
                "[0, 1]; if the service returns raw logits, pass scores='logit'",
                RAW_SCORE: value,
            },
        )
    return Judgement(value, {RAW_SCORE: value})


def _unjudged(chunk: Sequence[str], reason: str) -> list[Judgement]:
    return [Judgement(None, {RERANK_ERROR: reason})] * len(chunk)


def _error_text(response: Any) -> str:
    """The service's own error message (Cohere: ``message``; TEI: ``error``; FastAPI:
    ``detail``), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return _preview(response.text, 200)
    if isinstance(body, Mapping):
        for key in ("message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
    return _preview(body, 200)


def _preview(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

"""The one door to OpenAI-compatible chat endpoints: requests and retries.

This is the only module of the package that imports ``openai`` (lazily, on first use). It turns
one chat request into a :class:`~llamaindex_rerankers.llm.types.ChatResult` or a
:class:`~llamaindex_rerankers.llm.types.ChatClientError`, with our own retry policy (the SDK's
retries are off; the package's one retry mechanism, :mod:`llamaindex_rerankers.http.retry`, on
tenacity, runs them):

* **Retried**: HTTP 408, 429 and 5xx, connection errors, timeouts and malformed 200 answers (a
  body that is not a chat completion, or one without choices; proxies and overloaded servers
  produce them). Waits grow exponentially with *full jitter*; a ``Retry-After`` header (seconds
  or HTTP date, or OpenAI's ``retry-after-ms``) replaces the jittered wait, capped by
  ``backoff_max``.
* **Not retried**: other 4xx answers (bad key, unknown model, bad request): retrying cannot fix
  them, so they fail at once with the server's message.
* **Deadline**: ``achat(..., deadline=t)`` takes an absolute :func:`time.monotonic` time after
  which no new attempt starts; a wait that would end past it gives up at once, and each request's
  timeout is cut to the time left.
* **Endpoints without logprobs** (:mod:`llamaindex_rerankers.llm.capabilities`): a 400 that
  rejects the ``logprobs`` parameter switches the endpoint to text mode at once and the same
  call re-asks without it; 200 answers without logprobs switch it only after several in a row.

One ``openai.AsyncOpenAI`` (one connection pool) is made per event loop the client is used on,
because an httpx pool is bound to the loop it was first used on. The LLM reranker runs all its
requests on one background loop, so it has exactly one.

Example:
    >>> import asyncio
    >>> client = OpenAIChatClient(model="gpt-4o-mini")  # doctest: +SKIP
    >>> messages = [{"role": "user", "content": "Say A"}]
    >>> coro = client.achat(messages, max_tokens=1, logprobs=True, top_logprobs=5)  # doctest: +SKIP
    >>> result = asyncio.run(coro)  # doctest: +SKIP
    >>> result.text, result.tokens[0].top[:2]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from llamaindex_rerankers._imports import require
from llamaindex_rerankers.http.retry import (
    GaveUp,
    RetryableError,
    RetryNow,
    RetryPolicy,
    call_with_retries,
    is_retryable_status,
    retry_after_from_headers,
)
from llamaindex_rerankers.llm.capabilities import (
    logprobs_supported,
    record_logprobs_answer,
    record_logprobs_rejected,
)
from llamaindex_rerankers.llm.retry import rejects_logprobs
from llamaindex_rerankers.llm.types import ChatClientError, ChatResult, GeneratedToken, TokenChoice

logger = logging.getLogger(__name__)

#: Base URL used when none is passed and ``OPENAI_BASE_URL`` is unset.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: API key sent to a ``base_url`` that needs none (local servers ignore it; the SDK wants one).
PLACEHOLDER_API_KEY = "not-needed"


# -- the client ------------------------------------------------------------------------


class _Malformed(Exception):
    """A 200 answer that is not a usable chat completion."""


class OpenAIChatClient:
    """:class:`ChatClient` for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        model: model name sent with each request.
        base_url: endpoint root, e.g. ``"http://127.0.0.1:8080/v1"``; ``None`` uses
            ``OPENAI_BASE_URL`` or OpenAI's API.
        api_key: API key; ``None`` uses ``OPENAI_API_KEY``, else a placeholder when a
            ``base_url`` is given (local servers need no key).
        default_headers: extra HTTP headers sent with every request.
        timeout: seconds allowed for each HTTP attempt.
        max_retries: retries after the first attempt for retryable failures (0 = try once).
        backoff_base: ceiling of the first jittered wait, in seconds; doubles per retry.
        backoff_max: longest wait between attempts, in seconds, ``Retry-After`` included.
        temperature: sampling temperature (0 for reproducible judgements).
        rng: random source for the jitter (tests pass a seeded one).

    Raises:
        ValueError: on bad settings; and at the first call when no API key can be found for
            OpenAI's API.

    Example:
        >>> client = OpenAIChatClient(model="smollm2", base_url="http://127.0.0.1:8080/v1")
        >>> client.identity
        ('http://127.0.0.1:8080/v1', 'smollm2')
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        temperature: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError("model must be a non-empty model name, e.g. model='gpt-4o-mini'.")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}.")
        RetryPolicy(int(max_retries), float(backoff_base), float(backoff_max))  # checks them
        explicit_url = base_url or None
        resolved_url = explicit_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key and resolved_url.rstrip("/") != DEFAULT_BASE_URL:
            key = PLACEHOLDER_API_KEY
        self._model = model
        self._base_url = resolved_url.rstrip("/")
        self._api_key = key or None
        self._headers = dict(default_headers or {})
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.temperature = float(temperature)
        self._rng = rng
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._clients_lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatClient(model={self._model!r}, base_url={self._base_url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (and copied) as its settings: the connection pools and the lock are made
        # again. The API key travels with them, as it does in a pickled LlamaIndex LLM.
        settings: dict[str, Any] = {
            "model": self._model,
            "base_url": self._base_url,
            "api_key": self._api_key,
            "default_headers": self._headers or None,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "backoff_base": self.backoff_base,
            "backoff_max": self.backoff_max,
            "temperature": self.temperature,
            "rng": self._rng,
        }
        return (functools.partial(OpenAIChatClient, **settings), ())

    def _policy(self) -> RetryPolicy:
        # Built per call from the attributes, which callers may change after construction.
        return RetryPolicy(self.max_retries, self.backoff_base, self.backoff_max, self._rng)

    @property
    def identity(self) -> tuple[str, str]:
        """``(base_url, model)``, the base URL without a trailing slash."""
        return (self._base_url, self._model)

    @property
    def model(self) -> str:
        """The model name sent with each request."""
        return self._model

    @property
    def base_url(self) -> str:
        """The endpoint root, without a trailing slash."""
        return self._base_url

    def _sdk_client(self) -> Any:
        """The ``AsyncOpenAI`` of the running event loop, made on first use in that loop."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.get(loop)
            if client is None:
                if not self._api_key:
                    # Raised at first use, not at construction, so that a reranker can be built
                    # and inspected (prompts, settings) before credentials are set.
                    raise ValueError(
                        "No API key for OpenAI's API: pass api_key='sk-...', set OPENAI_API_KEY, "
                        "or pass base_url='http://127.0.0.1:PORT/v1' for a local server that "
                        "needs none."
                    )
                openai = require("openai")
                client = openai.AsyncOpenAI(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    default_headers=self._headers or None,
                    timeout=self.timeout,
                    max_retries=0,  # the retry policy is ours (see the module docstring)
                    http_client=_loop_bound_http_client(loop, self.timeout),
                )
                self._clients[loop] = client
            return client

    async def aclose(self) -> None:
        """Close the HTTP connections of the running loop's client (others close with their
        loops)."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()

    async def achat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        deadline: float | None = None,
    ) -> ChatResult:
        """Send one chat request, retrying transient failures.

        Args:
            messages: chat messages, e.g. ``[{"role": "user", "content": "..."}]``.
            max_tokens: most tokens to generate.
            logprobs: ask for log-probabilities (skipped if the endpoint is known not to give
                them).
            top_logprobs: alternatives per position when ``logprobs`` is sent.
            deadline: absolute :func:`time.monotonic` time after which no new attempt starts.

        Returns:
            The answer; ``tokens`` is ``None`` when logprobs were not asked for or not given.

        Raises:
            ChatClientError: retries spent, deadline reached, or an answer that retrying cannot
                fix (e.g. 401, 404); the message says which and quotes the last error.
        """
        client = self._sdk_client()
        # A list so that the attempt can switch it off for the calls after a 400 that rejects it.
        want = [bool(logprobs) and logprobs_supported(self.identity) is not False]

        async def attempt(number: int) -> ChatResult:
            timeout = self.timeout
            if deadline is not None:  # the retry loop starts no attempt past the deadline
                timeout = max(0.001, min(self.timeout, deadline - time.monotonic()))
            kwargs: dict[str, Any] = {
                "model": self._model,
                "messages": [dict(m) for m in messages],
                "max_tokens": max_tokens,
                "temperature": self.temperature,
                "timeout": timeout,
            }
            if want[0]:
                kwargs["logprobs"] = True
                kwargs["top_logprobs"] = top_logprobs
            raw = await self._create(client, kwargs, want, number)
            try:
                return self._parse(raw, want[0], number)
            except _Malformed as exc:
                raise RetryableError(f"malformed answer: {exc}", 200, None) from exc

        try:
            return (
                await call_with_retries(attempt, self._policy(), deadline=deadline, name=str(self))
            ).value
        except GaveUp as exc:
            raise ChatClientError(
                f"{self} {exc}", status=exc.last.status if exc.last else None, attempts=exc.attempts
            ) from exc

    async def _create(
        self, client: Any, kwargs: dict[str, Any], want: list[bool], attempts: int
    ) -> Any:
        """One request: the SDK's answer, or the failure sorted into retryable, re-ask without
        logprobs (:class:`RetryNow`), or fatal (:class:`ChatClientError`)."""
        openai = require("openai")
        try:
            return await client.chat.completions.create(**kwargs)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if want[0] and rejects_logprobs(_error_text(exc)):
                record_logprobs_rejected(
                    self.identity, f"HTTP {exc.status_code}: {_error_text(exc)}"
                )
                want[0] = False
                raise RetryNow from exc  # re-ask at once: this is not a transient failure
            raise self._fatal(exc, attempts) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            if is_retryable_status(status):
                raise RetryableError(
                    f"HTTP {status}: {_error_text(exc)}",
                    status,
                    retry_after_from_headers(exc.response.headers),
                ) from exc
            raise self._fatal(exc, attempts) from exc
        except openai.APITimeoutError as exc:
            raise RetryableError(f"timed out after {kwargs['timeout']:.3g} s") from exc
        except openai.APIConnectionError as exc:
            raise RetryableError(f"connection error: {exc.__cause__ or exc!r}") from exc
        except (openai.APIResponseValidationError, ValueError) as exc:
            # A body that claims to be JSON but is not (json.JSONDecodeError is a ValueError)
            # fails inside the SDK.
            raise RetryableError(f"malformed answer: {exc}", 200, None) from exc

    # -- helpers ---------------------------------------------------------------------

    def _parse(self, raw: Any, want_logprobs: bool, attempts: int) -> ChatResult:
        if isinstance(raw, (str, bytes)) or not hasattr(raw, "choices"):
            raise _Malformed(f"the body is not a chat completion: {_preview(raw)}")
        choices = raw.choices
        if not choices:
            raise _Malformed("the answer has no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise _Malformed("the first choice has no message")
        text = getattr(message, "content", None)
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise _Malformed(f"the message content is not text: {_preview(text)}")
        usage = getattr(raw, "usage", None)
        tokens: tuple[GeneratedToken, ...] | None = None
        if want_logprobs:
            tokens = _read_logprobs(getattr(choice, "logprobs", None))
            if tokens is not None and not tokens and text:
                tokens = None  # an empty list for a non-empty answer: logprobs left out
            record_logprobs_answer(self.identity, has_logprobs=tokens is not None)
        prompt_tokens = _as_int(getattr(usage, "prompt_tokens", 0))
        evaluated, cached = _prompt_cache_figures(raw, usage, prompt_tokens)
        return ChatResult(
            text=text,
            tokens=tokens,
            prompt_tokens=prompt_tokens,
            completion_tokens=_as_int(getattr(usage, "completion_tokens", 0)),
            attempts=attempts,
            prompt_tokens_evaluated=evaluated,
            prompt_tokens_cached=cached,
        )

    def _fatal(self, exc: Any, attempts: int) -> ChatClientError:
        status = getattr(exc, "status_code", None)
        hint = {
            401: " Check api_key / OPENAI_API_KEY.",
            403: " Check that the key may use this model.",
            404: " Check base_url (it usually ends in /v1) and the model name.",
        }.get(status or 0, "")
        return ChatClientError(
            f"{self} failed with HTTP {status}, which retrying cannot fix: "
            f"{_error_text(exc)}.{hint}",
            status=status,
            attempts=attempts,
        )


@functools.lru_cache(maxsize=1)
def _loop_bound_http_client_class() -> type:
    """The SDK's default httpx client, minus a finaliser that breaks across event loops.

    The SDK's own client schedules ``aclose()`` on *whatever* loop is running when it is
    garbage-collected; when its connections belong to a loop that has already closed (an
    ``asyncio.run`` that ended), that task fails with "Event loop is closed". This one only
    schedules it on its own loop, and otherwise leaves the dead loop's sockets to be closed
    with their objects.
    """
    openai = require("openai")

    class LoopBoundHttpClient(openai.DefaultAsyncHttpxClient):  # type: ignore[name-defined]
        owner_loop: asyncio.AbstractEventLoop | None = None
        closing: asyncio.Task[None] | None = None

        def __del__(self) -> None:
            try:
                closed = self.is_closed
            except AttributeError:  # never initialised (a copy or unpickling that failed)
                return
            if closed:
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                return
            if running is self.owner_loop and not running.is_closed():
                self.closing = running.create_task(self.aclose())

    return LoopBoundHttpClient


def _loop_bound_http_client(loop: asyncio.AbstractEventLoop, timeout: float) -> Any:
    client = _loop_bound_http_client_class()(timeout=timeout)
    client.owner_loop = loop
    return client


def _read_logprobs(logprobs: Any) -> tuple[GeneratedToken, ...] | None:
    """``choice.logprobs.content`` as :class:`GeneratedToken` s; ``None`` when absent or
    unreadable."""
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if content is None:
        return None
    try:
        return tuple(
            GeneratedToken(
                token=str(item.token),
                logprob=float(item.logprob),
                top=tuple(
                    TokenChoice(token=str(alt.token), logprob=float(alt.logprob))
                    for alt in (getattr(item, "top_logprobs", None) or ())
                ),
            )
            for item in content
        )
    except (AttributeError, TypeError, ValueError):
        logger.debug("unreadable logprobs in a chat answer: %s", _preview(logprobs))
        return None


def _prompt_cache_figures(
    raw: Any, usage: Any, prompt_tokens: int
) -> tuple[int | None, int | None]:
    """``(evaluated, cached)`` prompt tokens of one answer, ``(None, None)`` when it says not.

    llama-server adds ``timings`` to the completion (``prompt_n``: tokens computed, ``cache_n``:
    tokens reused from the slot's cache); OpenAI and others report only
    ``usage.prompt_tokens_details.cached_tokens``, and then the rest of the prompt was computed.
    Extra fields of the SDK's models come back as plain values (dicts), hence ``_field``.
    """
    timings = _field(raw, "timings")
    evaluated = _nonneg_int(_field(timings, "prompt_n"))
    cached = _nonneg_int(_field(timings, "cache_n"))
    if evaluated is not None and cached is not None:
        return evaluated, cached
    cached = _nonneg_int(_field(_field(usage, "prompt_tokens_details"), "cached_tokens"))
    if cached is not None and cached <= prompt_tokens:
        return prompt_tokens - cached, cached
    return None, None


def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _nonneg_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if value >= 0 else None


def _error_text(exc: Any) -> str:
    """The server's own error message when the body has one, else the exception text."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", None) or exc)


def _as_int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

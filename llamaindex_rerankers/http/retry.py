"""One retry mechanism for every HTTP client of the package, on tenacity.

The policy (used by the LLM client, :class:`~llamaindex_rerankers.llm.openai_client.
OpenAIChatClient`, and the rerank service client, :class:`~llamaindex_rerankers.remote.
RemoteReranker`):

* **What is retried** is the caller's choice: an attempt raises :class:`RetryableError` for a
  transient failure (HTTP 408, 429 and 5xx by :func:`is_retryable_status`, connection errors,
  timeouts, malformed answers), :class:`RetryNow` to re-ask at once without counting a failure
  (the LLM client re-asking without logprobs), anything else to fail at once.
* **The wait** before retry ``n + 1`` is the server's ``Retry-After`` (seconds, HTTP date, or
  OpenAI's ``retry-after-ms``) when given, capped by ``backoff_max``, else uniform in
  ``[0, min(backoff_max, backoff_base * 2**n)]`` (full jitter, :func:`retry_delay`).
* **It stops** after ``max_retries`` retryable failures, or when the absolute
  :func:`time.monotonic` ``deadline`` has passed or would pass during the next wait; it then
  raises :class:`GaveUp` with the number of attempts, the reason and every failure's
  description.

The maths (:func:`backoff_delay`, :func:`parse_retry_after`, :func:`retry_after_from_headers`)
are pure functions; :func:`call_with_retries` runs the loop with tenacity's ``AsyncRetrying``.

Example:
    >>> retry_delay(0, retry_after=retry_after_from_headers({"Retry-After": "2"}), base=0.5,
    ...             cap=20.0)
    2.0
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth retrying besides 5xx.
RETRYABLE_STATUSES = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP error status is transient: 408, 429 or any 5xx.

    Example:
        >>> is_retryable_status(503), is_retryable_status(404)
        (True, False)
    """
    return status in RETRYABLE_STATUSES or status >= 500


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``.

    Args:
        attempt: how many retries were already made (0 before the first retry).
        base: the ceiling of the first wait, in seconds.
        cap: the largest ceiling, in seconds.
        rng: source of randomness (``random`` module's global one if ``None``).

    Example:
        >>> import random
        >>> 0.0 <= backoff_delay(3, 0.5, 20.0, random.Random(0)) <= 4.0
        True
    """
    if attempt < 0 or base < 0 or cap < 0:
        raise ValueError(f"attempt, base and cap must be >= 0, got {attempt}, {base}, {cap}")
    # The exponent is bounded so that a long run of retries cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value: delay-seconds or an HTTP date.

    Args:
        value: the header value, e.g. ``"2"`` or ``"Wed, 21 Oct 2015 07:28:00 GMT"``.
        now: the current Unix time (``time.time()`` if ``None``), for HTTP dates.

    Returns:
        A non-negative number of seconds (a date in the past gives 0.0), or ``None`` when the
        value is missing or cannot be read.

    Example:
        >>> parse_retry_after("2")
        2.0
        >>> parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0)
        30.0
        >>> parse_retry_after("soon") is None
        True
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; naive ones come from obsolete formats
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def retry_delay(
    attempt: int,
    *,
    retry_after: float | None,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """The wait before retry number ``attempt + 1``: the server's ``Retry-After`` when given
    (capped by ``cap``), else :func:`backoff_delay`.

    Example:
        >>> retry_delay(0, retry_after=3.0, base=0.5, cap=20.0)
        3.0
        >>> retry_delay(0, retry_after=60.0, base=0.5, cap=20.0)
        20.0
    """
    if retry_after is not None:
        return min(max(0.0, retry_after), cap)
    return backoff_delay(attempt, base, cap, rng)


def retry_after_from_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait according to response headers: ``retry-after-ms`` (OpenAI) or
    ``Retry-After``; ``None`` when neither is usable. Header names are case-insensitive.

    Example:
        >>> retry_after_from_headers({"Retry-After": "1"})
        1.0
        >>> retry_after_from_headers({"retry-after-ms": "250"})
        0.25
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    return parse_retry_after(lowered.get("retry-after"), now)


# -- the loop ---------------------------------------------------------------------------


class RetryableError(Exception):
    """One failed attempt worth retrying.

    Args:
        description: what went wrong, for logs and the final error ("HTTP 503: busy").
        status: the HTTP status, ``None`` for a connection error or a timeout.
        retry_after: the server's requested wait in seconds, ``None`` when it gave none.
    """

    def __init__(
        self, description: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(description)
        self.description = description
        self.status = status
        self.retry_after = retry_after


class RetryNow(Exception):
    """Re-ask at once: not a failure (no wait, not counted against ``max_retries``), e.g. the
    same request without a parameter the server just said it does not take."""


class GaveUp(Exception):
    """Retries ended without an answer.

    Attributes:
        why: the reason ("the deadline passed", "5 retryable failures", ...).
        attempts: requests made.
        failures: the retryable failures, in order.
    """

    def __init__(self, why: str, attempts: int, failures: tuple[RetryableError, ...]) -> None:
        self.why = why
        self.attempts = attempts
        self.failures = failures
        last = failures[-1] if failures else None
        self.last = last
        super().__init__(
            f"gave up after {attempts} attempt(s): {why}"
            + (f"; last error: {last.description}" if last else "")
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to retry (see the module docstring).

    Args:
        max_retries: retries after the first attempt for retryable failures (0 = try once).
        backoff_base: ceiling of the first jittered wait, in seconds; doubles per retry.
        backoff_max: longest wait between attempts, in seconds, ``Retry-After`` included.
        rng: random source for the jitter (tests pass a seeded one).

    Example:
        >>> RetryPolicy(max_retries=2).max_retries
        2
    """

    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    rng: random.Random | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}.")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError(
                "backoff_base and backoff_max must be >= 0, got "
                f"{self.backoff_base}, {self.backoff_max}."
            )


@dataclass(frozen=True)
class Retried(Generic[T]):
    """An answer and what it took: ``attempts`` requests, ``waited`` seconds between them."""

    value: T
    attempts: int
    waited: float


class _Run:
    """tenacity's wait, stop and bookkeeping for one call (the failures are this call's own)."""

    def __init__(self, policy: RetryPolicy, deadline: float | None) -> None:
        self.policy = policy
        self.deadline = deadline
        self.failures: list[RetryableError] = []
        self.why = ""

    def after(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError):
            self.failures.append(exc)

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, RetryableError):
            return 0.0  # RetryNow
        p = self.policy
        return retry_delay(
            len(self.failures) - 1,
            retry_after=exc.retry_after,
            base=p.backoff_base,
            cap=p.backoff_max,
            rng=p.rng,
        )

    def stop(self, state: RetryCallState) -> bool:
        wait = state.upcoming_sleep
        if len(self.failures) > self.policy.max_retries:
            self.why = f"{len(self.failures)} retryable failures"
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.why = "the deadline passed"
        elif self.deadline is not None and wait > 0 and time.monotonic() + wait >= self.deadline:
            self.why = f"the deadline would pass during the {wait:.3g} s wait before a retry"
        else:
            return False
        return True

    def give_up(self, state: RetryCallState) -> None:
        raise GaveUp(self.why, state.attempt_number, tuple(self.failures))


async def call_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    name: str = "request",
) -> Retried[T]:
    """Call ``attempt(n)`` (``n`` = 1, 2, ...) until it returns, retrying as the policy says.

    Args:
        attempt: makes one request; raises :class:`RetryableError` or :class:`RetryNow` to be
            called again, anything else to stop at once (that exception propagates as is).
        policy: how many retries and which waits.
        deadline: absolute :func:`time.monotonic` time after which no new attempt starts;
            ``attempt`` should cut its own request timeout to the time left.
        name: who retries, for the debug log.

    Returns:
        The answer with the number of attempts it took and the seconds waited between them.

    Raises:
        GaveUp: retries spent, or the deadline passed or would pass during a wait.

    Example:
        >>> import asyncio
        >>> async def flaky(n: int) -> str:
        ...     if n < 3:
        ...         raise RetryableError("HTTP 503", 503, retry_after=0.0)
        ...     return "ok"
        >>> asyncio.run(call_with_retries(flaky, RetryPolicy())).attempts
        3
    """
    if deadline is not None and time.monotonic() >= deadline:
        raise GaveUp("the deadline passed", 0, ())
    run = _Run(policy, deadline)

    def log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.debug(
            "%s attempt %d failed (%s); retrying in %.3f s",
            name,
            state.attempt_number,
            getattr(exc, "description", exc),
            state.upcoming_sleep,
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type((RetryableError, RetryNow)),
        wait=run.wait,
        stop=run.stop,
        after=run.after,
        before_sleep=log,
        retry_error_callback=run.give_up,
    )
    async for trial in retrying:
        with trial:
            value = await attempt(trial.retry_state.attempt_number)
        if not trial.retry_state.outcome or trial.retry_state.outcome.failed:
            continue
        state = trial.retry_state
        return Retried(value, state.attempt_number, state.idle_for)
    raise AssertionError("unreachable: tenacity either returns, retries or gives up")

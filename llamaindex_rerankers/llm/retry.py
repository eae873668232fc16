"""Retry maths for chat requests: exponential backoff with full jitter, ``Retry-After``, and
which errors say "this endpoint takes no logprobs". Pure functions, no I/O.

The policy they implement (used by :class:`~llamaindex_rerankers.llm.openai_client.
OpenAIChatClient`): HTTP 408, 429 and 5xx are retried (:data:`RETRYABLE_STATUSES`); the wait
before retry ``n + 1`` is the server's ``Retry-After`` (seconds, HTTP date, or OpenAI's
``retry-after-ms``) when given, capped, else uniform in ``[0, min(cap, base * 2**n)]``
(:func:`retry_delay`).

Example:
    >>> retry_delay(0, retry_after=retry_after_from_headers({"Retry-After": "2"}), base=0.5,
    ...             cap=20.0)
    2.0
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from collections.abc import Mapping

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


_RANGE_WORDS = ("maximum", "minimum", "less than", "greater than", "<=", ">=", "between", "range")


def rejects_logprobs(error_message: str) -> bool:
    """Whether a 400 answer's message says that the endpoint does not take logprobs.

    An out-of-range ``top_logprobs`` (e.g. above OpenAI's 20) is a setting to fix, not a missing
    capability, so it does not count.

    Example:
        >>> rejects_logprobs("logprobs is not supported with this model")
        True
        >>> rejects_logprobs("Invalid 'top_logprobs': integer above maximum value. Expected <= 20")
        False
        >>> rejects_logprobs("maximum context length is 8192 tokens")
        False
    """
    text = error_message.lower()
    if "logprob" not in text:
        return False
    return not ("top_logprobs" in text and any(word in text for word in _RANGE_WORDS))

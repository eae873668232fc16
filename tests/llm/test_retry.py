"""The pure retry maths: full-jitter backoff, Retry-After, and which 400s reject logprobs."""

from __future__ import annotations

import email.utils
import random
import statistics
import time

import pytest

from llamaindex_rerankers.llm.retry import (
    backoff_delay,
    is_retryable_status,
    parse_retry_after,
    rejects_logprobs,
    retry_after_from_headers,
    retry_delay,
)


@pytest.mark.parametrize("attempt", [0, 1, 3, 6, 10_000])
def test_backoff_delay_is_full_jitter_under_the_capped_exponential(attempt: int) -> None:
    base, cap = 0.5, 20.0
    ceiling = min(cap, base * 2 ** min(attempt, 64))
    rng = random.Random(attempt)
    draws = [backoff_delay(attempt, base, cap, rng) for _ in range(4000)]
    assert all(0.0 <= d <= ceiling for d in draws)
    # Full jitter spreads uniformly over [0, ceiling]: mean near ceiling / 2, values near 0 occur.
    assert statistics.fmean(draws) == pytest.approx(ceiling / 2, rel=0.05)
    assert min(draws) < 0.02 * ceiling
    assert max(draws) > 0.98 * ceiling


def test_backoff_delay_is_reproducible_with_a_seeded_rng_and_rejects_negatives() -> None:
    a = [backoff_delay(i, 0.1, 5.0, random.Random(3)) for i in range(5)]
    b = [backoff_delay(i, 0.1, 5.0, random.Random(3)) for i in range(5)]
    assert a == b
    assert backoff_delay(4, 0.0, 5.0) == 0.0
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1, 0.1, 5.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)  # "Tue, 14 Nov 2023 22:13:50 GMT"
    assert parse_retry_after(future, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    # The obsolete asctime form carries no zone: read as GMT.
    assert parse_retry_after("Tue Nov 14 22:13:50 2023", now=now) == pytest.approx(30.0)
    # Without ``now`` the wall clock is used.
    soon = email.utils.formatdate(time.time() + 100, usegmt=True)
    assert 98.0 <= (parse_retry_after(soon) or 0.0) <= 100.0


def test_retry_delay_prefers_the_server_but_caps_it() -> None:
    assert retry_delay(0, retry_after=3.0, base=0.5, cap=20.0) == 3.0
    assert retry_delay(5, retry_after=60.0, base=0.5, cap=20.0) == 20.0
    assert retry_delay(5, retry_after=-1.0, base=0.5, cap=20.0) == 0.0
    jittered = retry_delay(2, retry_after=None, base=0.5, cap=20.0, rng=random.Random(1))
    assert jittered == backoff_delay(2, 0.5, 20.0, random.Random(1))


def test_retry_after_from_headers() -> None:
    assert retry_after_from_headers({"retry-after": "7"}) == 7.0
    assert retry_after_from_headers({"Retry-After-Ms": "250", "Retry-After": "7"}) == 0.25
    assert retry_after_from_headers({"retry-after-ms": "x", "retry-after": "2"}) == 2.0
    assert retry_after_from_headers({}) is None


@pytest.mark.parametrize(
    ("message", "rejected"),
    [
        ("logprobs is not supported with this model", True),
        ("This model does not support the 'logprobs' parameter.", True),
        ("Unsupported parameter: 'top_logprobs'", True),
        ("Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20", False),
        ("top_logprobs must be between 0 and 20", False),
        ("This model's maximum context length is 8192 tokens", False),
    ],
)
def test_rejects_logprobs(message: str, rejected: bool) -> None:
    assert rejects_logprobs(message) is rejected


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(408, True), (429, True), (500, True), (503, True), (400, False), (404, False)],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable

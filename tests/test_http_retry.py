"""The one retry loop (llamaindex_rerankers.http.retry, on tenacity) that the LLM client and the
rerank service client share: what counts as a failure, the waits, the deadline, the figures."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from llamaindex_rerankers.http.retry import (
    GaveUp,
    RetryableError,
    RetryNow,
    RetryPolicy,
    call_with_retries,
)

NO_WAIT = RetryPolicy(backoff_base=0.0)


def run(attempt, policy=NO_WAIT, deadline=None):  # type: ignore[no-untyped-def]
    return asyncio.run(call_with_retries(attempt, policy, deadline=deadline))


def test_retries_until_an_answer_and_counts_attempts_and_waits() -> None:
    async def flaky(n: int) -> str:
        if n < 3:
            raise RetryableError("HTTP 503", 503, retry_after=0.05)
        return f"answer {n}"

    got = run(flaky)
    assert (got.value, got.attempts) == ("answer 3", 3)
    assert got.waited == pytest.approx(0.1)


def test_gives_up_after_max_retries_with_every_failure() -> None:
    async def down(n: int) -> str:
        raise RetryableError(f"HTTP 500 #{n}", 500)

    with pytest.raises(GaveUp) as info:
        run(down, RetryPolicy(max_retries=2, backoff_base=0.001))
    assert info.value.attempts == 3 and info.value.why == "3 retryable failures"
    assert [f.description for f in info.value.failures] == [
        "HTTP 500 #1",
        "HTTP 500 #2",
        "HTTP 500 #3",
    ]
    assert (
        str(info.value)
        == "gave up after 3 attempt(s): 3 retryable failures; last error: HTTP 500 #3"
    )


def test_retry_now_is_no_failure_and_no_wait() -> None:
    async def reask(n: int) -> int:
        if n == 1:
            raise RetryNow
        if n == 2:
            raise RetryableError("HTTP 500", 500)
        return n

    got = run(reask, RetryPolicy(max_retries=1, backoff_base=0.0))
    # The waits the mechanism slept (tenacity's idle_for), not the wall clock, which a busy
    # machine stretched past 0.5 s on a fresh clone.
    assert (got.value, got.attempts, got.waited) == (3, 3, 0.0)


def test_other_exceptions_stop_at_once() -> None:
    calls = []

    async def fatal(n: int) -> int:
        calls.append(n)
        raise KeyError("401")

    with pytest.raises(KeyError):
        run(fatal)
    assert calls == [1]


def test_the_deadline() -> None:
    async def never(n: int) -> int:
        raise AssertionError("no attempt after the deadline")

    with pytest.raises(GaveUp, match="the deadline passed") as info:
        run(never, deadline=time.monotonic() - 0.01)
    assert info.value.attempts == 0

    async def rate_limited(n: int) -> int:
        raise RetryableError("HTTP 429", 429, retry_after=5.0)

    started = time.monotonic()
    with pytest.raises(GaveUp, match="deadline would pass during the 5 s wait") as info:
        run(rate_limited, deadline=time.monotonic() + 1.0)
    assert info.value.attempts == 1 and time.monotonic() - started < 0.5


def test_full_jitter_without_retry_after_and_the_cap_with_it() -> None:
    waits = []

    async def timing(n: int) -> int:
        waits.append(time.monotonic())
        if n <= 3:
            raise RetryableError("timeout", None, retry_after=60.0 if n == 3 else None)
        return n

    policy = RetryPolicy(max_retries=5, backoff_base=0.05, backoff_max=0.2, rng=random.Random(1))
    run(timing, policy)
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert gaps[0] <= 0.05 + 0.1 and gaps[1] <= 0.1 + 0.1  # uniform under base * 2**n
    assert 0.19 <= gaps[2] <= 0.5  # Retry-After 60 s capped to backoff_max


def test_bad_policies_raise() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="backoff_base"):
        RetryPolicy(backoff_base=-1.0)

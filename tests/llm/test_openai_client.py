"""OpenAIChatClient against the scripted fake server (the retry maths is in test_retry.py).

Timeouts and backoffs are tiny so the file runs in seconds; the only long waits are the
Retry-After tests, which must wait what the server asks (about 1 s each).
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_openai import (
    FakeOpenAI,
    empty_choices,
    garbage_body,
    garbage_text,
    good,
    hang,
    http_error,
    invalid_json,
    logprobs_rejected,
    no_logprobs,
    rate_limited,
    server_error,
)

from llamaindex_rerankers.llm.capabilities import (
    MISSES_BEFORE_TEXT_MODE,
    logprobs_supported,
    record_logprobs_support,
)
from llamaindex_rerankers.llm.openai_client import OpenAIChatClient
from llamaindex_rerankers.llm.retry import backoff_delay
from llamaindex_rerankers.llm.types import ChatClient, ChatClientError, ChatResult

MESSAGES = [
    {"role": "system", "content": "Answer A, B or C."},
    {"role": "user", "content": "Is the passage relevant?"},
]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server
        # Ports are reused: forget what this server taught the process-wide memory.
        for model in {r.body.get("model") for r in server.chat_requests()}:
            record_logprobs_support((server.url + "/v1", model), None)


def make_client(fake: FakeOpenAI, **overrides: Any) -> OpenAIChatClient:
    settings: dict[str, Any] = {
        "model": "fake",
        "base_url": fake.url + "/v1",
        "timeout": 2.0,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "rng": random.Random(0),
    }
    settings.update(overrides)
    return OpenAIChatClient(**settings)


async def ask(client: OpenAIChatClient, **kwargs: Any) -> ChatResult:
    options: dict[str, Any] = {"max_tokens": 3, "logprobs": True, "top_logprobs": 3}
    options.update(kwargs)
    return await client.achat(MESSAGES, **options)


def gaps(fake: FakeOpenAI) -> list[float]:
    times = [r.at for r in fake.chat_requests()]
    return [b - a for a, b in itertools.pairwise(times)]


# -- settings ----------------------------------------------------------------------------


def test_settings_errors_say_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    keyless = OpenAIChatClient(model="gpt-4o-mini")  # building needs no key, calling does
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        asyncio.run(keyless.achat(MESSAGES, max_tokens=1, logprobs=False, top_logprobs=0))
    with pytest.raises(ValueError, match="model"):
        OpenAIChatClient(model=" ", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="timeout"):
        OpenAIChatClient(model="m", base_url="http://127.0.0.1:1/v1", timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        OpenAIChatClient(model="m", base_url="http://127.0.0.1:1/v1", max_retries=-1)


def test_identity_and_repr_hide_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    client = OpenAIChatClient(model="gpt-4o-mini", api_key="sk-secret")
    assert client.identity == ("https://api.openai.com/v1", "gpt-4o-mini")
    assert "sk-secret" not in repr(client)
    local = OpenAIChatClient(model="m", base_url="http://127.0.0.1:8080/v1/")
    assert local.identity == ("http://127.0.0.1:8080/v1", "m")
    assert isinstance(local, ChatClient)


async def test_api_key_and_headers_sent(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    await ask(make_client(fake, default_headers={"X-Team": "search"}))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    await ask(make_client(fake))
    await ask(make_client(fake, api_key="sk-explicit"))
    auth = [r.headers["authorization"] for r in fake.chat_requests()]
    assert auth == ["Bearer not-needed", "Bearer sk-from-env", "Bearer sk-explicit"]
    assert fake.chat_requests()[0].headers["x-team"] == "search"


# -- the happy path ----------------------------------------------------------------------


async def test_good_answer_with_logprobs(fake: FakeOpenAI) -> None:
    fake.script(good("B", top=[("B", -0.2), ("C", -1.9), ("A", -3.1), ("D", -4.0)]))
    client = make_client(fake)
    assert logprobs_supported(client.identity) is None
    result = await ask(client, max_tokens=2, top_logprobs=3)

    assert result.text == "B"
    assert result.attempts == 1
    assert result.prompt_tokens == 42 and result.completion_tokens == 1
    assert result.tokens is not None and len(result.tokens) == 1
    first = result.tokens[0]
    assert (first.token, first.logprob) == ("B", -0.2)
    assert [(c.token, c.logprob) for c in first.top] == [("B", -0.2), ("C", -1.9), ("A", -3.1)]
    assert logprobs_supported(client.identity) is True

    (request,) = fake.chat_requests()
    assert request.path == "/v1/chat/completions"
    body = request.body
    assert body["model"] == "fake" and body["messages"] == MESSAGES
    assert body["temperature"] == 0.0 and body["max_tokens"] == 2
    assert body["logprobs"] is True and body["top_logprobs"] == 3


async def test_without_logprobs_nothing_is_asked_or_learnt(fake: FakeOpenAI) -> None:
    client = make_client(fake)
    result = await ask(client, logprobs=False)
    assert result.text == "B" and result.tokens is None
    (request,) = fake.chat_requests()
    assert "logprobs" not in request.body and "top_logprobs" not in request.body
    assert logprobs_supported(client.identity) is None


async def test_garbage_answer_text_is_returned_as_is(fake: FakeOpenAI) -> None:
    # A well-formed completion with a useless answer is the caller's to judge, not a fault.
    fake.script(garbage_text("bananas are yellow"))
    result = await ask(make_client(fake))
    assert result.text == "bananas are yellow"
    assert result.tokens is not None and [t.token for t in result.tokens] == [
        "bananas",
        " are",
        " yellow",
    ]
    assert result.attempts == 1


async def test_concurrent_calls_share_one_client(fake: FakeOpenAI) -> None:
    fake.default = hang(0.2)
    client = make_client(fake)
    start = time.monotonic()
    results = await asyncio.gather(*(ask(client) for _ in range(6)))
    assert [r.text for r in results] == ["B"] * 6
    assert len(fake.chat_requests()) == 6
    assert time.monotonic() - start < 6 * 0.2  # they overlapped


# -- faults, retried ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        server_error(500),
        server_error(503),
        rate_limited(retry_after=None),
        garbage_body(),
        invalid_json(),
        empty_choices(),
    ],
    ids=["500", "503", "429-no-header", "html-body", "invalid-json", "empty-choices"],
)
async def test_transient_fault_then_success(fake: FakeOpenAI, fault: Any) -> None:
    fake.script(fault, fault, good("C"))
    result = await ask(make_client(fake))
    assert result.text == "C" and result.attempts == 3
    assert len(fake.chat_requests()) == 3
    assert fake.pending == 0


async def test_timeout_is_retried(fake: FakeOpenAI) -> None:
    fake.script(hang(5.0), good("A"))
    client = make_client(fake, timeout=0.3)
    start = time.monotonic()
    result = await ask(client)
    elapsed = time.monotonic() - start
    assert result.text == "A" and result.attempts == 2
    assert 0.3 <= elapsed < 3.0


async def test_backoff_waits_follow_the_jitter_sequence(fake: FakeOpenAI) -> None:
    fake.script(server_error(), server_error(), server_error(), good())
    client = make_client(fake, backoff_base=0.1, backoff_max=1.0, rng=random.Random(7))
    await ask(client)
    replay = random.Random(7)
    expected = [backoff_delay(i, 0.1, 1.0, replay) for i in range(3)]
    measured = gaps(fake)
    assert len(measured) == 3
    for got, want in zip(measured, expected, strict=True):
        assert want <= got < want + 0.5


async def test_retry_after_seconds_is_honoured(fake: FakeOpenAI) -> None:
    fake.script(rate_limited(retry_after="1"), good())
    result = await ask(make_client(fake, backoff_max=5.0))
    assert result.attempts == 2
    (gap,) = gaps(fake)
    assert 1.0 <= gap < 2.5  # the jittered backoff alone would be <= 0.01 s


async def test_retry_after_http_date_is_honoured(fake: FakeOpenAI) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1-2 s away
    fake.script(rate_limited(retry_after=when), good())
    result = await ask(make_client(fake, backoff_max=5.0))
    assert result.attempts == 2
    (gap,) = gaps(fake)
    assert 0.95 <= gap < 3.0


async def test_retry_after_is_capped_by_backoff_max(fake: FakeOpenAI) -> None:
    fake.script(rate_limited(retry_after="30"), good())
    start = time.monotonic()
    await ask(make_client(fake, backoff_max=0.2))
    assert 0.2 <= time.monotonic() - start < 3.0


# -- faults, final -----------------------------------------------------------------------


async def test_retries_exhausted_raise_a_useful_error(fake: FakeOpenAI) -> None:
    fake.sticky = server_error(500)
    client = make_client(fake, max_retries=3)
    with pytest.raises(ChatClientError) as info:
        await ask(client)
    err = info.value
    assert err.status == 500 and err.attempts == 4
    assert len(fake.chat_requests()) == 4
    message = str(err)
    assert "4 attempt" in message and "HTTP 500" in message and "The server had an error" in message
    assert fake.url in message


async def test_empty_choices_never_pass_silently(fake: FakeOpenAI) -> None:
    fake.sticky = empty_choices()
    with pytest.raises(ChatClientError, match="no choices"):
        await ask(make_client(fake, max_retries=1))
    assert len(fake.chat_requests()) == 2


async def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChatClient(
        model="fake",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=2,
        backoff_base=0.01,
        backoff_max=0.02,
    )
    with pytest.raises(ChatClientError, match="connection error") as info:
        await ask(client)
    assert info.value.attempts == 3 and info.value.status is None


@pytest.mark.parametrize(
    ("status", "hint"), [(401, "api_key"), (404, "base_url"), (400, "HTTP 400")]
)
async def test_client_errors_are_not_retried(fake: FakeOpenAI, status: int, hint: str) -> None:
    fake.sticky = http_error(status, "nope")
    with pytest.raises(ChatClientError, match=hint) as info:
        await ask(make_client(fake))
    assert info.value.status == status and info.value.attempts == 1
    assert len(fake.chat_requests()) == 1


async def test_a_passed_deadline_makes_no_request(fake: FakeOpenAI) -> None:
    with pytest.raises(ChatClientError, match="deadline"):
        await ask(make_client(fake), deadline=time.monotonic() - 0.01)
    assert fake.chat_requests() == []


async def test_deadline_stops_retrying(fake: FakeOpenAI) -> None:
    fake.sticky = server_error(500)
    client = make_client(fake, max_retries=1000, backoff_base=0.05, backoff_max=0.05)
    start = time.monotonic()
    with pytest.raises(ChatClientError, match="deadline") as info:
        await ask(client, deadline=start + 0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0
    assert 2 <= info.value.attempts == len(fake.chat_requests()) < 1000
    # The last attempt either got its 500 or ran out of time (its timeout is cut to the deadline).
    assert "HTTP 500" in str(info.value) or "timed out" in str(info.value)


async def test_retry_after_beyond_the_deadline_gives_up_at_once(fake: FakeOpenAI) -> None:
    fake.script(rate_limited(retry_after="10"), good())
    start = time.monotonic()
    with pytest.raises(ChatClientError, match="deadline") as info:
        await ask(make_client(fake, backoff_max=20.0), deadline=start + 2.0)
    assert time.monotonic() - start < 1.0
    assert info.value.status == 429 and len(fake.chat_requests()) == 1


async def test_deadline_cuts_the_request_timeout(fake: FakeOpenAI) -> None:
    fake.sticky = hang(5.0)
    start = time.monotonic()
    with pytest.raises(ChatClientError, match="deadline"):
        await ask(make_client(fake, timeout=30.0), deadline=start + 0.4)
    assert time.monotonic() - start < 2.0


# -- endpoints without logprobs: the capability memory -----------------------------------


async def test_400_on_logprobs_falls_back_and_is_remembered(fake: FakeOpenAI) -> None:
    fake.sticky = logprobs_rejected(then=good("A"))
    client = make_client(fake)
    result = await ask(client)
    assert result.text == "A" and result.tokens is None and result.attempts == 2
    first, second = fake.chat_requests()
    assert first.body["logprobs"] is True
    assert "logprobs" not in second.body and "top_logprobs" not in second.body
    assert second.at - first.at < 0.5  # re-asked at once, no backoff
    assert logprobs_supported(client.identity) is False

    # The next call, from a new client for the same endpoint, does not ask again.
    again = await ask(make_client(fake))
    assert again.attempts == 1 and again.tokens is None
    assert "logprobs" not in fake.chat_requests()[2].body
    # Another model on the same server is unaffected.
    assert logprobs_supported((fake.url + "/v1", "other-model")) is None


async def test_200_without_logprobs_switches_only_after_three_in_a_row(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(fake)
    fake.script(no_logprobs("C"), no_logprobs("C"), good("B"), no_logprobs("A"))
    with caplog.at_level("INFO", logger="llamaindex_rerankers"):
        result = await ask(client)
        assert result.text == "C" and result.tokens is None and result.attempts == 1
        assert logprobs_supported(client.identity) is None  # one odd answer is no capability
        await ask(client)
        assert (await ask(client)).tokens is not None  # an answer with logprobs resets the count
        assert logprobs_supported(client.identity) is True
        await ask(client)
        assert logprobs_supported(client.identity) is True
        assert not caplog.records
        fake.sticky = no_logprobs("C")
        for _ in range(MISSES_BEFORE_TEXT_MODE - 1):  # the 4th answer was the first miss
            await ask(client)
        assert logprobs_supported(client.identity) is False
        await ask(client)
    requests = fake.chat_requests()
    assert [r.wants_logprobs for r in requests] == [True] * 6 + [False]
    assert [(r.levelname, r.name) for r in caplog.records] == [
        ("WARNING", "llamaindex_rerankers.llm.capabilities")
    ]
    assert "3 answers in a row without logprobs" in caplog.records[0].getMessage()


async def test_top_logprobs_out_of_range_is_a_setting_error(fake: FakeOpenAI) -> None:
    fake.sticky = http_error(400, "Invalid 'top_logprobs': integer above maximum value.")
    client = make_client(fake)
    with pytest.raises(ChatClientError, match="top_logprobs"):
        await ask(client, top_logprobs=25)
    assert logprobs_supported(client.identity) is None
    assert len(fake.chat_requests()) == 1


async def test_a_400_unrelated_to_logprobs_is_not_a_capability(fake: FakeOpenAI) -> None:
    fake.script(http_error(400, "messages too long", "context_length_exceeded"))
    client = make_client(fake)
    with pytest.raises(ChatClientError, match="messages too long"):
        await ask(client)
    assert logprobs_supported(client.identity) is None
    assert len(fake.chat_requests()) == 1


# -- one AsyncOpenAI per event loop ------------------------------------------------------


def test_one_sdk_client_per_event_loop(fake: FakeOpenAI) -> None:
    client = make_client(fake)
    # Two loops one after the other: the second must not reuse the first loop's pool.
    first = asyncio.run(ask(client))
    second = asyncio.run(ask(client))
    assert first.text == second.text == "B"

    async def inside_a_running_loop() -> list[ChatResult]:
        here = await ask(client)
        # What the reranker's sync path does inside Jupyter: a fresh loop in a worker thread.
        there = await asyncio.to_thread(asyncio.run, ask(client))
        return [here, there]

    assert [r.attempts for r in asyncio.run(inside_a_running_loop())] == [1, 1]
    assert len(fake.chat_requests()) == 4


async def test_aclose_then_reuse(fake: FakeOpenAI) -> None:
    client = make_client(fake)
    await ask(client)
    await client.aclose()
    assert (await ask(client)).text == "B"


# -- the real thing: llama.cpp's OpenAI-compatible server (session fixture in conftest.py) --


@pytest.mark.server
async def test_real_llama_cpp_server_logprobs_and_text(llm_server: Any) -> None:
    client = OpenAIChatClient(model=llm_server.model, base_url=llm_server.base_url, timeout=120)
    question = [{"role": "user", "content": "Is an apple a fruit? Answer with A, B or C."}]
    result = await client.achat(question, max_tokens=2, logprobs=True, top_logprobs=5)
    assert result.attempts == 1
    assert result.prompt_tokens > 0 and 1 <= result.completion_tokens <= 2
    assert result.tokens is not None and 1 <= len(result.tokens) <= 2
    assert "".join(t.token for t in result.tokens) == result.text
    for tok in result.tokens:
        assert len(tok.top) == 5 and all(c.logprob <= 0.0 for c in tok.top)
        # Temperature 0 is greedy: the generated token is the most probable alternative.
        best = max(tok.top, key=lambda c: c.logprob)
        assert tok.token == best.token and tok.logprob == pytest.approx(best.logprob)
    assert logprobs_supported(client.identity) is True

    plain = await client.achat(question, max_tokens=3, logprobs=False, top_logprobs=5)
    assert plain.tokens is None and plain.text.startswith(result.text)
    await client.aclose()

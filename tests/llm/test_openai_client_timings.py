"""Prompt tokens a server evaluated vs. reused from its cache: read from llama-server's
``timings`` or OpenAI's ``usage.prompt_tokens_details``, ``None`` when the answer says nothing,
and summed per rerank call into ``report.llm`` (against the scripted fake server)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply, completion
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.capabilities import record_logprobs_support
from llamaindex_rerankers.llm.openai_client import OpenAIChatClient
from llamaindex_rerankers.llm.types import ChatResult

MESSAGES = [{"role": "user", "content": "Is the passage relevant? A, B or C."}]
TOP = [("B", -0.2), ("A", -1.9), ("C", -3.0)]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server
        for model in {r.body.get("model") for r in server.chat_requests()}:
            record_logprobs_support((server.url + "/v1", model), None)


def answer(timings: Any = None, usage_extra: dict[str, Any] | None = None) -> Reply:
    """A one-token answer with logprobs and 40 prompt tokens; ``timings`` as llama-server adds
    them, ``usage_extra`` merged into ``usage``."""
    body = completion("B", logprobs=[("B", -0.2, TOP)], prompt_tokens=40)
    body["usage"].update(usage_extra or {})
    if timings is not None:
        body["timings"] = timings
    return Reply(body=body)


async def ask(fake: FakeOpenAI) -> ChatResult:
    client = OpenAIChatClient(model="fake", base_url=fake.url + "/v1", rng=random.Random(0))
    try:
        return await client.achat(MESSAGES, max_tokens=1, logprobs=True, top_logprobs=3)
    finally:
        await client.aclose()


def test_llama_server_timings_are_read(fake: FakeOpenAI) -> None:
    fake.script(answer(timings={"prompt_n": 12, "cache_n": 28, "prompt_ms": 80.5}))
    result = asyncio.run(ask(fake))
    assert (result.prompt_tokens, result.prompt_tokens_evaluated, result.prompt_tokens_cached) == (
        40,
        12,
        28,
    )
    assert result.tokens is not None and result.tokens[0].token == "B"


def test_an_answer_without_timings_says_nothing(fake: FakeOpenAI) -> None:
    fake.script(answer())
    result = asyncio.run(ask(fake))
    assert result.prompt_tokens == 40
    assert result.prompt_tokens_evaluated is None and result.prompt_tokens_cached is None


def test_openai_cached_tokens_count_the_rest_as_evaluated(fake: FakeOpenAI) -> None:
    fake.script(answer(usage_extra={"prompt_tokens_details": {"cached_tokens": 32}}))
    result = asyncio.run(ask(fake))
    assert (result.prompt_tokens_evaluated, result.prompt_tokens_cached) == (8, 32)


@pytest.mark.parametrize(
    "timings",
    [{"prompt_n": "12", "cache_n": 28}, {"prompt_n": -1, "cache_n": 0}, {"cache_n": 3}, "junk"],
)
def test_unreadable_timings_are_ignored_not_fatal(fake: FakeOpenAI, timings: Any) -> None:
    fake.script(answer(timings=timings))
    result = asyncio.run(ask(fake))
    assert result.text == "B" and result.attempts == 1
    assert result.prompt_tokens_evaluated is None and result.prompt_tokens_cached is None


def nodes(n: int) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=f"passage {i}", id_=str(i))) for i in range(n)]


def test_rerank_report_sums_the_evaluated_and_cached_prompt_tokens(fake: FakeOpenAI) -> None:
    fake.script(*[answer(timings={"prompt_n": 10 + i, "cache_n": 30 - i}) for i in range(3)])
    reranker = LLMReranker(  # the counters under test, not calibration
        model="fake", base_url=fake.url + "/v1", concurrency=1, calibration="none"
    )
    result = reranker.rerank(nodes(3), "q")
    llm = result.report.llm
    assert llm is not None
    assert (llm.calls, llm.prompt_cache_reports) == (3, 3)
    assert (llm.prompt_tokens_evaluated, llm.prompt_tokens_cached) == (33, 87)
    payload = result.report.to_dict()["llm"]
    assert payload["prompt_tokens_evaluated"] == 33 and payload["prompt_tokens_cached"] == 87
    assert payload["prompt_cache_reports"] == 3
    # A cascade adds its stages' reports: the counters add up like the others.
    total = type(result.report)(query="q")
    total.add_usage(result.report)
    total.add_usage(result.report)
    assert total.llm is not None and total.llm.prompt_tokens_cached == 174


def test_rerank_report_without_timings_has_no_cache_reports(fake: FakeOpenAI) -> None:
    reranker = LLMReranker(  # the counters under test, not calibration
        model="fake", base_url=fake.url + "/v1", concurrency=1, calibration="none"
    )
    fake.script(*[answer() for _ in range(2)])
    llm = reranker.rerank(nodes(2), "q").report.llm
    assert llm is not None and llm.calls == 2
    assert (llm.prompt_cache_reports, llm.prompt_tokens_evaluated, llm.prompt_tokens_cached) == (
        0,
        0,
        0,
    )

"""The per-call engine (llm/judging.py) with the real llama.cpp server: it returns each call's
judgements with a typed usage record of that call's own, and writes nothing anywhere else."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.endpoints.llamacpp import LocalLLMServer
from llamaindex_rerankers.llm import LLMReranker, MemoryCache
from llamaindex_rerankers.llm.judging import expand_windows, judge
from llamaindex_rerankers.llm.loop import run_sync
from llamaindex_rerankers.types import Judgement, LLMUsage

QUERY = "how do I prune apple trees"
PASSAGES = (
    "Prune apple trees in late winter, while they are dormant.",
    "Apple Inc. shares fell two percent after earnings.",
    "Cherry trees grow best in well-drained loam.",
    "Cut out dead and crossing branches first when pruning.",
    "A pie crust wants cold butter and a hot oven.",
    "Thin the fruit of young apple trees in early summer.",
)


def reranker_for(server: LocalLLMServer, **settings: Any) -> LLMReranker:
    merged: dict[str, Any] = {"cache": None, "timeout": 120.0, "concurrency": 2, **settings}
    return LLMReranker(model=server.model, base_url=server.base_url, **merged)


def judged_by_engine(reranker: LLMReranker, texts: list[str]) -> tuple[list[Judgement], LLMUsage]:
    async def on_loop() -> tuple[list[Judgement], LLMUsage]:
        return await judge(reranker._setup(), QUERY, texts)  # the setup is made on the loop

    return run_sync(on_loop())


def nodes_of(texts: list[str]) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(texts)
    ]


def test_the_engine_returns_the_calls_usage_and_touches_no_report(
    llm_server: LocalLLMServer,
) -> None:
    reranker = reranker_for(llm_server, cache=MemoryCache())
    texts = [PASSAGES[0], PASSAGES[1], PASSAGES[0], PASSAGES[2]]  # one repeat
    judgements, usage = judged_by_engine(reranker, texts)

    assert isinstance(usage, LLMUsage)
    assert len(judgements) == 4 and judgements[0] == judgements[2]
    assert (usage.judgements, usage.deduplicated, usage.calibration_judgements) == (3, 1, 1)
    assert usage.cache_hits == 0 and usage.failures == 0 and usage.unknown == 0
    # One request per distinct passage and one for the content-free passage, plus a stricter
    # retry per unreadable answer.
    assert usage.calls == 4 + usage.parse_failures
    assert usage.prompt_tokens > 0 and 1 <= usage.max_in_flight <= 2
    assert reranker.last_report is None  # no report was given, none was written
    first = dataclasses.replace(usage)

    again, usage2 = judged_by_engine(reranker, texts)
    assert [j.score for j in again] == [j.score for j in judgements]
    assert all(j.metadata["rerank_cached"] for j in again)
    assert (usage2.cache_hits, usage2.calls, usage2.judgements) == (4, 0, 3)
    assert usage == first  # the first call's record is its own: the second did not add to it


def test_windows_return_the_windows_usage_and_maxp(llm_server: LocalLLMServer) -> None:
    reranker = reranker_for(llm_server, long_text="windows", passage_max_tokens=16)
    long = " ".join(PASSAGES)  # about 90 tokens at 4 characters a token: several windows
    judgements, usage = judged_by_engine(reranker, [long, PASSAGES[0], long])

    assert usage.windowed == 1 and usage.windows > 1 and usage.deduplicated == 1
    assert usage.judgements == usage.windows + 1  # each window, and the short passage
    assert judgements[0] == judgements[2]
    windows = expand_windows([long], reranker._token_counter(), 16, reranker.window_overlap)[0]
    meta = judgements[0].metadata
    assert meta["rerank_windows"] == len(windows) == usage.windows
    assert meta["rerank_best_window_offset"] in {w.offset for w in windows}
    assert "rerank_windows" not in judgements[1].metadata or (
        judgements[1].metadata["rerank_windows"] == 1
    )


def test_concurrent_calls_on_one_instance_each_get_their_own_usage(
    llm_server: LocalLLMServer,
) -> None:
    reranker = reranker_for(llm_server)
    # Calls of 1 to 6 distinct passages, each with one repeat: every figure differs by call.
    calls = [[*PASSAGES[:n], PASSAGES[0]] for n in range(1, 7)]
    alone = [reranker_for(llm_server).rerank(nodes_of(t), QUERY).report.llm for t in calls]

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        reports = list(pool.map(lambda t: reranker.rerank(nodes_of(t), QUERY).report, calls))

    for texts, report, solo in zip(calls, reports, alone, strict=True):
        usage = report.llm
        assert usage is not None and solo is not None
        assert usage.judgements == len(texts) - 1 and usage.deduplicated == 1
        assert usage.calibration_judgements == 1
        # The same requests as the call alone on a fresh reranker: nobody else's were counted.
        assert (usage.calls, usage.parse_failures, usage.unknown) == (
            solo.calls,
            solo.parse_failures,
            solo.unknown,
        )
        assert usage.max_in_flight <= 2  # the instance's limit, shared by the six calls


class BrokenClient:
    """A chat client with a bug: every request raises a TypeError (not a ChatClientError, so
    not a counted failure); the first after the others have started, which it leaves hanging."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    @property
    def identity(self) -> tuple[str, str]:
        return ("http://broken/v1", "broken")

    async def achat(self, messages: object, **options: object) -> object:
        self.started += 1
        if self.started == 1:
            await asyncio.sleep(0.05)
            raise TypeError("bug in the client")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("never answered")


def test_a_client_bug_is_raised_as_itself_and_cancels_the_other_requests() -> None:
    client = BrokenClient()
    reranker = LLMReranker(client=client, cache=None, concurrency=4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bug in the client"):  # not an ExceptionGroup
        reranker.rerank(nodes_of(list(PASSAGES[:3])), QUERY)
    # The content-free request and two passages were left in flight: all cancelled and
    # awaited, so their request slots are free again.
    assert client.started == 4 and client.cancelled == 3

"""LlamaIndex's TokenCountingHandler sees the LLM reranker's tokens, whichever door it judges
through: ``base_url`` (the reranker emits the LLM events itself, with the endpoint's usage) or
``from_llm`` (the LlamaIndex LLM emits them; the reranker adds none, so nothing is counted
twice). The counts equal the report's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply, Request, completion, server_error
from llama_index.core import Settings
from llama_index.core.callbacks import CallbackManager, CBEventType, TokenCountingHandler
from llama_index.core.llms.mock import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.llms.openai_like import OpenAILike

from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES
from llamaindex_rerankers.llm.server import LocalLLMServer

QUERY = "how do I prune apple trees"
TEXTS = {
    "stock": "Apple Inc. shares fell 2% after the earnings call.",
    "pruning": "Prune apple trees in late winter, while they are dormant.",
    "orchard": "Orchard apple trees need full sun and well-drained soil.",
}
F = len(CONTENT_FREE_PASSAGES)


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=k, text=t), score=1.0) for k, t in TEXTS.items()]


def judge(request: Request) -> Reply:
    passage = re.findall(r"<passage>(.*?)</passage>", request.prompt, re.DOTALL)[-1].strip()
    code = "C" if "Prune" in passage else "A"
    prompt_tokens = 50 + len(passage)  # differs per passage: the sums are checked
    if not request.wants_logprobs:
        return Reply(body=completion(code, prompt_tokens=prompt_tokens))
    top = [(code, -0.1), ("B", -2.5), ("A" if code == "C" else "C", -4.0)]
    return Reply(body=completion(code, logprobs=[(code, -0.1, top)], prompt_tokens=prompt_tokens))


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=judge) as server:
        yield server


def counted(handler: TokenCountingHandler) -> tuple[int, int, int]:
    return (
        len(handler.llm_token_counts),
        handler.prompt_llm_token_count,
        handler.completion_llm_token_count,
    )


def reported(report: Any) -> tuple[int, int, int]:
    return (report.llm.calls, report.llm.prompt_tokens, report.llm.completion_tokens)


def test_the_base_url_door_emits_llm_events_with_the_endpoints_usage(fake: FakeOpenAI) -> None:
    handler = TokenCountingHandler()
    reranker = LLMReranker(
        model="m", base_url=fake.url + "/v1", cache=None,
        callback_manager=CallbackManager([handler]),
    )  # fmt: skip
    result = reranker.rerank(nodes(), QUERY)
    assert counted(handler) == reported(result.report)
    assert reported(result.report) == (3 + F, sum(50 + len(t) for t in TEXTS.values()) + 50 * F,
                                       3 + F)  # fmt: skip
    event = handler.llm_token_counts[0]
    assert "<passage>" in event.prompt and event.completion.startswith("assistant: ")


async def test_async_calls_are_counted_too(fake: FakeOpenAI) -> None:
    handler = TokenCountingHandler()
    reranker = LLMReranker(
        model="m", base_url=fake.url + "/v1", cache=None, calibration="none",
        callback_manager=CallbackManager([handler]),
    )  # fmt: skip
    first = await reranker.arerank(nodes(), QUERY)
    second = await reranker.arerank(nodes()[:2], "another query")
    total = [a + b for a, b in zip(reported(first.report), reported(second.report), strict=True)]
    assert list(counted(handler)) == total and total[0] == 5


def test_a_failed_request_ends_its_event_with_the_exception(fake: FakeOpenAI) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    class Recorder(TokenCountingHandler):
        def on_event_end(self, event_type: CBEventType, payload: Any = None,
                         event_id: str = "", **kwargs: Any) -> None:  # fmt: skip
            if event_type == CBEventType.LLM:
                events.append((event_id, dict(payload or {})))
            super().on_event_end(event_type, payload, event_id, **kwargs)

    fake.sticky = server_error(500)
    handler = Recorder()
    reranker = LLMReranker(
        model="m", base_url=fake.url + "/v1", cache=None, calibration="none", max_retries=0,
        callback_manager=CallbackManager([handler]),
    )  # fmt: skip
    out, report = reranker.rerank(nodes()[:1], QUERY)
    assert out[0].score is None and report.llm is not None and report.llm.failures == 1
    assert len(events) == 1 and "exception" in {str(k.value) for k in events[0][1]}
    assert counted(handler) == (1, 0, 0)


def test_from_llm_is_counted_once_when_the_llm_and_the_reranker_share_a_manager(
    fake: FakeOpenAI,
) -> None:
    handler = TokenCountingHandler()
    manager = CallbackManager([handler])
    llm = OpenAILike(
        model="m", api_base=fake.url + "/v1", api_key="x", is_chat_model=True,
        callback_manager=manager,
    )  # fmt: skip
    reranker = LLMReranker.from_llm(llm, cache=None, callback_manager=manager)
    result = reranker.rerank(nodes(), QUERY)
    assert counted(handler) == reported(result.report)


class FixedRetriever(BaseRetriever):
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return nodes()


def test_settings_callback_manager_counts_the_reranker_in_a_query_engine(
    fake: FakeOpenAI,
) -> None:
    """A query engine hands Settings.callback_manager to its postprocessors."""
    handler = TokenCountingHandler()
    previous = Settings._callback_manager
    Settings.callback_manager = CallbackManager([handler])
    try:
        reranker = LLMReranker(model="m", base_url=fake.url + "/v1", cache=None, top_n=1)
        postprocessors: list[BaseNodePostprocessor] = [reranker]
        engine = RetrieverQueryEngine(
            retriever=FixedRetriever(),
            response_synthesizer=NoText(llm=MockLLM()),
            node_postprocessors=postprocessors,
        )
        response = engine.query(QUERY)
    finally:
        Settings._callback_manager = previous
    assert response.source_nodes[0].node.node_id == "pruning"
    report = reranker.last_report
    assert report is not None and counted(handler) == reported(report)


@pytest.mark.server
def test_the_real_server_tokens_are_counted_as_reported(llm_server: LocalLLMServer) -> None:
    handler = TokenCountingHandler()
    reranker = LLMReranker(
        model=llm_server.model, base_url=llm_server.base_url, cache=None, timeout=120.0,
        callback_manager=CallbackManager([handler]),
    )  # fmt: skip
    result = reranker.rerank(nodes(), QUERY)
    calls, prompt, completion_tokens = reported(result.report)
    assert calls == 3 + F and prompt > 100 and completion_tokens == calls  # one token each
    assert counted(handler) == (calls, prompt, completion_tokens)

"""LLMReranker.from_llm: any LlamaIndex LLM judges, with logprobs where its class returns them.

* a scripted CustomLLM (fixed text, no logprobs): the text path;
* OpenAILike against the fake server: the logprobs path, and what it sends;
* OpenAILike against the real llama.cpp server: the logprobs path end to end.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply, Request, good, logprobs_rejected, text_completion
from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.llms.openai_like import OpenAILike

from llamaindex_rerankers.endpoints.llamacpp import LocalLLMServer
from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES
from llamaindex_rerankers.llm.capabilities import logprobs_supported, record_logprobs_support
from llamaindex_rerankers.llm.llamaindex_client import LlamaIndexChatClient

QUERY = "how do I prune apple trees"
TEXTS = {
    "stock": "Apple Inc. shares fell 2% after the earnings call.",
    "pruning": "Prune apple trees in late winter, while they are dormant.",
    "orchard": "Orchard apple trees need full sun and well-drained soil.",
}

#: Judgements calibration adds to a call (its content-free passages).
F = len(CONTENT_FREE_PASSAGES)


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=k, text=t), score=1.0) for k, t in TEXTS.items()]


class KeywordLLM(CustomLLM):
    """Answers from the last passage of the prompt: 'Prune' -> C, 'Orchard' -> B, else A; or
    raises when ``fail`` is set."""

    fail: bool = False
    prompts: list[str] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="keyword-judge", is_chat_model=False)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        assert not kwargs, "a generic LLM gets no OpenAI options"
        self.prompts.append(prompt)
        if self.fail:
            raise ConnectionError("the model is down")
        passage = re.findall(r"<passage>(.*?)</passage>", prompt, re.DOTALL)[-1]
        code = "C" if "Prune" in passage else "B" if "Orchard" in passage else "A"
        return CompletionResponse(text=f"{code}")

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        raise NotImplementedError


def test_a_custom_llm_judges_through_the_text_path() -> None:
    llm = KeywordLLM(prompts=[])
    reranker = LLMReranker.from_llm(llm, cache=None, calibration="none")
    assert reranker.model == "keyword-judge"
    assert reranker.namespace == "llamaindex:KeywordLLM|keyword-judge"
    out, report = reranker.rerank(nodes(), QUERY)
    assert [n.node.node_id for n in out] == ["pruning", "orchard", "stock"]
    assert [n.score for n in out] == [1.0, 0.5, 0.0]
    assert {n.node.metadata["rerank_source"] for n in out} == {"text"}
    assert report.llm is not None and (report.llm.calls, report.llm.failures) == (3, 0)
    assert len(llm.prompts) == 3


async def test_a_failing_llm_labels_unknown_and_keeps_every_node() -> None:
    reranker = LLMReranker.from_llm(KeywordLLM(fail=True, prompts=[]), cache=None)
    out, report = await reranker.arerank(nodes(), QUERY)
    assert [n.node.node_id for n in out] == list(TEXTS)
    assert all(n.score is None for n in out)
    assert "the model is down" in out[0].node.metadata["rerank_error"]
    # every request failed, calibration's too; three passages ended unknown
    assert report.llm is not None and (report.llm.failures, report.llm.unknown) == (3 + F, 3)
    assert report.llm.uncalibrated == 0  # nothing was judged, so nothing left uncalibrated


def test_an_llm_object_is_not_written_by_to_dict() -> None:
    llm = KeywordLLM(prompts=[])
    reranker = LLMReranker.from_llm(llm, top_n=2)
    with pytest.raises(ValueError, match=r"llm=\.\.\."):
        reranker.to_dict()
    loaded = LLMReranker.from_dict(reranker.to_dict(exclude={"client"}), llm=llm)
    assert loaded.top_n == 2 and isinstance(loaded.client, LlamaIndexChatClient)
    with pytest.raises(ValueError, match="not both"):
        LLMReranker(llm=llm, client=loaded.client)
    with pytest.raises(TypeError, match="LlamaIndex LLM"):
        LLMReranker.from_llm("gpt-4o-mini")


def passage_of(request: Request) -> str:
    return str(re.findall(r"<passage>(.*?)</passage>", request.prompt, re.DOTALL)[-1])


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    def judge(request: Request) -> Any:
        passage = passage_of(request)
        code = "C" if "Prune" in passage else "B" if "Orchard" in passage else "A"
        others = [c for c in "ABC" if c != code]
        return good(code, top=[(code, -0.2), (others[0], -2.0), (others[1], -3.0)])(request)

    with FakeOpenAI(default=judge) as server:
        yield server
    record_logprobs_support(("llamaindex:OpenAILike", "fake-like"), None)


def openai_like(base_url: str, model: str, **options: Any) -> OpenAILike:
    return OpenAILike(model=model, api_base=base_url, api_key="none", is_chat_model=True, **options)


def test_openai_like_gives_logprobs(fake: FakeOpenAI) -> None:
    reranker = LLMReranker.from_llm(
        openai_like(fake.url + "/v1", "fake-like"), cache=None, calibration="none"
    )
    out, report = reranker.rerank(nodes(), QUERY)
    assert [n.node.node_id for n in out] == ["pruning", "orchard", "stock"]
    assert {n.node.metadata["rerank_source"] for n in out} == {"logprobs"}
    assert 0.0 < out[-1].score < out[0].score < 1.0  # type: ignore[operator]
    assert report.llm is not None and report.llm.calls == 3 and report.llm.prompt_tokens == 126
    body = fake.chat_requests()[0].body
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (True, 10, 1)
    assert reranker.namespace == "llamaindex:OpenAILike|fake-like"


def test_openai_like_on_an_endpoint_that_rejects_logprobs(fake: FakeOpenAI) -> None:
    fake.sticky = logprobs_rejected(then=good("C"))
    reranker = LLMReranker.from_llm(
        openai_like(fake.url + "/v1", "fake-like", max_retries=0), calibration="none"
    )
    out, report = reranker.rerank(nodes()[:1], QUERY)
    assert out[0].node.metadata["rerank_source"] == "text" and out[0].score == 1.0
    assert report.llm is not None and (report.llm.calls, report.llm.failures) == (2, 0)
    assert logprobs_supported(("llamaindex:OpenAILike", "fake-like")) is False


@pytest.mark.server
def test_openai_like_on_the_real_llama_cpp_server(llm_server: LocalLLMServer) -> None:
    llm = openai_like(llm_server.base_url, llm_server.model, timeout=120.0)
    reranker = LLMReranker.from_llm(llm, cache=None)
    two = nodes()[:2]
    out, report = reranker.rerank(two, QUERY)
    assert sorted(n.node.node_id for n in out) == ["pruning", "stock"]
    for n in out:
        assert n.node.metadata["rerank_source"] == "logprobs"
        assert 0.0 <= n.score <= 1.0  # type: ignore[operator]
    assert report.llm is not None and report.llm.calls == 2 + F and report.llm.prompt_tokens > 100


# -- what a judgement may generate, whatever the LLM's own settings --------------------------


def test_the_llms_own_max_tokens_does_not_reach_the_judge(fake: FakeOpenAI) -> None:
    """OpenAILike(max_tokens=256) and max_tokens in additional_kwargs both win over per-call
    options in LlamaIndex: the reranker bounds a copy of the LLM instead, and leaves the
    user's LLM as it was."""
    llm = openai_like(
        fake.url + "/v1", "fake-like", max_tokens=256, additional_kwargs={"max_tokens": 512}
    )
    reranker = LLMReranker.from_llm(llm, cache=None, calibration="none")
    out = reranker.rerank(nodes(), QUERY).nodes
    assert [n.node.node_id for n in out] == ["pruning", "orchard", "stock"]
    assert [r.body["max_tokens"] for r in fake.chat_requests()] == [1, 1, 1]
    assert (llm.max_tokens, llm.additional_kwargs) == (256, {"max_tokens": 512})
    # text mode asks for text_max_tokens
    fake.requests.clear()
    LLMReranker.from_llm(llm, cache=None, use_logprobs=False, text_max_tokens=5).rerank(
        nodes(), QUERY
    )
    assert [r.body["max_tokens"] for r in fake.chat_requests()] == [5, 5, 5]


def completion_judge(request: Request) -> Reply:
    """/v1/completions: the label from the last passage of the plain-text prompt."""
    passage = passage_of(request)
    return Reply(body=text_completion("C" if "Prune" in passage else "A"))


def test_a_completion_model_is_bounded_and_warned_about(fake: FakeOpenAI) -> None:
    """OpenAILike's default is_chat_model=False sends the judge prompt to /v1/completions as
    plain text, without logprobs: warned at construction, and bounded all the same."""
    fake.default = completion_judge
    llm = OpenAILike(model="fake-like", api_base=fake.url + "/v1", api_key="x")
    with pytest.warns(UserWarning, match="is_chat_model=True"):
        reranker = LLMReranker.from_llm(llm, cache=None)
    out = reranker.rerank(nodes(), QUERY).nodes
    sent = [r for r in fake.requests if r.path.endswith("/completions")]
    # one token asked for (8 only when an answer is cut short), calibration's passage too
    assert len(sent) == 3 + F and {r.body["max_tokens"] for r in sent} == {1}
    assert "prompt" in sent[0].body and "messages" not in sent[0].body
    assert out[0].node.node_id == "pruning" and out[0].node.metadata["rerank_source"] == "text"


class BoundedLLM(CustomLLM):
    """A generic LLM with a max_tokens field of its own (as Anthropic's, Gemini's, MockLLM's
    and many others have): it records the value it had at each call."""

    max_tokens: int | None = None
    seen: list[int | None] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="bounded", num_output=self.max_tokens or -1)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.seen.append(self.max_tokens)
        return CompletionResponse(text="C")

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        raise NotImplementedError


def test_a_generic_llm_is_bounded_through_its_own_max_tokens_field() -> None:
    llm = BoundedLLM(max_tokens=4096, seen=[])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an LLM the reranker can bound is not warned about
        reranker = LLMReranker.from_llm(llm, cache=None, calibration="none")
    reranker.rerank(nodes(), QUERY)
    # no logprobs from this class: one token is asked for, and 8 only if it is cut short
    assert llm.seen == [1, 1, 1] and llm.max_tokens == 4096


def test_a_generic_llm_without_a_bound_is_warned_about_by_name() -> None:
    with pytest.warns(UserWarning, match=r"KeywordLLM.*max_tokens"):
        LLMReranker.from_llm(KeywordLLM(prompts=[]), cache=None)


@pytest.mark.server
@pytest.mark.parametrize("chat", [False, True])
def test_judgements_generate_a_few_tokens_on_the_real_server(
    llm_server: LocalLLMServer, chat: bool
) -> None:
    """The issue's two set-ups: OpenAILike as it comes (a completion model, no max_tokens) and
    as a chat model with its own max_tokens=256. Each judgement generates at most
    text_max_tokens (8) tokens, one where logprobs are read."""
    llm = OpenAILike(
        model=llm_server.model, api_base=llm_server.base_url, api_key="x", timeout=120.0,
        is_chat_model=chat, max_tokens=256 if chat else None,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the completion model's warning is tested above
        reranker = LLMReranker.from_llm(llm, cache=None)
    started = time.monotonic()
    out, report = reranker.rerank(nodes(), QUERY)
    assert time.monotonic() - started < 120  # the issue: 653 s
    assert len(out) == 3 and report.llm is not None
    assert 0 < report.llm.completion_tokens <= report.llm.calls * (1 if chat else 8)
    if chat:
        assert {n.node.metadata["rerank_source"] for n in out} == {"logprobs"}

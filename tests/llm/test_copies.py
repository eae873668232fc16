"""Copies and pickles of an LLMReranker: LlamaIndex and user code copy postprocessors
(``copy.copy``, ``copy.deepcopy``, ``model_copy``) and multiprocessing pickles them.

What must hold:

* the endpoint survives: a reranker made with ``from_llm`` / ``client=`` keeps its LLM or
  client, one made with ``base_url`` keeps its URL; never a silent switch to OpenAI's API;
* a copy never fails, works (reranks), and has settings of its own; a copy with a changed
  endpoint talks to the new one;
* the heavy parts are shared, not copied: the cache, the LLM object, the callback manager;
* a copy and its original used at once, from threads or tasks, give what each gives alone.

The endpoints are the fake OpenAI server (a deterministic judge that records every request).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import pickle
import re
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply, Request, completion
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.llms.openai_like import OpenAILike

from llamaindex_rerankers.llm import LLMReranker, MemoryCache
from llamaindex_rerankers.llm.llamaindex_client import LlamaIndexChatClient
from llamaindex_rerankers.llm.openai_client import OpenAIChatClient
from llamaindex_rerankers.llm.types import ChatResult

QUERY = "how do I prune apple trees"
TEXTS = {
    "stock": "Apple Inc. shares fell 2% after the earnings call.",
    "pruning": "Prune apple trees in late winter, while they are dormant.",
    "orchard": "Orchard apple trees need full sun and well-drained soil.",
    "pie": "Apple pie wants cold butter and a hot oven.",
}
PLAIN: dict[str, Any] = {"calibration": "none", "retrieval_weight": 0.0}


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=k, text=t), score=1.0) for k, t in TEXTS.items()]


def keyword_judge(request: Request) -> Reply:
    passage = re.findall(r"<passage>(.*?)</passage>", request.prompt, re.DOTALL)[-1]
    code = "C" if "Prune" in passage else "B" if "Orchard" in passage else "A"
    others = [c for c in "ABC" if c != code]
    top = [(code, -0.2), (others[0], -2.0), (others[1], -3.0)]
    if not request.wants_logprobs:
        return Reply(body=completion(code), delay=0.005)
    return Reply(body=completion(code, logprobs=[(code, -0.2, top)]), delay=0.005)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=keyword_judge) as server:
        yield server


@pytest.fixture
def other_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=keyword_judge) as server:
        yield server


def like(fake: FakeOpenAI) -> OpenAILike:
    return OpenAILike(
        model="my-model", api_base=fake.url + "/v1", api_key="x", is_chat_model=True,
        max_retries=0,
    )  # fmt: skip


def order(result: Any) -> list[str]:
    return [n.node.node_id for n in result.nodes]


EXPECTED = ["pruning", "orchard", "stock", "pie"]


# -- pickle --------------------------------------------------------------------------------


def test_a_pickled_from_llm_reranker_keeps_its_llm(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue: it came back as an OpenAIChatClient for https://api.openai.com/v1, which
    with OPENAI_API_KEY set would send the passages to a third party."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-would-be-used")
    reranker = LLMReranker.from_llm(like(fake), cache=None, top_n=3, **PLAIN)
    loaded = pickle.loads(pickle.dumps(reranker))
    assert isinstance(loaded.client, LlamaIndexChatClient)
    assert loaded.client.llm.api_base == fake.url + "/v1"
    assert loaded.namespace == reranker.namespace == "llamaindex:OpenAILike|my-model"
    assert loaded.top_n == 3
    before = len(fake.chat_requests())
    assert order(loaded.rerank(nodes(), QUERY)) == EXPECTED[:3]
    assert len(fake.chat_requests()) == before + 4  # judged by the user's endpoint


def test_a_pickled_base_url_reranker_keeps_its_endpoint(fake: FakeOpenAI) -> None:
    reranker = LLMReranker(model="m", base_url=fake.url + "/v1", cache=None, **PLAIN)
    reranker.rerank(nodes(), QUERY)  # a live client, loop and limiter are not pickled
    loaded = pickle.loads(pickle.dumps(reranker))
    assert loaded.client.identity == (fake.url + "/v1", "m")
    assert order(loaded.rerank(nodes(), QUERY)) == EXPECTED


def test_a_client_that_cannot_be_pickled_fails_the_pickle_with_the_fix() -> None:
    class LockedClient:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        identity = ("http://locked/v1", "locked")

        async def achat(self, messages: Any, **options: Any) -> ChatResult:
            raise AssertionError("not called")

    reranker = LLMReranker(client=LockedClient(), model="locked")
    with pytest.raises(TypeError, match=r"client=") as raised:
        pickle.dumps(reranker)
    assert "LockedClient" in str(raised.value)


def test_a_given_openai_client_pickles_as_its_settings(fake: FakeOpenAI) -> None:
    client = OpenAIChatClient(model="m", base_url=fake.url + "/v1", api_key="k", timeout=7.0)
    reranker = LLMReranker(client=client, model="m", cache=None, **PLAIN)
    reranker.rerank(nodes(), QUERY)  # its connection pool exists now
    loaded = pickle.loads(pickle.dumps(reranker)).client
    assert isinstance(loaded, OpenAIChatClient) and loaded is not client
    assert (loaded.identity, loaded.timeout) == ((fake.url + "/v1", "m"), 7.0)
    assert order(reranker.model_copy().rerank(nodes(), QUERY)) == EXPECTED


def test_the_cache_objects_pickle_as_their_configuration(tmp_path: Any) -> None:
    sqlite = LLMReranker(model="m", cache=str(tmp_path / "j.sqlite"))
    assert pickle.loads(pickle.dumps(sqlite)).judgement_cache.path == str(tmp_path / "j.sqlite")
    memory = LLMReranker(model="m", cache=MemoryCache(maxsize=7))
    loaded = pickle.loads(pickle.dumps(memory)).judgement_cache
    assert isinstance(loaded, MemoryCache) and loaded.maxsize == 7 and len(loaded) == 0


# -- shallow copies and model_copy -------------------------------------------------------


@pytest.mark.parametrize("how", ["copy", "model_copy", "deepcopy", "model_copy_deep"])
def test_a_copy_keeps_the_llm_object_and_works(fake: FakeOpenAI, how: str) -> None:
    reranker = LLMReranker.from_llm(like(fake), **PLAIN)
    reranker.rerank(nodes(), QUERY)
    copied = make_copy(reranker, how)
    assert isinstance(copied.client, LlamaIndexChatClient)
    assert copied.client.llm is reranker.client.llm  # shared, not copied
    result = copied.rerank(nodes(), QUERY)
    assert order(result) == EXPECTED
    assert result.report.llm is not None and result.report.llm.cache_hits == 4  # shared cache


def make_copy(reranker: LLMReranker, how: str, **update: Any) -> LLMReranker:
    if how == "copy":
        assert not update
        return copy.copy(reranker)
    if how == "deepcopy":
        assert not update
        return copy.deepcopy(reranker)
    return reranker.model_copy(update=update or None, deep=how == "model_copy_deep")


@pytest.mark.parametrize("deep", [False, True])
def test_model_copy_to_another_endpoint_talks_to_it(
    fake: FakeOpenAI, other_fake: FakeOpenAI, deep: bool
) -> None:
    reranker = LLMReranker(model="m", base_url=fake.url + "/v1", cache=None, **PLAIN)
    reranker.rerank(nodes(), QUERY)
    moved = reranker.model_copy(update={"base_url": other_fake.url + "/v1"}, deep=deep)
    assert moved.client.identity == (other_fake.url + "/v1", "m")
    assert order(moved.rerank(nodes(), QUERY)) == EXPECTED
    assert len(other_fake.chat_requests()) == 4 and len(fake.chat_requests()) == 4
    assert reranker.client.identity == (fake.url + "/v1", "m")


def test_model_copy_with_another_cache_uses_it() -> None:
    reranker = LLMReranker(model="m")
    assert isinstance(reranker.judgement_cache, MemoryCache)
    assert reranker.model_copy(update={"cache": None}).judgement_cache is None
    mine = MemoryCache()
    assert reranker.model_copy(update={"cache": mine}).judgement_cache is mine
    assert isinstance(reranker.judgement_cache, MemoryCache)


# -- deep copies -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deepcopy", "model_copy_deep"])
def test_a_deep_copy_with_the_default_cache_works_and_is_independent(
    fake: FakeOpenAI, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue: TypeError: cannot pickle '_thread.lock', and 'Exception ignored in
    LoopBoundHttpClient.__del__' from the half-made copies."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    manager = CallbackManager([])
    reranker = LLMReranker(
        model="m", base_url=fake.url + "/v1", callback_manager=manager, top_n=3,
        default_headers={"X-Team": "search"}, **PLAIN,
    )  # fmt: skip
    reranker.rerank(nodes(), QUERY)  # the client, its HTTP pool and the limiter exist now
    copied = make_copy(reranker, how)
    assert copied.judgement_cache is reranker.judgement_cache  # shared, not copied
    assert copied.callback_manager is manager
    copied.top_n = 1
    copied.update_prompts({"judge_prompt": reranker.get_prompts()["judge_prompt"]})
    assert copied.default_headers is not None
    copied.default_headers["X-Team"] = "ads"  # a deep copy: the dict is its own
    assert reranker.top_n == 3 and reranker.default_headers == {"X-Team": "search"}
    assert order(copied.rerank(nodes(), QUERY)) == EXPECTED[:1]
    assert order(reranker.rerank(nodes(), QUERY)) == EXPECTED[:3]
    del copied
    gc.collect()
    assert unraisable == []


def test_a_deep_copy_of_a_never_used_reranker_and_of_a_client_reranker() -> None:
    for reranker in (LLMReranker(model="m"), LLMReranker(model="m", cache=None)):
        copied = copy.deepcopy(reranker)
        assert copied.model == "m" and copied is not reranker
    client = OpenAIChatClient(model="m", base_url="http://127.0.0.1:9/v1")
    given = LLMReranker(client=client, model="m")
    assert copy.deepcopy(given).client is client  # the given object is shared


# -- a copy and its original at once ----------------------------------------------------------


def summary(result: Any) -> Any:
    llm = result.report.llm
    return (
        tuple((n.node.node_id, n.score, n.node.metadata["rerank_label"]) for n in result.nodes),
        llm.judgements,
        llm.calls + llm.cache_hits,
    )


@pytest.mark.parametrize("how", ["copy", "deepcopy", "model_copy_deep"])
def test_a_copy_and_its_original_in_threads_give_what_each_gives_alone(
    fake: FakeOpenAI, how: str
) -> None:
    original = LLMReranker(model="m", base_url=fake.url + "/v1", concurrency=2, **PLAIN)
    copied = make_copy(original, how)
    copied.top_n = 2
    copied.use_logprobs = False  # other settings, other answers: text labels
    queries = [f"{QUERY} {i}" for i in range(6)]
    alone = {
        (which, q): summary(LLMReranker(model="m", base_url=fake.url + "/v1", cache=None,
                                        **settings, **PLAIN).rerank(nodes(), q))
        for which, settings in (("o", {}), ("c", {"top_n": 2, "use_logprobs": False}))
        for q in queries
    }  # fmt: skip
    jobs = [(which, q) for q in queries for which in "oc"] * 2
    with ThreadPoolExecutor(8) as pool:
        got = list(
            pool.map(lambda j: summary((original if j[0] == "o" else copied).rerank(nodes(), j[1])),
                     jobs)
        )  # fmt: skip
    for job, result in zip(jobs, got, strict=True):
        assert result[0] == alone[job][0], job
        assert result[1:] == alone[job][1:], job


async def test_a_copy_and_its_original_in_tasks_give_what_each_gives_alone(
    fake: FakeOpenAI,
) -> None:
    original = LLMReranker(model="m", base_url=fake.url + "/v1", cache=None, **PLAIN)
    await original.arerank(nodes(), QUERY)
    copied = copy.deepcopy(original)
    copied.top_n = 1
    results = await asyncio.gather(
        *(r.arerank(nodes(), f"{QUERY} {i}") for i in range(4) for r in (original, copied))
    )
    for i, result in enumerate(results):
        assert order(result) == (EXPECTED if i % 2 == 0 else EXPECTED[:1])
    assert copied.client is not None and original.top_n is None

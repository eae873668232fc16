"""One LLMReranker instance shared by many threads and asyncio tasks, as in a chatbot backend.

The fake HTTP server judges deterministically from the query *and* the passage (log-probabilities
derived from a hash of both), answers after a short delay, and counts the requests it is
answering at once. So every call has one right answer, which differs between passages and
queries, and the instance's limit is measured where it matters: at the endpoint.

What must hold under load:

* each call's nodes (ids, scores, labels) and report figures equal what the same call gives
  alone, on a fresh reranker: no call sees another's passages, counters or results;
* the endpoint never has more than ``concurrency`` requests of the instance in flight, whatever
  the number of concurrent calls (threads, tasks, or both at once);
* the requests go over one connection pool (at most ``concurrency`` connections).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply, Request, completion
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.llm import DEFAULT_LABELS, LLMReranker
from llamaindex_rerankers.llm.types import ChatResult, GeneratedToken, TokenChoice

CONCURRENCY = 4
REPLY_DELAY = 0.01

QUERIES = (
    "how do I prune apple trees",
    "best soil for cherry trees",
    "apple share price today",
    "how to bake an apple pie",
    "watering young fruit trees",
    "grafting pear onto quince",
)
_SUBJECTS = ("Apple trees", "Cherry orchards", "Pear saplings", "Apple Inc. shares", "Pie crusts",
             "Young peach trees")  # fmt: skip
_CLAIMS = ("need pruning in late winter", "grow best in well-drained loam",
           "fell two percent after earnings", "want cold butter and a hot oven")  # fmt: skip
POOL = tuple(f"{s} {c}." for s in _SUBJECTS for c in _CLAIMS)  # 24 distinct passages

_CODES = tuple(label.code for label in DEFAULT_LABELS)


def _last(pattern: str, text: str) -> str:
    found = re.findall(pattern, text, re.DOTALL)
    assert found, f"no {pattern!r} in the prompt"
    return str(found[-1]).strip()


def hashed_judge(request: Request) -> Reply:
    """Log-probabilities of A, B and C from sha256(query, passage): a fixed, different answer
    for every pair (the judged pair is the last one: worked examples come first)."""
    query = _last(r"Query: (.*?)\n", request.prompt)
    passage = _last(r"<passage>(.*?)</passage>", request.prompt)
    digest = hashlib.sha256(f"{query}\0{passage}".encode()).digest()
    top = sorted(
        ((code, -4.0 * digest[i] / 255) for i, code in enumerate(_CODES)), key=lambda t: -t[1]
    )
    top.append(("The", -6.0))
    chosen, best = top[0]
    if not request.wants_logprobs:
        return Reply(body=completion(chosen), delay=REPLY_DELAY)
    k = int(request.body.get("top_logprobs") or len(top))
    return Reply(body=completion(chosen, logprobs=[(chosen, best, top[:k])]), delay=REPLY_DELAY)


@dataclass(frozen=True)
class Call:
    """One rerank call of the workload: a query and passages of the pool (repeats allowed)."""

    query: str
    passages: tuple[int, ...]

    def nodes(self) -> list[NodeWithScore]:
        return [
            NodeWithScore(node=TextNode(id_=f"p{p}-{k}", text=POOL[p]), score=1.0 - 0.01 * k)
            for k, p in enumerate(self.passages)
        ]


def workload(n_distinct: int, seed: int = 0) -> list[Call]:
    """Distinct calls mixing queries and passages; about one in three repeats a passage."""
    rng = random.Random(seed)
    calls = []
    for i in range(n_distinct):
        passages = rng.sample(range(len(POOL)), rng.randint(4, 7))
        if rng.random() < 0.35:
            passages.append(passages[0])
        calls.append(Call(QUERIES[i % len(QUERIES)], tuple(passages)))
    return calls


Summary = tuple[Any, ...]


def summary(result: Any) -> Summary:
    """What must not depend on other calls: nodes (id, score, label) and the report figures."""
    nodes, report = result
    llm = report.llm
    return (
        tuple((n.node.node_id, n.score, n.node.metadata["rerank_label"]) for n in nodes),
        report.n_candidates,
        llm.judgements,
        llm.calls + llm.cache_hits,
        llm.deduplicated,
        llm.failures,
    )


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=hashed_judge) as server:
        yield server


def make(fake: FakeOpenAI, **settings: Any) -> LLMReranker:
    options: dict[str, Any] = {
        "model": "fake",
        "base_url": fake.url + "/v1",
        "concurrency": CONCURRENCY,
        "cache": None,
        "timeout": 10.0,
        "max_retries": 0,
        # the request machinery under test, not calibration or fusion (test_calibration.py)
        "calibration": "none",
        "retrieval_weight": 0.0,
    }
    options.update(settings)
    return LLMReranker(**options)


def alone(fake: FakeOpenAI, calls: list[Call]) -> dict[Call, Summary]:
    """Each call on a fresh reranker of its own, one at a time; then the fake's counters are
    reset so that only the concurrent run is measured."""
    expected = {call: summary(make(fake).rerank(call.nodes(), call.query)) for call in calls}
    assert len({e[0] for e in expected.values()}) == len(calls)  # the answers do differ
    fake.peak_in_flight = 0
    return expected


def connections_since(fake: FakeOpenAI, start: int) -> int:
    return len({r.peer for r in fake.chat_requests()[start:]})


def test_threads_share_one_limit_and_get_their_own_results(fake: FakeOpenAI) -> None:
    calls = workload(12)
    expected = alone(fake, calls)
    first_request = len(fake.chat_requests())
    reranker = make(fake)
    plans = [random.Random(t).choices(calls, k=20) for t in range(8)]
    start = threading.Barrier(8)

    def worker(plan: list[Call]) -> list[tuple[Call, Summary, int]]:
        start.wait()
        out = []
        for call in plan:
            result = reranker.rerank(call.nodes(), call.query)
            out.append((call, summary(result), result.report.llm.max_in_flight))
        return out

    with ThreadPoolExecutor(8) as pool:
        done = [row for rows in pool.map(worker, plans) for row in rows]

    assert len(done) == 160
    # 8 threads x up to 4 requests each would put 32 on the endpoint: the limit is the instance's.
    assert 2 <= fake.peak_in_flight <= CONCURRENCY
    assert all(1 <= peak <= CONCURRENCY for _, _, peak in done)
    for call, got, _ in done:
        assert got == expected[call]
    assert connections_since(fake, first_request) <= CONCURRENCY


async def test_async_tasks_share_one_limit_and_get_their_own_results(fake: FakeOpenAI) -> None:
    calls = workload(16, seed=1)
    expected = alone(fake, calls)
    first_request = len(fake.chat_requests())
    reranker = make(fake)
    plan = random.Random(2).choices(calls, k=64)

    results = await asyncio.gather(*(reranker.arerank(c.nodes(), c.query) for c in plan))

    assert 2 <= fake.peak_in_flight <= CONCURRENCY
    for call, result in zip(plan, results, strict=True):
        assert summary(result) == expected[call]
    assert connections_since(fake, first_request) <= CONCURRENCY


def test_sync_and_async_callers_at_once_with_a_shared_cache(fake: FakeOpenAI) -> None:
    calls = workload(10, seed=3)
    expected = alone(fake, calls)
    reranker = make(fake, cache="memory")
    plans = [random.Random(10 + t).choices(calls, k=10) for t in range(4)]
    async_plan = random.Random(20).choices(calls, k=32)

    def worker(plan: list[Call]) -> list[tuple[Call, Summary]]:
        return [(c, summary(reranker.rerank(c.nodes(), c.query))) for c in plan]

    async def tasks() -> list[tuple[Call, Summary]]:
        results = await asyncio.gather(*(reranker.arerank(c.nodes(), c.query) for c in async_plan))
        return [(c, summary(r)) for c, r in zip(async_plan, results, strict=True)]

    with ThreadPoolExecutor(4) as pool:
        threads = [pool.submit(worker, plan) for plan in plans]
        done = asyncio.run(tasks())
        for future in threads:
            done += future.result()

    assert len(done) == 72
    assert fake.peak_in_flight <= CONCURRENCY
    for call, got in done:
        # With the cache a judgement is a call or a hit: their sum is what the call asks alone.
        assert got == expected[call]


def test_identical_passages_are_judged_once(fake: FakeOpenAI) -> None:
    reranker = make(fake)
    call = Call(QUERIES[0], (3, 5, 3, 7, 3, 5))
    nodes, report = reranker.rerank(call.nodes(), call.query)
    assert len(fake.chat_requests()) == 3
    llm = report.llm
    assert llm is not None
    assert (llm.judgements, llm.deduplicated, llm.calls) == (3, 3, 3)
    by_passage: dict[str, set[tuple[Any, ...]]] = {}
    for n in nodes:
        meta = n.node.metadata
        key = (n.score, meta["rerank_label"], tuple(sorted(meta["rerank_label_probs"].items())))
        by_passage.setdefault(n.node.get_content(), set()).add(key)
    assert len(nodes) == 6 and len(by_passage) == 3
    assert all(len(judged) == 1 for judged in by_passage.values())  # every copy, the same


def test_a_typo_in_an_argument_names_the_right_one() -> None:
    with pytest.raises(ValueError, match=r"'concurency' -> 'concurrency'"):
        LLMReranker(concurency=4)


async def test_cancelling_a_call_frees_its_request_slots(fake: FakeOpenAI) -> None:
    def slow_for_pie(request: Request) -> Reply:
        reply = hashed_judge(request)
        if "Pie crusts" in _last(r"<passage>(.*?)</passage>", request.prompt):
            return Reply(reply.status, reply.body, reply.headers, 5.0, reply.content_type)
        return reply

    fake.default = slow_for_pie
    reranker = make(fake, concurrency=1)
    hanging = asyncio.ensure_future(reranker.arerank(Call(QUERIES[0], (16,)).nodes(), QUERIES[0]))
    while not fake.in_flight:
        await asyncio.sleep(0.01)
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    # The cancelled call's request was cancelled on the background loop and gave its slot back.
    start = time.monotonic()
    _, report = await reranker.arerank(Call(QUERIES[0], (0, 1)).nodes(), QUERIES[0])
    assert report.llm is not None and report.llm.calls == 2 and report.llm.failures == 0
    assert time.monotonic() - start < 2.0


class SlowForPie:
    """A ChatClient that answers B at once, except for pie passages: those take 1.5 s and
    ignore the deadline (a request the reranker cannot cut short)."""

    identity = ("scripted://slow", "slow")

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def achat(self, messages: Any, **options: Any) -> ChatResult:
        if "Pie crusts" in messages[-1]["content"]:
            self.started.set()
            await asyncio.sleep(1.5)
        top = (TokenChoice("B", -0.1), TokenChoice("A", -2.5))
        return ChatResult("B", (GeneratedToken("B", -0.1, top),), 10, 1, attempts=1)


def test_the_deadline_counts_the_wait_for_a_request_slot() -> None:
    client = SlowForPie()
    reranker = LLMReranker(
        client=client, concurrency=1, deadline=0.5, cache=None, calibration="none"
    )

    async def main() -> tuple[Any, float]:
        busy = asyncio.ensure_future(reranker.arerank(Call(QUERIES[0], (16,)).nodes(), "q"))
        while not client.started.is_set():
            await asyncio.sleep(0.01)
        start = time.monotonic()
        result = await reranker.arerank(Call(QUERIES[1], (0, 1)).nodes(), QUERIES[1])
        waited = time.monotonic() - start
        await busy
        return result, waited

    (nodes, report), waited = asyncio.run(main())
    assert waited < 1.0  # not held up until the slow request ends
    assert [n.node.metadata["rerank_label"] for n in nodes] == ["unknown", "unknown"]
    assert "request slots" in nodes[0].node.metadata["rerank_error"]
    assert report.llm is not None and (report.llm.calls, report.llm.failures) == (0, 2)

"""One CascadeReranker (the real cross-encoder, then the LLM judge behind the fake server) shared
by many threads and asyncio tasks: every call gets exactly what the same call gets alone, and the
LLM stage keeps the instance-wide request limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from test_concurrency import CONCURRENCY, Call, hashed_judge, workload

from llamaindex_rerankers import CascadeReranker, CrossEncoderReranker, LLMReranker

KEEP = 3


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=hashed_judge) as server:
        yield server


def cascade(fake: FakeOpenAI, ce_model_path: str) -> CascadeReranker:
    return CascadeReranker(
        first=CrossEncoderReranker(model=ce_model_path, max_length=64, batch_size=8),
        second=LLMReranker(
            model="fake",
            base_url=fake.url + "/v1",
            concurrency=CONCURRENCY,
            cache=None,
            timeout=10.0,
            max_retries=0,
        ),
        keep=KEEP,
    )


def summary(result: Any) -> tuple[Any, ...]:
    nodes, report = result
    return (
        tuple(
            (
                n.node.node_id,
                n.score,
                n.node.metadata.get("rerank_label"),
                n.node.metadata.get("rerank_stage1_rank"),
            )
            for n in nodes
        ),
        report.n_candidates,
        report.n_pruned,
        report.cross_encoder.pairs,
        report.llm.judgements,
        report.llm.failures,
    )


def alone(reranker: CascadeReranker, calls: list[Call]) -> dict[Call, tuple[Any, ...]]:
    return {c: summary(reranker.rerank(c.nodes(), c.query)) for c in dict.fromkeys(calls)}


def test_8_threads_x_20_calls_get_what_each_call_gets_alone(
    fake: FakeOpenAI, ce_model_path: str
) -> None:
    reranker = cascade(fake, ce_model_path)
    calls = workload(12, seed=1)
    expected = alone(reranker, calls)
    fake.peak_in_flight = 0  # measure the concurrent phase only

    def worker(t: int) -> list[str]:
        wrong = []
        for i in range(20):
            call = calls[(t * 20 + i) % len(calls)]
            result = reranker.rerank(call.nodes(), call.query)
            if summary(result) != expected[call]:
                wrong.append(f"thread {t} call {i}")
            if reranker.last_report is not result.report:
                wrong.append(f"thread {t} call {i}: last_report is not this call's")
        return wrong

    with ThreadPoolExecutor(max_workers=8) as pool:
        wrong = [w for ws in pool.map(worker, range(8)) for w in ws]
    assert wrong == []
    assert fake.peak_in_flight <= CONCURRENCY


def test_64_concurrent_tasks_get_what_each_call_gets_alone(
    fake: FakeOpenAI, ce_model_path: str
) -> None:
    reranker = cascade(fake, ce_model_path)
    calls = workload(16, seed=2)
    expected = alone(reranker, calls)
    fake.peak_in_flight = 0  # measure the concurrent phase only

    async def main() -> list[tuple[Any, ...]]:
        tasks = [reranker.arerank(c.nodes(), c.query) for c in (calls * 4)[:64]]
        return [summary(r) for r in await asyncio.gather(*tasks)]

    got = asyncio.run(main())
    assert got == [expected[c] for c in (calls * 4)[:64]]
    assert fake.peak_in_flight <= CONCURRENCY

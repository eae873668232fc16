"""One CrossEncoderReranker (and one shared model) serving many threads and asyncio tasks.

Every concurrent call must give exactly what the same call gives alone: the same node ids in the
same order, the same scores, logits and ``rerank_truncated`` flags, and the same report. The calls
mix short pairs with pairs longer than ``max_length=64`` tokens, so truncation (and the count of
truncated pairs) is exercised while other calls are inside the model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers import cross_encoder as ce_module
from llamaindex_rerankers.cross_encoder import CrossEncoderReranker
from llamaindex_rerankers.cross_encoder_backends import CACHE_ENV
from llamaindex_rerankers.types import RerankResult

pytestmark = pytest.mark.slow

CORPUS = Path(ce_module.__file__).parent / "sample_corpus"
MAX_LENGTH = 64

Case = tuple[str, list[NodeWithScore]]
#: What a call gave: (node id, score, logit, truncated) per output node, then n_candidates and
#: the cross-encoder's pairs / truncated / deduplicated.
Signature = tuple[tuple[tuple[str, float | None, float, bool], ...], int, int, int, int]


def _passages() -> dict[str, tuple[str, str]]:
    """(short, long) text of each sample document: its title line, and its first ~700 characters
    (well over 64 tokens with any query)."""
    out = {}
    for path in sorted(CORPUS.glob("*.md"))[:8]:
        text = path.read_text(encoding="utf-8")
        title = text.splitlines()[0].lstrip("# ").strip()
        out[path.stem] = (title, " ".join(text[:700].split()))
    return out


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    """Eight calls: 3 to 5 candidates each, short and long passages mixed, some repeated."""
    docs = _passages()
    names = list(docs)
    queries = [
        "how to prune apple trees",
        "apple stock earnings",
        "when should fruit trees be pruned in winter",
        "pests in an orchard",
    ]
    out: list[Case] = []
    for c in range(8):
        picked = [names[(c + k) % len(names)] for k in range(3 + c % 3)]
        nodes = []
        for k, name in enumerate(picked):
            short, long = docs[name]
            # Case 2 is all short (nothing truncated); the others mix long and short texts.
            text = short if c == 2 or (c + k) % 2 else long
            nodes.append(
                NodeWithScore(node=TextNode(id_=f"c{c}-{k}", text=text), score=1.0 / (k + 1))
            )
        if c % 4 == 3:  # a repeated passage: scored once, reported as deduplicated
            first = nodes[0].node.get_content()
            nodes.append(NodeWithScore(node=TextNode(id_=f"c{c}-dup", text=first), score=0.01))
        out.append((queries[c % len(queries)], nodes))
    return out


def _signature(result: RerankResult) -> Signature:
    usage = result.report.cross_encoder
    assert usage is not None
    nodes = tuple(
        (
            n.node.node_id,
            n.score,
            n.node.metadata["rerank_logit"],
            n.node.metadata["rerank_truncated"],
        )
        for n in result.nodes
    )
    return nodes, result.report.n_candidates, usage.pairs, usage.truncated, usage.deduplicated


def _alone(reranker: CrossEncoderReranker, cases: list[Case]) -> list[Signature]:
    """Each case's result made alone, one call after another."""
    return [_signature(reranker.rerank(nodes, query)) for query, nodes in cases]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh on-disk cache of exported models for this module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("rerankers-cache")
        mp.setenv(CACHE_ENV, str(path))
        yield path


#: The paths a shared instance must serve concurrently: the exact float32 torch path, the
#: default (precision="auto": bfloat16 on this CPU), and ONNX Runtime float32 and int8.
CONFIGS = {
    "float32": {"precision": "float32"},
    "default": {},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx", "quantize": "int8"},
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def reranker(
    request: pytest.FixtureRequest, ce_model_path: str, onnx_cache: Path
) -> CrossEncoderReranker:
    return CrossEncoderReranker(
        model=ce_model_path, max_length=MAX_LENGTH, batch_size=4, **CONFIGS[request.param]
    )


@pytest.fixture(scope="module")
def expected(reranker: CrossEncoderReranker, cases: list[Case]) -> list[Signature]:
    want = _alone(reranker, cases)
    # The premise of these tests: some calls truncate, some do not, some deduplicate.
    truncated = [sig[3] for sig in want]
    assert 0 in truncated and max(truncated) >= 2
    assert any(sig[4] for sig in want)
    return want


def _run_threads(n_threads: int, calls: int, work: Callable[[int, int], None]) -> list[str]:
    """Run ``work(thread, call)`` from ``n_threads`` threads started together; the failures."""
    start = threading.Barrier(n_threads)
    failures: list[str] = []

    def worker(t: int) -> None:
        start.wait()
        for j in range(calls):
            try:
                work(t, j)
            except Exception as exc:  # every failure is counted, not just the first
                failures.append(f"thread {t} call {j}: {type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return failures


def test_one_instance_serves_8_threads_x_20_calls_exactly_as_alone(
    reranker: CrossEncoderReranker, cases: list[Case], expected: list[Signature]
) -> None:
    def work(t: int, j: int) -> None:
        c = (t * 3 + j) % len(cases)  # neighbouring threads run different cases at once
        query, nodes = cases[c]
        result = reranker.rerank(nodes, query)
        assert reranker.last_report is result.report, "last_report is another call's report"
        assert _signature(result) == expected[c], f"case {c} differs from the call made alone"

    failures = _run_threads(8, 20, work)
    assert not failures, f"{len(failures)} of 160 calls failed:\n" + "\n".join(failures[:8])


async def test_64_concurrent_tasks_get_exactly_what_they_get_alone(
    reranker: CrossEncoderReranker, cases: list[Case], expected: list[Signature]
) -> None:
    async def one(i: int) -> None:
        c = i % len(cases)
        query, nodes = cases[c]
        result = await reranker.arerank(nodes, query)
        assert reranker.last_report is result.report, "last_report is another task's report"
        assert _signature(result) == expected[c], f"case {c} differs from the call made alone"

    outcomes = await asyncio.gather(*(one(i) for i in range(64)), return_exceptions=True)
    failures = [f"task {i}: {o!r}"[:300] for i, o in enumerate(outcomes) if o is not None]
    assert not failures, f"{len(failures)} of 64 tasks failed:\n" + "\n".join(failures[:8])


def test_two_instances_sharing_the_model_from_threads_at_once(
    ce_model_path: str, cases: list[Case]
) -> None:
    a = CrossEncoderReranker(model=ce_model_path, max_length=MAX_LENGTH, batch_size=4)
    b = CrossEncoderReranker(model=ce_model_path, max_length=MAX_LENGTH, batch_size=2, top_n=2)
    assert a.load() is b.load()  # one model, process-wide
    want = {id(a): _alone(a, cases), id(b): _alone(b, cases)}

    def work(t: int, j: int) -> None:
        r = a if (t + j) % 2 else b
        c = (t + j) % len(cases)
        query, nodes = cases[c]
        result = r.rerank(nodes, query)
        assert r.last_report is result.report
        assert _signature(result) == want[id(r)][c], f"case {c} differs from the call made alone"

    failures = _run_threads(8, 10, work)
    assert not failures, f"{len(failures)} of 80 calls failed:\n" + "\n".join(failures[:8])


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A fresh process-wide inference pool of 2 workers for this test."""
    monkeypatch.setenv(ce_module.CE_WORKERS_ENV, "2")
    monkeypatch.setattr(ce_module, "_POOL", None)
    yield 2
    pool = ce_module._POOL
    if pool is not None:
        pool.shutdown(wait=True)


async def test_64_tasks_run_at_most_the_worker_bound_of_forward_passes_at_once(
    reranker: CrossEncoderReranker,
    cases: list[Case],
    two_workers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = reranker._load().runner
    real_forward = runner.logits
    lock = threading.Lock()
    in_flight = peak = 0

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            time.sleep(0.005)  # long enough for unbounded calls to pile up
            return real_forward(*args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(runner, "logits", counting_forward)
    short = [(q, nodes[:2]) for q, nodes in cases]
    results = await asyncio.gather(*(reranker.arerank(n, q) for q, n in short * 8))
    assert len(results) == 64
    assert peak == two_workers  # bounded, and the workers do run side by side

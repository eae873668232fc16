"""The whole LLMReranker against a scripted fake OpenAI server, one test per fault of issue 3:
429 with Retry-After, 500, a timeout, garbage text, empty choices, missing logprobs and a 400 on
the logprobs parameter.

In every case the output holds exactly the input node ids (up to ``top_n``), without
duplicates, with finite scores in [0, 1], and the failures are counted in
``reranker.last_report.llm.to_dict()``.

The fake judges like a sensible model would, by keywords in the passage: "prun" -> very likely,
"orchard" -> likely, anything else -> unlikely, so the order of the judged nodes is known.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fake_openai import (
    FakeOpenAI,
    Reply,
    Request,
    Script,
    completion,
    empty_choices,
    garbage_text,
    hang,
    logprobs_rejected,
    rate_limited,
    server_error,
)
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.llm import DEFAULT_LABELS, UNKNOWN, LLMReranker
from llamaindex_rerankers.llm.capabilities import logprobs_supported, record_logprobs_support
from llamaindex_rerankers.types import RerankReport

QUERY = "how do I prune apple trees"
PASSAGES = [
    "Apple Inc. shares fell 2% after the earnings call.",
    "Prune apple trees in late winter, while they are dormant.",
    "An apple pie needs six apples, butter and cinnamon.",
    "Orchard apple trees need full sun and well-drained soil.",
    "Pruning cuts should be made just above an outward-facing bud.",
    "The Apple Watch tracks your heart rate.",
]
IDS = [f"n{i}" for i in range(len(PASSAGES))]
# By the keyword rule: very likely (n1, n4, ties by retrieval order), likely (n3), unlikely.
EXPECTED_ORDER = ["n1", "n4", "n3", "n0", "n2", "n5"]

CODE = {label.name: label.code for label in DEFAULT_LABELS}


def passage_of(request: Request) -> str:
    # The passage being judged is the last one: worked examples come as earlier chat turns.
    found = re.findall(r"<passage>(.*?)</passage>", request.prompt, re.DOTALL)
    assert found, "the reranker's prompt should delimit the passage"
    return str(found[-1]).strip()


def verdict(passage: str) -> str:
    text = passage.lower()
    if "prun" in text:
        return "very likely"
    if "orchard" in text:
        return "likely"
    return "unlikely"


def judge(*, logprobs: bool = True) -> Script:
    """A correct judge: the verdict's code, with plausible top_logprobs when asked for (and
    ``logprobs`` is True)."""

    def make(request: Request) -> Reply:
        chosen = CODE[verdict(passage_of(request))]
        if not (logprobs and request.wants_logprobs):
            return Reply(body=completion(chosen))
        others = [label.code for label in DEFAULT_LABELS if label.code != chosen]
        top = [(chosen, -0.15), (others[0], -2.3), (others[1], -3.4), ("The", -5.0)]
        k = int(request.body.get("top_logprobs") or len(top))
        return Reply(body=completion(chosen, logprobs=[(chosen, -0.15, top[:k])]))

    return make


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=judge()) as server:
        yield server
        for model in {r.body.get("model") for r in server.chat_requests()}:
            record_logprobs_support((server.url + "/v1", model), None)


def nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(id_=i, text=t), score=1.0 - 0.1 * k)
        for k, (i, t) in enumerate(zip(IDS, PASSAGES, strict=True))
    ]


def reranker(fake: FakeOpenAI, **settings: Any) -> LLMReranker:
    options: dict[str, Any] = {
        "model": "fake",
        "base_url": fake.url + "/v1",
        "cache": None,
        "timeout": 2.0,
        "max_retries": 2,
        "backoff_base": 0.01,  # retries in milliseconds; Retry-After is still honoured exactly
        # the request machinery under test, not calibration or fusion (test_calibration.py)
        "calibration": "none",
        "retrieval_weight": 0.0,
    }
    options.update(settings)
    return LLMReranker(**options)


#: The report of each reranker's latest call through :func:`rerank` (by id of the reranker).
_REPORTS: dict[int, RerankReport] = {}


def rerank(r: LLMReranker, *, use_async: bool = False) -> list[NodeWithScore]:
    given = nodes()
    if use_async:
        out, report = asyncio.run(r.arerank(given, QUERY))
    else:
        out = r.postprocess_nodes(given, query_str=QUERY)
        report = r.last_report  # type: ignore[assignment]  # same thread: the convenience
    assert [n.node.node_id for n in given] == IDS  # the caller's nodes are untouched
    _REPORTS[id(r)] = report
    return out


def check_output(out: Sequence[NodeWithScore], top_n: int | None) -> list[str]:
    """The invariants that hold whatever failed; returns the output ids."""
    ids = [n.node.node_id for n in out]
    assert len(ids) == len(set(ids)), f"duplicate nodes: {ids}"
    assert set(ids) <= set(IDS)
    assert len(ids) == (len(IDS) if top_n is None else min(top_n, len(IDS)))
    for n in out:
        if n.node.metadata["rerank_label"] == "unknown":
            assert n.score is None  # unjudged: not "judged irrelevant"
            continue
        assert isinstance(n.score, float) and math.isfinite(n.score), n.score
        assert 0.0 <= n.score <= 1.0
    return ids


def labels_of(out: Sequence[NodeWithScore]) -> dict[str, str]:
    return {n.node.node_id: n.node.metadata["rerank_label"] for n in out}


def counters(r: LLMReranker) -> dict[str, float]:
    report = _REPORTS[id(r)]
    assert report is not None and report.llm is not None
    return report.llm.to_dict()


def all_unknown_in_retrieval_order(out: Sequence[NodeWithScore], top_n: int | None) -> None:
    ids = check_output(out, top_n)
    assert ids == IDS[: len(ids)]
    assert set(labels_of(out).values()) == {UNKNOWN}
    assert all(n.score is None for n in out)


# -- the baseline: no fault ------------------------------------------------------------


def test_no_fault_ranks_by_the_judge(fake: FakeOpenAI) -> None:
    r = reranker(fake)
    out = rerank(r)
    assert check_output(out, None) == EXPECTED_ORDER
    assert labels_of(out)["n1"] == "very likely" and labels_of(out)["n3"] == "likely"
    assert {n.node.metadata["rerank_source"] for n in out} == {"logprobs"}
    c = counters(r)
    assert (c["calls"], c["failures"], c["retries"], c["parse_failures"]) == (6, 0, 0, 0)
    assert all(req.wants_logprobs for req in fake.chat_requests())


# -- 429 with Retry-After ------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_429_with_retry_after_is_waited_out(fake: FakeOpenAI, use_async: bool) -> None:
    fake.script(rate_limited(retry_after="1"))
    r = reranker(fake, top_n=4)
    start = time.monotonic()
    out = rerank(r, use_async=use_async)
    assert time.monotonic() - start >= 1.0
    assert check_output(out, 4) == EXPECTED_ORDER[:4]
    c = counters(r)
    assert (c["calls"], c["retries"], c["failures"], c["unknown"]) == (7, 1, 0, 0)


def test_429_retry_after_past_the_deadline_labels_unknown(fake: FakeOpenAI) -> None:
    fake.sticky = rate_limited(retry_after="30")
    r = reranker(fake, deadline=2.0, concurrency=6)
    start = time.monotonic()
    out = rerank(r)
    assert time.monotonic() - start < 2.0  # nobody slept towards a wait that cannot finish
    all_unknown_in_retrieval_order(out, None)
    c = counters(r)
    assert (c["calls"], c["failures"], c["unknown"]) == (6, 6, 6)
    assert "429" in out[0].node.metadata["rerank_error"]


# -- 500 -----------------------------------------------------------------------------------


def test_500_once_is_retried(fake: FakeOpenAI) -> None:
    fake.script(server_error(500))
    r = reranker(fake)
    assert check_output(rerank(r), None) == EXPECTED_ORDER
    c = counters(r)
    assert (c["calls"], c["retries"], c["failures"]) == (7, 1, 0)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_500_always_keeps_every_node(
    fake: FakeOpenAI, use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    fake.sticky = server_error(503)
    r = reranker(fake, max_retries=1, top_n=5)
    with caplog.at_level("WARNING", logger="llamaindex_rerankers"):
        out = rerank(r, use_async=use_async)
    all_unknown_in_retrieval_order(out, 5)
    c = counters(r)
    assert (c["calls"], c["retries"], c["failures"], c["unknown"]) == (12, 6, 6, 6)
    assert len(fake.chat_requests()) == 12
    warnings = [rec for rec in caplog.records if rec.levelname == "WARNING"]
    assert len(warnings) == 1 and "503" in warnings[0].getMessage()  # logged once per call


def test_500_on_some_passages_only(fake: FakeOpenAI) -> None:
    def broken_for_pie(request: Request) -> Reply:
        if "pie" in passage_of(request):
            return server_error(500)
        return judge()(request)  # type: ignore[operator]

    fake.sticky = broken_for_pie
    r = reranker(fake, max_retries=1)
    out = rerank(r)
    ids = check_output(out, None)
    # Judged nodes in the judge's order, the failed one (n2) after them.
    assert ids == [i for i in EXPECTED_ORDER if i != "n2"] + ["n2"]
    assert labels_of(out)["n2"] == UNKNOWN
    assert (counters(r)["failures"], counters(r)["unknown"]) == (1, 1)


# -- timeouts ------------------------------------------------------------------------------


def test_timeout_once_is_retried(fake: FakeOpenAI) -> None:
    fake.script(hang(5.0, then=judge()))
    r = reranker(fake, timeout=0.5)
    start = time.monotonic()
    out = rerank(r)
    assert 0.5 <= time.monotonic() - start < 4.0
    assert check_output(out, None) == EXPECTED_ORDER
    c = counters(r)
    assert (c["calls"], c["retries"], c["failures"]) == (7, 1, 0)


def test_hanging_server_is_cut_by_the_deadline(fake: FakeOpenAI) -> None:
    fake.sticky = hang(10.0)
    r = reranker(fake, timeout=30.0, deadline=1.0, top_n=3)
    start = time.monotonic()
    out = rerank(r)
    assert time.monotonic() - start < 3.0
    all_unknown_in_retrieval_order(out, 3)
    c = counters(r)
    assert (c["failures"], c["unknown"]) == (6, 6)


# -- garbage text ----------------------------------------------------------------------------


def test_garbage_text_once_gets_a_stricter_retry(fake: FakeOpenAI) -> None:
    fake.script(garbage_text("I like turtles."))
    r = reranker(fake, concurrency=1)
    out = rerank(r)
    assert check_output(out, None) == EXPECTED_ORDER
    c = counters(r)
    assert (c["calls"], c["parse_failures"], c["failures"], c["unknown"]) == (7, 1, 0, 0)
    first, retry = fake.chat_requests()[:2]
    assert passage_of(first) == passage_of(retry) == PASSAGES[0]
    assert len(retry.prompt) > len(first.prompt)  # the retry adds a stricter instruction


def test_garbage_text_always_labels_unknown(fake: FakeOpenAI) -> None:
    fake.sticky = garbage_text("I cannot answer that, but bananas are yellow.")
    r = reranker(fake, top_n=4)
    out = rerank(r)
    all_unknown_in_retrieval_order(out, 4)
    c = counters(r)
    # One stricter retry per passage, then unknown; no HTTP failure.
    assert (c["calls"], c["parse_failures"], c["unknown"], c["failures"]) == (12, 12, 6, 0)


# -- empty choices -------------------------------------------------------------------------


def test_empty_choices_once_is_retried(fake: FakeOpenAI) -> None:
    fake.script(empty_choices())
    r = reranker(fake)
    assert check_output(rerank(r), None) == EXPECTED_ORDER
    c = counters(r)
    assert (c["calls"], c["retries"], c["failures"]) == (7, 1, 0)


def test_empty_choices_always_is_a_counted_failure(fake: FakeOpenAI) -> None:
    fake.sticky = empty_choices()
    r = reranker(fake, max_retries=1)
    out = rerank(r)
    all_unknown_in_retrieval_order(out, None)
    c = counters(r)
    assert (c["calls"], c["failures"], c["unknown"]) == (12, 6, 6)
    assert "no choices" in out[0].node.metadata["rerank_error"]


# -- endpoints without logprobs -------------------------------------------------------------


def test_missing_logprobs_falls_back_to_text(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.default = judge(logprobs=False)
    r = reranker(fake, concurrency=2)
    with caplog.at_level("INFO", logger="llamaindex_rerankers"):
        out = rerank(r)
    assert check_output(out, None) == EXPECTED_ORDER
    assert {n.node.metadata["rerank_source"] for n in out} == {"text"}
    scores = {n.node.node_id: n.score for n in out}
    assert scores["n1"] == scores["n4"] == 1.0 and scores["n3"] == 0.5 and scores["n0"] == 0.0
    assert logprobs_supported(r.client.identity) is False
    requests = fake.chat_requests()
    # Text mode after MISSES_BEFORE_TEXT_MODE (3) answers without logprobs in a row; at most one
    # more judgement (concurrency=2) was in flight when it switched. Later ones do not ask.
    assert 3 <= sum(req.wants_logprobs for req in requests) <= 4
    assert not requests[-1].wants_logprobs
    c = counters(r)
    assert (c["calls"], c["failures"], c["unknown"]) == (6, 0, 0)
    # Said once, at WARNING, naming the endpoint; a second call on it says nothing more.
    switched = [rec for rec in caplog.records if "no logprobs" in rec.getMessage()]
    assert [rec.levelname for rec in switched] == ["WARNING"]
    assert fake.url in switched[0].getMessage()
    caplog.clear()
    with caplog.at_level("INFO", logger="llamaindex_rerankers"):
        rerank(reranker(fake))
    assert not [rec for rec in caplog.records if "no logprobs" in rec.getMessage()]


def test_one_answer_without_logprobs_does_not_switch_the_endpoint(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # A proxy or an overloaded server drops logprobs from one answer: that passage is judged
    # from its text, the endpoint keeps being asked for logprobs.
    fake.script(judge(logprobs=False), judge(logprobs=False))
    r = reranker(fake, concurrency=1)
    with caplog.at_level("INFO", logger="llamaindex_rerankers"):
        out = rerank(r)
    sources = {n.node.node_id: n.node.metadata["rerank_source"] for n in out}
    assert sources == {"n0": "text", "n1": "text", **{i: "logprobs" for i in IDS[2:]}}
    assert logprobs_supported(r.client.identity) is True
    assert all(req.wants_logprobs for req in fake.chat_requests())
    assert not [rec for rec in caplog.records if "no logprobs" in rec.getMessage()]
    # Two more misses do not add up to three in a row: the answers in between had logprobs.
    fake.script(judge(logprobs=False), judge(logprobs=False))
    rerank(r)
    assert logprobs_supported(r.client.identity) is True


def test_400_on_logprobs_falls_back_to_text(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.sticky = logprobs_rejected(then=judge())
    r = reranker(fake, concurrency=2, top_n=3)
    with caplog.at_level("INFO", logger="llamaindex_rerankers"):
        out = rerank(r)
    # The server said so: text mode at once (not after three answers), one WARNING.
    switched = [rec for rec in caplog.records if "no logprobs" in rec.getMessage()]
    assert [rec.levelname for rec in switched] == ["WARNING"]
    assert "rejected the logprobs parameter" in switched[0].getMessage()
    assert check_output(out, 3) == EXPECTED_ORDER[:3]
    assert {n.node.metadata["rerank_source"] for n in out} == {"text"}
    assert logprobs_supported(r.client.identity) is False
    requests = fake.chat_requests()
    rejected = [req for req in requests if req.wants_logprobs]
    assert 1 <= len(rejected) <= 2  # at most one per judgement in flight before it was learnt
    assert len(requests) == 6 + len(rejected)
    c = counters(r)
    # Each rejected request was re-asked at once: an extra call, no failure.
    assert (c["calls"], c["failures"], c["unknown"]) == (6 + len(rejected), 0, 0)

    # A second rerank on the same endpoint does not send logprobs at all.
    before = len(requests)
    out = rerank(reranker(fake, top_n=3))
    assert check_output(out, 3) == EXPECTED_ORDER[:3]
    assert not any(req.wants_logprobs for req in fake.chat_requests()[before:])


# -- everything at once ----------------------------------------------------------------------


def test_mixed_faults_never_lose_a_node(fake: FakeOpenAI) -> None:
    fake.script(
        rate_limited(retry_after="0.2"),
        server_error(500),
        garbage_text("banana"),
        empty_choices(),
        hang(5.0),
    )
    r = reranker(fake, timeout=0.5, max_retries=1, concurrency=3, top_n=5)
    out = rerank(r)
    ids = check_output(out, 5)
    c = counters(r)
    assert c["calls"] >= 6 + 4
    assert c["retries"] + c["parse_failures"] + c["failures"] >= 5
    judged = [i for i in ids if labels_of(out)[i] != UNKNOWN]
    assert judged == [i for i in EXPECTED_ORDER if i in judged]


async def test_sync_call_inside_a_running_loop_survives_faults(fake: FakeOpenAI) -> None:
    # As in Jupyter: the sync API called while an event loop runs (here, the test's own loop).
    fake.script(server_error(502), rate_limited(retry_after="0.1"))
    r = reranker(fake)
    out = r.postprocess_nodes(nodes(), query_str=QUERY)
    assert check_output(out, None) == EXPECTED_ORDER
    c = r.last_report.llm.to_dict()  # type: ignore[union-attr]
    assert (c["calls"], c["retries"], c["failures"]) == (8, 2, 0)
    # The same reranker then works from this loop too (both run on its background loop).
    out = await r.apostprocess_nodes(nodes(), query_str=QUERY)
    assert check_output(out, None) == EXPECTED_ORDER
    assert r.last_report.llm.calls == 6  # type: ignore[union-attr]


def test_a_missing_api_key_is_an_error_not_a_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    # Misconfiguration must not hide behind "unknown" labels: it raises, saying how to fix it.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    r = LLMReranker(model="gpt-4o-mini", cache=None)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        r.postprocess_nodes(nodes(), query_str=QUERY)

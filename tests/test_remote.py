"""RemoteReranker against a scripted fake rerank server (tests/llm/fake_openai.py's HTTP server,
answering Cohere's or TEI's shape), for the faults a real one won't produce on demand: 429 with
Retry-After, 500, hangs, garbage, wrong numbers of results, out-of-range or repeated indices,
401/404/413. The real-server tests are tests/server/test_remote_serve.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import math
import pickle
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply, Request, hang
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers import BaseReranker, RemoteReranker, RemoteRerankError
from llamaindex_rerankers.cli.parser import build_parser
from llamaindex_rerankers.registry import make_reranker, reranker_options
from llamaindex_rerankers.remote import judgements
from llamaindex_rerankers.scoring import sigmoid

QUERY = "how to prune apple trees"
TEXTS = [f"passage {i} " + "word " * i for i in range(7)]


def logit_of(text: str) -> float:
    """The fake's model: a deterministic logit per text."""
    return (len(text) % 13) / 2.0 - 3.0


def answer(request: Request, *, shuffle: bool = True) -> Reply:
    """A correct answer in the shape of the path asked (results best first, as services do)."""
    body = request.body
    if request.path.endswith("/rerank") and "texts" in body:  # TEI
        raw = body.get("raw_scores")
        items = [
            {"index": i, "score": logit_of(t) if raw else sigmoid(logit_of(t))}
            for i, t in enumerate(body["texts"])
        ]
        items.sort(key=lambda e: -e["score"])
        return Reply(body=items)
    items = [
        {"index": i, "relevance_score": sigmoid(logit_of(t))}
        for i, t in enumerate(body["documents"])
    ]
    if shuffle:
        items.sort(key=lambda e: -e["relevance_score"])
    return Reply(body={"id": "x", "results": items, "meta": {}})


def with_results(edit: Any) -> Any:
    """A script: the correct Cohere answer with its results list edited."""

    def make(request: Request) -> Reply:
        reply = answer(request, shuffle=False)
        return Reply(body={"results": edit(reply.body["results"])})

    return make


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=answer) as server:
        yield server


def nodes(texts: list[str] = TEXTS) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(texts)
    ]


def remote(fake: FakeOpenAI, **options: Any) -> RemoteReranker:
    options.setdefault("backoff_base", 0.01)
    return RemoteReranker(base_url=fake.url, **options)


def scores(result: Any) -> dict[str, float | None]:
    return {n.node.node_id: n.score for n in result.nodes}


def expected(texts: list[str] = TEXTS) -> dict[str, float]:
    return {f"n{i}": sigmoid(logit_of(t)) for i, t in enumerate(texts)}


# -- the answers: pure ------------------------------------------------------------------------


def test_results_are_paired_by_index_whatever_their_order() -> None:
    got = judgements([(2, 0.1), (0, 0.9), (1, 0.5)], 3, "probability")
    assert [j.score for j in got] == [0.9, 0.5, 0.1]
    assert [j.metadata["rerank_raw_score"] for j in got] == [0.9, 0.5, 0.1]
    logits = judgements([(1, -2.0), (0, 3.0)], 2, "logit")
    assert [j.score for j in logits] == [sigmoid(3.0), sigmoid(-2.0)]
    assert logits[0].metadata["rerank_logit"] == 3.0


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([(0, 0.9)], "1 results for 2 passages"),
        ([(0, 0.9), (1, 0.5), (1, 0.4)], "index 1 twice"),
        ([(0, 0.9), (0, 0.5)], "index 0 twice and no result for index 1"),
        ([(0, 0.9), (2, 0.5)], "index 2 for a request of 2 passages (out of range)"),
        ([(0, 0.9), (-1, 0.5)], "index -1 for a request of 2 passages (out of range)"),
        ([(0, 0.9), ("1", 0.5)], "index is not an integer ('1')"),
        ([(0, 0.9), (True, 0.5)], "index is not an integer (True)"),
        ([(0, 0.9), (None, None)], "index is not an integer (None)"),
    ],
)
def test_results_that_cannot_be_matched_leave_the_whole_request_unjudged(
    entries: list[tuple[Any, Any]], problem: str
) -> None:
    # A score paired with the wrong passage must be impossible: no result of such an answer is
    # used, not even the ones that look right.
    got = judgements(entries, 2, "probability")
    assert [j.score for j in got] == [None, None]
    assert all(problem in j.metadata["rerank_error"] for j in got)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("0.5", "not a number"),
        (None, "did not judge it"),
        (math.inf, "not a number"),
        ([0.5], "not a number"),
        (
            1.7,
            "not a probability in [0, 1]; if the service returns raw logits, pass scores='logit'",
        ),
        (-0.1, "not a probability"),
    ],
)
def test_an_unusable_score_leaves_only_its_passage_unjudged(raw: Any, reason: str) -> None:
    got = judgements([(0, 0.9), (1, raw)], 2, "probability")
    assert got[0].score == 0.9 and got[1].score is None
    assert reason in got[1].metadata["rerank_error"]


# -- requests ---------------------------------------------------------------------------------


def test_passages_are_split_into_requests_and_merged_back_in_order(fake: FakeOpenAI) -> None:
    # Repeated passages are sent once; the fake answers best first, not in request order.
    texts = [*TEXTS, TEXTS[2]]
    result = remote(fake, max_documents_per_request=3).rerank(nodes(texts), QUERY)
    sent = [r.body["documents"] for r in fake.requests]
    assert sorted(len(d) for d in sent) == [1, 3, 3]
    assert sorted(t for d in sent for t in d) == sorted(TEXTS)
    assert scores(result) == pytest.approx(expected(texts))
    usage = result.report.remote
    assert usage is not None
    assert (usage.documents, usage.deduplicated, usage.requests) == (7, 1, 3)
    order = sorted(expected(texts).items(), key=lambda kv: (-kv[1], int(kv[0][1:])))
    assert [n.node.node_id for n in result.nodes] == [k for k, _ in order]


@pytest.mark.parametrize(
    ("options", "path", "body"),
    [
        ({"model": "rerank-v3.5", "max_tokens_per_doc": 512}, "/v2/rerank",
         {"model": "rerank-v3.5", "max_tokens_per_doc": 512}),
        ({"api_version": "v1"}, "/v1/rerank", {"return_documents": False}),
        ({"api": "tei"}, "/rerank", {"truncate": True, "raw_scores": True, "return_text": False}),
        ({"api": "tei", "truncate": False, "scores": "probability"}, "/rerank",
         {"truncate": False, "raw_scores": False}),
        ({"path": "/rerank"}, "/rerank", {}),  # Infinity: Cohere's shape at /rerank
    ],
)  # fmt: skip
def test_the_request_has_the_api_s_shape(
    fake: FakeOpenAI, options: dict[str, Any], path: str, body: dict[str, Any]
) -> None:
    result = remote(fake, api_key="sk-test", **options).rerank(nodes(TEXTS[:2]), QUERY)
    (request,) = fake.requests
    assert request.path == path
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["query"] == QUERY
    assert request.body.get("documents", request.body.get("texts")) == TEXTS[:2]
    assert body.items() <= request.body.items()
    assert scores(result) == pytest.approx(expected(TEXTS[:2]))
    if options.get("api") == "tei" and options.get("scores") != "probability":
        assert result.nodes[0].node.metadata["rerank_logit"] == pytest.approx(
            logit_of(TEXTS[int(result.nodes[0].node.node_id[1:])])
        )


def test_url_model_and_key_come_from_the_environment(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_REMOTE_URL", fake.url)
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_REMOTE_MODEL", "m-env")
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_REMOTE_API_KEY", "sk-env")
    reranker = RemoteReranker()
    reranker.rerank(nodes(TEXTS[:1]), QUERY)
    (request,) = fake.requests
    assert request.headers["authorization"] == "Bearer sk-env"
    assert request.body["model"] == "m-env"
    assert "sk-env" not in repr(reranker) and "api_key" not in reranker.to_dict()


# -- faults -----------------------------------------------------------------------------------


def test_429_waits_for_retry_after(fake: FakeOpenAI) -> None:
    fake.script(Reply(status=429, body={"message": "slow down"}, headers={"Retry-After": "1"}))
    started = time.monotonic()
    result = remote(fake, backoff_base=0.0).rerank(nodes(TEXTS[:3]), QUERY)
    assert time.monotonic() - started >= 0.95
    assert scores(result) == pytest.approx(expected(TEXTS[:3]))
    assert result.report.remote is not None
    assert (result.report.remote.requests, result.report.remote.retries) == (2, 1)
    assert fake.requests[1].at - fake.requests[0].at >= 0.95


def test_retry_after_ms_and_the_cap(fake: FakeOpenAI) -> None:
    fake.script(Reply(status=503, body={}, headers={"retry-after-ms": "300"}),
                Reply(status=429, body={}, headers={"Retry-After": "60"}))  # fmt: skip
    result = remote(fake, backoff_max=0.5).rerank(nodes(TEXTS[:2]), QUERY)
    gaps = [b.at - a.at for a, b in zip(fake.requests, fake.requests[1:], strict=False)]
    assert 0.28 <= gaps[0] < 0.45 and 0.45 <= gaps[1] < 0.9  # 60 s capped to backoff_max
    assert result.report.n_judged == 2


def test_a_request_that_keeps_failing_leaves_its_passages_unjudged_after_the_others(
    fake: FakeOpenAI,
) -> None:
    # One request slot: the first request (passages 0-2) gets the three 500s.
    fake.script(*[Reply(status=500, body={"message": "boom"})] * 3)
    reranker = remote(fake, max_documents_per_request=3, max_in_flight=1, max_retries=2)
    result = reranker.rerank(nodes(), QUERY)
    got = scores(result)
    assert [got[f"n{i}"] for i in range(3)] == [None, None, None]  # never 0.0, never dropped
    assert {k: v for k, v in got.items() if v is not None} == pytest.approx(
        {k: v for k, v in expected().items() if k not in {"n0", "n1", "n2"}}
    )
    assert [n.node.node_id for n in result.nodes[-3:]] == ["n0", "n1", "n2"]
    error = result.nodes[-1].node.metadata["rerank_error"]
    assert "gave up after 3 attempt(s): 3 retryable failures" in error and "HTTP 500: boom" in error
    report = result.report
    assert (report.n_judged, report.n_unjudged, report.failed) == (4, 3, False)
    assert report.remote is not None
    assert (report.remote.failures, report.remote.unjudged, report.remote.retries) == (1, 3, 2)


def test_an_outage_fails_the_call_without_dropping_a_node(fake: FakeOpenAI) -> None:
    fake.sticky = Reply(status=503, body={"message": "down"})
    result = remote(fake, max_retries=1).rerank(nodes(), QUERY)
    assert [n.score for n in result.nodes] == [None] * len(TEXTS)
    assert [n.node.node_id for n in result.nodes] == [f"n{i}" for i in range(len(TEXTS))]
    assert result.report.failed


def test_a_hanging_server_times_out(fake: FakeOpenAI) -> None:
    fake.script(hang(3.0, then=answer))
    result = remote(fake, timeout=0.3, max_retries=1).rerank(nodes(TEXTS[:2]), QUERY)
    assert result.report.n_judged == 2  # the retry got the answer
    fake.sticky = hang(3.0, then=answer)
    started = time.monotonic()
    result = remote(fake, timeout=0.3, max_retries=0).rerank(nodes(TEXTS[:2]), QUERY)
    assert time.monotonic() - started < 2.0
    assert "timed out after 0.3 s" in result.nodes[0].node.metadata["rerank_error"]


def test_garbage_is_retried_then_reported(fake: FakeOpenAI) -> None:
    fake.script(Reply(body="<html>502 Bad Gateway</html>", content_type="text/html"),
                Reply(body={"unexpected": True}))  # fmt: skip
    assert remote(fake).rerank(nodes(TEXTS[:2]), QUERY).report.n_judged == 2
    fake.sticky = Reply(body="{not json")
    result = remote(fake, max_retries=1).rerank(nodes(TEXTS[:2]), QUERY)
    error = result.nodes[0].node.metadata["rerank_error"]
    assert "malformed answer: not JSON: {not json" in error and result.report.failed


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda r: r[:-1], "2 results for 3 passages"),
        (lambda r: [*r, {"index": 3, "relevance_score": 0.5}], "index 3 for a request of 3"),
        (lambda r: [r[0], r[0], r[2]], "index 0 twice and no result for index 1"),
    ],
)
def test_an_answer_that_does_not_match_the_request_leaves_it_unjudged(
    fake: FakeOpenAI, edit: Any, problem: str
) -> None:
    fake.script(with_results(edit))
    reranker = remote(fake, max_documents_per_request=3, max_in_flight=1)
    result = reranker.rerank(nodes(TEXTS[:6]), QUERY)
    got = scores(result)
    assert [got[f"n{i}"] for i in range(3)] == [None] * 3
    assert {f"n{i}": got[f"n{i}"] for i in range(3, 6)} == pytest.approx(
        {k: v for k, v in expected(TEXTS[:6]).items() if int(k[1:]) >= 3}
    )
    assert problem in result.nodes[-1].node.metadata["rerank_error"]
    assert len(fake.requests) == 2  # not retried: a service that answers so would again


def test_a_non_numeric_score_leaves_its_passage_unjudged(fake: FakeOpenAI) -> None:
    def edit(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results[1]["relevance_score"] = "high"
        return results

    fake.script(with_results(edit))
    result = remote(fake).rerank(nodes(TEXTS[:3]), QUERY)
    got = scores(result)
    assert got["n1"] is None and got["n0"] is not None and got["n2"] is not None
    assert "not a number: high" in result.nodes[-1].node.metadata["rerank_error"]


@pytest.mark.parametrize(
    ("status", "fix"),
    [(401, "check api_key"), (403, "may use this model"), (404, "check base_url")],
)
def test_settings_the_service_refuses_raise_with_the_fix(
    fake: FakeOpenAI, status: int, fix: str
) -> None:
    fake.sticky = Reply(status=status, body={"message": "nope"})
    with pytest.raises(RemoteRerankError, match=f"HTTP {status}: nope.*{fix}"):
        remote(fake, max_documents_per_request=2).rerank(nodes(), QUERY)
    assert len(fake.requests) <= 4  # one per request, never retried


@pytest.mark.parametrize(
    ("status", "options", "hint"),
    [
        (413, {"api": "tei", "truncate": False}, "pass truncate=True"),
        (422, {}, "pass max_tokens_per_doc=N"),
        (400, {}, "check model and the request options"),
    ],
)
def test_a_refused_request_is_unjudged_with_what_to_change(
    fake: FakeOpenAI, status: int, options: dict[str, Any], hint: str
) -> None:
    fake.script(Reply(status=status, body={"error": "input is too long"}))
    result = remote(fake, **options).rerank(nodes(TEXTS[:2]), QUERY)
    error = result.nodes[0].node.metadata["rerank_error"]
    assert f"HTTP {status}: input is too long" in error and hint in error
    assert len(fake.requests) == 1


def test_the_deadline_stops_a_retry_after_beyond_it(fake: FakeOpenAI) -> None:
    fake.sticky = Reply(status=429, body={}, headers={"Retry-After": "5"})
    started = time.monotonic()
    result = remote(fake, deadline=1.0).rerank(nodes(TEXTS[:2]), QUERY)
    assert time.monotonic() - started < 1.0
    assert (
        "the deadline would pass during the 5 s wait"
        in result.nodes[0].node.metadata["rerank_error"]
    )


def test_the_deadline_counts_the_wait_for_a_request_slot(fake: FakeOpenAI) -> None:
    fake.default = hang(1.5, then=answer)
    reranker = remote(fake, max_in_flight=1, max_documents_per_request=1, deadline=1.0)
    started = time.monotonic()
    result = reranker.rerank(nodes(TEXTS[:3]), QUERY)
    assert time.monotonic() - started < 2.5
    errors = {n.node.metadata.get("rerank_error", "") for n in result.nodes}
    assert any("waiting for one of the 1 request slots" in e for e in errors)


# -- one instance, many callers ---------------------------------------------------------------


def test_requests_in_flight_are_bounded_across_threads_and_tasks(fake: FakeOpenAI) -> None:
    fake.default = hang(0.1, then=answer)
    reranker = remote(fake, max_in_flight=3, max_documents_per_request=2)
    rng = random.Random(0)
    calls = [rng.sample(TEXTS, rng.randint(1, 7)) for _ in range(12)]
    alone = [scores(reranker.rerank(nodes(c), QUERY)) for c in calls[:3]]
    fake.peak_in_flight = 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda c: reranker.rerank(nodes(c), QUERY), calls))

    async def tasks() -> list[Any]:
        return await asyncio.gather(*(reranker.arerank(nodes(c), QUERY) for c in calls))

    tasked = asyncio.run(tasks())
    assert fake.peak_in_flight == 3
    for results in (threaded, tasked):
        for texts, result in zip(calls, results, strict=True):
            assert scores(result) == pytest.approx(expected(texts))
            assert result.report.n_candidates == len(texts)
    assert [scores(r) for r in threaded[:3]] == alone


# -- configuration ----------------------------------------------------------------------------


def test_configuration_round_trips_without_the_key() -> None:
    reranker = RemoteReranker(
        base_url="http://svc:8080", api="tei", model="bge", api_key="sk-secret", top_n=3,
        max_documents_per_request=16, max_in_flight=2, deadline=5.0, truncate=False,
    )  # fmt: skip
    config = reranker.to_dict()
    assert "sk-secret" not in str(config) and "api_key" not in config
    assert config["class_name"] == "RemoteReranker"
    rebuilt = BaseReranker.from_dict(config)
    assert rebuilt.to_dict() == config and rebuilt.api_key is None
    assert "sk-secret" not in repr(reranker)
    for other in (copy.deepcopy(reranker), pickle.loads(pickle.dumps(reranker))):
        assert other.to_dict() == config


def test_typos_and_bad_settings_raise_with_the_fix() -> None:
    with pytest.raises(ValueError, match="'max_in_fligth' -> 'max_in_flight'"):
        RemoteReranker(base_url="http://x", max_in_fligth=2)
    with pytest.raises(ValueError, match=r"without /v2: pass base_url='https://api\.cohere\.com'"):
        RemoteReranker(base_url="https://api.cohere.com/v2")
    with pytest.raises(ValueError, match="max_tokens_per_doc is Cohere's option"):
        RemoteReranker(base_url="http://x", api="tei", max_tokens_per_doc=10)
    with pytest.raises(ValueError, match="api"):
        RemoteReranker(base_url="http://x", api="jina")


def test_no_url_says_where_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMAINDEX_RERANKERS_REMOTE_URL", raising=False)
    with pytest.raises(ValueError, match="LLAMAINDEX_RERANKERS_REMOTE_URL"):
        RemoteReranker().rerank(nodes(TEXTS[:1]), QUERY)


def test_the_registry_and_the_command_line_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    options = reranker_options("remote", remote_url="http://svc:80", remote_api="tei",
                               remote_model="bge")  # fmt: skip
    reranker = make_reranker("remote", top_n=4, **options)
    assert isinstance(reranker, RemoteReranker)
    assert (reranker.base_url, reranker.api, reranker.model, reranker.top_n) == (
        "http://svc:80",
        "tei",
        "bge",
        4,
    )
    assert reranker_options("cross-encoder", remote_url="http://svc:80") == {}
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_REMOTE_API", "cohere-v1")
    assert make_reranker("remote").api_version == "v1"  # type: ignore[union-attr]
    args = build_parser().parse_args(
        ["query", "q", "--persist-dir", "D", "--reranker", "remote", "--remote-url",
         "http://svc:80", "--remote-api", "tei"]
    )  # fmt: skip
    assert (args.reranker, args.remote_url, args.remote_api) == ("remote", "http://svc:80", "tei")
    args = build_parser().parse_args(
        ["eval", "--dataset", "d", "--reranker", "remote", "--remote-url", "http://s"]
    )
    assert args.remote_url == "http://s"

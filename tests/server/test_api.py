"""The chatbot backend through a real uvicorn process on 127.0.0.1 (``serve --demo``, the
cross-encoder on the sample corpus, answers from SmolLM2), with an httpx client and Cohere's SDK."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from serve_helpers import API_KEY, AUTH, MAX_QUERY_CHARS, ServeProcess

from llamaindex_rerankers.server import streaming
from llamaindex_rerankers.server.chat import ABSTAIN_MESSAGE

pytestmark = pytest.mark.server

PRUNING = "best practices for pruning apple trees"
OFF_TOPIC = "how do I replace the timing belt on a diesel van?"
PRUNING_TITLE = "Pruning Apple Trees: When and How"

#: The keys each stream part may have: the AI SDK validates parts with strict schemas.
PART_KEYS = {
    "start": {"type", "messageId"},
    "data-sources": {"type", "data"},
    "data-report": {"type", "data"},
    "source-document": {"type", "sourceId", "mediaType", "title"},
    "start-step": {"type"},
    "text-start": {"type", "id"},
    "text-delta": {"type", "id", "delta"},
    "text-end": {"type", "id"},
    "finish-step": {"type"},
    "finish": {"type"},
}


@pytest.fixture(scope="module")
def client(demo_server: ServeProcess) -> httpx.Client:
    with httpx.Client(base_url=demo_server.url, headers=AUTH, timeout=180) as c:
        yield c


def post(client: httpx.Client, path: str, body: Any, **kw: Any) -> httpx.Response:
    return client.post(path, json=body, **kw)


# -- health, docs ---------------------------------------------------------------------------


def test_healthz_and_readyz_answer_without_a_key(demo_server: ServeProcess) -> None:
    assert httpx.get(demo_server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(demo_server.url + "/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"models", "chroma", "llm"}
    assert all(check["ok"] for check in body["checks"].values())
    assert "33 chunks" in body["checks"]["chroma"]["detail"]


def test_openapi_documents_every_endpoint_with_descriptions_and_examples(
    demo_server: ServeProcess,
) -> None:
    spec = httpx.get(demo_server.url + "/openapi.json").json()
    for path in ("/v1/chat", "/v1/retrieve", "/v1/rerank", "/v2/rerank", "/healthz", "/readyz"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    query = schemas["RetrieveRequest"]["properties"]["query"]
    assert query["description"] and query["examples"]
    assert schemas["RetrieveRequest"]["examples"]
    assert schemas["SourceOut"]["properties"]["rerank_label"]["description"]
    chat = spec["paths"]["/v1/chat"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert "422" in chat["responses"] and "503" in chat["responses"]
    docs = httpx.get(demo_server.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -- /v1/retrieve ---------------------------------------------------------------------------


def test_retrieve_returns_reranked_sources_with_their_first_stage_rank(
    client: httpx.Client,
) -> None:
    r = post(client, "/v1/retrieve", {"query": PRUNING})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and not body["abstained"] and not body["reranker_failed"]
    sources = body["sources"]
    assert [s["rank"] for s in sources] == [1, 2, 3]
    assert sources[0]["title"] == PRUNING_TITLE
    scores = [s["rerank_score"] for s in sources]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    assert sorted({s["retrieval_rank"] for s in sources}) == sorted(
        s["retrieval_rank"] for s in sources
    )
    assert all(1 <= s["retrieval_rank"] <= 8 and s["retrieval_score"] is not None for s in sources)
    assert all(s["rerank_label"] is None for s in sources)  # the cross-encoder gives no label
    assert not any(k.startswith("rerank_") or k == "file_path" for k in sources[0]["metadata"])
    report = body["report"]
    assert report["query"] == PRUNING
    assert (report["n_candidates"], report["n_returned"], report["n_judged"]) == (8, 3, 8)
    assert report["cross_encoder"]["pairs"] == 8 and report["llm"] is None
    assert body["timings"]["retrieve_s"] > 0 and body["timings"]["rerank_s"] > 0


def test_retrieve_abstains_when_nothing_is_relevant(client: httpx.Client) -> None:
    body = post(client, "/v1/retrieve", {"query": OFF_TOPIC, "top_n": 2}).json()
    assert body["status"] == "abstained"
    assert body["abstained"] is True and body["reranker_failed"] is False
    assert len(body["sources"]) == 2  # still shown, marked as not relevant
    assert body["report"]["best_score"] < 0.5


def test_32_concurrent_requests_each_get_their_own_sources_and_report(
    client: httpx.Client, demo_server: ServeProcess
) -> None:
    queries = [
        PRUNING,
        "why are my apples so small?",
        "is Apple stock a good buy after the earnings report?",
        OFF_TOPIC,
        "how do I graft a fruit tree?",
        "recipe for apple pie",
        "how to keep MacBook battery healthy",
        "pests that attack orchards",
    ]
    alone = {}
    for q in queries:
        body = post(client, "/v1/retrieve", {"query": q}).json()
        alone[q] = [s["id"] for s in body["sources"]]

    async def together() -> list[tuple[str, dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=demo_server.url, headers=AUTH, timeout=180) as ac:

            async def one(q: str) -> tuple[str, dict[str, Any]]:
                # A polite client: a request refused for the wait it would face (503) comes
                # back after its Retry-After.
                r = await ac.post("/v1/retrieve", json={"query": q})
                while r.status_code == 503 and r.json()["code"] == "overloaded":
                    await asyncio.sleep(float(r.headers["retry-after"]))
                    r = await ac.post("/v1/retrieve", json={"query": q})
                assert r.status_code == 200, r.text
                return q, r.json()

            return await asyncio.gather(*(one(queries[i % 8]) for i in range(32)))

    results = asyncio.run(together())
    assert len(results) == 32
    for q, body in results:
        assert body["query"] == q and body["report"]["query"] == q
        assert [s["id"] for s in body["sources"]] == alone[q]
        assert body["report"]["n_candidates"] == 8 and body["report"]["n_returned"] == 3


# -- /v1/rerank (Cohere) --------------------------------------------------------------------


DOCS = [
    "Apple Inc. shares rose 2% after record iPhone revenue.",
    "Prune apple trees in late winter while they are dormant; remove dead wood first.",
    "Slice tart apples, add sugar and cinnamon, and bake in a butter crust.",
]


def test_rerank_speaks_cohere_json(client: httpx.Client) -> None:
    body = {
        "model": "rerank-v3.5",
        "query": PRUNING,
        "documents": [DOCS[0], {"text": DOCS[1], "url": "https://example.org/prune"}, DOCS[2]],
        "top_n": 2,
        "return_documents": True,
    }
    r = post(client, "/v1/rerank", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert next(x["index"] for x in out["results"]) == 1
    assert len(out["results"]) == 2
    assert out["results"][0]["document"] == {"text": DOCS[1], "url": "https://example.org/prune"}
    assert out["results"][0]["relevance_score"] > out["results"][1]["relevance_score"]
    assert out["meta"]["api_version"] == {"version": "1"}
    assert out["meta"]["report"]["n_candidates"] == 3
    uuid.UUID(out["id"])
    no_docs = post(client, "/v1/rerank", {"query": PRUNING, "documents": DOCS}).json()
    assert "document" not in no_docs["results"][0] and len(no_docs["results"]) == 3


def test_a_document_with_nothing_to_score_comes_back_and_top_n_above_top_k_gives_top_k(
    client: httpx.Client,
) -> None:
    # Before: an object document without `text` was a 422 for the whole request, and a top_n
    # above top_k a 422 although the schema cannot say so (every schema-valid request is served).
    body = {"query": PRUNING, "documents": [DOCS[1], {"title": "no text"}, DOCS[0]]}
    out = post(client, "/v1/rerank", body).json()
    assert [x["index"] for x in out["results"]] == [0, 2, 1]  # nothing lost, unjudged last
    assert out["results"][-1]["relevance_score"] is None  # null, not missing: the schema's shape
    assert out["meta"]["report"]["n_skipped"] == 1
    v2 = post(client, "/v2/rerank", {"query": PRUNING, "documents": ["", DOCS[1]]}).json()
    assert [(x["index"], x["relevance_score"] is None) for x in v2["results"]] == [
        (1, False),
        (0, True),
    ]
    r = post(client, "/v1/retrieve", {"query": PRUNING, "top_k": 4, "top_n": 9})
    assert r.status_code == 200, r.text
    assert len(r.json()["sources"]) == 4


def test_a_real_cohere_client_reranks_through_the_server(demo_server: ServeProcess) -> None:
    import cohere

    v1 = cohere.Client(api_key=API_KEY, base_url=demo_server.url, timeout=120)
    response = v1.rerank(
        model="rerank-v3.5", query=PRUNING, documents=DOCS, top_n=2, return_documents=True
    )
    assert next(r.index for r in response.results) == 1
    assert response.results[0].document is not None
    assert response.results[0].document.text == DOCS[1]
    assert 0.0 <= response.results[1].relevance_score < response.results[0].relevance_score

    v2 = cohere.ClientV2(api_key=API_KEY, base_url=demo_server.url, timeout=120)
    response2 = v2.rerank(model="rerank-v3.5", query=PRUNING, documents=DOCS)
    assert next(r.index for r in response2.results) == 1 and len(response2.results) == 3

    wrong = cohere.Client(api_key="not-the-key", base_url=demo_server.url, timeout=120)
    with pytest.raises(cohere.core.api_error.ApiError) as raised:
        wrong.rerank(query=PRUNING, documents=DOCS)
    assert raised.value.status_code == 401


# -- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": API_KEY},
        {"Authorization": "Basic x"},
    ],
    ids=["none", "wrong-key", "no-scheme", "basic"],
)
def test_the_api_key_is_required_on_the_api_and_metrics(
    demo_server: ServeProcess, headers: dict[str, str]
) -> None:
    for method, path in (("POST", "/v1/retrieve"), ("POST", "/v1/chat"), ("GET", "/metrics")):
        r = httpx.request(method, demo_server.url + path, headers=headers, json={"query": "x"})
        assert r.status_code == 401, (path, r.text)
        assert r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in r.text
    assert API_KEY not in demo_server.output()  # never logged


# -- limits and errors ----------------------------------------------------------------------


LIMIT_CASES = [
    ("/v1/retrieve", {"query": "   "}, 422, "query"),
    ("/v1/retrieve", {"query": "x" * (MAX_QUERY_CHARS + 1)}, 422, "query"),
    ("/v1/retrieve", {"query": PRUNING, "topn": 3}, 422, "topn"),
    ("/v1/retrieve", {"query": PRUNING, "top_k": 0}, 422, "top_k"),
    ("/v1/retrieve", {"query": PRUNING, "top_k": 1000}, 422, "top_k"),
    ("/v1/retrieve", {}, 422, "query"),
    ("/v1/rerank", {"query": PRUNING, "documents": []}, 422, "documents"),
    ("/v1/rerank", {"query": PRUNING, "documents": ["d"] * 51}, 422, "documents"),
    ("/v1/rerank", {"query": PRUNING, "documents": ["d", "x" * 2001]}, 422, "documents[1]"),
    (
        "/v1/rerank",
        {"query": PRUNING, "documents": ["d", {"text": "t", "n": {"a": 1}}], "rank_fields": ["n"]},
        422,
        "documents[1].n",
    ),
    ("/v1/rerank", {"query": PRUNING, "documents": ["d", 7]}, 422, "documents[1]"),
    ("/v1/rerank", {"query": PRUNING, "documents": ["d"], "top_n": 0}, 422, "top_n"),
    ("/v1/chat", {"messages": []}, 422, "messages"),
    ("/v1/chat", {"messages": [{"role": "user", "content": "q"}] * 7}, 422, "messages"),
    ("/v1/chat", {"messages": [{"role": "assistant", "content": "q"}]}, 422, "messages[0].role"),
    ("/v1/chat", {"messages": [{"role": "system", "content": "q"}]}, 422, "messages[0].role"),
    ("/v1/chat", {"messages": [{"role": "user", "content": ""}]}, 422, "messages[0].content"),
    (
        "/v1/chat",
        {"messages": [{"role": "user", "content": "q"}], "session_id": "x"},
        422,
        "session_id",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), LIMIT_CASES)
def test_bad_input_is_a_4xx_json_error_that_names_the_field(
    client: httpx.Client, path: str, body: Any, status: int, field: str
) -> None:
    r = post(client, path, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()
    assert error["code"] == "invalid_request"
    assert error["field"] == field, error
    assert error["message"].startswith(field)
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_malformed_json_oversized_bodies_and_unknown_paths_are_json_errors(
    client: httpx.Client,
) -> None:
    bad = client.post(
        "/v1/retrieve", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request")
    big = post(client, "/v1/rerank", {"query": PRUNING, "documents": ["x" * 1000] * 250})
    assert (big.status_code, big.json()["code"]) == (413, "payload_too_large")
    missing = client.get("/v1/nothing-here")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    wrong_method = client.get("/v1/retrieve")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")


# -- /v1/chat -------------------------------------------------------------------------------


def chat_stream(client: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    with client.stream("POST", "/v1/chat", json=body) as r:
        text = "".join(r.iter_text())
    return r, streaming.parse(text)


def check_stream_shape(parts: list[Any]) -> list[str]:
    """The AI SDK UI message stream order, each part with exactly its protocol's keys."""
    assert parts[-1] == "[DONE]"
    kinds = [p["type"] for p in parts[:-1]]
    for part in parts[:-1]:
        assert set(part) == PART_KEYS[part["type"]], part
    n_sources = len(parts[1]["data"]["sources"])
    expected_head = ["start", "data-sources", *["source-document"] * n_sources, "start-step"]
    assert kinds[: len(expected_head)] == expected_head
    assert kinds[len(expected_head)] == "text-start"
    assert kinds[-4:] == ["text-end", "finish-step", "data-report", "finish"]
    deltas = kinds[len(expected_head) + 1 : -4]
    assert deltas and set(deltas) == {"text-delta"}
    text_ids = {p["id"] for p in parts[:-1] if p["type"].startswith("text-")}
    assert len(text_ids) == 1
    return kinds


def test_chat_streams_sources_then_answer_deltas_then_the_report(client: httpx.Client) -> None:
    r, parts = chat_stream(client, {"messages": [{"role": "user", "content": PRUNING}]})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
    check_stream_shape(parts)
    sources = parts[1]["data"]
    assert sources["status"] == "answered" and not sources["abstained"]
    assert PRUNING_TITLE in [s["title"] for s in sources["sources"]]
    documents = [p for p in parts if isinstance(p, dict) and p["type"] == "source-document"]
    assert [d["sourceId"] for d in documents] == [s["id"] for s in sources["sources"]]
    answer = "".join(p["delta"] for p in parts[:-1] if p["type"] == "text-delta")
    assert answer.strip() and answer != ABSTAIN_MESSAGE
    report = parts[-3]["data"]
    assert report["status"] == "answered"
    assert report["report"]["n_candidates"] == 8 and report["report"]["n_returned"] == 3
    assert report["timings"]["answer_s"] > 0 and report["timings"]["condense_s"] is None
    assert parts[0]["messageId"] in parts[len(documents) + 3]["id"]


def test_chat_abstains_instead_of_inventing_an_answer(client: httpx.Client) -> None:
    r, parts = chat_stream(client, {"messages": [{"role": "user", "content": OFF_TOPIC}]})
    assert r.status_code == 200
    check_stream_shape(parts)
    assert parts[1]["data"]["abstained"] is True and parts[1]["data"]["status"] == "abstained"
    answer = "".join(p["delta"] for p in parts[:-1] if p["type"] == "text-delta")
    assert answer == ABSTAIN_MESSAGE
    assert parts[-3]["data"]["timings"]["answer_s"] is None  # the LLM was not asked


def test_chat_without_streaming_uses_the_clients_history(client: httpx.Client) -> None:
    body = {
        "stream": False,
        "messages": [
            {"role": "user", "parts": [{"type": "text", "text": "Tell me about apple trees."}]},
            {"role": "assistant", "content": "Apple trees need pruning and feeding."},
            {"role": "user", "content": "When should I prune them?"},
        ],
    }
    r = post(client, "/v1/chat", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "answered" and out["answer"].strip()
    assert out["timings"]["condense_s"] is not None  # the history made the engine condense
    assert out["query"] and out["query"] != "When should I prune them?"
    assert out["report"]["query"] == out["query"]
    assert out["id"].startswith("msg_") and out["session_id"] is None
    assert len(out["sources"]) == 3


def test_a_session_keeps_the_history_on_the_server(client: httpx.Client) -> None:
    session = str(uuid.uuid4())
    first = post(
        client,
        "/v1/chat",
        {
            "stream": False,
            "session_id": session,
            "messages": [{"role": "user", "content": OFF_TOPIC}],
        },
    ).json()
    assert first["status"] == "abstained" and first["timings"]["condense_s"] is None
    second = post(
        client,
        "/v1/chat",
        {
            "stream": False,
            "session_id": session,
            "messages": [{"role": "user", "content": "Fine. How do I prune apple trees?"}],
        },
    ).json()
    assert second["session_id"] == session
    assert second["timings"]["condense_s"] is not None  # the stored turn came back as history
    other = post(
        client,
        "/v1/chat",
        {
            "stream": False,
            "session_id": str(uuid.uuid4()),
            "messages": [{"role": "user", "content": OFF_TOPIC}],
        },
    ).json()
    assert other["timings"]["condense_s"] is None  # another session starts empty
    metrics = client.get("/metrics").text
    assert _metric(metrics, "llamaindex_rerankers_sessions") >= 2


# -- /metrics -------------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or (
            want
            and key.startswith(name + "{")
            and all(f'{k}="{v}"' in key for k, v in labels.items())
        ):
            return float(value)
    raise AssertionError(f"{name}{{{want}}} not in the metrics:\n{text[:3000]}")


def test_metrics_count_requests_stages_and_refusals(client: httpx.Client) -> None:
    post(client, "/v1/retrieve", {"query": PRUNING})
    httpx.post(client.base_url.join("/v1/retrieve"), json={"query": PRUNING})  # no key: 401
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        _metric(
            text, "llamaindex_rerankers_http_requests_total", endpoint="/v1/retrieve", status="200"
        )
        >= 1
    )
    assert (
        _metric(
            text,
            "llamaindex_rerankers_http_request_duration_seconds_count",
            endpoint="/v1/retrieve",
        )
        >= 1
    )
    assert (
        _metric(text, "llamaindex_rerankers_stage_duration_seconds_count", stage="cross_encoder")
        >= 1
    )
    assert _metric(text, "llamaindex_rerankers_stage_duration_seconds_count", stage="retrieve") >= 1
    assert _metric(text, "llamaindex_rerankers_rejected_requests_total", reason="unauthorized") >= 1
    assert _metric(text, "llamaindex_rerankers_rerank_outcomes_total", outcome="ok") >= 1
    assert _metric(text, "llamaindex_rerankers_in_flight", gate="search") == 0
    assert "llamaindex_rerankers_llm_judge_calls_total" in text
    assert json.dumps(API_KEY) not in text

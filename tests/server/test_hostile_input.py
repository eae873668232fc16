"""Hostile and malformed input: every endpoint answers a JSON 4xx that names the field, before
any model runs, and the OpenAPI schema states the limits and statuses the server enforces.

These run the real app in-process without loading a backend: a request refused by validation
never reaches one. The same requests against a real serve process, with the models loaded, are
in ``test_schemathesis.py`` (generated) and ``test_api.py`` (by hand).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llamaindex_rerankers.server import ServerSettings, create_app

API = ("/v1/retrieve", "/v1/rerank", "/v2/rerank", "/v1/chat")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = ServerSettings(
        persist_dir="unused", max_documents=50, max_query_chars=300, max_messages=6, max_top_k=40
    )
    # Not entered as a context manager: the lifespan (model loading) never runs, so a request
    # that got past validation would fail with 503 not_ready, never with a 200.
    yield TestClient(create_app(settings), raise_server_exceptions=False)


def raw(client: TestClient, path: str, body: bytes, kind: str = "application/json") -> Any:
    return client.post(path, content=body, headers={"content-type": kind})


def check_error(r: Any, status: int, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error: dict[str, Any] = r.json()
    assert error["field"] == field, error
    if field is not None:
        assert error["message"].startswith(field), error
    assert "Traceback" not in r.text
    return error


SURROGATES = [
    ("/v1/retrieve", b'{"query": "apple \\ud800 trees"}', "query"),
    ("/v1/rerank", b'{"query": "q\\udfff", "documents": ["a"]}', "query"),
    ("/v1/rerank", b'{"query": "q", "documents": ["a", "b\\ud800"]}', "documents[1]"),
    (
        "/v1/rerank",
        b'{"query": "q", "documents": [{"text": "a", "meta": {"k\\ud800": 1}}]}',
        "documents[0].meta.k\\ud800",  # the key, written so that the error is valid JSON
    ),
    ("/v2/rerank", b'{"query": "q", "documents": ["\\ud800"]}', "documents[0]"),
    ("/v1/chat", b'{"messages": [{"role": "user", "content": "\\ud83d"}]}', "messages[0].content"),
    (
        "/v1/chat",
        b'{"messages": [{"role": "user", "parts": [{"type": "text", "text": "\\udc00"}]}]}',
        "messages[0].parts[0].text",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), SURROGATES)
def test_an_unpaired_surrogate_is_a_422_naming_the_field(
    client: TestClient, path: str, body: bytes, field: str
) -> None:
    # Before: a 500 from the tokenizer on /v1/rerank and /v2/rerank, and a 503 "retry later"
    # after 8 s of retries on /v1/retrieve and /v1/chat.
    error = check_error(raw(client, path, body), 422, field)
    assert "surrogate" in error["message"]


def test_nesting_beyond_the_limit_is_refused_before_reranking(client: TestClient) -> None:
    # Before: the reranking ran, then writing the echoed document failed with a 500
    # ("Maximum serialization depth exceeded") at depth 300-900.
    deep: dict[str, Any] = {"text": "t"}
    inner = deep
    for _ in range(400):
        inner["x"] = {}
        inner = inner["x"]
    r = client.post(
        "/v1/rerank", json={"query": "q", "documents": [deep], "return_documents": True}
    )
    error = check_error(r, 422, error_field(r))
    assert error["field"].startswith("documents[0].x.x")
    assert "nested deeper than" in error["message"]


def error_field(r: Any) -> Any:
    return r.json().get("field")


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_numbers_json_cannot_write_back_are_refused(client: TestClient, number: bytes) -> None:
    body = b'{"query": "q", "documents": [{"text": "a", "n": ' + number + b"}]}"
    error = check_error(raw(client, "/v1/rerank", body), 422, "documents[0].n")
    assert "JSON has no way to write" in error["message"]


STRICT = [
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": True}, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": 1}, "return_documents"),
    ("/v1/retrieve", {"query": "q", "top_k": "5"}, "top_k"),
    ("/v1/retrieve", {"query": "q", "top_k": 2.5}, "top_k"),
    ("/v1/chat", {"messages": [{"role": "user", "content": "q"}], "stream": 0}, "stream"),
    ("/v1/chat", {"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
]


@pytest.mark.parametrize(("path", "body", "field"), STRICT)
def test_values_of_the_wrong_type_are_refused_not_coerced(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    # Before: "top_n": true was read as 1 and "stream": 0 as false.
    check_error(client.post(path, json=body), 422, field)


LIMITS = [
    ("/v1/retrieve", {"query": " \t\n"}, "query", "whitespace"),
    ("/v1/retrieve", {"query": "q", "top_n": 0}, "top_n", ""),
    ("/v1/rerank", {"query": "q", "documents": []}, "documents", "empty"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "rank_fields": []}, "rank_fields", ""),
    ("/v2/rerank", {"query": "q", "documents": [{"text": "a"}]}, "documents[0]", "string"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "return_documents": True}, None, ""),
    ("/v1/chat", {"messages": []}, "messages", "empty"),
]


@pytest.mark.parametrize(("path", "body", "field", "words"), LIMITS)
def test_limits_the_schema_states_are_the_ones_enforced(
    client: TestClient, path: str, body: dict[str, Any], field: str | None, words: str
) -> None:
    r = client.post(path, json=body)
    error = check_error(r, 422, field if field is not None else error_field(r))
    assert words in error["message"].lower()


def test_rank_fields_must_name_text_not_objects(client: TestClient) -> None:
    # Before: an object's Python repr was scored as the document's text.
    body = {
        "query": "q",
        "documents": [{"text": "a", "meta": {"author": "x"}}],
        "rank_fields": ["text", "meta"],
    }
    check_error(client.post("/v1/rerank", json=body), 422, "documents[0].meta")


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "text/csv"])
@pytest.mark.parametrize("path", API)
def test_a_body_that_is_not_json_is_a_415(client: TestClient, path: str, kind: str) -> None:
    # Before: 422 "Input should be a valid dictionary".
    r = raw(client, path, b'{"query": "q"}', kind)
    error = check_error(r, 415, None)
    assert error["code"] == "unsupported_media_type"
    assert "application/json" in error["message"]


def test_json_with_a_charset_or_a_json_suffix_is_json(client: TestClient) -> None:
    for kind in ("application/json; charset=utf-8", "application/vnd.api+json"):
        r = raw(client, "/v1/retrieve", b'{"query": " "}', kind)
        assert r.status_code == 422, (kind, r.text)


def test_the_schema_states_the_servers_limits_and_every_status(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    models = schema["components"]["schemas"]

    def branch(prop: dict[str, Any], kind: str) -> dict[str, Any]:
        found: dict[str, Any] = next(b for b in prop.get("anyOf", [prop]) if b["type"] == kind)
        return found

    retrieve = models["RetrieveRequest"]["properties"]
    assert retrieve["query"]["maxLength"] == 300 and retrieve["query"]["minLength"] == 1
    assert retrieve["query"]["pattern"] == r"\S"
    assert branch(retrieve["top_k"], "integer")["maximum"] == 40
    assert branch(retrieve["top_k"], "integer")["minimum"] == 1
    assert branch(retrieve["top_n"], "integer")["minimum"] == 1
    for name in ("RerankRequest", "RerankRequestV2"):
        documents = models[name]["properties"]["documents"]
        assert (documents["minItems"], documents["maxItems"]) == (1, 50)
    v2_items = models["RerankRequestV2"]["properties"]["documents"]["items"]
    assert v2_items["type"] == "string"  # v2 takes strings only
    assert "return_documents" not in models["RerankRequestV2"]["properties"]
    chat = models["ChatRequest"]["properties"]
    assert (chat["messages"]["minItems"], chat["messages"]["maxItems"]) == (1, 6)
    assert chat["stream"]["type"] == "boolean"
    for path in API:
        responses = schema["paths"][path]["post"]["responses"]
        for status in ("200", "400", "401", "413", "415", "422", "500", "503", "504"):
            assert status in responses, (path, status)
    for path in ("/v1/rerank", "/v2/rerank", "/v1/chat"):
        assert "501" in schema["paths"][path]["post"]["responses"]
    assert "401" in schema["paths"]["/metrics"]["get"]["responses"]


def test_every_text_the_schema_bounds_is_checked_even_when_not_read(client: TestClient) -> None:
    # Found by Schemathesis' negative mode: an object document's `text` over the limit was
    # accepted when rank_fields scored another field, and a part over the limit when the
    # message also had `content`.
    long = "x" * 20001
    body = {"query": "q", "documents": [{"text": long, "t": "a"}], "rank_fields": ["t"]}
    check_error(client.post("/v1/rerank", json=body), 422, "documents[0].text")
    message = {"role": "user", "content": "q", "parts": [{"type": "text", "text": "y" * 301}]}
    check_error(
        client.post("/v1/chat", json={"messages": [message]}), 422, "messages[0].parts[0].text"
    )

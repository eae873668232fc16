"""The server's pure parts, without a server: settings, admission gate, sessions, the stream
encoder, source records, field paths, and the documentation of every setting."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers import types
from llamaindex_rerankers.cli.serve import add_serve_arguments, settings_from_args
from llamaindex_rerankers.presentation import text_snippet
from llamaindex_rerankers.server import schemas, streaming
from llamaindex_rerankers.server.errors import field_path
from llamaindex_rerankers.server.limits import AdmissionGate, Overloaded
from llamaindex_rerankers.server.sessions import SessionStore
from llamaindex_rerankers.server.settings import (
    ServerSettings,
    env_name,
    settings_markdown,
    settings_table,
)
from llamaindex_rerankers.server.sources import source_records

REPO = Path(__file__).resolve().parents[2]


# -- settings ---------------------------------------------------------------------------------


def test_settings_come_from_arguments_then_environment_then_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_SERVE_TOP_K", "40")
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_SERVE_TOP_N", "7")
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_SERVE_CORS_ORIGINS", "http://a.test, http://b.test")
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_SERVE_ANSWERS", "false")
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_SERVE_API_KEY", "s3cr3t-key")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = ["--top-n", "3", "--persist-dir", "db", "--llm-api-key", "llm-s3cr3t"]
    settings = settings_from_args(parser.parse_args(args))
    assert (settings.top_k, settings.top_n, settings.persist_dir) == (40, 3, "db")
    assert settings.cors_origins == ("http://a.test", "http://b.test")
    assert settings.answers is False and settings.api_key == "s3cr3t-key"
    assert settings.host == "127.0.0.1" and settings.max_queue == 32
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.public())
    assert settings.public()["api_key"] == settings.public()["llm_api_key"] == "set"


def test_there_is_no_api_key_argument() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--api-key", "secret"])


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("TOP_N", "0", "at least 1"),
        ("PORT", "70000", "port number"),
        ("ABSTAIN_BELOW", "2", "[0, 1]"),
        ("RERANKER", "sbert", "one of"),
        ("ANSWERS", "maybe", "true or false"),
    ],
)
def test_a_bad_environment_variable_is_named(env: str, value: str, words: str) -> None:
    with pytest.raises(ValueError, match="LLAMAINDEX_RERANKERS_SERVE_" + env) as raised:
        ServerSettings.from_env({"LLAMAINDEX_RERANKERS_SERVE_" + env: value})
    assert words in str(raised.value)


def test_settings_reject_top_n_above_top_k_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="top_n"):
        ServerSettings(top_k=3, top_n=5)
    with pytest.raises(ValueError, match="unknown server settings: top_m"):
        ServerSettings.from_env({}, top_m=3)


def test_the_constructor_reads_its_arguments_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_SERVE_TOP_K", "40")
    assert ServerSettings().top_k == 20
    assert ServerSettings.from_env().top_k == 40


def test_a_settings_error_never_repeats_a_secret() -> None:
    with pytest.raises(ValueError, match="top_n") as raised:
        ServerSettings(top_k=3, top_n=5, api_key="s3cr3t-key", llm_api_key="llm-s3cr3t")
    assert "s3cr3t" not in str(raised.value)


def test_the_settings_table_in_the_docs_is_the_one_the_fields_give() -> None:
    doc = (REPO / "docs" / "guides" / "serving.md").read_text()
    assert settings_markdown() in doc, "paste settings_markdown() into docs/guides/serving.md"


def test_every_setting_is_documented_with_its_variable_and_argument() -> None:
    doc = (REPO / "docs" / "guides" / "serving.md").read_text()
    for row in settings_table():
        if row["env"]:
            assert row["env"] in doc, row["name"]
        if row["flag"]:
            assert row["flag"] in doc, row["name"]
    assert env_name("api_key") in doc


# -- the admission gate -------------------------------------------------------------------------


def test_the_gate_admits_limit_plus_queue_and_refuses_the_rest_at_once() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("search", limit=1, queue=1)
        release = asyncio.Event()
        order: list[str] = []

        async def hold(name: str) -> None:
            async with gate.slot():
                order.append(name)
                await release.wait()

        first = asyncio.create_task(hold("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(hold("second"))
        await asyncio.sleep(0)
        assert (gate.active, gate.waiting) == (1, 1)
        with pytest.raises(Overloaded):
            await gate.acquire()
        release.set()
        await asyncio.gather(first, second)
        assert order == ["first", "second"] and (gate.active, gate.waiting) == (0, 0)
        ticket = await gate.acquire()
        ticket.release()
        ticket.release()  # idempotent
        assert gate.active == 0

    asyncio.run(scenario())


def test_a_waiter_cancelled_in_the_queue_gives_its_place_back() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("chat", limit=1, queue=1)
        held = await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.active, gate.waiting) == (1, 0)
        held.release()
        (await gate.acquire()).release()

    asyncio.run(scenario())


# -- sessions -----------------------------------------------------------------------------------


def test_sessions_expire_evict_the_least_recently_used_and_keep_the_newest_messages() -> None:
    now = [0.0]
    store = SessionStore(max_sessions=2, ttl=10.0, max_messages=3, clock=lambda: now[0])
    store.append("a", [{"role": "user", "content": str(i)} for i in range(5)])
    assert [m["content"] for m in store.history("a")] == ["2", "3", "4"]
    store.append("b", [{"role": "user", "content": "b"}])
    store.history("a")  # a is now the most recently used
    store.append("c", [{"role": "user", "content": "c"}])
    assert store.history("b") == [] and store.history("a") and len(store) == 2
    now[0] = 9.0
    store.history("c")
    now[0] = 15.0  # a was last used at 0 (expires 10), c at 9 (expires 19)
    assert store.history("a") == [] and store.history("c") and len(store) == 1
    copy = store.history("c")
    copy[0]["content"] = "changed"
    assert store.history("c")[0]["content"] == "c"


# -- the stream encoder -------------------------------------------------------------------------


def test_stream_parts_round_trip_through_sse() -> None:
    parts = [
        streaming.start("msg_1"),
        streaming.data("sources", {"sources": [], "text": "a\nb"}),
        streaming.source_document("doc#0", "Title"),
        streaming.text_delta("t", "naïve\n\ntext"),
        streaming.FINISH,
    ]
    body = "".join(streaming.sse(p) for p in parts) + streaming.DONE
    assert all(event.startswith("data: ") for event in body.split("\n\n") if event)
    assert streaming.parse(body) == [*parts, "[DONE]"]


# -- source records and field paths -------------------------------------------------------------


def test_source_records_hide_server_paths_and_expose_ranks_scores_and_labels() -> None:
    node = TextNode(
        text="# Pruning Apple Trees\n\nPrune in late winter.",
        id_="pruning.md#0",
        metadata={
            "file_path": "/srv/secret/pruning.md",
            "file_name": "pruning.md",
            "rerank_score": 0.9,
            "rerank_label": "very likely",
            "rerank_label_probs": {"unlikely": 0.1, "likely": 0.2, "very likely": 0.7},
            "rerank_source": "logprobs",
            "retrieval_rank": 4,
            "retrieval_score": 0.5,
        },
    )
    (record,) = source_records([NodeWithScore(node=node, score=0.9)])
    assert record["title"] == "Pruning Apple Trees" and record["snippet"] == "Prune in late winter."
    assert record["metadata"] == {"file_name": "pruning.md"}
    assert (record["rank"], record["retrieval_rank"], record["retrieval_score"]) == (1, 4, 0.5)
    assert record["rerank_label"] == "very likely" and record["rerank_label_probs"]["likely"] == 0.2


def test_source_records_carry_the_injection_flag_null_when_no_detector_ran() -> None:
    def record(**meta: object) -> dict[str, object]:
        node = TextNode(text="Prune in winter.", id_="a#0", metadata=dict(meta))
        return source_records([NodeWithScore(node=node, score=0.5)])[0]

    unchecked = record(rerank_score=0.5)
    assert unchecked["rerank_injection_suspected"] is None
    assert unchecked["rerank_injection_signals"] == []
    clean = record(rerank_score=0.5, rerank_injection_suspected=False)
    assert clean["rerank_injection_suspected"] is False and clean["rerank_injection_signals"] == []
    flagged = record(
        rerank_score=0.0,
        rerank_injection_suspected=True,
        rerank_injection_signals=["override", "hidden"],
    )
    assert flagged["rerank_injection_suspected"] is True
    assert flagged["rerank_injection_signals"] == ["override", "hidden"]
    assert flagged["metadata"] == {}  # the flags are fields, not metadata


@pytest.mark.parametrize("reranker", ["cross-encoder", "llm", "cascade"])
@pytest.mark.parametrize("detect", [True, False])
def test_the_servers_reranker_detects_injections_unless_told_not_to(
    reranker: str, detect: bool
) -> None:
    from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint
    from llamaindex_rerankers.server.backend import _build_reranker

    settings = ServerSettings(reranker=reranker, detect_injection=detect)
    endpoint = LLMEndpoint(base_url="http://127.0.0.1:9/v1", model="m", api_key="k")
    built = _build_reranker(settings, endpoint)
    judge = getattr(built, "second", built)  # the cascade's LLM stage flags what it keeps
    assert judge.detect_injection is detect  # type: ignore[union-attr]
    assert ServerSettings().detect_injection is True


def test_serve_flags_choose_the_rerank_service_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llamaindex_rerankers.remote import RemoteReranker
    from llamaindex_rerankers.server.backend import _build_reranker

    monkeypatch.setenv("LLAMAINDEX_RERANKERS_REMOTE_URL", "http://from-env:1")
    monkeypatch.setenv("LLAMAINDEX_RERANKERS_REMOTE_API", "cohere")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = ["--reranker", "remote", "--remote-url", "http://rerank:8080", "--remote-api", "tei"]
    settings = settings_from_args(parser.parse_args([*args, "--remote-model", "bge"]))
    built = _build_reranker(settings, None)
    assert isinstance(built, RemoteReranker)
    assert (built.base_url, built.api, built.model) == ("http://rerank:8080", "tei", "bge")
    # Without the flags, the library's own variables still apply.
    built = _build_reranker(ServerSettings(reranker="remote"), None)
    assert isinstance(built, RemoteReranker)
    assert (built.base_url, built.api) == ("http://from-env:1", "cohere")
    with pytest.raises(SystemExit):  # argparse names the choices
        parser.parse_args(["--remote-api", "jina"])
    with pytest.raises(ValueError, match="cohere, cohere-v1, tei"):
        ServerSettings(remote_api="jina")  # type: ignore[arg-type]


def test_snippets_are_cut_at_a_word() -> None:
    text = "word " * 100
    snippet = text_snippet(text, limit=22)
    assert snippet == "word word word word …"


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("body", "messages", 2, "content"), "messages[2].content"),
        (("body", "documents", 3, "str"), "documents[3]"),
        (("body", "documents", 3, "RerankDocument", "text"), "documents[3].text"),
        (("body",), None),
        (("body", "query"), "query"),
    ],
)
def test_validation_locations_become_field_paths(loc: tuple[object, ...], path: str | None) -> None:
    assert field_path(loc) == path


def test_settings_table_covers_every_field() -> None:
    assert [r["name"] for r in settings_table()] == [
        f.name for f in dataclasses.fields(ServerSettings)
    ]


# -- CORS (in process: preflight requests need no models) ------------------------------------


def test_cors_is_off_by_default_and_allows_only_the_configured_origins() -> None:
    from fastapi.testclient import TestClient

    from llamaindex_rerankers.server import create_app

    preflight = {
        "Origin": "https://app.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    closed = TestClient(create_app(ServerSettings(persist_dir="unused")))
    r = closed.options("/v1/retrieve", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    app = create_app(
        ServerSettings(persist_dir="unused", cors_origins=("https://app.example.org",))
    )
    opened = TestClient(app)
    r = opened.options("/v1/retrieve", headers=preflight)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example.org"
    other = opened.options("/v1/retrieve", headers={**preflight, "Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in other.headers


def test_a_chunked_body_over_the_limit_is_a_413_json_error() -> None:
    from fastapi.testclient import TestClient

    from llamaindex_rerankers.server import create_app

    client = TestClient(create_app(ServerSettings(persist_dir="unused", max_body_bytes=1000)))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"query": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    r = client.post("/v1/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "payload_too_large"


def test_the_serve_arguments_need_no_server_extra_and_create_app_names_it() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ('fastapi', 'uvicorn', 'prometheus_client', 'starlette'):\n"
        "    sys.modules[m] = None\n"
        "import argparse\n"
        "from llamaindex_rerankers.cli.serve import add_serve_arguments\n"
        "p = argparse.ArgumentParser(); add_serve_arguments(p)\n"
        "assert p.parse_args(['--demo']).demo\n"
        "try:\n"
        "    from llamaindex_rerankers.server import create_app\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'llamaindex-rerankers[server]'" in out.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--persist-dir", "/nonexistent/index"], "no index at --persist-dir"),
        ([], "serve needs an index"),
        (["--demo", "--chroma-host", "127.0.0.1"], "drop --chroma-host"),
        (["--demo", "--top-n", "30"], "top_n (30) is larger than top_k (20)"),
    ],
)
def test_serve_fails_in_one_line_with_exit_code_2(args: list[str], words: str) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "llamaindex_rerankers.server", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], out.stderr


def test_retrieval_only_sources_keep_their_bookkeeping_out_of_the_llm_text() -> None:
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from llamaindex_rerankers.server.backend import _with_ranks

    node = NodeWithScore(node=TextNode(text="Prune in winter.", metadata={"title": "T"}), score=0.7)
    out = _with_ranks(node, 3)
    assert out.node.metadata["retrieval_rank"] == 3 and out.score == 0.7
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        text = out.node.get_content(metadata_mode=mode)
        assert "title: T" in text and "retrieval_rank" not in text and "rerank_score" not in text
    assert node.node.metadata == {"title": "T"}  # the caller's node is untouched


def test_responses_name_local_models_without_the_servers_paths() -> None:
    from llamaindex_rerankers.server.backend import public_model_name

    assert public_model_name("/srv/models/minilm-l6-ce") == "minilm-l6-ce"
    assert public_model_name("./models/ce -> /srv/llm/SmolLM2.gguf") == "ce -> SmolLM2.gguf"
    assert public_model_name("cross-encoder/ms-marco-MiniLM-L-6-v2") == (
        "cross-encoder/ms-marco-MiniLM-L-6-v2"
    )
    assert public_model_name("gpt-4o-mini") == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("record", "model_name"),
    [
        (types.RerankReport, "ReportOut"),
        (types.CrossEncoderUsage, "CrossEncoderUsageOut"),
        (types.LLMUsage, "LLMUsageOut"),
        (types.RemoteUsage, "RemoteUsageOut"),
    ],
)
def test_the_response_schema_documents_every_field_of_the_report(
    record: type, model_name: str
) -> None:
    """/docs and the OpenAPI schema list every field the server returns in `report`, each with a
    description (the records' fields pass through the open models; a field only the JSON shows
    is one a client cannot discover)."""
    model = getattr(schemas, model_name)
    fields = {f.name for f in dataclasses.fields(record) if not f.name.startswith("_")}
    assert set(model.model_fields) == fields
    assert all(model.model_fields[name].description for name in fields)


def test_a_refusal_and_a_shutdown_cancellation_are_503s_with_retry_after() -> None:
    """Wherever they escape (a route's admission, a chat's retrieval, work stopped by the
    shutdown), the search gate's refusal and a cancelled call are answered by one handler each:
    503 overloaded with the Retry-After the gate computed, or the server's own."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from llamaindex_rerankers.batch_hooks import CallCancelled
    from llamaindex_rerankers.server.admission import Refused
    from llamaindex_rerankers.server.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/refused")
    async def refused() -> None:
        raise Refused("search", 7, 9.5)

    @app.get("/cancelled")
    async def cancelled() -> None:
        raise CallCancelled("stopped")

    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get("/refused")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "7"
    assert answer.json()["code"] == "overloaded" and "(search)" in answer.json()["message"]
    answer = client.get("/cancelled")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["code"] == "overloaded" and "shutting down" in answer.json()["message"]

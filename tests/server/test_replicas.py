"""Two replicas, one state: two real ``serve`` processes sharing one Redis (judgements and chat
sessions) and one embedded Chroma folder (indexed once), the LLM reranker and the answers on
the real llama.cpp server, behind a proxy that counts what the endpoint is asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from counting_proxy import CountingProxy
from redis_helpers import RedisServer
from serve_helpers import ServeProcess, start

from llamaindex_rerankers.pipeline import ChromaConfig, index_folder, make_embed_model

pytestmark = [pytest.mark.server, pytest.mark.slow]

COLLECTION = "replicas"
PRUNING = "best practices for pruning apple trees"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: the last test stops it."""
    server = RedisServer(tmp_path_factory.mktemp("replicas-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, embed_model_path: str) -> Path:
    """The sample corpus indexed once into an embedded Chroma folder both replicas read."""
    folder = tmp_path_factory.mktemp("replicas-chroma")
    corpus = resources.files("llamaindex_rerankers") / "sample_corpus"
    with resources.as_file(corpus) as src:
        stats = index_folder(
            src,
            ChromaConfig(persist_dir=str(folder), collection=COLLECTION),
            embed_model=make_embed_model(embed_model_path),
            show_progress=False,
        )
    assert stats.chunks == 33
    return folder


@pytest.fixture(scope="module")
def proxy(llm: Any) -> Iterator[CountingProxy]:
    with CountingProxy(llm.base_url.removesuffix("/v1")) as counting:
        yield counting


class Replicas:
    """Replicas ``a`` and ``b`` with the same arguments; :meth:`restart` replaces both."""

    def __init__(self, request: pytest.FixtureRequest, factory: Any, args: list[str]) -> None:
        self.request, self.factory, self.args = request, factory, args
        self.a, self.b = self._start()

    def _start(self) -> tuple[ServeProcess, ServeProcess]:
        a = start(self.request, self.factory, self.args, name="replica-a")
        b = start(self.request, self.factory, self.args, name="replica-b")
        a.wait_listening()
        b.wait_listening()
        return a, b

    def restart(self) -> None:
        assert self.a.stop() == 0 and self.b.stop() == 0
        self.a, self.b = self._start()


@pytest.fixture(scope="module")
def replicas(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embed_model_path: str,
    llm: Any,
    redis: RedisServer,
    index_dir: Path,
    proxy: CountingProxy,
) -> Replicas:
    args = [
        "--persist-dir", str(index_dir), "--collection", COLLECTION,
        "--embed-model", embed_model_path,
        "--reranker", "llm", "--top-k", "4", "--top-n", "2", "--abstain-below", "0",
        "--llm-base-url", proxy.base_url, "--llm-model", llm.model,
        "--llm-context-window", "2048", "--answer-max-tokens", "16",
        "--llm-cache", redis.url + "?ttl=3600", "--session-store", redis.url,
    ]  # fmt: skip
    return Replicas(request, tmp_path_factory, args)


def retrieve(server: ServeProcess, query: str) -> dict[str, Any]:
    response = httpx.post(server.url + "/v1/retrieve", json={"query": query}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def chat(server: ServeProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat", json={"stream": False, **body}, timeout=300)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_judgement_made_through_a_is_a_cache_hit_through_b(
    replicas: Replicas, proxy: CountingProxy
) -> None:
    before = proxy.judgements()
    first = retrieve(replicas.a, PRUNING)
    asked = proxy.judgements() - before
    # top-k 4: one judgement each, and calibration's content-free one(s)
    assert first["report"]["llm"]["calls"] == asked >= 4
    second = retrieve(replicas.b, PRUNING)
    assert proxy.judgements() - before == asked  # B asked the endpoint nothing
    assert second["report"]["llm"]["calls"] == 0
    assert second["report"]["llm"]["cache_hits"] == asked
    assert [s["id"] for s in second["sources"]] == [s["id"] for s in first["sources"]]
    assert [s["rerank_score"] for s in second["sources"]] == [
        s["rerank_score"] for s in first["sources"]
    ]


def test_a_session_begun_on_a_continues_on_b_and_survives_restarts(
    replicas: Replicas, redis: RedisServer
) -> None:
    import redis as redis_client

    session = f"s-{uuid.uuid4().hex}"
    first = chat(replicas.a, {"session_id": session, "messages": ask(PRUNING)})
    assert first.status_code == 200, first.text
    assert first.json()["timings"]["condense_s"] is None  # no history yet
    second = chat(replicas.b, {"session_id": session, "messages": ask("and in summer?")})
    assert second.status_code == 200, second.text
    assert second.json()["timings"]["condense_s"] is not None  # B read A's history

    stored = redis_client.Redis.from_url(redis.url)
    key = f"llamaindex-rerankers:session:{session}"
    assert stored.llen(key) == 4  # two exchanges, one per replica
    replicas.restart()
    third = chat(replicas.b, {"session_id": session, "messages": ask("which tools?")})
    assert third.status_code == 200, third.text
    assert third.json()["timings"]["condense_s"] is not None  # the history outlived both
    assert stored.llen(key) == 6
    roles = [m.decode() for m in stored.lrange(key, 0, -1)]
    assert [r.count('"user"') for r in roles] == [1, 0, 1, 0, 1, 0]
    stored.close()


def test_with_redis_down_stateless_requests_answer_and_sessions_get_503(
    replicas: Replicas, redis: RedisServer, proxy: CountingProxy
) -> None:
    redis.stop()
    for server in (replicas.a, replicas.b):
        before = proxy.judgements()
        body = retrieve(server, PRUNING)  # cached before the outage: judged again now
        assert body["status"] == "ok" and body["report"]["llm"]["cache_hits"] == 0
        assert proxy.judgements() - before == body["report"]["llm"]["calls"] >= 4
        own = chat(server, {"messages": ask(PRUNING)})
        assert own.status_code == 200, own.text
        refused = chat(server, {"session_id": f"s-{uuid.uuid4().hex}", "messages": ask(PRUNING)})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        error = refused.json()
        assert error["code"] == "sessions_unavailable"
        assert "session store is unreachable" in error["message"]
        assert "without a session_id" in error["message"]
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    log = replicas.a.output()
    assert log.count("is unreachable") <= 2  # once per outage per store, not per request

"""An LLM outage through a real server: the LLM reranker's endpoint is a socket on 127.0.0.1
that drops every connection (an outage) or holds it without answering (a hung LLM). The
responses must say the reranker failed, never "nothing relevant"; a hung LLM must not hold a
request past the server's timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serve_helpers import HOST, ServeProcess, start

from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES
from llamaindex_rerankers.server import streaming
from llamaindex_rerankers.server.chat import FAILED_MESSAGE

pytestmark = pytest.mark.server

PRUNING = "best practices for pruning apple trees"
REQUEST_TIMEOUT = 5.0


class BrokenLLM:
    """A TCP endpoint that closes every connection at once (``drop``) or keeps it open without
    a byte of answer (``hang``)."""

    def __init__(self) -> None:
        self.mode = "drop"
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        self._sock.listen(128)
        self.port = int(self._sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self.mode == "drop":
                conn.close()
            else:
                self._held.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="module")
def broken_llm() -> Iterator[BrokenLLM]:
    endpoint = BrokenLLM()
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    broken_llm: BrokenLLM,
) -> ServeProcess:
    """The LLM reranker (no retries, 1 s per attempt, no cache, 2 judgements at a time) and
    answers from the same broken endpoint."""
    process = start(
        request,
        tmp_path_factory,
        [
            "--demo",
            *model_args,
            "--reranker",
            "llm",
            "--llm-base-url",
            broken_llm.base_url,
            "--llm-model",
            "any-model",
            "--llm-timeout",
            "1",
            "--llm-max-retries",
            "0",
            "--llm-cache",
            "none",
            "--llm-concurrency",
            "2",
            "--top-k",
            "4",
            "--top-n",
            "3",
            "--request-timeout",
            str(REQUEST_TIMEOUT),
        ],
        name="outage-server",
    )
    process.wait_listening()
    return process


@pytest.fixture
def client(server: ServeProcess, broken_llm: BrokenLLM) -> Iterator[httpx.Client]:
    broken_llm.mode = "drop"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_readyz_reports_the_llm_endpoint_down(client: httpx.Client) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["models"]["ok"] and checks["chroma"]["ok"]
    assert checks["llm"]["ok"] is False and "/v1/models" in checks["llm"]["detail"]


def test_retrieve_reports_an_outage_not_nothing_relevant(client: httpx.Client) -> None:
    body = client.post("/v1/retrieve", json={"query": PRUNING}).json()
    assert body["status"] == "reranker_failed"
    assert body["reranker_failed"] is True and body["abstained"] is False
    sources = body["sources"]
    assert [s["retrieval_rank"] for s in sources] == [1, 2, 3]  # retrieval order, unjudged
    assert all(s["rerank_score"] is None and s["rerank_label"] == "unknown" for s in sources)
    report = body["report"]
    assert (report["n_candidates"], report["n_judged"], report["n_unjudged"]) == (4, 0, 4)
    # every request failed: the 4 passages' and calibration's content-free ones
    assert report["llm"]["failures"] == 4 + len(CONTENT_FREE_PASSAGES)
    assert report["llm"]["unknown"] == 4 and report["best_score"] is None


def test_chat_says_the_reranker_failed_streamed_or_not(client: httpx.Client) -> None:
    question = {"messages": [{"role": "user", "content": PRUNING}]}
    out = client.post("/v1/chat", json={**question, "stream": False}).json()
    assert out["status"] == "reranker_failed"
    assert out["reranker_failed"] is True and out["abstained"] is False
    assert out["answer"] == FAILED_MESSAGE
    with client.stream("POST", "/v1/chat", json=question) as r:
        parts = streaming.parse("".join(r.iter_text()))
    assert r.status_code == 200 and parts[-1] == "[DONE]"
    sources = parts[1]
    assert sources["type"] == "data-sources"
    assert sources["data"]["status"] == "reranker_failed" and not sources["data"]["abstained"]
    text = "".join(p["delta"] for p in parts[:-1] if p["type"] == "text-delta")
    assert text == FAILED_MESSAGE
    assert parts[-3]["data"]["status"] == "reranker_failed"


def test_rerank_answers_503_when_no_document_could_be_judged(client: httpx.Client) -> None:
    r = client.post("/v1/rerank", json={"query": PRUNING, "documents": ["a", "b"]})
    assert r.status_code == 503
    assert r.json()["code"] == "reranker_failed"
    assert r.headers["retry-after"] == "1"


def _metric(text: str, name: str, label: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


def test_a_hung_llm_cannot_hold_a_request_past_the_timeout(
    client: httpx.Client, broken_llm: BrokenLLM
) -> None:
    broken_llm.mode = "hang"
    documents = [f"passage number {i} about apple trees" for i in range(20)]
    started = time.monotonic()
    r = client.post("/v1/rerank", json={"query": PRUNING, "documents": documents})
    elapsed = time.monotonic() - started
    # 20 judgements, 2 at a time, 1 s each: 10 s of work cut at the 5 s timeout.
    assert r.status_code == 504, r.text
    assert r.json()["code"] == "timeout"
    assert REQUEST_TIMEOUT - 0.5 <= elapsed < REQUEST_TIMEOUT + 4
    assert client.get("/healthz").status_code == 200
    metrics: Any = client.get("/metrics").text
    assert _metric(metrics, "llamaindex_rerankers_rejected_requests_total", 'reason="timeout"') >= 1

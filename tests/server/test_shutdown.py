"""Overload and SIGTERM through a real server with one slot and one queue place: beyond them a
request is answered 503 with Retry-After at once (never lost, never left waiting); on SIGTERM
the server stops accepting, finishes the request in flight and exits with code 0."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from serve_helpers import ServeProcess, start

pytestmark = pytest.mark.server

PRUNING = "best practices for pruning apple trees"


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_args: list[str]
) -> ServeProcess:
    process = start(
        request,
        tmp_path_factory,
        [
            "--demo",
            *model_args,
            "--no-answers",
            "--max-concurrent",
            "1",
            "--max-queue",
            "1",
            "--pool-threads",
            "1",
            "--graceful-timeout",
            "60",
        ],
        name="shutdown-server",
    )
    process.wait_listening()
    return process


def documents(n: int, tag: str) -> list[str]:
    return [
        f"{tag} {i}: prune apple trees in late winter, remove dead wood and thin crossing "
        f"branches so light reaches the centre of the canopy; passage {i} of {n}."
        for i in range(n)
    ]


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('llamaindex_rerankers_in_flight{gate="search"}'):
            return float(line.rpartition(" ")[2])
    return 0.0


def test_a_full_server_answers_503_with_retry_after_at_once(server: ServeProcess) -> None:
    async def burst() -> list[tuple[int, float, httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def one(i: int) -> tuple[int, float, httpx.Response]:
                started = time.monotonic()
                body = {"query": PRUNING, "documents": documents(80, f"request {i}")}
                r = await client.post("/v1/rerank", json=body)
                return i, time.monotonic() - started, r

            return await asyncio.gather(*(one(i) for i in range(6)))

    results = asyncio.run(burst())
    statuses = sorted(r.status_code for _, _, r in results)
    assert len(results) == 6 and set(statuses) <= {200, 503}, statuses
    refused = [(t, r) for _, t, r in results if r.status_code == 503]
    served = [(t, r) for _, t, r in results if r.status_code == 200]
    assert len(refused) >= 3 and len(served) >= 1, statuses  # 1 slot + 1 queue place
    for elapsed, r in refused:
        assert int(r.headers["retry-after"]) >= 1  # computed from the work ahead
        assert r.json()["code"] == "overloaded"
        assert elapsed < min(t for t, _ in served)  # refused at once, not after waiting
    for _, r in served:
        assert len(r.json()["results"]) == 80
    metrics = httpx.get(server.url + "/metrics").text
    assert (
        'llamaindex_rerankers_rejected_requests_total{endpoint="/v1/rerank",reason="overloaded"}'
        in metrics
    )
    # Each refusal is timed on the server too (what the client sees adds its own scheduling).
    timed = next(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith(
            'llamaindex_rerankers_refusal_duration_seconds_count{endpoint="/v1/rerank"}'
        )
    )
    assert timed >= len(refused), (timed, len(refused))


def test_sigterm_finishes_the_request_in_flight_then_exits_cleanly(server: ServeProcess) -> None:
    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        body = {"query": PRUNING, "documents": documents(300, "slow")}
        try:
            r = httpx.post(server.url + "/v1/rerank", json=body, timeout=120)
            outcome["response"] = r
        except httpx.HTTPError as exc:
            outcome["error"] = exc
        outcome["done"] = time.monotonic()

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 30
    while _in_flight(server.url) < 1:
        assert time.monotonic() < deadline, "the slow request never started"
        time.sleep(0.05)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)

    # New connections are refused while the request in flight goes on. uvicorn looks at the
    # signal every 0.1 s, so a probe can land in that window: accepted but not yet read, it is
    # then closed (no response) or reset by the shutdown. Neither is served, so both count as
    # refused; a probe left waiting (a timeout) does not.
    refused = False
    while time.monotonic() < signalled + 20 and not refused:
        try:
            httpx.get(server.url + "/healthz", timeout=2)
            time.sleep(0.05)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            refused = True
    assert refused, "the server kept accepting connections after SIGTERM"

    worker.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert response.status_code == 200
    assert len(response.json()["results"]) == 300
    assert outcome["done"] > signalled  # it was in flight when the signal came
    assert server.process.wait(timeout=60) == 0, server.output()
    assert "Finished server process" in server.output()

"""Admission by work and cancellation, through real server processes (real cross-encoder, real
Chroma): a request that would wait longer than ``--max-queue-wait`` is refused at once with a
Retry-After computed from the work ahead; a small request is not starved by large ones; large
requests whose clients left stop computing and free their places."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time

import httpx
import pytest
from serve_helpers import ServeProcess, start

PRUNING = "best practices for pruning apple trees"
#: A long passage (about 500 tokens: cut to MiniLM's 512 with the query).
LONG = (
    "Prune apple trees in late winter while they are dormant: remove dead, diseased and "
    "crossing wood first, then thin the canopy so light reaches every fruiting spur. "
) * 13


def large_body(n: int, tag: str) -> dict[str, object]:
    return {"query": PRUNING, "documents": [f"{tag} {i}. {LONG}" for i in range(n)]}


SMALL = {
    "query": PRUNING,
    "documents": [
        "Prune apple trees in late winter.",
        "AAPL fell 2% after earnings.",
        "Thin crossing branches for light.",
        "Apple pie needs tart apples.",
    ],
}


def _gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'llamaindex_rerankers_{name}{{gate="search"}}'):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"no {name} gauge in /metrics")


def _wait_in_flight(url: str, n: int, what: str) -> None:
    """Return once the server runs at least ``n`` requests (its ``in_flight`` gauge)."""
    deadline = time.monotonic() + 60
    while _gauge(url, "in_flight") < n:
        assert time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.05)


def _start_large(url: str, outcome: dict[str, httpx.Response], key: str) -> threading.Thread:
    """Send a 300-long-document rerank from a thread (its response lands in ``outcome[key]``);
    return once the server runs it."""

    def post() -> None:
        outcome[key] = httpx.post(url + "/v1/rerank", json=large_body(300, key), timeout=300)

    worker = threading.Thread(target=post)
    worker.start()
    _wait_in_flight(url, 1, "the large request")
    return worker


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the gate's arithmetic (no server) ----------------------------------------------------------


def test_a_wait_beyond_the_bound_is_refused_with_a_retry_after_from_the_work_ahead() -> None:
    from llamaindex_rerankers.server.admission import Refused, WorkGate

    async def scenario() -> None:
        gate = WorkGate("search", limit=8, queue=8, max_wait=2.0, slots=1)
        big = gate.admit("rerank", 6.0)  # nothing ahead: no wait
        small = gate.admit("rerank", 0.05)  # waits for 0.05 s of the big one's turns
        assert gate.wait_for(0.05) == pytest.approx(0.1)
        # A second big one would share the turns with the first for its 6 s: wait 6.05 s > 2 s;
        # 4.05 s of work must drain before it fits the bound, so Retry-After is 5, not 1.
        with pytest.raises(Refused) as refused:
            gate.admit("rerank", 6.0)
        assert refused.value.retry_after == 5
        assert refused.value.wait == pytest.approx(6.05)
        # Once the big one is done (and nobody runs it any more), the same request fits.
        big.finish()
        small.finish()
        assert gate.active == 0
        gate.admit("rerank", 6.0).finish()

    asyncio.run(scenario())


# -- a real server ----------------------------------------------------------------------------


def _server_waiting(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    max_queue_wait: str,
) -> ServeProcess:
    args = ["--demo", *model_args, "--no-answers", "--max-queue-wait", max_queue_wait]
    process = start(request, tmp_path_factory, args, name=f"wait-{max_queue_wait}-server")
    process.wait_listening()
    return process


@pytest.fixture(scope="module")
def bounded_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_args: list[str]
) -> ServeProcess:
    return _server_waiting(request, tmp_path_factory, model_args, "1")


@pytest.mark.server
def test_work_beyond_the_wait_bound_is_refused_at_once_and_small_requests_still_pass(
    bounded_server: ServeProcess,
) -> None:
    url = bounded_server.url
    # Warm up: the server's costs are measured, not guessed.
    assert httpx.post(url + "/v1/rerank", json=large_body(40, "warm"), timeout=120).is_success
    outcome: dict[str, httpx.Response] = {}
    worker = _start_large(url, outcome, "first")

    started = time.monotonic()
    second = httpx.post(url + "/v1/rerank", json=large_body(300, "b"), timeout=300)
    refused_in = time.monotonic() - started
    assert second.status_code == 503, second.text[:300]
    assert second.json()["code"] == "overloaded"
    # Computed from the work ahead (300 long pairs, seconds of it): more than the old constant.
    assert int(second.headers["retry-after"]) >= 2, second.headers
    assert refused_in < 1.0  # at once, not after waiting

    started = time.monotonic()
    small = httpx.post(url + "/v1/rerank", json=SMALL, timeout=120)
    small_in = time.monotonic() - started
    assert small.status_code == 200, small.text
    assert "first" not in outcome, "the large request ended before the small one was sent"
    # Its one batch takes a turn between the large request's batches (generous: shared CPU).
    assert small_in < 5.0, small_in
    worker.join(timeout=300)
    assert outcome["first"].status_code == 200


@pytest.fixture(scope="module")
def patient_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_args: list[str]
) -> ServeProcess:
    # A wait bound high enough to admit four large requests at once.
    return _server_waiting(request, tmp_path_factory, model_args, "600")


@pytest.mark.server
def test_large_requests_whose_clients_left_stop_computing_and_free_their_places(
    patient_server: ServeProcess,
) -> None:
    url = patient_server.url
    assert httpx.post(url + "/v1/rerank", json=SMALL, timeout=120).is_success

    def abandon(i: int) -> None:
        # 800 long pairs: a minute or more of work; the client gives up after 3 s.
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(url + "/v1/rerank", json=large_body(800, f"big {i}"), timeout=3)

    clients = [threading.Thread(target=abandon, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    left = time.monotonic()

    # Each stops at its next batch (well under a second or two each, even on a shared CPU).
    while _gauge(url, "in_flight") > 0:
        assert time.monotonic() - left < 20, "abandoned requests still hold their places"
        time.sleep(0.1)
    # And the process is idle: no thread goes on scoring for nobody.
    pid = patient_server.process.pid
    before = _cpu_seconds(pid)
    time.sleep(2.0)
    busy = (_cpu_seconds(pid) - before) / 2.0
    assert busy < 0.3, f"the server used {busy:.0%} of a core with no request in flight"

    started = time.monotonic()
    small = httpx.post(url + "/v1/rerank", json=SMALL, timeout=120)
    assert small.status_code == 200
    assert time.monotonic() - started < 3.0


@pytest.mark.server
def test_sigterm_drains_within_the_request_timeout_while_large_requests_compute(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_args: list[str]
) -> None:
    """Four large requests are computing (minutes of work in all) when SIGTERM comes: each is
    answered 504 when its --request-timeout runs out, its work stops at the next batch, and the
    process exits with code 0 well before the work would have been done (a server that let the
    abandoned batches run would need minutes)."""
    timeout = 5.0
    args = [
        "--demo",
        *model_args,
        "--no-answers",
        "--max-queue-wait",
        "600",
        "--request-timeout",
        str(timeout),
        "--graceful-timeout",
        "300",  # not what bounds the drain: the request timeout is
    ]
    server = start(request, tmp_path_factory, args, name="drain-server")
    server.wait_listening()
    url = server.url
    assert httpx.post(url + "/v1/rerank", json=SMALL, timeout=120).is_success
    outcomes: dict[int, object] = {}

    def large(i: int) -> None:
        try:
            r = httpx.post(url + "/v1/rerank", json=large_body(800, f"big {i}"), timeout=120)
            outcomes[i] = r.status_code
        except httpx.HTTPError as exc:
            outcomes[i] = exc

    clients = [threading.Thread(target=large, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    _wait_in_flight(url, 4, "the four large requests")
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=120)
    drained_in = time.monotonic() - signalled
    for c in clients:
        c.join(timeout=30)
    assert code == 0, server.output()[-2000:]
    # Within the request timeout (counted from before the signal), plus a batch and the exit.
    assert drained_in < timeout + 5.0, (drained_in, server.output()[-2000:])
    # Every client was answered (its time ran out), none cut off or left waiting.
    assert outcomes == {i: 504 for i in range(4)}, outcomes


@pytest.mark.server
def test_a_chat_retrieval_is_admitted_by_the_same_wait_as_retrieve(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    llm: object,
) -> None:
    """A chat's retrieval and reranking go through the search gate: while a large rerank holds
    its only place, a chat is refused at once with a Retry-After computed from that work (before
    any LLM call) instead of computing beside it unaccounted; once the work is done, the same
    chat answers. (A small request beside one large one is admitted: under batch turns it waits
    only about its own work, see the first test; so the place, not the wait, is what is full.)"""
    args = [
        "--demo",
        *model_args,
        "--llm-base-url",
        llm.base_url,  # type: ignore[attr-defined]
        "--llm-model",
        llm.model,  # type: ignore[attr-defined]
        "--llm-context-window",
        "2048",
        "--answer-max-tokens",
        "8",
        "--max-concurrent",
        "1",
        "--max-queue",
        "0",
    ]
    server = start(request, tmp_path_factory, args, name="chat-admission-server")
    server.wait_listening()
    url = server.url
    chat = {"messages": [{"role": "user", "content": PRUNING}], "stream": False}
    # Warm up both paths: the costs are measured, not guessed.
    assert httpx.post(url + "/v1/rerank", json=large_body(40, "warm"), timeout=120).is_success
    assert httpx.post(url + "/v1/chat", json=chat, timeout=300).status_code == 200
    outcome: dict[str, httpx.Response] = {}
    worker = _start_large(url, outcome, "large")
    started = time.monotonic()
    refused = httpx.post(url + "/v1/chat", json=chat, timeout=300)
    refused_in = time.monotonic() - started
    assert "large" not in outcome, "the large request ended before the chat was sent"
    assert refused.status_code == 503, refused.text[:300]
    assert refused.json()["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 2, refused.headers
    assert refused_in < 1.0, refused_in
    worker.join(timeout=300)
    assert outcome["large"].status_code == 200
    assert httpx.post(url + "/v1/chat", json=chat, timeout=300).status_code == 200

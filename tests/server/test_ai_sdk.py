"""``/v1/chat`` through the Vercel AI SDK's own chat client, and chat timeouts that hold.

The client is the npm package ``ai`` (pinned in ``tests/js/package-lock.json``, installed by
``make js-deps``): ``AbstractChat`` with ``DefaultChatTransport``, the classes behind React's
``useChat``, run by ``tests/js/chat.mjs`` in Node. The slow answers come from :class:`SlowLLM`, a
proxy in front of the real SmolLM2 llama.cpp server that holds its answers back (a fault: an LLM
slower than the server's ``--chat-timeout``) and records when our server closes its request.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from serve_helpers import API_KEY, AUTH, HOST, REPO, ServeProcess, start

from llamaindex_rerankers.server import streaming

pytestmark = pytest.mark.server

JS = REPO / "tests" / "js"
PRUNING = "best practices for pruning apple trees"
FOLLOW_UP = "When should I do it?"
#: The timed server's --chat-timeout, and what a response may take beyond it (a loaded 2-core
#: machine: the event loop, the client's own start).
CHAT_TIMEOUT = 6.0
SLACK = 2.0


def node_chat(base_url: str, *questions: str, timeout: float = 240) -> dict[str, Any]:
    """Run the AI SDK's chat client (``tests/js/chat.mjs``) for these turns."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "ai" / "package.json").exists():
        pytest.fail("the AI SDK tests need Node 20+ and `make js-deps` (npm ci in tests/js)")
    out = subprocess.run(
        [node, str(JS / "chat.mjs"), base_url, *questions],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SERVE_API_KEY": API_KEY},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def timed_chat(server: ServeProcess, body: dict[str, Any]) -> tuple[int, str, float, float]:
    """POST ``body`` to /v1/chat: the status, the whole body, and when it was sent and ended."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        started = time.monotonic()
        with client.stream("POST", "/v1/chat", json=body) as r:
            text = r.read().decode()
        return r.status_code, text, started, time.monotonic()


def part_types(turn: dict[str, Any]) -> list[str]:
    return [p["type"] for p in turn["parts"]]


# -- a slow LLM -------------------------------------------------------------------------------


class SlowLLM:
    """An HTTP proxy to the real LLM server that holds each chat completion back.

    ``hold`` seconds pass before anything of a completion is sent; then a streamed completion
    goes out one event every ``pace`` seconds. Every completion request is recorded in
    ``requests`` when it ends: ``(opened, closed)``, monotonic times, ``closed`` being when our
    server closed it (``None`` when the proxy finished it).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold = 0.0
        self.pace = 0.0
        self.requests: list[tuple[float, float | None]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                r = httpx.get(proxy.upstream + self.path.removeprefix("/v1"), timeout=30)
                self._reply(r.status_code, r.headers.get("content-type", ""), r.content)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.completion(self, body)

            def _reply(self, status: int, kind: str, content: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def _gone(self, conn: socket.socket, seconds: float) -> bool:
        """Wait ``seconds``; whether the client closed the connection meanwhile."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            readable, _, _ = select.select([conn], [], [], max(0.0, min(left, 0.02)))
            if readable and conn.recv(1, socket.MSG_PEEK) == b"":
                return True
            if left <= 0:
                return False

    def _pump(self, path: str, body: bytes, out: queue.Queue[Any], stop: threading.Event) -> None:
        """Read the real LLM's answer into ``out`` (the response, its lines, then ``None``)."""
        try:
            url = self.upstream + path.removeprefix("/v1")
            headers = {"content-type": "application/json"}
            with httpx.stream("POST", url, content=body, headers=headers, timeout=120) as r:
                out.put(r)
                for line in r.iter_lines():
                    if stop.is_set():
                        return
                    out.put(line)
        finally:
            out.put(None)

    def _next(self, conn: socket.socket, out: queue.Queue[Any]) -> Any:
        """The next item of ``out``; raises ``ConnectionAbortedError`` if the client leaves."""
        while True:
            try:
                return out.get(timeout=0.02)
            except queue.Empty:
                if self._gone(conn, 0.0):
                    raise ConnectionAbortedError from None

    def completion(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        conn = handler.connection
        opened = time.monotonic()
        closed: float | None = None
        stop = threading.Event()
        try:
            if self._gone(conn, self.hold):
                closed = time.monotonic()
                return
            out: queue.Queue[Any] = queue.Queue()
            threading.Thread(
                target=self._pump, args=(handler.path, body, out, stop), daemon=True
            ).start()
            r = self._next(conn, out)
            handler.send_response(r.status_code)
            handler.send_header("content-type", r.headers.get("content-type", ""))
            handler.send_header("connection", "close")
            handler.end_headers()
            while (line := self._next(conn, out)) is not None:
                if line.startswith("data:") and self._gone(conn, self.pace):
                    closed = time.monotonic()
                    return
                handler.wfile.write(line.encode() + b"\n")
                handler.wfile.flush()
        except OSError:
            closed = time.monotonic()
        finally:
            stop.set()
            handler.close_connection = True
            with self._lock:
                self.requests.append((opened, closed))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def slow_llm(llm: Any) -> Iterator[SlowLLM]:
    proxy = SlowLLM(llm.base_url)
    yield proxy
    proxy.close()


def slow_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    llm: Any,
    slow_llm: SlowLLM,
    chat_timeout: float,
) -> ServeProcess:
    """Answers through the slow proxy, with this --chat-timeout and a short --llm-timeout
    (which must not cut an answer short: the chat's deadline governs its LLM calls)."""
    server = start(
        request,
        tmp_path_factory,
        [
            "--demo",
            *model_args,
            "--top-k",
            "4",
            "--top-n",
            "2",
            "--llm-base-url",
            slow_llm.base_url,
            "--llm-model",
            llm.model,
            "--llm-context-window",
            "2048",
            "--answer-max-tokens",
            "64",
            "--chat-timeout",
            str(chat_timeout),
            "--llm-timeout",
            "0.5",
            "--llm-max-retries",
            "2",
        ],
        env={"LLAMAINDEX_RERANKERS_SERVE_API_KEY": API_KEY},
        name="slow-llm-server",
    )
    server.wait_listening()
    return server


@pytest.fixture(scope="module")
def timed_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    llm: Any,
    slow_llm: SlowLLM,
) -> ServeProcess:
    """A short --chat-timeout, for answers that outlast it."""
    return slow_server(request, tmp_path_factory, model_args, llm, slow_llm, CHAT_TIMEOUT)


@pytest.fixture(scope="module")
def patient_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    llm: Any,
    slow_llm: SlowLLM,
) -> ServeProcess:
    """A --chat-timeout long enough for slow LLM calls on a loaded machine (SmolLM2 takes
    20 s for a turn with history at a load of 10 on 2 cores)."""
    return slow_server(request, tmp_path_factory, model_args, llm, slow_llm, 120.0)


@pytest.fixture
def slow(slow_llm: SlowLLM) -> Iterator[SlowLLM]:
    """The proxy, reset to pass answers through at once."""
    slow_llm.hold, slow_llm.pace = 0.0, 0.0
    yield slow_llm
    slow_llm.hold, slow_llm.pace = 0.0, 0.0


def wait_closed(slow: SlowLLM, since: float, n: int, timeout: float = 10.0) -> list[float | None]:
    """When our server closed each of the ``n`` completion requests opened since ``since``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ended = sorted((o, c) for o, c in slow.requests if o >= since)
        if len(ended) >= n:
            return [c for _, c in ended]
        time.sleep(0.05)
    raise AssertionError(f"{n} LLM requests since {since} did not end: {slow.requests}")


# -- the AI SDK's chat ------------------------------------------------------------------------


def test_the_ai_sdk_chat_assembles_two_turns_with_sources_text_and_report(
    demo_server: ServeProcess,
) -> None:
    result = node_chat(demo_server.url, PRUNING, FOLLOW_UP)
    assert result["messages"] == 4
    for turn in result["turns"]:
        assert turn["status"] == "ready" and turn["error"] is None, turn
        assert turn["finished"] == {"isError": False, "isAbort": False, "finishReason": None}
        kinds = part_types(turn)
        assert kinds[0] == "data-sources" and kinds[-1] == "data-report", kinds
        assert "step-start" in kinds and kinds.count("text") == 1
        text = next(p for p in turn["parts"] if p["type"] == "text")
        assert text["text"].strip() and text["state"] == "done"
        sources = turn["parts"][0]["data"]["sources"]
        documents = [p for p in turn["parts"] if p["type"] == "source-document"]
        assert [d["sourceId"] for d in documents] == [s["id"] for s in sources]
        report = turn["parts"][-1]["data"]
        assert report["status"] == "answered" and report["report"]["n_returned"] == 3
    first, second = (t["parts"][-1]["data"]["timings"] for t in result["turns"])
    assert first["condense_s"] is None and second["condense_s"] is not None


def test_a_timed_out_answer_reaches_the_ai_sdk_with_its_report_within_the_chat_timeout(
    timed_server: ServeProcess, slow: SlowLLM
) -> None:
    slow.pace = 1.0  # 64 tokens, one a second: far beyond the chat timeout
    since = time.monotonic()
    result = node_chat(timed_server.url, PRUNING)
    (turn,) = result["turns"]
    assert turn["seconds"] <= CHAT_TIMEOUT + SLACK, turn
    assert turn["status"] == "error" and "--chat-timeout" in turn["error"]
    assert turn["finished"]["isError"] is True
    kinds = part_types(turn)
    assert kinds[0] == "data-sources" and kinds[-1] == "data-report", kinds
    assert turn["parts"][-1]["data"]["status"] == "error"
    # The LLM request was closed at the deadline, not left generating.
    (closed,) = wait_closed(slow, since, 1)
    assert closed is not None and closed <= since + CHAT_TIMEOUT + SLACK


def test_a_timed_out_stream_ends_report_error_finish_done_and_closes_the_llm_request(
    timed_server: ServeProcess, slow: SlowLLM
) -> None:
    slow.pace = 1.0
    question = {"messages": [{"role": "user", "content": PRUNING}]}
    status, body, started, ended = timed_chat(timed_server, question)
    assert status == 200
    parts = streaming.parse(body)
    kinds = [p if isinstance(p, str) else p["type"] for p in parts]
    assert kinds[-6:] == ["text-end", "finish-step", "data-report", "error", "finish", "[DONE]"]
    assert "--chat-timeout" in parts[-3]["errorText"]
    assert parts[-2] == {"type": "finish", "finishReason": "error"}
    assert ended - started <= CHAT_TIMEOUT + SLACK
    (closed,) = wait_closed(slow, started, 1)
    assert closed is not None and closed <= started + CHAT_TIMEOUT + SLACK


def test_llm_calls_without_streaming_get_the_chat_deadline_not_the_llm_timeout(
    patient_server: ServeProcess, slow: SlowLLM
) -> None:
    """Condensing and the answer each take at least 0.8 s, above --llm-timeout (0.5 s): within
    the chat timeout they must succeed, not fail after --llm-timeout x attempts."""
    slow.hold = 0.8
    body = {
        "stream": False,
        "messages": [
            {"role": "user", "content": "Tell me about apple trees."},
            {"role": "assistant", "content": "Apple trees need pruning and feeding."},
            {"role": "user", "content": FOLLOW_UP},
        ],
    }
    status, text, started, _ = timed_chat(patient_server, body)
    assert status == 200, text
    out = json.loads(text)
    assert out["status"] == "answered" and out["answer"].strip()
    assert out["timings"]["condense_s"] >= 0.8 and out["timings"]["answer_s"] >= 0.8
    assert wait_closed(slow, started, 2) == [None, None]  # one attempt each, both answered


def test_an_llm_call_without_streaming_is_cancelled_at_the_chat_deadline(
    timed_server: ServeProcess, slow: SlowLLM
) -> None:
    slow.hold = 60.0
    question = {"stream": False, "messages": [{"role": "user", "content": PRUNING}]}
    status, text, started, ended = timed_chat(timed_server, question)
    assert status == 504, text
    assert json.loads(text)["code"] == "timeout"
    assert ended - started <= CHAT_TIMEOUT + SLACK
    (closed,) = wait_closed(slow, started, 1)  # one attempt, closed at the deadline
    assert closed is not None and closed <= started + CHAT_TIMEOUT + SLACK


def test_a_client_that_leaves_mid_answer_ends_the_llm_request_without_an_aclose_race(
    timed_server: ServeProcess, slow: SlowLLM
) -> None:
    """The client disconnects while the server awaits the next delta: Starlette cancels the
    stream (anyio delivers the cancellation again on every loop turn until it is honoured), and
    the answer's reader must not be closed while it is still running."""
    slow.pace = 0.1  # below --llm-timeout: the answer flows until the client leaves
    for _ in range(3):
        since = time.monotonic()
        with (
            httpx.Client(base_url=timed_server.url, headers=AUTH, timeout=60) as client,
            client.stream(
                "POST", "/v1/chat", json={"messages": [{"role": "user", "content": PRUNING}]}
            ) as r,
        ):
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"text-delta"' in line:
                    break
        left = time.monotonic()
        (closed,) = wait_closed(slow, since, 1)
        assert closed is not None and closed - left <= SLACK
    time.sleep(0.5)
    log = timed_server.output()
    assert "already running" not in log and "Traceback" not in log, log[-3000:]


def test_the_js_client_is_pinned_and_its_modules_are_ignored() -> None:
    lock = json.loads((JS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/ai"]["version"].startswith("6.")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(JS / "node_modules" / "ai" / "package.json")],
        cwd=REPO,
        check=False,
    )
    assert ignored.returncode == 0

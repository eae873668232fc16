"""A scripted fake of an OpenAI-compatible chat server, for the faults a real one won't produce
on demand (429 with Retry-After, 500, hangs, garbage bodies, empty choices, missing logprobs, 400
on the logprobs parameter).

It is a real HTTP server on 127.0.0.1 (a free port) in a background thread. Each test queues the
replies it wants with :meth:`FakeOpenAI.script`; when the queue is empty the server answers with
its ``default`` reply. Every request received is recorded (:attr:`FakeOpenAI.requests`) so tests
assert what the client sent, when, and over which connection; the fake also counts the chat
requests it is answering at once (:attr:`FakeOpenAI.peak_in_flight`), for tests of limits.

Example:
    >>> with FakeOpenAI() as fake:  # doctest: +SKIP
    ...     fake.script(rate_limited(retry_after="1"), good("B"))
    ...     ...  # point a client at fake.url + "/v1"
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # decoded JSON, or None
    at: float  # time.monotonic() when it arrived
    peer: tuple[str, int] = ("", 0)  # the client's address: one per connection

    @property
    def wants_logprobs(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("logprobs"))

    @property
    def prompt(self) -> str:
        """All message contents joined (what the model would read); a text completion's
        prompt."""
        if not isinstance(self.body, dict):
            return ""
        if isinstance(self.body.get("prompt"), str):
            return str(self.body["prompt"])
        return "\n".join(str(m.get("content", "")) for m in self.body.get("messages", []))


@dataclass(frozen=True)
class Reply:
    """What the fake answers to one request.

    ``delay`` seconds pass before the answer (longer than a client's timeout: a hang). ``body``
    is sent as JSON unless it is ``str``/``bytes``.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "application/json"


#: A reply, or a function of the request that makes one.
Script = Reply | Callable[[Request], Reply]

# Plausible top alternatives at the first answer position when none are given.
_DEFAULT_TOP = (("B", -0.3), ("C", -1.6), ("A", -2.9), (" B", -5.0), ("The", -6.5))


def completion(
    text: str,
    *,
    logprobs: Sequence[tuple[str, float, Sequence[tuple[str, float]]]] | None = None,
    prompt_tokens: int = 42,
    model: str = "fake",
) -> dict[str, Any]:
    """An OpenAI chat completion body with ``text`` and optional ``logprobs.content``.

    ``logprobs`` holds one ``(token, logprob, [(alternative, logprob), ...])`` per generated
    token.
    """
    n_generated = len(logprobs) if logprobs is not None else max(1, len(text.split()))
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    if logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": tok,
                    "logprob": lp,
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in top
                    ],
                }
                for tok, lp, top in logprobs
            ],
            "refusal": None,
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n_generated,
            "total_tokens": prompt_tokens + n_generated,
        },
    }


def text_completion(text: str, prompt_tokens: int = 42) -> dict[str, Any]:
    """An OpenAI *text* completion body (``/v1/completions``), as completion models answer."""
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 1,
            "total_tokens": prompt_tokens + 1,
        },
    }


def good(text: str = "B", top: Sequence[tuple[str, float]] | None = None) -> Script:
    """A correct answer: ``text``, with logprobs when (and only when) the request asked for them.

    ``top`` are the alternatives at the first position (the answer token itself is the first
    token of ``text``).
    """
    alternatives = tuple(top) if top is not None else _DEFAULT_TOP

    def make(request: Request) -> Reply:
        if not request.wants_logprobs:
            return Reply(body=completion(text))
        first = text[:1] or " "
        best = max(alternatives, key=lambda a: a[1]) if alternatives else (first, 0.0)
        k = int(request.body.get("top_logprobs") or len(alternatives))
        content = [(first, best[1] if best[0] == first else -0.5, alternatives[:k])]
        content += [(ch, -0.01, ((ch, -0.01),)) for ch in text[1:]]
        return Reply(body=completion(text, logprobs=content))

    return make


def rate_limited(retry_after: str | None = "1") -> Reply:
    """HTTP 429, with a ``Retry-After`` header when ``retry_after`` is given."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return Reply(
        status=429, body=_error("Rate limit reached", "rate_limit_exceeded"), headers=headers
    )


def server_error(status: int = 500) -> Reply:
    """An HTTP 5xx answer with an OpenAI-style error body."""
    return Reply(status=status, body=_error("The server had an error", "server_error"))


def hang(seconds: float, then: Script | None = None) -> Script:
    """Answer only after ``seconds`` (longer than the client's timeout: a timeout)."""
    after = then if then is not None else good()

    def make(request: Request) -> Reply:
        reply = after(request) if callable(after) else after
        return Reply(reply.status, reply.body, reply.headers, seconds, reply.content_type)

    return make


def garbage_body() -> Reply:
    """HTTP 200 whose body is not a chat completion (an HTML page from a proxy)."""
    return Reply(
        body="<html><body>502 Bad Gateway (but 200)</body></html>", content_type="text/html"
    )


def invalid_json() -> Reply:
    """HTTP 200 that claims to be JSON but is not."""
    return Reply(body='{"choices": [ {"mess', content_type="application/json")


def garbage_text(text: str = "I cannot answer that, but bananas are yellow.") -> Script:
    """A well-formed completion whose answer is no label at all (with logprobs when asked)."""
    words = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]

    def make(request: Request) -> Reply:
        if not request.wants_logprobs:
            return Reply(body=completion(text))
        content = [(w, -0.05, ((w, -0.05), (" the", -4.0), ("ban", -4.5))) for w in words]
        return Reply(body=completion(text, logprobs=content))

    return make


def empty_choices() -> Reply:
    """HTTP 200 with ``"choices": []``."""
    body = completion("x")
    body["choices"] = []
    return Reply(body=body)


def no_logprobs(text: str = "B") -> Reply:
    """HTTP 200 with the answer but without ``logprobs``, whatever was asked."""
    return Reply(body=completion(text))


def logprobs_rejected(then: Script | None = None) -> Script:
    """HTTP 400 if the request carries ``logprobs`` (as reasoning models answer), else ``then``."""
    after = then if then is not None else good()

    def make(request: Request) -> Reply:
        if request.wants_logprobs or (
            isinstance(request.body, dict) and "top_logprobs" in request.body
        ):
            return Reply(
                status=400,
                body=_error(
                    "logprobs is not supported with this model",
                    "invalid_request_error",
                    param="logprobs",
                ),
            )
        return after(request) if callable(after) else after

    return make


def http_error(status: int, message: str, code: str = "invalid_request_error") -> Reply:
    """An HTTP error answer with an OpenAI-style error body."""
    return Reply(status=status, body=_error(message, code))


def _error(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": param, "code": code}}


class FakeOpenAI:
    """The fake server. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    Attributes:
        url: ``http://127.0.0.1:PORT`` (clients use ``url + "/v1"``).
        requests: every request received, in arrival order.
        default: the reply when the script is empty (a correct answer by default).
        sticky: a reply used for *every* request while set, ahead of the script (for faults
            that must persist, e.g. an endpoint that always rejects logprobs).
        in_flight: chat requests received and not answered yet.
        peak_in_flight: the most chat requests it was answering at once.
    """

    def __init__(self, default: Script | None = None) -> None:
        self.default: Script = default if default is not None else good()
        self.sticky: Script | None = None
        self.requests: list[Request] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._queue: deque[Script] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- scripting ---------------------------------------------------------------------

    def script(self, *replies: Script) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Queued replies not used yet."""
        with self._lock:
            return len(self._queue)

    def chat_requests(self) -> list[Request]:
        """Requests made to ``/v1/chat/completions``."""
        return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    def _next_reply(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.sticky is not None:
                script = self.sticky
            elif self._queue:
                script = self._queue.popleft()
            else:
                script = self.default
        return script(request) if callable(script) else script

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps connections alive, as real servers do: a client that reused a
            # connection pool across event loops would fail here as it would in production.
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: without TCP_NODELAY, Nagle's algorithm and
            # the client's delayed ACK hold every answer back by ~40 ms.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                self._answer(body)

            def _answer(self, body: Any) -> None:
                request = Request(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.monotonic(),
                    peer=(str(self.client_address[0]), int(self.client_address[1])),
                )
                if self.command == "GET" and self.path.rstrip("/").endswith("/models"):
                    self._write(Reply(body={"object": "list", "data": [{"id": "fake"}]}))
                    return
                with fake._lock:
                    fake.in_flight += 1
                    fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
                try:
                    reply = fake._next_reply(request)
                    if reply.delay and fake._stopping.wait(reply.delay):
                        return  # shutting down: drop the connection
                finally:
                    # Counted out before the answer is written: a client that sends its next
                    # request as soon as it reads this one must not be seen as one too many.
                    with fake._lock:
                        fake.in_flight -= 1
                self._write(reply)

            def _write(self, reply: Reply) -> None:
                if isinstance(reply.body, bytes):
                    payload = reply.body
                elif isinstance(reply.body, str):
                    payload = reply.body.encode()
                else:
                    payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout) and closed the connection

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A counting HTTP proxy in front of the real llama.cpp server: what the LLM endpoint was asked,
counted where it arrives (not by the client that asks)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

#: Headers that belong to one hop, not forwarded.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class CountingProxy:
    """Forwards every request to ``upstream`` (responses buffered whole, streams included) and
    records each chat completion's ``max_tokens``: 1 is a judgement, more is an answer.

    Use as a context manager; ``base_url`` replaces the upstream's in the clients' settings.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.lock = threading.Lock()
        self.completions: list[int] = []
        proxy = self
        client = httpx.Client(timeout=300)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/chat/completions"):
                    try:
                        tokens = int(json.loads(body).get("max_tokens") or 0)
                    except ValueError:
                        tokens = -1
                    with proxy.lock:
                        proxy.completions.append(tokens)
                self._forward(body)

            def _forward(self, body: bytes | None) -> None:
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"host"}
                }
                try:
                    answer = client.request(
                        self.command, proxy.upstream + self.path, content=body, headers=headers
                    )
                except httpx.HTTPError as exc:
                    self.send_error(502, str(exc))
                    return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._client = client

    def judgements(self) -> int:
        """Chat completions with ``max_tokens=1`` so far (the LLM reranker's requests)."""
        with self.lock:
            return sum(1 for t in self.completions if t == 1)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()

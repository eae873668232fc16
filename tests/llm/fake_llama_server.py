"""A stand-in for the llama-server binary, for the start-up paths a real one won't take on demand.

Run as ``fake_llama_server.py --model M --port P ... [--no-repack]``. It appends its command line
to ``$FAKE_LLAMA_SERVER_LOG`` (one JSON list a line) and then, by ``$FAKE_LLAMA_SERVER_MODE``:

* ``crash-at-start``: with the extra CPU buffers on (no ``--no-repack``), dies by SIGSEGV before
  it listens, as llama-server does in its warm-up on a machine whose AMX is not usable;
* ``crash-at-request``: with them on, answers ``/health`` and dies by SIGSEGV at the first chat
  request, as llama-cpp-python's server does there;
* ``fine``: never crashes.

Otherwise it serves ``/health`` and a one-token chat completion with logprobs and timings.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def main(argv: list[str]) -> None:
    with open(os.environ["FAKE_LLAMA_SERVER_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    mode = os.environ.get("FAKE_LLAMA_SERVER_MODE", "fine")
    extra_buffers = "--no-repack" not in argv
    if mode == "crash-at-start" and extra_buffers:
        os.kill(os.getpid(), signal.SIGSEGV)
    port = int(argv[argv.index("--port") + 1])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._send({"status": "ok"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if mode == "crash-at-request" and extra_buffers:
                # raise_signal, not os.kill: delivered to this thread before it can answer (a
                # process-directed signal may land on another thread while this one still
                # sends the answer, and the probe would see a working server).
                signal.raise_signal(signal.SIGSEGV)
            top = [{"token": "B", "logprob": -0.1}, {"token": "A", "logprob": -2.5}]
            self._send(
                {
                    "object": "chat.completion",
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "length",
                            "message": {"role": "assistant", "content": "B"},
                            "logprobs": {
                                "content": [{"token": "B", "logprob": -0.1, "top_logprobs": top}]
                            },
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
                    "timings": {"prompt_n": 9, "cache_n": 0},
                }
            )

        def _send(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

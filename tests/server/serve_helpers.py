"""Helpers of the server tests: a real ``python -m llamaindex_rerankers.server`` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: The shared server's query limit, set through its environment variable (not an argument).
MAX_QUERY_CHARS = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """One server process; ``url`` is its base URL, ``log`` its combined output."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        command = [
            sys.executable,
            "-m",
            "llamaindex_rerankers.server",
            "--host",
            HOST,
            "--port",
            str(self.port),
            *args,
        ]
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "ANONYMIZED_TELEMETRY": "False",
            **(env or {}),
        }
        # No key or base URL of the caller's leaks into a server under test.
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            environment.pop(name, None)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 240.0) -> None:
        """Wait until ``/healthz`` answers (models are loaded before the server listens)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with code {self.process.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server did not listen within {timeout:.0f} s:\n{self.output()}")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def start(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    args: Sequence[str],
    env: dict[str, str] | None = None,
    name: str = "serve",
) -> ServeProcess:
    """Start a server whose finalizer is registered before anything can fail."""
    log = tmp_path_factory.mktemp(name) / "server.log"
    server = ServeProcess(args, log, env)
    request.addfinalizer(server.stop)
    return server

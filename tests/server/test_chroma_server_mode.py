"""``serve --chroma-host``: the backend over a real ``chroma run`` server on 127.0.0.1 (the sample
corpus indexed into it by the test), and what happens when that server goes away."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest
from serve_helpers import HOST, ServeProcess, free_port, start

from llamaindex_rerankers.pipeline import ChromaConfig, index_folder, make_embed_model

pytestmark = pytest.mark.server

COLLECTION = "serve_test"
PRUNING = "best practices for pruning apple trees"


def _chroma_exe() -> str:
    beside_python = Path(sys.executable).parent / "chroma"
    found = str(beside_python) if beside_python.exists() else shutil.which("chroma")
    if not found:
        raise pytest.UsageError("the `chroma` CLI (from the chromadb package) is not installed")
    return found


class ChromaServer:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log = work / "chroma.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [_chroma_exe(), "run", "--path", str(work / "db"), "--host", HOST,
                 "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            )  # fmt: skip

    def wait(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}/api/v2/heartbeat"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chroma run exited:\n{self.log.read_text(errors='replace')}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"chroma run did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def chroma(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embed_model_path: str
) -> Iterator[ChromaServer]:
    """A ``chroma run`` with the sample corpus indexed into ``serve_test``."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-run"))
    request.addfinalizer(server.stop)
    server.wait()
    config = ChromaConfig(host=HOST, port=server.port, collection=COLLECTION)
    corpus = resources.files("llamaindex_rerankers") / "sample_corpus"
    with resources.as_file(corpus) as src:
        stats = index_folder(
            src, config, embed_model=make_embed_model(embed_model_path), show_progress=False
        )
    assert stats.chunks == 33
    yield server


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    chroma: ChromaServer,
) -> ServeProcess:
    process = start(
        request,
        tmp_path_factory,
        [
            "--chroma-host",
            HOST,
            "--chroma-port",
            str(chroma.port),
            "--collection",
            COLLECTION,
            *model_args,
            "--no-answers",
            "--top-k",
            "8",
            "--top-n",
            "3",
        ],
        name="chroma-mode-server",
    )
    process.wait_listening()
    return process


def test_serve_retrieves_from_a_chroma_server(server: ServeProcess) -> None:
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["ready"] is True and set(ready["checks"]) == {"models", "chroma"}
    assert "33 chunks" in ready["checks"]["chroma"]["detail"]
    body = httpx.post(server.url + "/v1/retrieve", json={"query": PRUNING}, timeout=60).json()
    assert body["status"] == "ok"
    assert body["sources"][0]["title"] == "Pruning Apple Trees: When and How"
    assert body["report"]["n_candidates"] == 8
    chat = httpx.post(
        server.url + "/v1/chat", json={"messages": [{"role": "user", "content": "q"}]}
    )
    assert (chat.status_code, chat.json()["code"]) == (501, "answers_disabled")


def test_a_chroma_server_that_went_away_is_not_ready_and_answers_503(
    server: ServeProcess, chroma: ChromaServer
) -> None:
    chroma.stop()
    ready = httpx.get(server.url + "/readyz", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["checks"]["chroma"]["ok"] is False
    r = httpx.post(server.url + "/v1/retrieve", json={"query": PRUNING}, timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "index_unavailable" and r.headers["retry-after"] == "1"
    assert "Traceback" not in r.text
    assert httpx.get(server.url + "/healthz").status_code == 200  # alive, just not ready

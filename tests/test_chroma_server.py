"""The pipeline against a real ``chroma run`` server process on 127.0.0.1 (``HttpClient``).

The server is started by the fixture and stopped in a finalizer (terminate, wait, kill), also
when a test or the start itself fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding

from llamaindex_rerankers import CrossEncoderReranker
from llamaindex_rerankers.pipeline import (
    SOURCE_ID,
    ChromaConfig,
    build_query_engine,
    index_folder,
    load_index,
    make_embed_model,
    retrieve_and_rerank,
)

pytestmark = pytest.mark.server

HOST = "127.0.0.1"
QUERY = "best practices for pruning apple trees"
DOCS = {
    "pruning-guide.md": (
        "Prune apple trees in late winter while they are dormant. Remove dead, diseased and "
        "crossing branches first, then thin the canopy so light reaches the fruiting spurs. "
        "Cut just outside the branch collar and never remove more than a quarter of the tree."
    ),
    "apple-stock.txt": "Apple Inc. shares rose 2% after record iPhone revenue.",
    "apple-pie.md": "Slice tart apples, add sugar and cinnamon, bake in a butter crust.",
    "pear-trees.txt": "Pear trees need a pollination partner and well-drained soil.",
}


def _chroma_exe() -> str:
    beside_python = Path(sys.executable).parent / "chroma"
    found = str(beside_python) if beside_python.exists() else shutil.which("chroma")
    if not found:
        raise pytest.UsageError("the `chroma` CLI (from the chromadb package) is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_for_heartbeat(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float
) -> None:
    url = f"http://{HOST}:{port}/api/v2/heartbeat"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"chroma run exited with code {proc.returncode}:\n{log.read_text(errors='replace')}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    output = log.read_text(errors="replace")
    raise RuntimeError(f"chroma run did not answer {url} within {timeout:.0f} s:\n{output}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chroma_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """A real ``chroma run`` on 127.0.0.1 and a free port; yields the port."""
    work = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    log = work / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_chroma_exe(), "run", "--path", str(work / "db"), "--host", HOST, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    request.addfinalizer(lambda: _stop(proc))  # registered before anything else can fail
    _wait_for_heartbeat(proc, port, log, timeout=90)
    yield port
    assert proc.poll() is None, f"chroma run died during the tests:\n{log.read_text()}"


@pytest.fixture(scope="module")
def embed_model(embed_model_path: str) -> BaseEmbedding:
    return make_embed_model(embed_model_path)


def test_index_and_query_through_a_chroma_server(
    chroma_server: int,
    tmp_path: Path,
    embed_model: BaseEmbedding,
    ce_model_path: str,
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    unused = tmp_path / "unused-persist-dir"
    config = ChromaConfig(
        host=HOST, port=chroma_server, collection="server_test", persist_dir=unused
    )

    first = index_folder(folder, config, embed_model=embed_model, show_progress=False)
    again = index_folder(folder, config, embed_model=embed_model, show_progress=False)
    (folder / "apple-pie.md").write_text("Apple crumble: oats, butter, sugar.", "utf-8")
    (folder / "pear-trees.txt").unlink()
    edited = index_folder(folder, config, embed_model=embed_model, show_progress=False)

    assert (first.added, first.chunks, first.embedded) == (len(DOCS), len(DOCS), len(DOCS))
    assert (again.added, again.updated, again.unchanged, again.embedded) == (0, 0, len(DOCS), 0)
    assert again.chunks == first.chunks
    assert (edited.updated, edited.removed, edited.unchanged, edited.embedded) == (1, 1, 2, 1)
    assert edited.chunks == len(DOCS) - 1
    assert not unused.exists()  # host set: the embedded client was not used

    index = load_index(config, embed_model=embed_model)
    reranker = CrossEncoderReranker(model=ce_model_path)
    result = retrieve_and_rerank(index, QUERY, top_k=10, reranker=reranker)
    sources = [n.node.metadata[SOURCE_ID] for n in result.reranked]
    assert sorted(sources) == ["apple-pie.md", "apple-stock.txt", "pruning-guide.md"]
    assert sources[0] == "pruning-guide.md"
    assert "Apple crumble" in next(
        n.node.get_content()
        for n in result.reranked
        if n.node.metadata[SOURCE_ID] == "apple-pie.md"
    )

    engine = build_query_engine(
        index, reranker=CrossEncoderReranker(model=ce_model_path, top_n=1), top_k=10
    )
    response = engine.query(QUERY)
    assert [s.node.metadata[SOURCE_ID] for s in response.source_nodes] == ["pruning-guide.md"]
    assert "rerank_score" in response.source_nodes[0].node.metadata

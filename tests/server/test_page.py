"""The chat page at ``/`` in a real headless Chromium (Debian's ``chromium`` package, driven by
playwright; the ``browser`` and ``page`` fixtures are in conftest.py), against real servers: the
shared demo server (cross-encoder) and one with the LLM reranker on SmolLM2, whose sources carry
labels. A failing browser test leaves a screenshot (its path is in the failure message)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from serve_helpers import API_KEY, AUTH, ServeProcess, start

pytestmark = pytest.mark.server

PRUNING = "best practices for pruning apple trees"
OFF_TOPIC = "how do I replace the timing belt on a diesel van?"
LABELS = {"unlikely", "likely", "very likely", "unknown"}


@pytest.fixture(scope="module")
def llm_reranker_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    llm: Any,
) -> ServeProcess:
    """``serve --demo --reranker llm``: SmolLM2 judges 3 candidates and writes the answer."""
    server = start(
        request,
        tmp_path_factory,
        [
            "--demo",
            *model_args,
            "--reranker",
            "llm",
            "--top-k",
            "3",
            "--top-n",
            "3",
            "--abstain-below",
            "0",
            "--llm-base-url",
            llm.base_url,
            "--llm-model",
            llm.model,
            "--llm-context-window",
            "2048",
            "--answer-max-tokens",
            "24",
        ],
        name="llm-reranker-server",
    )
    server.wait_listening()
    return server


def ask(page: Any, question: str) -> None:
    page.fill("#question", question)
    page.click("#ask")


def test_the_llm_reranker_labels_each_source_in_the_api(llm_reranker_server: ServeProcess) -> None:
    r = httpx.post(llm_reranker_server.url + "/v1/retrieve", json={"query": PRUNING}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    for source in body["sources"]:
        assert source["rerank_label"] in LABELS - {"unknown"}
        assert set(source["rerank_label_probs"]) == LABELS - {"unknown"}
        assert abs(sum(source["rerank_label_probs"].values()) - 1.0) < 1e-6
    llm = body["report"]["llm"]
    assert llm["judgements"] == 3 and llm["failures"] == 0
    assert llm["calls"] + llm["cache_hits"] >= 3


def test_the_page_streams_an_answer_beside_labelled_sources(
    page: Any, llm_reranker_server: ServeProcess
) -> None:
    page.goto(llm_reranker_server.url + "/")
    assert page.title() == "llamaindex-rerankers chat"
    ask(page, PRUNING)
    page.wait_for_selector("#sources .source", timeout=120_000)
    # The text arrives while the stream is still open: streamed, not one final block.
    page.wait_for_function(
        "() => { const m = document.querySelector('.message.assistant');"
        " return m && m.classList.contains('streaming') && m.textContent.length > 0; }",
        timeout=120_000,
        polling=50,
    )
    page.wait_for_selector(".message.assistant.done", timeout=180_000)
    answer = page.inner_text(".message.assistant")
    assert answer.strip()
    sources = page.query_selector_all("#sources .source")
    assert len(sources) == 3
    for source in sources:
        assert source.query_selector(".label").inner_text() in LABELS
        assert source.query_selector(".score").inner_text().startswith("score ")
        assert source.query_selector(".retrieval-rank").inner_text().startswith("retrieval #")
        assert source.query_selector(".title").inner_text()
    assert page.is_hidden("#status")
    assert "3 candidates, 3 judged" in page.inner_text("#report")
    assert not [m for m in page.messages if m.startswith(("error", "pageerror"))], page.messages


def test_the_page_shows_the_abstain_message_and_asks_for_the_key(
    page: Any, demo_server: ServeProcess
) -> None:
    page.goto(demo_server.url + "/")
    ask(page, OFF_TOPIC)  # no key yet: the server requires one
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "API key" in page.inner_text("#error")
    assert page.get_attribute("#key-box", "open") is not None
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    ask(page, OFF_TOPIC)
    page.wait_for_selector(".message.assistant.done", timeout=60_000)
    assert page.is_visible("#status")
    assert "Nothing relevant" in page.inner_text("#status")
    assert "abstained" in (page.get_attribute(".message.assistant", "class") or "")
    assert "nothing relevant" in page.inner_text(".message.assistant").lower()
    assert len(page.query_selector_all("#sources .source")) == 3
    assert httpx.get(demo_server.url + "/metrics", headers=AUTH).status_code == 200

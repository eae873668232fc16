"""LLMReranker against a real llama.cpp server running SmolLM2-135M (about 25 LLM calls)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers.endpoints.llamacpp import (
    LLM_GGUF_ENV,
    LocalLLMServer,
    LocalLLMServerError,
    gguf_namespace,
    local_llm_server,
    resolve_model_path,
)
from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES
from llamaindex_rerankers.llm.labels import DEFAULT_LABELS
from llamaindex_rerankers.llm.prompts import FEW_SHOT_EXAMPLES, V1_JUDGE_PROMPT, V1_SYSTEM_PROMPT

pytestmark = pytest.mark.server

QUERY = "how do I prune an apple tree"
PRUNING = (
    "Pruning apple trees: in late winter, while the tree is dormant, cut out dead, diseased "
    "and crossing branches, then thin the canopy so light reaches the fruit."
)
STOCK = "Apple Inc. shares fell 2% on Tuesday after the company reported weaker iPhone sales."
PIE = "Apple pie recipe: mix sliced apples with sugar and cinnamon and bake in a buttery crust."
LABEL_NAMES = {lab.name for lab in DEFAULT_LABELS}
#: Judgements calibration adds to every call (the content-free passages).
F = len(CONTENT_FREE_PASSAGES)


def apple_nodes() -> list[NodeWithScore]:
    texts = {"stock": STOCK, "pruning": PRUNING, "pie": PIE}
    return [NodeWithScore(node=TextNode(text=t, id_=k), score=1.0) for k, t in texts.items()]


def reranker_for(server: LocalLLMServer, **kwargs: object) -> LLMReranker:
    return LLMReranker(model=server.model, base_url=server.base_url, **kwargs)  # type: ignore[arg-type]


def test_model_path_must_be_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LLM_GGUF_ENV, raising=False)
    with pytest.raises(LocalLLMServerError, match=f"model_path.*{LLM_GGUF_ENV}"):
        resolve_model_path(None)
    with pytest.raises(LocalLLMServerError, match="does not exist"):
        resolve_model_path("/nonexistent/model.gguf")


def test_apple_pruning_logprob_path_calibration_and_cache(llm_server: LocalLLMServer) -> None:
    reranker = reranker_for(llm_server)  # the defaults: prompt v2, calibration, w = auto
    nodes = apple_nodes()
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)

    assert sorted(n.node.id_ for n in out) == ["pie", "pruning", "stock"]
    report = reranker.last_report
    assert report is not None and report.retrieval_weight is not None
    w = report.retrieval_weight
    for rank, n in enumerate(out):
        meta = n.node.metadata
        assert meta["rerank_source"] == "logprobs"
        raw, probs = meta["rerank_raw_label_probs"], meta["rerank_label_probs"]
        assert set(probs) == set(raw) == LABEL_NAMES
        assert math.fsum(probs.values()) == pytest.approx(1.0)
        assert math.fsum(raw.values()) == pytest.approx(1.0)
        assert meta["rerank_label"] == max(probs, key=probs.get)
        expected = sum(p * lab.value for lab in DEFAULT_LABELS for k, p in probs.items()
                       if k == lab.name)  # fmt: skip
        if w > 0:
            assert meta["rerank_model_score"] == pytest.approx(expected)
        prior = 1.0 - meta["retrieval_rank"] / 3 + 1 / 3  # linear rank prior of 3 candidates
        assert n.score == pytest.approx((1 - w) * expected + w * prior)
        assert meta["rerank_retrieval_weight"] == w
        assert rank == 0 or out[rank - 1].score >= n.score
    # three passages and the content-free ones for calibration, one token each; SmolLM2 may
    # answer with something that is not a code: that answer is retried once
    assert report.llm.failures == 0 and report.llm.unknown == 0
    assert report.llm.calls == 3 + F + report.llm.parse_failures
    assert (report.llm.judgements, report.llm.calibration_judgements) == (3, F)
    assert report.llm.uncalibrated == 0
    assert report.llm.prompt_tokens > 3 * 50
    # The input nodes are untouched.
    assert all(n.score == 1.0 and "rerank_score" not in n.node.metadata for n in nodes)

    again = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert reranker.last_report is not None
    assert reranker.last_report.llm.calls == 0
    assert reranker.last_report.llm.cache_hits == 3 + F
    assert [(n.node.id_, n.score) for n in again] == [(n.node.id_, n.score) for n in out]


def test_prompt_v1_with_its_examples_ranks_the_pruning_passage_first(
    llm_server: LocalLLMServer,
) -> None:
    # The judge itself, uncalibrated and unfused: with prompt v1's worked examples SmolLM2 gets
    # this easy case right (prompt v2 without examples does not; the benchmarks say the
    # examples buy nothing on real queries once fusion is automatic).
    reranker = reranker_for(
        llm_server, examples=FEW_SHOT_EXAMPLES, system_prompt=V1_SYSTEM_PROMPT,
        judge_prompt=V1_JUDGE_PROMPT, calibration="none", retrieval_weight=0.0, cache=None,
    )  # fmt: skip
    out = reranker.postprocess_nodes(apple_nodes(), query_str=QUERY)
    scores = {n.node.id_: n.score for n in out}
    assert out[0].node.id_ == "pruning"
    assert scores["pruning"] > scores["stock"] and scores["pruning"] > scores["pie"]


def test_text_fallback_without_logprobs(llm_server: LocalLLMServer) -> None:
    reranker = reranker_for(llm_server, use_logprobs=False, cache=None)
    out = reranker.postprocess_nodes(apple_nodes(), query_str=QUERY)
    assert sorted(n.node.id_ for n in out) == ["pie", "pruning", "stock"]
    report = reranker.last_report
    assert report is not None
    for n in out:
        meta = n.node.metadata
        assert meta["rerank_source"] in {"text", "unknown"}
        if meta["rerank_source"] == "text":
            label = meta["rerank_label"]
            assert n.score == next(lab.value for lab in DEFAULT_LABELS if lab.name == label)
            assert meta["rerank_label_probs"][label] == 1.0
        else:
            assert meta["rerank_label"] == "unknown" and meta["rerank_score"] is None
    judged = [n for n in out if n.node.metadata["rerank_source"] == "text"]
    unknown = [n for n in out if n.node.metadata["rerank_source"] == "unknown"]
    assert out == judged + unknown  # unjudged nodes come after every judged one
    # Each unparseable first answer was retried once with the stricter instruction: a request
    # per passage, one more per parse failure, except after a passage's second one (it is then
    # unknown), or after a failed request (unknown too); HTTP retries (a loaded machine) are
    # calls of their own. No calibration without logprobs.
    llm = report.llm
    assert llm.calls - llm.retries == 3 + llm.parse_failures - llm.unknown + llm.failures
    assert report.llm.calibration_judgements == 0
    assert report.llm.unknown == len(unknown)
    assert report.n_unjudged == len(unknown)


async def test_async_judgements_overlap(llm_server: LocalLLMServer) -> None:
    reranker = reranker_for(llm_server, concurrency=4, cache=None)
    nodes = [NodeWithScore(node=TextNode(text=f"{PRUNING} ({i})", id_=str(i))) for i in range(4)]
    out = await reranker.apostprocess_nodes(nodes, query_str=QUERY)
    assert sorted(n.node.id_ for n in out) == ["0", "1", "2", "3"]
    report = reranker.last_report
    assert report is not None
    assert report.llm.calls == 4 + F  # F: calibration's content-free passages
    assert report.llm.max_in_flight > 1


async def test_sync_call_inside_a_running_event_loop(llm_server: LocalLLMServer) -> None:
    asyncio.get_running_loop()  # as in Jupyter: a loop is running in this thread
    reranker = reranker_for(llm_server, cache=None)
    nodes = apple_nodes()[:2]
    out = reranker.postprocess_nodes(nodes, query_str="apple tree pruning")
    assert sorted(n.node.id_ for n in out) == ["pruning", "stock"]
    assert reranker.last_report is not None
    assert reranker.last_report.llm.calls == 2 + F
    # A second sync call works as well (both ran on the reranker's background loop).
    reranker.postprocess_nodes(nodes[:1], query_str="apple tree pruning")
    assert reranker.last_report.llm.calls == 1 + F


def test_gguf_namespace_is_the_file_digest_computed_once(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    expected = "gguf-sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert gguf_namespace(model) == gguf_namespace(str(model)) == expected
    # Same path, size and mtime: the stored digest, not the file, answers.
    stat = model.stat()
    model.write_bytes(b"FUGG" + bytes(range(256)) * 64)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert gguf_namespace(model) == expected
    # Another mtime: hashed again.
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert gguf_namespace(model) != expected


def test_the_cache_is_hit_through_a_second_server_on_another_port(
    gguf_path: str, tmp_path: Path
) -> None:
    cache = str(tmp_path / "judgements.sqlite")
    two = apple_nodes()[:2]
    from llamaindex_rerankers.endpoints.llamacpp import _free_port

    first_port = _free_port("127.0.0.1")
    second_port = next(p for p in iter(lambda: _free_port("127.0.0.1"), None) if p != first_port)
    seen = []
    for port in (first_port, second_port):  # two starts, one after the other
        with local_llm_server(gguf_path, port=port, startup_timeout=180) as server:
            assert server.namespace == gguf_namespace(gguf_path)
            reranker = reranker_for(server, cache=cache, cache_namespace=server.namespace)
            out, report = reranker.rerank(two, QUERY)
            seen.append((server.base_url, report.llm, [(n.node.id_, n.score) for n in out]))
    (first_url, first, first_out), (second_url, second, second_out) = seen
    assert first_url != second_url
    assert first is not None and (first.calls, first.cache_hits) == (2 + F, 0)
    assert second is not None and (second.calls, second.cache_hits) == (0, 2 + F)
    assert second_out == first_out


def test_server_process_is_stopped_on_exit(gguf_path: str) -> None:
    start = time.monotonic()
    with local_llm_server(gguf_path, startup_timeout=180) as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        assert server.process.poll() is None
    assert server.process.poll() is not None
    assert time.monotonic() - start < 180


def test_eval_llm_cache_is_shared_by_llm_and_cascade_and_kept_across_runs(
    llm_server: LocalLLMServer, data_dir: Path, ce_model_path: str, tmp_path: Path
) -> None:
    from llamaindex_rerankers.cli import main

    def run(name: str) -> dict[str, dict[str, Any]]:
        out = tmp_path / f"{name}.json"
        argv = ["eval", "--dataset", str(data_dir / "trec-dl-2019"), "--queries", "1"]
        argv += ["--top-k", "4", "--top-n", "4", "--reranker", "llm,cascade"]
        argv += ["--cascade-keep", "2", "--cross-encoder-model", ce_model_path]
        argv += ["--llm-base-url", llm_server.base_url, "--llm-model", llm_server.model]
        argv += ["--llm-cache", str(tmp_path / "judgements.sqlite")]
        assert main([*argv, "--output", str(out), "--no-progress"]) == 0
        return {r["reranker"]: r for r in json.loads(out.read_text())["results"]}

    first = run("first")
    assert (first["llm"]["total_calls"], first["llm"]["total_cache_hits"]) == (4 + F, 0)
    # the cascade's LLM stage judges 2 of the same 4 passages: all answered by the cache
    assert (first["cascade"]["total_calls"], first["cascade"]["total_cache_hits"]) == (0, 2 + F)
    second = run("second")
    assert (second["llm"]["total_calls"], second["llm"]["total_cache_hits"]) == (0, 4 + F)
    assert second["llm"]["nDCG@10"] == first["llm"]["nDCG@10"]


def test_eval_llm_cache_is_hit_across_runs_that_each_start_their_own_local_server(
    gguf_path: str,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each run starts a llama.cpp server on a new random port: the cache key must name the
    # model file (its digest), not the port, or the second run re-asks every passage.
    from llamaindex_rerankers.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def run(name: str) -> dict[str, Any]:
        out = tmp_path / f"{name}.json"
        argv = ["eval", "--dataset", str(data_dir / "trec-dl-2019"), "--queries", "1"]
        argv += ["--top-k", "2", "--top-n", "2", "--reranker", "llm", "--llm-gguf", gguf_path]
        argv += ["--llm-cache", str(tmp_path / "judgements.sqlite")]
        assert main([*argv, "--output", str(out), "--no-progress"]) == 0
        return {r["reranker"]: r for r in json.loads(out.read_text())["results"]}["llm"]

    first = run("first")
    assert (first["total_calls"], first["total_cache_hits"]) == (2 + F, 0)
    second = run("second")
    assert (second["total_calls"], second["total_cache_hits"]) == (0, 2 + F)


def test_llm_server_command_stops_its_server_on_sigterm(gguf_path: str) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    from llamaindex_rerankers.endpoints.llamacpp import _free_port, _wait_ready

    port = _free_port("127.0.0.1")
    base_url = f"http://127.0.0.1:{port}/v1"
    cli = [sys.executable, "-m", "llamaindex_rerankers.cli", "llm-server", "--port", str(port)]
    proc = subprocess.Popen([*cli, "--model-path", gguf_path])
    try:
        _wait_ready(base_url, proc, timeout=180)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(OSError):  # nobody left listening: the llama.cpp child stopped too
            urllib.request.urlopen(base_url + "/models", timeout=2)
    finally:
        proc.kill()

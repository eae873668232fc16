"""RemoteReranker against a real rerank server: our own ``serve`` (its Cohere-compatible
``/v1/rerank`` and ``/v2/rerank``) on the offline cross-encoder, compared with the local
``CrossEncoderReranker`` on the same model and the same DL19 BM25 candidates."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from serve_helpers import HOST, REPO, ServeProcess, free_port, start

from llamaindex_rerankers import CascadeReranker, CrossEncoderReranker, RemoteReranker
from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.evaluation import load_beir, load_trec_run
from llamaindex_rerankers.evaluation.data import candidates
from llamaindex_rerankers.evaluation.metrics import per_query

pytestmark = [pytest.mark.server, pytest.mark.slow]

#: DL19 queries compared here (the benchmark runs all 43).
N_QUERIES = 8
TOP_K = 20


@pytest.fixture(scope="module")
def ce_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_args: list[str]
) -> ServeProcess:
    """``serve`` with the cross-encoder and no LLM: a rerank service."""
    server = start(
        request,
        tmp_path_factory,
        ["--demo", *model_args, "--reranker", "cross-encoder", "--no-answers",
         "--max-documents", "200", "--max-concurrent", "8"],
        name="remote-serve",
    )  # fmt: skip
    server.wait_listening()
    return server


@pytest.fixture(scope="module")
def dl19(data_dir: Path) -> list[tuple[str, list[NodeWithScore], dict[str, Any]]]:
    """(query, BM25 top-20 nodes, qrels) of the first DL19 test queries with judgements."""
    ds = load_beir(data_dir / "trec-dl-2019", split="test")
    bm25 = load_trec_run(data_dir / "trec-dl-2019" / "runs" / "bm25_top100.trec")
    qids = [q for q in ds.query_ids() if q in bm25 and q in ds.qrels][:N_QUERIES]
    return [(ds.queries[q], candidates(ds, bm25, q, TOP_K), {q: ds.qrels[q]}) for q in qids]


@pytest.fixture(scope="module")
def local(ce_model_path: str) -> CrossEncoderReranker:
    # The server's defaults (precision="auto", the model's max_length): the same computation.
    return CrossEncoderReranker(model=ce_model_path)


def _scores(nodes: list[NodeWithScore]) -> dict[str, float | None]:
    return {n.node.node_id: n.score for n in nodes}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_scores_equal_the_local_cross_encoder_on_dl19(
    ce_server: ServeProcess,
    local: CrossEncoderReranker,
    dl19: list[tuple[str, list[NodeWithScore], dict[str, Any]]],
    version: str,
) -> None:
    remote = RemoteReranker(base_url=ce_server.url, api_version=version)
    ndcg_local, ndcg_remote = [], []
    for query, nodes, qrels in dl19:
        want, got = local.rerank(nodes, query), remote.rerank(nodes, query)
        a, b = _scores(want.nodes), _scores(got.nodes)
        assert a.keys() == b.keys()
        # serve returns sigmoid(logit), a probability: kept as is (scores="auto" for cohere).
        assert all(abs(a[d] - b[d]) <= 1e-3 for d in a), max(abs(a[d] - b[d]) for d in a)  # type: ignore[operator]
        assert [n.node.node_id for n in got.nodes] == [n.node.node_id for n in want.nodes]
        assert got.report.n_judged == len(nodes) and got.report.remote is not None
        assert got.report.remote.requests == 1 and got.report.remote.documents == len(nodes)
        assert all(n.node.metadata["rerank_raw_score"] == n.score for n in got.nodes)
        qid = next(iter(qrels))
        ndcg_local.append(per_query(qrels, {qid: [(d, s) for d, s in a.items()]})[qid]["nDCG@10"])
        ndcg_remote.append(per_query(qrels, {qid: [(d, s) for d, s in b.items()]})[qid]["nDCG@10"])
    assert ndcg_remote == pytest.approx(ndcg_local, abs=1e-9)


def test_serve_scores_the_document_text_alone(
    ce_server: ServeProcess, local: CrossEncoderReranker
) -> None:
    # The bug this found: serve's /v1/rerank scored "ref_doc_index: 0\n\n" + the text (its
    # bookkeeping metadata went into the pair), 0.951 instead of 0.902 for this passage.
    nodes = [NodeWithScore(node=TextNode(text="Prune apple trees in late winter."))]
    query = "how to prune apple trees"
    want = local.rerank(nodes, query).nodes[0].score
    got = RemoteReranker(base_url=ce_server.url).rerank(nodes, query).nodes[0].score
    assert got == pytest.approx(want, abs=1e-3)


def test_requests_split_and_merge_in_order(
    ce_server: ServeProcess,
    local: CrossEncoderReranker,
    dl19: list[tuple[str, list[NodeWithScore], dict[str, Any]]],
) -> None:
    query, nodes, _ = dl19[0]
    remote = RemoteReranker(base_url=ce_server.url, max_documents_per_request=3, max_in_flight=2)
    result = remote.rerank(nodes, query)
    assert result.report.remote is not None
    assert result.report.remote.requests == 7 and result.report.remote.max_in_flight == 2
    # Each request is its own batch on the server, and under bfloat16 (precision="auto" on a
    # CPU that computes it) a pair's score depends on its batch's padding by up to ~1e-2: the
    # local reference scores the same chunks of 3, so that any mix-up of the merge shows.
    want: dict[str, float | None] = {}
    for i in range(0, len(nodes), 3):
        want.update(_scores(local.rerank(nodes[i : i + 3], query).nodes))
    got = _scores(result.nodes)
    assert all(abs(want[d] - got[d]) <= 1e-3 for d in want)  # type: ignore[operator]


def test_a_shared_instance_gives_each_thread_and_task_what_it_gives_alone(
    ce_server: ServeProcess, dl19: list[tuple[str, list[NodeWithScore], dict[str, Any]]]
) -> None:
    remote = RemoteReranker(base_url=ce_server.url, max_documents_per_request=5, max_in_flight=3)
    alone = {query: _scores(remote.rerank(nodes, query).nodes) for query, nodes, _ in dl19}
    calls = dl19 * 2
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda c: remote.rerank(c[1], c[0]), calls))

    async def tasks() -> list[Any]:
        return await asyncio.gather(*(remote.arerank(nodes, query) for query, nodes, _ in calls))

    for results in (threaded, asyncio.run(tasks())):
        for (query, _, _), result in zip(calls, results, strict=True):
            assert _scores(result.nodes) == alone[query]
            assert result.report.query == query
            assert result.report.remote is not None and result.report.remote.max_in_flight <= 3


def test_a_remote_first_stage_in_a_cascade(
    ce_server: ServeProcess,
    local: CrossEncoderReranker,
    dl19: list[tuple[str, list[NodeWithScore], dict[str, Any]]],
) -> None:
    query, nodes, _ = dl19[1]
    cascade = CascadeReranker(first=RemoteReranker(base_url=ce_server.url), second=local, keep=5)
    result = cascade.rerank(nodes, query)
    assert result.report.n_judged == 5 and result.report.n_pruned == len(nodes) - 5
    assert result.report.remote is not None and result.report.cross_encoder is not None
    # The first stage's cut is the local cross-encoder's top 5.
    top5 = [n.node.node_id for n in local.rerank(nodes, query).nodes[:5]]
    assert {n.node.node_id for n in result.nodes[:5]} == set(top5)
    rebuilt = BaseReranker.from_dict(cascade.to_dict())
    assert isinstance(rebuilt.first, RemoteReranker)
    assert rebuilt.first.base_url == ce_server.url


# -- a rerank server we did not write: Infinity ------------------------------------------------

#: Infinity's command, from `make infinity` (its own virtualenv); the test is skipped without it.
INFINITY = Path(
    os.environ.get("LLAMAINDEX_RERANKERS_INFINITY", REPO / ".cache/infinity-venv/bin/infinity_emb")
)


@pytest.fixture(scope="module")
def infinity(ce_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not INFINITY.exists():
        if os.environ.get("LLAMAINDEX_RERANKERS_REQUIRE_INFINITY"):  # make test: a real server
            pytest.fail(f"Infinity is not installed at {INFINITY}; run `make infinity`")
        pytest.skip(f"Infinity is not installed at {INFINITY} (make infinity)")
    port = free_port()
    log = tmp_path_factory.mktemp("infinity") / "infinity.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(INFINITY), "v2", "--model-id", ce_model_path, "--engine", "torch", "--device",
             "cpu", "--port", str(port), "--host", HOST, "--no-bettertransformer"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_infinity_scores_equal_the_local_float32_cross_encoder(
    infinity: str,
    ce_model_path: str,
    dl19: list[tuple[str, list[NodeWithScore], dict[str, Any]]],
) -> None:
    # Infinity computes in float32 on CPU: the exact local path is the reference.
    local32 = CrossEncoderReranker(model=ce_model_path, precision="float32")
    remote = RemoteReranker(base_url=infinity, path="/rerank", model=ce_model_path)
    for query, nodes, _ in dl19[:4]:
        want, got = (
            _scores(local32.rerank(nodes, query).nodes),
            _scores(remote.rerank(nodes, query).nodes),
        )
        assert all(abs(want[d] - got[d]) <= 1e-3 for d in want)  # type: ignore[operator]


def test_serve_reranks_through_a_rerank_service(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_args: list[str],
    ce_server: ServeProcess,
) -> None:
    # A stateless replica: `serve --reranker remote`, the service from the environment.
    replica = start(
        request,
        tmp_path_factory,
        ["--demo", *model_args, "--reranker", "remote", "--no-answers"],
        env={"LLAMAINDEX_RERANKERS_REMOTE_URL": ce_server.url},
        name="remote-replica",
    )
    replica.wait_listening()
    body = {"query": "how to prune apple trees", "documents": ["Prune in late winter.", "AAPL"]}
    direct = httpx.post(ce_server.url + "/v2/rerank", json=body, timeout=60).json()
    through = httpx.post(replica.url + "/v2/rerank", json=body, timeout=60).json()
    assert [r["index"] for r in through["results"]] == [r["index"] for r in direct["results"]]
    for a, b in zip(direct["results"], through["results"], strict=True):
        assert a["relevance_score"] == pytest.approx(b["relevance_score"], abs=1e-9)
    assert through["meta"]["report"]["remote"]["requests"] == 1
    chat = httpx.post(
        replica.url + "/v1/retrieve", json={"query": "pruning apple trees"}, timeout=60
    )
    assert chat.status_code == 200 and chat.json()["sources"]

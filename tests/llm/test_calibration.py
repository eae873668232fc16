"""Contextual calibration and ``retrieval_weight="auto"``, through a scripted chat client whose
label probabilities are set per passage (the reranker, its cache and the base are real)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from llama_index.core.schema import MetadataMode
from scripted_judge import CODES, Dist, DistributionClient, nodes_of
from table_reranker import TableReranker

from llamaindex_rerankers.cascade import CascadeReranker
from llamaindex_rerankers.llm import LLMReranker
from llamaindex_rerankers.llm.calibration import (
    CONTENT_FREE_PASSAGES,
    PRIOR_FLOOR,
    calibrate,
    content_free_prior,
)
from llamaindex_rerankers.llm.labels import DEFAULT_LABELS, expected_relevance
from llamaindex_rerankers.scoring import fusion_weight, normalized_entropy


def as_probs(d: Dist) -> dict[str, float]:
    return dict(zip(CODES, d, strict=True))


def reranker(client: DistributionClient, **kwargs: object) -> LLMReranker:
    return LLMReranker(model="scripted", client=client, metadata_mode=MetadataMode.NONE,
                       detect_injection=False, **kwargs)  # fmt: skip


# -- the maths ---------------------------------------------------------------------------------


def test_calibration_divides_the_prior_out_and_renormalises() -> None:
    prior = {"unlikely": 0.05, "likely": 0.15, "very likely": 0.8}
    cal = calibrate({"unlikely": 0.2, "likely": 0.2, "very likely": 0.6}, prior)
    raw = [0.2 / 0.05, 0.2 / 0.15, 0.6 / 0.8]
    assert [cal[k] for k in CODES] == pytest.approx([r / sum(raw) for r in raw])
    # a passage answered exactly like "no passage" carries no information: uniform
    assert list(calibrate(prior, prior).values()) == pytest.approx([1 / 3] * 3)


def test_the_prior_is_the_floored_mean_of_the_content_free_answers() -> None:
    prior = content_free_prior([as_probs((0.0, 0.2, 0.8)), as_probs((0.0, 0.4, 0.6))])
    assert prior is not None
    assert prior["unlikely"] == pytest.approx(PRIOR_FLOOR / (1 + PRIOR_FLOOR))
    assert prior["likely"] / prior["very likely"] == pytest.approx(0.3 / 0.7)
    assert content_free_prior([{}, {}]) is None


def test_auto_weight_follows_the_mean_entropy() -> None:
    assert fusion_weight([normalized_entropy(as_probs((0.98, 0.01, 0.01)))]) == 0.0
    assert fusion_weight([normalized_entropy(as_probs((0.34, 0.33, 0.33)))]) == 1.0
    assert 0.0 < fusion_weight([0.6, 0.8]) < 1.0
    assert fusion_weight([]) == 1.0
    with pytest.raises(ValueError):
        fusion_weight([0.5], confident=0.9, uninformed=0.5)


# -- calibration in the reranker ---------------------------------------------------------------


def test_calibration_reorders_what_the_label_prior_biased() -> None:
    # raw: x = .1·0 + .2·.5 + .6 = .70 beats y = .65; the prior favours C so strongly that,
    # divided out, y (more B than the prior expects) beats x.
    table = {"x": (0.2, 0.2, 0.6), "y": (0.1, 0.5, 0.4)}
    prior = (0.05, 0.15, 0.8)
    raw = reranker(DistributionClient(table, prior), calibration="none", retrieval_weight=0.0)
    assert [n.node.node_id for n in raw.rerank(nodes_of("x", "y"), "q").nodes] == ["x", "y"]

    client = DistributionClient(table, prior)
    cal = reranker(client, retrieval_weight=0.0)
    out, report = cal.rerank(nodes_of("x", "y"), "q")
    assert [n.node.node_id for n in out] == ["y", "x"]
    want = calibrate(as_probs(table["y"]), as_probs(prior))
    meta = out[0].node.metadata
    assert meta["rerank_label_probs"] == pytest.approx(want)
    assert meta["rerank_raw_label_probs"] == pytest.approx(as_probs(table["y"]))
    assert out[0].score == pytest.approx(expected_relevance(want, DEFAULT_LABELS))
    # the content-free judgements, counted apart from the passages, each one request
    assert sorted(client.requests) == sorted(["x", "y", *CONTENT_FREE_PASSAGES])
    assert report.llm is not None
    n_free = len(CONTENT_FREE_PASSAGES)
    assert (report.llm.judgements, report.llm.calibration_judgements) == (2, n_free)
    assert report.llm.calls == 2 + n_free
    assert report.llm.uncalibrated == 0

    # cached like the others: the same call again asks nothing
    again = cal.rerank(nodes_of("x", "y"), "q")
    assert again.report.llm is not None and again.report.llm.calls == 0
    assert [n.score for n in again.nodes] == [n.score for n in out]


def test_failed_content_free_judgements_leave_raw_scores_and_lose_nothing() -> None:
    table = {"x": (0.2, 0.2, 0.6), "y": (0.1, 0.5, 0.4)}
    out, report = reranker(DistributionClient(table, prior=None), retrieval_weight=0.0).rerank(
        nodes_of("x", "y"), "q"
    )
    assert [n.node.node_id for n in out] == ["x", "y"]
    assert "rerank_raw_label_probs" not in out[0].node.metadata
    assert report.llm is not None and report.llm.uncalibrated == 2
    assert report.n_judged == 2


def test_text_answers_are_not_calibrated_and_rank_alone() -> None:
    table = {"x": (0.1, 0.1, 0.8), "y": (0.8, 0.1, 0.1)}
    client = DistributionClient(table, (0.3, 0.3, 0.4), logprobs=False)
    out, report = reranker(client).rerank(nodes_of("y", "x"), "q")
    assert [n.node.node_id for n in out] == ["x", "y"]  # auto: no uncertainty, w = 0
    assert report.retrieval_weight == 0.0
    assert out[0].node.metadata["rerank_label_probs"] == as_probs((0.0, 0.0, 1.0))
    # asked for text only, the reranker does not judge content-free passages at all
    client = DistributionClient(table, (0.3, 0.3, 0.4), logprobs=False)
    _, report = reranker(client, use_logprobs=False).rerank(nodes_of("y", "x"), "q")
    assert sorted(client.requests) == ["x", "y"]
    assert report.llm is not None and report.llm.calibration_judgements == 0


# -- auto fusion -------------------------------------------------------------------------------


def test_a_confident_judge_keeps_its_own_order_undiluted() -> None:
    # peaked answers, the best passage retrieved last: auto must not pull it back down
    table = {"a": (0.98, 0.01, 0.01), "b": (0.01, 0.98, 0.01), "c": (0.01, 0.01, 0.98)}
    prior = (1 / 3, 1 / 3, 1 / 3)
    auto = reranker(DistributionClient(table, prior)).rerank(nodes_of("a", "b", "c"), "q")
    alone = reranker(DistributionClient(table, prior), retrieval_weight=0.0).rerank(
        nodes_of("a", "b", "c"), "q"
    )
    assert [n.node.node_id for n in auto.nodes] == ["c", "b", "a"]
    assert [n.score for n in auto.nodes] == [n.score for n in alone.nodes]
    assert auto.report.retrieval_weight == 0.0
    assert {n.node.metadata["rerank_retrieval_weight"] for n in auto.nodes} == {0.0}


def test_a_judge_that_cannot_tell_passages_apart_leaves_the_first_stage_order() -> None:
    # every passage answered like the content-free ones: calibrated, all uniform
    prior = (0.1, 0.3, 0.6)
    table = {t: (0.1 + d, 0.3, 0.6 - d) for t, d in zip("abcd", (0.0, 0.01, 0.02, 0.03),
                                                       strict=True)}  # fmt: skip
    out, report = reranker(DistributionClient(table, prior)).rerank(
        nodes_of("d", "c", "b", "a"), "q"
    )
    assert [n.node.node_id for n in out] == ["d", "c", "b", "a"]
    assert report.retrieval_weight == 1.0
    # without calibration and with w = 0 the noise would have decided
    noisy = reranker(DistributionClient(table, prior), calibration="none", retrieval_weight=0.0)
    assert [n.node.node_id for n in noisy.rerank(nodes_of("d", "c", "b", "a"), "q").nodes] == [
        "a", "b", "c", "d"
    ]  # fmt: skip


def test_weights_are_validated_with_a_message_that_says_what_is_accepted() -> None:
    client = DistributionClient({}, None)
    for bad in (1.5, -0.1, "sometimes", True):
        with pytest.raises(ValueError, match="number in \\[0, 1\\] or 'auto'"):
            reranker(client, retrieval_weight=bad)
    assert reranker(client, retrieval_weight="0.25").retrieval_weight == 0.25
    assert reranker(client, retrieval_weight="AUTO").retrieval_weight == "auto"


def test_cascade_auto_weight_comes_from_the_second_stage() -> None:
    first = TableReranker(table={"a": 0.9, "b": 0.8, "c": 0.1}, metadata_mode=MetadataMode.NONE)
    sure = {"a": (0.98, 0.01, 0.01), "b": (0.01, 0.01, 0.98), "c": (0.98, 0.01, 0.01)}
    cascade = CascadeReranker(first=first, second=reranker(DistributionClient(sure, (1 / 3,) * 3)),
                              keep=2, metadata_mode=MetadataMode.NONE)  # fmt: skip
    out = cascade.rerank(nodes_of("a", "b", "c"), "q").nodes
    assert [n.node.node_id for n in out] == ["b", "a", "c"]  # the confident LLM decides
    assert out[0].node.metadata["rerank_stage1_weight"] == 0.0

    prior = (0.2, 0.3, 0.5)
    unsure = {"a": prior, "b": prior, "c": prior}
    cascade = CascadeReranker(first=first, second=reranker(DistributionClient(unsure, prior)),
                              keep=2, metadata_mode=MetadataMode.NONE)  # fmt: skip
    out = cascade.rerank(nodes_of("a", "b", "c"), "q").nodes
    assert [n.node.node_id for n in out] == ["a", "b", "c"]  # the cross-encoder's order
    assert out[0].node.metadata["rerank_stage1_weight"] == 1.0


def test_shared_instance_under_threads_gives_each_call_what_it_gives_alone() -> None:
    table = {f"p{i}": ((i % 5) / 10 + 0.05, 0.3, 0.65 - (i % 5) / 10) for i in range(12)}
    prior = (0.2, 0.3, 0.5)
    queries = [f"q{i}" for i in range(8)]
    texts = {q: [f"p{(i + j) % 12}" for j in range(6)] for i, q in enumerate(queries)}

    def alone(q: str) -> list[tuple[str, float | None]]:
        out = reranker(DistributionClient(table, prior), cache=None).rerank(nodes_of(*texts[q]), q)
        return [(n.node.node_id, n.score) for n in out.nodes]

    expected = {q: alone(q) for q in queries}
    shared = reranker(DistributionClient(table, prior), cache=None, concurrency=3)

    def call(q: str) -> tuple[str, list[tuple[str, float | None]], float | None]:
        result = shared.rerank(nodes_of(*texts[q]), q)
        return q, [(n.node.node_id, n.score) for n in result.nodes], result.report.retrieval_weight

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, queries * 3))
    for q, got, weight in results:
        assert got == expected[q]
        assert weight is not None and 0.0 <= weight <= 1.0

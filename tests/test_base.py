"""The shared reranker contract, exercised through a tiny deterministic reranker.

The base is the thing under test; ``TableReranker`` only supplies scores from a table so that
every expected order can be written down by hand.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from collections.abc import Sequence
from typing import Any

import pytest
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from scripted_judge import DistributionClient
from table_reranker import TableReranker

from llamaindex_rerankers.base import Judgement, RerankReport


def nodes_for(*texts: str) -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(text=t, id_=f"n{i}", metadata={"source": f"s{i}"}), score=10.0 - i
        )
        for i, t in enumerate(texts)
    ]


def ids(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


TABLE = {"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.9, "e": 0.0}


def test_sorts_by_score_and_ties_keep_input_order() -> None:
    out = TableReranker(table=TABLE).postprocess_nodes(
        nodes_for("a", "b", "c", "d", "e"), query_str="q"
    )
    assert ids(out) == ["n1", "n3", "n2", "n0", "n4"]
    assert [n.score for n in out] == [0.9, 0.9, 0.5, 0.2, 0.0]
    assert all(type(n.score) is float for n in out)


def test_top_n_and_min_score() -> None:
    nodes = nodes_for("a", "b", "c", "d", "e")
    assert ids(TableReranker(table=TABLE, top_n=2).postprocess_nodes(nodes, query_str="q")) == [
        "n1",
        "n3",
    ]
    assert ids(
        TableReranker(table=TABLE, min_score=0.5).postprocess_nodes(nodes, query_str="q")
    ) == ["n1", "n3", "n2"]
    assert ids(TableReranker(table=TABLE, top_n=10).postprocess_nodes(nodes, query_str="q")) == [
        "n1",
        "n3",
        "n2",
        "n0",
        "n4",
    ]


def test_unjudged_nodes_are_kept_after_judged_ones_in_retrieval_order() -> None:
    reranker = TableReranker(table=TABLE, min_score=0.6)
    out = reranker.postprocess_nodes(nodes_for("x", "a", "b", "y"), query_str="q")
    # "a" falls below the threshold; "x" and "y" could not be judged and are never dropped.
    assert ids(out) == ["n2", "n0", "n3"]
    # Unjudged nodes keep score None: 0.0 would claim they were judged irrelevant.
    assert [n.score for n in out] == [0.9, None, None]
    assert out[1].node.metadata["rerank_score"] is None
    assert reranker.last_report is not None
    assert reranker.last_report.n_unjudged == 2


def test_non_finite_scores_are_treated_as_unjudged() -> None:
    out = TableReranker(table={"a": math.nan, "b": 0.3}).postprocess_nodes(
        nodes_for("a", "b"), query_str="q"
    )
    assert ids(out) == ["n1", "n0"]
    assert all(math.isfinite(n.score or 0.0) for n in out)


def test_out_of_range_scores_are_clamped() -> None:
    out = TableReranker(table={"a": 1.7, "b": -0.2}).postprocess_nodes(
        nodes_for("a", "b"), query_str="q"
    )
    assert [n.score for n in out] == [1.0, 0.0]


def test_output_metadata_and_excluded_keys() -> None:
    out = TableReranker(table=TABLE).postprocess_nodes(nodes_for("a", "b"), query_str="q")
    top = out[0].node
    assert top.metadata == {
        "source": "s1",
        "rerank_seen": "b",
        "rerank_score": 0.9,
        "retrieval_score": 9.0,
        "retrieval_rank": 2,
    }
    for key in ("rerank_seen", "rerank_score", "retrieval_score", "retrieval_rank"):
        assert key in top.excluded_llm_metadata_keys
        assert key in top.excluded_embed_metadata_keys
    assert "source" not in top.excluded_llm_metadata_keys
    json.dumps(top.metadata)  # JSON-safe


def test_metadata_mode_controls_the_text_sent_to_the_model() -> None:
    embed = TableReranker(table=TABLE)
    embed.postprocess_nodes(nodes_for("a"), query_str="q")
    assert embed.seen == ["source: s0\n\na"]
    bare = TableReranker(table=TABLE, metadata_mode=MetadataMode.NONE)
    bare.postprocess_nodes(nodes_for("a"), query_str="q")
    assert bare.seen == ["a"]


def test_caller_nodes_are_not_mutated() -> None:
    nodes = nodes_for("a", "b", "c")
    before = [n.model_dump() for n in nodes]
    out = TableReranker(table=TABLE, top_n=2).postprocess_nodes(nodes, query_str="q")
    assert [n.model_dump() for n in nodes] == before
    assert all(o.node is not n.node for o in out for n in nodes)


def test_reranking_twice_does_not_leak_rerank_metadata_into_text() -> None:
    reranker = TableReranker(table=TABLE)
    once = reranker.postprocess_nodes(nodes_for("a", "b"), query_str="q")
    twice = reranker.postprocess_nodes(once, query_str="q")
    assert [n.node.metadata["rerank_seen"] for n in twice] == ["b", "a"]
    assert twice[0].node.metadata["retrieval_rank"] == 1


def test_fusion_with_retrieval_rank() -> None:
    # prior: n0 -> 1.0, n1 -> 0.5
    nodes = nodes_for("a", "b")
    fused = TableReranker(table=TABLE, retrieval_weight=0.5).postprocess_nodes(nodes, query_str="q")
    assert ids(fused) == ["n1", "n0"]
    assert fused[0].score == pytest.approx(0.5 * 0.9 + 0.5 * 0.5)
    assert fused[1].score == pytest.approx(0.5 * 0.2 + 0.5 * 1.0)
    assert fused[0].node.metadata["rerank_model_score"] == 0.9
    only_retrieval = TableReranker(table=TABLE, retrieval_weight=1.0).postprocess_nodes(
        nodes, query_str="q"
    )
    assert ids(only_retrieval) == ["n0", "n1"]


def test_validation_errors_say_what_to_pass() -> None:
    reranker = TableReranker(table=TABLE)
    with pytest.raises(ValueError, match="query_str"):
        reranker.postprocess_nodes(nodes_for("a"))
    with pytest.raises(ValueError, match="empty query"):
        reranker.postprocess_nodes(nodes_for("a"), query_str="   ")
    with pytest.raises(TypeError, match="NodeWithScore"):
        reranker.postprocess_nodes([TextNode(text="a")], query_str="q")  # type: ignore[list-item]
    with pytest.raises(ValueError):
        TableReranker(top_n=0)
    with pytest.raises(ValueError):
        TableReranker(min_score=1.5)
    assert reranker.calls == 0


def test_empty_input_returns_empty_list_without_calling_the_model() -> None:
    reranker = TableReranker(table=TABLE)
    assert reranker.postprocess_nodes([], query_str="q") == []
    assert reranker.calls == 0


class Recorder(BaseEventHandler):
    events: list[Any] = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
            self.events.append(event)


@pytest.fixture
def recorder() -> Any:
    root = get_dispatcher()
    rec = Recorder(events=[])
    root.add_event_handler(rec)
    yield rec
    root.event_handlers.remove(rec)


def test_events_fire_once_after_validation(recorder: Recorder) -> None:
    reranker = TableReranker(table=TABLE, top_n=1)
    with pytest.raises(ValueError):
        reranker.postprocess_nodes(nodes_for("a"))
    assert recorder.events == []  # no start event for a call that was refused

    out = reranker.postprocess_nodes(nodes_for("a", "b"), query_bundle=QueryBundle("q"))
    assert [type(e).__name__ for e in recorder.events] == ["ReRankStartEvent", "RerankerEndEvent"]
    start, end = recorder.events
    assert start.top_n == 1 and start.model_name == "table" and len(start.nodes) == 2
    assert ids(end.nodes) == ids(out)
    assert end.report["llm"]["calls"] == 2 and end.report["n_returned"] == 1


def test_callback_manager_gets_one_reranking_event() -> None:
    debug = LlamaDebugHandler()
    reranker = TableReranker(table=TABLE, callback_manager=CallbackManager([debug]))
    out = reranker.postprocess_nodes(nodes_for("a", "b"), query_str="q")
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start, end = pairs[0]
    assert start.payload is not None and end.payload is not None
    assert start.payload["query_str"] == "q"
    assert ids(end.payload["nodes"]) == ids(out)


def test_async_path_matches_sync_and_reports() -> None:
    reranker = TableReranker(table=TABLE, top_n=3)
    nodes = nodes_for("a", "b", "c", "d")
    sync_out = reranker.postprocess_nodes(nodes, query_str="q")
    async_out = asyncio.run(reranker.apostprocess_nodes(nodes, query_str="q"))
    assert ids(async_out) == ids(sync_out)
    assert [n.score for n in async_out] == [n.score for n in sync_out]
    assert reranker.last_report is not None
    assert reranker.last_report.n_returned == 3
    assert reranker.last_report.best_score == 0.9


def test_wrong_number_of_judgements_is_a_loud_bug() -> None:
    class Broken(TableReranker):
        def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
            return [Judgement(0.5)]

    with pytest.raises(RuntimeError, match="2 nodes"):
        Broken().postprocess_nodes(nodes_for("a", "b"), query_str="q")


# -- nodes without text ------------------------------------------------------------------


def _textless_mix() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text="a", id_="a"), score=5.0),
        NodeWithScore(node=TextNode(text="", id_="empty"), score=4.0),
        NodeWithScore(node=ImageNode(image_url="https://example.org/x.png", id_="img"), score=3.0),
        NodeWithScore(node=TextNode(text=" \n\t ", id_="blank", metadata={"t": "x"}), score=2.0),
        NodeWithScore(node=TextNode(text="b", id_="b"), score=1.0),
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_nodes_without_text_are_unjudged_and_never_sent_to_the_judge(mode: str) -> None:
    reranker = TableReranker(table=TABLE)
    nodes = _textless_mix()
    if mode == "sync":
        result = reranker.rerank(nodes, "q")
    else:
        result = asyncio.run(reranker.arerank(nodes, "q"))
    assert reranker.seen == ["a", "b"]  # only the nodes with text reach the model
    assert ids(result.nodes) == ["b", "a", "empty", "img", "blank"]
    assert [n.score for n in result.nodes] == [0.9, 0.2, None, None, None]
    for n in result.nodes[2:]:
        assert n.node.metadata["rerank_score"] is None
        assert "no text" in n.node.metadata["rerank_error"]
    report = result.report
    assert (report.n_candidates, report.n_judged, report.n_unjudged, report.n_skipped) == (
        5,
        2,
        3,
        3,
    )
    assert report.to_dict()["n_skipped"] == 3
    assert not report.failed  # nothing to judge is not an outage


def test_only_nodes_without_text_call_no_model_and_are_no_failure() -> None:
    reranker = TableReranker(table=TABLE, top_n=1, min_score=0.5)
    result = reranker.rerank(_textless_mix()[1:4], "q")
    assert reranker.calls == 0
    assert ids(result.nodes) == ["empty"]  # unjudged nodes are never dropped by min_score
    assert result.report.n_skipped == result.report.n_unjudged == 3
    assert not result.report.failed
    assert result.report.llm is None  # no model ran


# -- wrong argument types ----------------------------------------------------------------


def _call(reranker: TableReranker, how: str, nodes: Any, query: Any) -> Any:
    if how == "rerank":
        return reranker.rerank(nodes, query)
    if how == "arerank":
        return asyncio.run(reranker.arerank(nodes, query))
    if how == "postprocess_nodes":
        return reranker.postprocess_nodes(nodes, query)
    return asyncio.run(reranker.apostprocess_nodes(nodes, query))


CALLS = ["rerank", "arerank", "postprocess_nodes", "apostprocess_nodes"]


@pytest.mark.parametrize("how", CALLS)
@pytest.mark.parametrize("query", [["q"], 42, QueryBundle(query_str=["q"])])  # type: ignore[arg-type]
def test_a_query_of_the_wrong_type_is_named(how: str, query: Any, recorder: Recorder) -> None:
    reranker = TableReranker(table=TABLE)
    with pytest.raises(TypeError, match=r"must be a str.*got (list|int)") as info:
        _call(reranker, how, nodes_for("a"), query)
    assert "empty" not in str(info.value)
    assert reranker.calls == 0 and recorder.events == []


@pytest.mark.parametrize("how", ["rerank", "arerank"])
def test_a_none_query_is_named(how: str, recorder: Recorder) -> None:
    reranker = TableReranker(table=TABLE)
    with pytest.raises(TypeError, match="query must be a str or QueryBundle, got NoneType"):
        _call(reranker, how, nodes_for("a"), None)
    assert reranker.calls == 0 and recorder.events == []


@pytest.mark.parametrize("how", CALLS)
def test_swapped_arguments_are_named_as_such(how: str, recorder: Recorder) -> None:
    reranker = TableReranker(table=TABLE)
    with pytest.raises(TypeError, match=r"arguments are swapped: \w+\(nodes, query\)"):
        _call(reranker, how, "q", nodes_for("a"))
    with pytest.raises(TypeError, match="swapped"):
        _call(reranker, how, QueryBundle("q"), nodes_for("a"))
    assert reranker.calls == 0 and recorder.events == []


# -- copies ------------------------------------------------------------------------------


def test_a_copy_is_another_reranker_with_its_own_last_report() -> None:
    reranker = TableReranker(table=TABLE)
    reranker.rerank(nodes_for("a"), "q")
    for copied in (copy.deepcopy(reranker), reranker.model_copy(), reranker.model_copy(deep=True)):
        assert copied.last_report is None
        copied.top_n = 1
        assert reranker.top_n is None


def test_the_llm_reranker_never_asks_about_a_node_without_text() -> None:
    from llamaindex_rerankers.llm import LLMReranker
    from llamaindex_rerankers.llm.calibration import CONTENT_FREE_PASSAGES

    client = DistributionClient(lambda passage: (0.1, 0.0, 0.9), prior=(0.9, 0.1, 0.0))
    reranker = LLMReranker(model="scripted", client=client, cache=None)
    result = reranker.rerank(_textless_mix(), "q")
    asked = [p for p in client.requests if p not in CONTENT_FREE_PASSAGES]
    assert sorted(asked) == ["a", "b"]
    assert ids(result.nodes)[2:] == ["empty", "img", "blank"]
    assert all("no text" in n.node.metadata["rerank_error"] for n in result.nodes[2:])
    assert result.report.llm is not None and result.report.llm.judgements == 2
    assert (result.report.n_judged, result.report.n_skipped) == (2, 3)


def test_a_query_str_of_the_wrong_type_is_named() -> None:
    reranker = TableReranker(table=TABLE)
    with pytest.raises(TypeError, match="query_str must be a str, got list"):
        reranker.postprocess_nodes(nodes_for("a"), query_str=["q"])  # type: ignore[arg-type]
    assert reranker.calls == 0

"""CascadeReranker: the first stage prunes, the second orders the survivors."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from table_reranker import TableReranker

from llamaindex_rerankers.cascade import CascadeReranker
from llamaindex_rerankers.types import Judgement, RerankReport

TEXTS = ["a", "b", "c", "d", "e"]
FIRST = {"a": 0.1, "b": 0.8, "c": 0.6, "d": 0.9, "e": 0.3}  # order: d b c e a
SECOND = {"b": 0.2, "c": 0.7, "d": 0.5}


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=t, id_=t), score=1.0) for t in TEXTS]


def cascade(**kwargs: object) -> CascadeReranker:
    return CascadeReranker(
        first=TableReranker(table=FIRST, metadata_mode=MetadataMode.NONE),
        second=TableReranker(table=SECOND, metadata_mode=MetadataMode.NONE),
        metadata_mode=MetadataMode.NONE,
        **kwargs,
    )


def test_second_stage_sees_only_the_survivors_and_decides_the_order() -> None:
    reranker = cascade(keep=3, stage1_weight=0.0)
    out = reranker.postprocess_nodes(nodes(), query_str="q")
    # survivors by the second stage, then the pruned e and a in first-stage order
    assert [n.node.node_id for n in out] == ["c", "d", "b", "e", "a"]
    assert [n.score for n in out] == [0.7, 0.5, 0.2, None, None]
    assert [n.node.metadata["rerank_score"] for n in out[3:]] == [None, None]
    assert [n.node.metadata["rerank_stage1_rank"] for n in out] == [3, 1, 2, 4, 5]
    # the second stage sees only the survivors, best first-stage score first
    assert reranker.second.seen == ["d", "b", "c"]  # type: ignore[attr-defined]
    meta = out[0].node.metadata
    assert meta["rerank_stage1_score"] == 0.6 and meta["rerank_stage1_rank"] == 3
    assert meta["retrieval_rank"] == 3  # the first-stage retrieval rank, not the cascade's
    report = reranker.last_report
    assert report is not None
    assert (report.n_pruned, report.n_returned, report.llm.calls) == (2, 5, 8)
    assert report.n_unjudged == 0 and report.best_score == 0.7


def test_stage1_weight_blends_both_scores_for_the_survivors() -> None:
    # d: .5·.5 + .5·.9 = .70, c: .5·.7 + .5·.6 = .65, b: .5·.2 + .5·.8 = .50
    out = cascade(keep=3).postprocess_nodes(nodes(), query_str="q")
    assert [n.node.node_id for n in out] == ["d", "c", "b", "e", "a"]
    assert [n.score for n in out[:3]] == pytest.approx([0.70, 0.65, 0.50])
    meta = out[1].node.metadata
    assert (meta["rerank_stage1_score"], meta["rerank_stage2_score"]) == (0.6, 0.7)
    # weight 1 is the first stage alone: the survivors in its order
    ids = [
        n.node.node_id
        for n in cascade(keep=3, stage1_weight=1.0).postprocess_nodes(nodes(), query_str="q")
    ]
    assert ids == ["d", "b", "c", "e", "a"]


def test_stage1_weight_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="stage1_weight"):
        cascade(stage1_weight=1.5)


def test_top_n_and_failures_in_the_second_stage() -> None:
    # "b" has no second-stage score: it is kept, after the judged survivors.
    reranker = cascade(keep=3, top_n=3)
    partial = {"c": 0.7, "d": 0.5}
    reranker.second.table = partial  # type: ignore[attr-defined]
    out = reranker.postprocess_nodes(nodes(), query_str="q")
    assert [n.node.node_id for n in out] == ["d", "c", "b"]  # blended: .70, .65, then unjudged
    assert out[2].node.metadata["rerank_score"] is None


def test_keep_larger_than_k_prunes_nothing_and_async_matches_sync() -> None:
    reranker = cascade(keep=50, stage1_weight=0.0)
    sync_ids = [n.node.node_id for n in reranker.postprocess_nodes(nodes(), query_str="q")]
    async_out = asyncio.run(reranker.apostprocess_nodes(nodes(), query_str="q"))
    assert [n.node.node_id for n in async_out] == sync_ids == ["c", "d", "b", "a", "e"]
    assert reranker.last_report is not None and reranker.last_report.n_pruned == 0


class FlaggingTable(TableReranker):
    """A first stage that flags some texts as suspected, as the detector of
    ``CrossEncoderReranker(detect_injection=True)`` would."""

    suspected: set[str] = set()

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        judged = super()._judge(query, texts, report)
        return [
            dataclasses.replace(j, penalty=1.0 if t in self.suspected else 0.0)
            for t, j in zip(texts, judged, strict=True)
        ]


@pytest.mark.parametrize("keep", [3, 5])
def test_a_first_stage_penalty_demotes_in_the_cut_and_in_the_final_order(keep: int) -> None:
    # d is the first stage's best and would survive any cut; flagged, it is cut first (keep=3),
    # and when everything survives (keep=5) it still goes after every clean survivor.
    reranker = CascadeReranker(
        first=FlaggingTable(table=FIRST, suspected={"d"}, metadata_mode=MetadataMode.NONE),
        second=TableReranker(table={**SECOND, "a": 0.1, "e": 0.4}, metadata_mode=MetadataMode.NONE),
        keep=keep,
        stage1_weight=0.0,
        metadata_mode=MetadataMode.NONE,
    )
    out = [n.node.node_id for n in reranker.postprocess_nodes(nodes(), query_str="q")]
    assert out == ["c", "e", "b", "a", "d"]
    seen = reranker.second.seen  # type: ignore[attr-defined]
    assert seen == (["b", "c", "e"] if keep == 3 else ["b", "c", "e", "a", "d"])
    again = asyncio.run(reranker.apostprocess_nodes(nodes(), query_str="q"))
    assert [n.node.node_id for n in again] == out

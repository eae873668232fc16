"""Invariants of every reranker, property-based (hypothesis).

The base, the cascade and fusion are driven by a scripted scorer (scores come from a table keyed
by passage text, ``None`` meaning "could not judge", NaN and infinities meaning a broken model),
1,000 generated cases per property; the real cross-encoder runs a smaller number of cases on the
offline model, since each case is a real forward pass.

What must hold, whatever the input:
- the output is a subset of the input nodes with nothing repeated; with ``top_n=None`` and no
  ``min_score`` it is a permutation (nothing lost);
- scores are finite Python floats in [0, 1], or ``None`` for unjudged nodes;
- equal scores keep input order; unjudged and pruned nodes come after every judged one;
- the caller's nodes are unchanged;
- ``top_n`` and ``min_score`` act exactly as documented;
- identical inputs give identical outputs, whatever the batch size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.bridge.pydantic import Field
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, TextNode

from llamaindex_rerankers import BaseReranker, CascadeReranker, CrossEncoderReranker
from llamaindex_rerankers.scoring import fuse, rank_prior
from llamaindex_rerankers.types import Judgement, RerankReport

MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class ScriptedReranker(BaseReranker):
    """Scores a passage from a table keyed by its exact text; a missing text is unjudged."""

    scores: dict[str, float | None] = Field(default_factory=dict)
    penalties: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "ScriptedReranker"

    @property
    def model_name(self) -> str:
        return "scripted"

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        return [Judgement(self.scores.get(t), penalty=self.penalties.get(t, 0.0)) for t in texts]


# -- strategies ------------------------------------------------------------------------------

#: Passage texts, the awkward ones included: empty, whitespace, non-ASCII, control characters.
texts = st.one_of(
    st.sampled_from(["", " ", "\t\n", "apple", "Äpfel schneiden", "剪枝", "a\x00b\x1f", "\u200b"]),
    st.text(max_size=30),
)
#: What the scorer says of a text: a score (possibly out of range or non-finite) or None.
verdicts = st.one_of(
    st.none(),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([0.0, 0.5, 1.0, -0.5, 1.5, math.nan, math.inf, -math.inf]),
)
first_stage_scores = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def candidates(draw: Any, max_size: int = 12) -> tuple[list[NodeWithScore], dict[str, Any]]:
    """Nodes (some texts repeated, some first-stage scores None) and the scorer's table."""
    node_texts = draw(st.lists(texts, min_size=0, max_size=max_size))
    table = {t: draw(verdicts) for t in set(node_texts)}
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=draw(first_stage_scores))
        for i, t in enumerate(node_texts)
    ]
    return nodes, table


top_ns = st.one_of(st.none(), st.integers(min_value=1, max_value=15))
min_scores = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))
weights = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1.0))


# -- helpers ---------------------------------------------------------------------------------


def ids(nodes: Sequence[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


def snapshot(nodes: Sequence[NodeWithScore]) -> list[Any]:
    return [(n.node.model_dump(), n.score) for n in nodes]


def usable(value: float | None) -> float | None:
    """What the base makes of a scorer's value: non-finite is unjudged, the rest is clamped."""
    if value is None or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, value))


def expected_order(
    nodes: Sequence[NodeWithScore],
    table: dict[str, Any],
    *,
    top_n: int | None,
    min_score: float | None,
    weight: float,
    penalties: dict[str, float] | None = None,
) -> list[tuple[str, float | None]]:
    """The documented behaviour, written out independently of the base's code."""
    total = len(nodes)
    final: list[float | None] = []
    for i, n in enumerate(nodes):
        # A node without text is not judged (whatever the scorer would say of "").
        s = usable(table[n.node.get_content()]) if n.node.get_content().strip() else None
        cut = 1.0 - (penalties or {}).get(n.node.get_content(), 0.0)
        final.append(None if s is None else fuse(s, rank_prior(i, total), weight) * cut)
    pen = [(penalties or {}).get(n.node.get_content(), 0.0) for n in nodes]
    judged = sorted(
        (i for i in range(total) if final[i] is not None),
        key=lambda i: (-final[i], pen[i]),  # type: ignore[operator]
    )
    textless = [i for i in range(total) if not nodes[i].node.get_content().strip()]
    unjudged = [i for i in range(total) if final[i] is None and i not in textless]
    order = judged + unjudged + textless  # nodes without text go last
    kept = [i for i in order if min_score is None or final[i] is None or final[i] >= min_score]  # type: ignore[operator]
    if top_n is not None:
        kept = kept[:top_n]
    return [(nodes[i].node.node_id, final[i]) for i in kept]


def check_scores_and_tail(out: Sequence[NodeWithScore]) -> None:
    seen_unjudged = False
    for n in out:
        if n.score is None:
            seen_unjudged = True
            assert n.node.metadata["rerank_score"] is None
            continue
        assert not seen_unjudged, "a judged node after an unjudged one"
        assert type(n.score) is float and math.isfinite(n.score) and 0.0 <= n.score <= 1.0
        assert n.node.metadata["rerank_score"] == n.score


# -- the base and fusion ---------------------------------------------------------------------


@MANY
@given(candidates(), top_ns, min_scores, weights)
def test_base_output_is_exactly_the_documented_selection(
    case: tuple[list[NodeWithScore], dict[str, Any]],
    top_n: int | None,
    min_score: float | None,
    weight: float,
) -> None:
    nodes, table = case
    before = snapshot(nodes)
    reranker = ScriptedReranker(
        scores=table,
        top_n=top_n,
        min_score=min_score,
        retrieval_weight=weight,
        metadata_mode=MetadataMode.NONE,
    )
    out, report = reranker.rerank(nodes, "q")

    assert snapshot(nodes) == before  # the caller's nodes are untouched
    assert [(n.node.node_id, n.score) for n in out] == expected_order(
        nodes, table, top_n=top_n, min_score=min_score, weight=weight
    )
    assert len(set(ids(out))) == len(out) and set(ids(out)) <= set(ids(nodes))
    check_scores_and_tail(out)
    assert [n.node.metadata["retrieval_rank"] for n in out] == [int(i[1:]) + 1 for i in ids(out)]
    assert report.n_candidates == len(nodes) and report.n_returned == len(out)
    assert report.n_judged + report.n_unjudged == len(nodes)
    # Identical inputs give identical outputs.
    again = reranker.rerank(nodes, "q").nodes
    assert [(n.node.node_id, n.score, n.node.metadata) for n in again] == [
        (n.node.node_id, n.score, n.node.metadata) for n in out
    ]


@MANY
@given(candidates(), st.data(), top_ns, weights)
def test_penalties_come_off_the_fused_score(
    case: tuple[list[NodeWithScore], dict[str, Any]],
    data: st.DataObject,
    top_n: int | None,
    weight: float,
) -> None:
    nodes, table = case
    penalties = {
        t: data.draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0)) for t in table
    }
    reranker = ScriptedReranker(
        scores=table,
        penalties=penalties,
        top_n=top_n,
        retrieval_weight=weight,
        metadata_mode=MetadataMode.NONE,
    )
    out = reranker.rerank(nodes, "q").nodes
    assert [(n.node.node_id, n.score) for n in out] == expected_order(
        nodes, table, top_n=top_n, min_score=None, weight=weight, penalties=penalties
    )
    check_scores_and_tail(out)


@MANY
@given(candidates(), weights)
def test_without_cut_offs_the_output_is_a_permutation(
    case: tuple[list[NodeWithScore], dict[str, Any]], weight: float
) -> None:
    nodes, table = case
    out = ScriptedReranker(
        scores=table, retrieval_weight=weight, metadata_mode=MetadataMode.NONE
    ).rerank(nodes, "q")
    assert sorted(ids(out.nodes)) == sorted(ids(nodes))


@MANY
@given(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, None]), max_size=12))
def test_ties_keep_input_order(values: list[float | None]) -> None:
    # Distinct texts with repeated scores: among equal scores, retrieval order wins.
    nodes = [NodeWithScore(node=TextNode(text=f"t{i}", id_=f"n{i}")) for i in range(len(values))]
    table = {f"t{i}": v for i, v in enumerate(values)}
    out = ScriptedReranker(scores=table, metadata_mode=MetadataMode.NONE).rerank(nodes, "q").nodes
    for a, b in itertools.pairwise(out):
        if a.score == b.score or (a.score is None and b.score is None):
            assert int(a.node.node_id[1:]) < int(b.node.node_id[1:])


@MANY
@given(st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=6))
def test_duplicate_node_ids_are_all_kept(copies: int, others: int) -> None:
    # Two chunks sharing an id (a bad index) are still two candidates: nothing is merged away.
    nodes = [NodeWithScore(node=TextNode(text=f"x{i}", id_="same")) for i in range(copies)]
    nodes += [NodeWithScore(node=TextNode(text=f"y{i}", id_=f"o{i}")) for i in range(others)]
    table = {n.node.get_content(): 0.5 for n in nodes}
    out = ScriptedReranker(scores=table, metadata_mode=MetadataMode.NONE).rerank(nodes, "q")
    assert len(out.nodes) == copies + others


@MANY
@given(st.integers(min_value=1, max_value=5), st.floats(min_value=0.0, max_value=1.0))
def test_non_text_nodes_are_kept(n_images: int, score: float) -> None:
    # An ImageNode has no text: the scorer sees "", and the node is ranked like any other.
    nodes = [NodeWithScore(node=TextNode(text="apple", id_="t"), score=1.0)]
    nodes += [NodeWithScore(node=ImageNode(image="aGk=", id_=f"img{i}")) for i in range(n_images)]
    out = ScriptedReranker(scores={"apple": score}, metadata_mode=MetadataMode.NONE).rerank(
        nodes, "q"
    )
    assert sorted(ids(out.nodes)) == sorted(ids(nodes))
    assert out.nodes[0].node.node_id == "t"  # judged first; the unjudged images after it


# -- the cascade -----------------------------------------------------------------------------


@MANY
@given(candidates(), st.data(), st.integers(min_value=1, max_value=12), top_ns, weights)
def test_cascade_keeps_everything_and_orders_survivors_before_the_pruned(
    case: tuple[list[NodeWithScore], dict[str, Any]],
    data: Any,
    keep: int,
    top_n: int | None,
    stage1_weight: float,
) -> None:
    nodes, table1 = case
    table2 = {t: data.draw(verdicts) for t in table1}
    before = snapshot(nodes)
    cascade = CascadeReranker(
        first=ScriptedReranker(scores=table1, metadata_mode=MetadataMode.NONE),
        second=ScriptedReranker(scores=table2, metadata_mode=MetadataMode.NONE),
        keep=keep,
        top_n=top_n,
        stage1_weight=stage1_weight,
        metadata_mode=MetadataMode.NONE,
    )
    out, report = cascade.rerank(nodes, "q")

    assert snapshot(nodes) == before
    expected_len = len(nodes) if top_n is None else min(top_n, len(nodes))
    assert len(out) == expected_len and len(set(ids(out))) == len(out)
    check_scores_and_tail(out)
    # The first stage's order over the candidates with text (ties by input order, unjudged
    # last); nodes without text are judged by no stage and come after the pruned ones.
    texted = [i for i, n in enumerate(nodes) if n.node.get_content().strip()]
    textless = [nodes[i].node.node_id for i in range(len(nodes)) if i not in texted]
    s1 = {i: usable(table1[nodes[i].node.get_content()]) for i in texted}
    stage1_order = sorted(texted, key=lambda i: (s1[i] is None, -(s1[i] or 0.0)))
    survivors = {nodes[i].node.node_id for i in stage1_order[:keep]}
    pruned = [nodes[i].node.node_id for i in stage1_order[keep:]]
    n_survivors = min(keep, len(texted))
    head, tail = ids(out[:n_survivors]), ids(out[n_survivors:])
    assert set(head) <= survivors
    assert tail == (pruned + textless)[: len(tail)]  # the cut candidates, in first-stage order
    assert report.n_pruned == len(texted) - n_survivors
    assert report.n_skipped == len(textless)


# -- a real model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cross_encoder(ce_model_path: str) -> CrossEncoderReranker:
    # The exact float32 path: scores independent of batching to 1e-5. (The bfloat16 default
    # moves scores by padding too; its bound is tested in tests/test_cross_encoder_backends.py.)
    reranker = CrossEncoderReranker(model=ce_model_path, max_length=64, precision="float32")
    reranker.load()
    return reranker


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.one_of(texts, st.just("Prune apple trees in late winter.")), max_size=8),
    st.integers(min_value=1, max_value=8),
    top_ns,
)
def test_cross_encoder_invariants_and_batch_size_independence(
    cross_encoder: CrossEncoderReranker,
    node_texts: list[str],
    batch_size: int,
    top_n: int | None,
) -> None:
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(node_texts)]
    before = snapshot(nodes)
    base = cross_encoder.model_copy(update={"top_n": top_n})
    other = cross_encoder.model_copy(update={"top_n": top_n, "batch_size": batch_size})
    out = base.rerank(nodes, "how to prune apple trees").nodes
    out_b = other.rerank(nodes, "how to prune apple trees").nodes
    assert snapshot(nodes) == before
    assert len(out) == (len(nodes) if top_n is None else min(top_n, len(nodes)))
    check_scores_and_tail(out)
    # A cross-encoder judges every passage with text; one without text is left unjudged.
    assert all((n.score is not None) == bool(n.node.get_content().strip()) for n in out)
    # Same passages, same scores whatever the batch size (padding noise only).
    by_id = {n.node.node_id: n.score for n in out}
    for n in out_b:
        if n.node.node_id in by_id:
            assert n.score == pytest.approx(by_id[n.node.node_id], abs=1e-5)


def test_cross_encoder_scores_a_1mb_passage_without_failing(
    cross_encoder: CrossEncoderReranker,
) -> None:
    huge = "apple pruning " * (1_000_000 // 14)
    nodes = [
        NodeWithScore(node=TextNode(text=huge, id_="huge")),
        NodeWithScore(node=TextNode(text="Prune in late winter.", id_="short")),
    ]
    out, report = cross_encoder.rerank(nodes, "how to prune apple trees")
    assert sorted(ids(out)) == ["huge", "short"]
    assert all(type(n.score) is float for n in out)
    huge_node = next(n for n in out if n.node.node_id == "huge")
    assert huge_node.node.metadata["rerank_truncated"] is True
    assert report.cross_encoder is not None and report.cross_encoder.truncated == 1

"""Pure scoring maths: exact values by hand, and properties over many inputs."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamaindex_rerankers.scoring import clamp_unit, fuse, rank_order, rank_prior, select, sigmoid


def test_sigmoid_known_values() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-15)
    assert sigmoid(-2.0) == pytest.approx(1 - sigmoid(2.0), abs=1e-15)


def test_sigmoid_is_stable_at_extremes() -> None:
    assert sigmoid(1000.0) == 1.0
    assert sigmoid(-1000.0) == 0.0


@given(st.floats(min_value=-50, max_value=50), st.floats(min_value=-50, max_value=50))
def test_sigmoid_is_monotone(a: float, b: float) -> None:
    if a < b:
        assert sigmoid(a) <= sigmoid(b)


def test_rank_prior_is_linear_from_one_to_one_over_k() -> None:
    assert [rank_prior(i, 5) for i in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert rank_prior(0, 1) == 1.0
    with pytest.raises(ValueError):
        rank_prior(5, 5)
    with pytest.raises(ValueError):
        rank_prior(0, 0)


def test_fuse_blends_and_checks_weight() -> None:
    assert fuse(0.2, 1.0, 0.0) == 0.2
    assert fuse(0.2, 1.0, 1.0) == 1.0
    assert fuse(0.2, 0.6, 0.25) == pytest.approx(0.75 * 0.2 + 0.25 * 0.6)
    with pytest.raises(ValueError):
        fuse(0.2, 1.0, 1.5)


def test_clamp_unit_rejects_non_finite() -> None:
    assert clamp_unit(1.2) == 1.0
    assert clamp_unit(-0.1) == 0.0
    assert isinstance(clamp_unit(1), float)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            clamp_unit(bad)


def test_rank_order_ties_and_unjudged() -> None:
    assert rank_order([0.5, 0.9, 0.5, None, 0.9, None]) == [1, 4, 0, 2, 3, 5]
    assert rank_order([]) == []
    assert rank_order([None, None]) == [0, 1]


@given(st.lists(st.one_of(st.none(), st.floats(min_value=0, max_value=1)), max_size=30))
def test_rank_order_is_a_stable_permutation(scores: list[float | None]) -> None:
    order = rank_order(scores)
    assert sorted(order) == list(range(len(scores)))
    judged = [i for i in order if scores[i] is not None]
    # judged first, non-increasing, equal scores in input order
    assert order[: len(judged)] == judged
    for a, b in itertools.pairwise(judged):
        sa, sb = scores[a], scores[b]
        assert sa is not None and sb is not None
        assert sa > sb or (sa == sb and a < b)
    unjudged = order[len(judged) :]
    assert unjudged == sorted(unjudged)


def test_select_threshold_never_drops_unjudged() -> None:
    scores = [0.1, None, 0.7, 0.4]
    order = rank_order(scores)  # [2, 3, 0, 1]
    assert select(order, scores) == [2, 3, 0, 1]
    assert select(order, scores, min_score=0.4) == [2, 3, 1]
    assert select(order, scores, top_n=2, min_score=0.4) == [2, 3]
    assert select(order, scores, min_score=0.9) == [1]
    assert select(order, scores, top_n=10) == order

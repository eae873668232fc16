"""Pure scoring maths shared by every reranker: no I/O, no models.

Everything here is a plain function over numbers so that it can be tested exhaustively.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def sigmoid(x: float) -> float:
    """Numerically stable logistic function, mapping a logit to (0, 1).

    Example:
        >>> sigmoid(0.0)
        0.5
    """
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def rank_prior(position: int, total: int) -> float:
    """First-stage score of the candidate at 0-based ``position`` among ``total``, by rank.

    Linear in rank: the first candidate gets 1.0, the last ``1/total``. Rank-based rather than
    score-based so that it is comparable across retrievers (BM25 scores, cosine similarities
    and missing scores all map the same way).

    Example:
        >>> [rank_prior(i, 4) for i in range(4)]
        [1.0, 0.75, 0.5, 0.25]
    """
    if total <= 0 or not 0 <= position < total:
        raise ValueError(f"position must be in [0, {total}), got {position}")
    return (total - position) / total


def fuse(rerank_score: float, prior: float, weight: float) -> float:
    """Blend a rerank score with a first-stage prior: ``(1 - weight) * rerank + weight * prior``.

    Example:
        >>> fuse(0.2, 1.0, 0.5)
        0.6
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return (1.0 - weight) * rerank_score + weight * prior


def penalised(score: float | None, penalty: float) -> float | None:
    """A score with a judgement's penalty taken off (an injection suspect's demotion), as the
    base applies it to the final score; rank with ``rank_order(scores, tiebreak=penalties)`` so
    that a penalised passage also loses ties.

    Example:
        >>> penalised(0.8, 0.5), penalised(0.8, 1.0), penalised(None, 1.0)
        (0.4, 0.0, None)
    """
    return None if score is None else score * (1.0 - penalty)


def clamp_unit(x: float) -> float:
    """Clamp a finite float to [0, 1]; NaN and infinities raise ``ValueError``."""
    if not math.isfinite(x):
        raise ValueError(f"score must be finite, got {x}")
    return min(1.0, max(0.0, float(x)))


def usable_score(x: float | None) -> float | None:
    """What a reranker's raw score means for ranking: ``None`` (unjudged) for ``None``, NaN and
    infinities (a broken model output is not a judgement), else the score clamped to [0, 1].

    Example:
        >>> usable_score(1.2), usable_score(float("nan")), usable_score(None)
        (1.0, None, None)
    """
    if x is None or not math.isfinite(x):
        return None
    return clamp_unit(x)


def rank_order(
    scores: Sequence[float | None], tiebreak: Sequence[float] | None = None
) -> list[int]:
    """Indices in reranked order: judged candidates by score, highest first, ties by input order
    (or first by ``tiebreak``, lowest first: the base passes the penalties, so that a suspected
    passage loses a tie); unjudged candidates (``None``) after every judged one, in input order.

    Example:
        >>> rank_order([0.2, None, 0.9, 0.2])
        [2, 0, 3, 1]
        >>> rank_order([0.0, 0.0, 0.5], tiebreak=[1.0, 0.0, 0.0])
        [2, 1, 0]
    """
    judged = [i for i, s in enumerate(scores) if s is not None]
    unjudged = [i for i, s in enumerate(scores) if s is None]
    # sorted() is stable, so equal scores keep their input (retrieval) order.
    if tiebreak is None:
        judged.sort(key=lambda i: -(scores[i] or 0.0))
    else:
        judged.sort(key=lambda i: (-(scores[i] or 0.0), tiebreak[i]))
    return judged + unjudged


def select(
    order: Sequence[int],
    scores: Sequence[float | None],
    top_n: int | None = None,
    min_score: float | None = None,
) -> list[int]:
    """Apply the cut-offs to a ranked list of indices.

    ``min_score`` drops judged candidates scoring below it; unjudged candidates are never dropped
    by the threshold (a failure must not lose a node). ``top_n`` then keeps the first ``top_n``.

    Example:
        >>> select([2, 0, 1], [0.5, None, 0.9], top_n=2, min_score=0.6)
        [2, 1]
    """
    kept = [i for i in order if min_score is None or scores[i] is None or scores[i] >= min_score]  # type: ignore[operator]
    return kept if top_n is None else kept[:top_n]


def normalized_entropy(probs: Mapping[str, float]) -> float:
    """Shannon entropy of a label distribution divided by its maximum (log of the number of
    labels): 0 for a certain answer, 1 for the uniform one. A distribution over fewer than two
    labels, or with no mass, is uncertain (1.0): it says nothing about the passage.

    Example:
        >>> normalized_entropy({"a": 1.0, "b": 0.0}), normalized_entropy({"a": 0.5, "b": 0.5})
        (0.0, 1.0)
    """
    total = sum(max(float(v), 0.0) for v in probs.values())
    if len(probs) < 2 or total <= 0:
        return 1.0
    h = -sum((v / total) * math.log(v / total) for v in probs.values() if v > 0)
    return min(1.0, max(0.0, h / math.log(len(probs))))


#: Mean normalised entropy at or below which the judge ranks alone (auto weight 0).
AUTO_CONFIDENT_ENTROPY = 0.5
#: Mean normalised entropy at or above which the first stage ranks alone (auto weight 1).
AUTO_UNINFORMED_ENTROPY = 0.9


def fusion_weight(
    entropies: Sequence[float],
    confident: float = AUTO_CONFIDENT_ENTROPY,
    uninformed: float = AUTO_UNINFORMED_ENTROPY,
) -> float:
    """The first-stage weight ``w`` that ``retrieval_weight="auto"`` uses for one query.

    ``H`` is the mean normalised entropy of the (calibrated) label distributions of the
    query's judged passages; ``w = clip((H - confident) / (uninformed - confident), 0, 1)``:
    a judge that is sure about its passages (``H <= confident``) ranks alone, one whose answers
    are as good as uniform (``H >= uninformed``) leaves the first-stage order, and the weight
    moves linearly in between. No judged passage at all: 1.0 (nothing to rank by).

    Example:
        >>> fusion_weight([0.1, 0.2]), fusion_weight([0.95, 1.0]), fusion_weight([0.7])
        (0.0, 1.0, 0.5)
    """
    if not uninformed > confident:
        raise ValueError(f"uninformed ({uninformed}) must be above confident ({confident})")
    if not entropies:
        return 1.0
    h = sum(entropies) / len(entropies)
    return round(min(1.0, max(0.0, (h - confident) / (uninformed - confident))), 12)

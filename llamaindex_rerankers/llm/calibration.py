"""Contextual calibration of label probabilities ("Calibrate Before Use", Zhao et al. 2021).

A small model answering a fixed prompt has a *prior* over the answer codes that has nothing to do
with the passage: SmolLM2-135M says "very likely" first for nearly every passage. That prior is
estimated per query by judging **content-free passages** (:data:`CONTENT_FREE_PASSAGES`) with
the same prompt and query, averaging their label distributions (:func:`content_free_prior`),
and dividing it out of every real judgement before renormalising (:func:`calibrate`):

    p_cal(label) ∝ p(label) / p_cf(label)

A passage that the model treats exactly like "no passage at all" then gets the uniform
distribution; only the part of the answer that the passage caused is left. Prior probabilities
are floored at :data:`PRIOR_FLOOR` so that a label the content-free answers never showed (absent
from the top log-probabilities) does not divide by zero.

The content-free judgements are ordinary judgements of the same query: cached like any other,
counted in the call's ``report.llm.calls`` and separately in
``report.llm.calibration_judgements``.

Example:
    >>> prior = content_free_prior([{"unlikely": 0.1, "likely": 0.3, "very likely": 0.6}])
    >>> cal = calibrate({"unlikely": 0.1, "likely": 0.3, "very likely": 0.6}, prior)
    >>> [round(cal[k], 3) for k in ("unlikely", "likely", "very likely")]
    [0.333, 0.333, 0.333]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: Passages with no content: the model's answer to them is its prior for the prompt and query.
#: One empty passage (one extra judgement per query): on the tuning split of
#: ``benchmarks/tune_llm.py`` it calibrated as well as the mean of ``N/A``, the empty passage and
#: ``[MASK]`` (Zhao et al.'s three), and better than ``N/A`` alone.
CONTENT_FREE_PASSAGES: tuple[str, ...] = ("",)

#: Smallest prior probability divided by (a label absent from every content-free answer).
PRIOR_FLOOR = 0.01


def content_free_prior(
    distributions: Sequence[Mapping[str, float]],
) -> dict[str, float] | None:
    """The mean of the content-free label distributions, floored at :data:`PRIOR_FLOOR` and
    renormalised; ``None`` when there is none to average (every content-free judgement failed,
    or the labels were parsed from text, which has no distribution).

    Example:
        >>> content_free_prior([{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}])
        {'a': 0.75, 'b': 0.25}
        >>> content_free_prior([]) is None
        True
    """
    usable = [d for d in distributions if d and sum(d.values()) > 0]
    if not usable:
        return None
    names = list(dict.fromkeys(k for d in usable for k in d))
    mean = {k: sum(float(d.get(k, 0.0)) for d in usable) / len(usable) for k in names}
    floored = {k: max(v, PRIOR_FLOOR) for k, v in mean.items()}
    total = sum(floored.values())
    return {k: v / total for k, v in floored.items()}


def calibrate(probs: Mapping[str, float], prior: Mapping[str, float]) -> dict[str, float]:
    """``probs`` with ``prior`` divided out, renormalised; labels missing from the prior are
    divided by :data:`PRIOR_FLOOR`. A distribution with no mass is returned unchanged.

    Example:
        >>> calibrate({"a": 0.5, "b": 0.5}, {"a": 0.8, "b": 0.2})
        {'a': 0.2, 'b': 0.8}
    """
    raw = {k: float(v) / max(float(prior.get(k, PRIOR_FLOOR)), PRIOR_FLOOR)
           for k, v in probs.items()}  # fmt: skip
    total = sum(raw.values())
    if total <= 0:
        return dict(probs)
    return {k: v / total for k, v in raw.items()}

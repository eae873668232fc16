"""Records shared by every reranker: one passage's judgement, one call's report and result.

All of them are plain dataclasses (no I/O, no model imports), so that callers, the server and the
evaluation harness read typed fields instead of looking keys up in dicts.

Example:
    >>> report = RerankReport(query="apple pruning", n_candidates=3)
    >>> report.llm = LLMUsage(calls=3, prompt_tokens=900)
    >>> report.to_dict()["llm"]["calls"]
    3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from llama_index.core.schema import NodeWithScore


@dataclass(frozen=True)
class Judgement:
    """One reranker's verdict on one passage.

    Attributes:
        score: relevance in [0, 1], or ``None`` when the passage could not be judged (the base
            then keeps the node, after every judged one, in retrieval order).
        metadata: extra per-node metadata (``rerank_*`` keys) to attach to the output node.
        pruned: an earlier stage of a multi-stage reranker kept this passage from the final
            stage (a cascade's cut). It is not dropped: it comes after every passage the final
            stage saw, ordered by ``pruned_rank``, with ``score=None``.
        pruned_rank: the order among pruned passages (the earlier stage's rank).
        uncertainty: how little the judge knew, in [0, 1] (the LLM reranker: the normalised
            entropy of its calibrated label distribution); ``None`` when the reranker has no
            such measure. ``retrieval_weight="auto"`` reads it.
        penalty: the fraction in [0, 1] taken off the passage's *final* score, after any
            fusion with the first stage (the LLM reranker's suspected prompt injections). It is
            applied last so that no blend can undo it: a passage retrieved first still sinks
            when the judge defers to the first-stage order. On equal final scores the passage
            with the smaller penalty comes first.
    """

    score: float | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pruned: bool = False
    pruned_rank: int = 0
    uncertainty: float | None = None
    penalty: float = 0.0


@dataclass
class _Usage:
    """Counters of one backend; ``merged`` adds two of them (peaks are maxed, not added)."""

    #: Fields combined with ``max`` instead of ``+`` when two usages are merged.
    _PEAKS: ClassVar[tuple[str, ...]] = ()

    def merged(self, other: _Usage | None) -> _Usage:
        """A new usage with ``other``'s figures added (``self`` when ``other`` is None)."""
        if other is None:
            return dataclasses.replace(self)
        values = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = max(a, b) if f.name in self._PEAKS else a + b
        return type(self)(**values)

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class CrossEncoderUsage(_Usage):
    """What a cross-encoder did in one call.

    Attributes:
        pairs: (query, text) pairs the model scored (after deduplication): one per distinct
            passage, or with ``long_text="windows"`` one per distinct window.
        deduplicated: passages that repeated an earlier one and were not scored again.
        truncated: passages whose pair was longer than ``max_length`` tokens (cut by the model).
        windowed: distinct passages split into more than one window (``long_text="windows"``).
        windows: distinct windows of those passages scored (included in ``pairs``; a window
            repeated within the call is scored once).
        seconds: wall-clock time spent in the model, tokenization included.
    """

    pairs: int = 0
    deduplicated: int = 0
    truncated: int = 0
    windowed: int = 0
    windows: int = 0
    seconds: float = 0.0


@dataclass
class LLMUsage(_Usage):
    """What an LLM judge did in one call.

    Attributes:
        judgements: distinct passages judged (asked, or served from the cache); with
            ``deduplicated`` they add up to the candidates. With ``long_text="windows"``: distinct
            texts judged, a split passage counting once per window.
        calls: HTTP requests sent, retries included.
        prompt_tokens: prompt tokens the server reported.
        completion_tokens: generated tokens the server reported.
        cache_hits: judgements served from the judgement cache (no request).
        deduplicated: passages that repeated an earlier one in the call and were judged once.
        failures: judgements whose request failed for good (labelled ``unknown``).
        retries: HTTP requests that repeated a failed one.
        parse_failures: answers from which no label could be read.
        truncated: passages (or the query) cut to their token budget.
        unknown: distinct passages whose judgement ended as ``unknown``.
        windowed: distinct passages split into more than one window (``long_text="windows"``).
        windows: distinct windows of those passages judged (included in ``judgements``).
        calibration_judgements: content-free judgements asked for calibration (not in
            ``judgements``; their requests are in ``calls``, cache hits in ``cache_hits``).
        uncalibrated: judged passages left uncalibrated (no usable content-free answer).
        max_in_flight: the most requests this call had in flight at once.
        seconds: wall-clock time of the call's judging.
        prompt_tokens_evaluated: prompt tokens the server said it actually computed (the rest of
            ``prompt_tokens`` came from its prefix cache); summed over the answers that said so.
        prompt_tokens_cached: prompt tokens the server said it reused from its cache.
        prompt_cache_reports: answers that reported the two figures above (llama-server does,
            llama-cpp-python's server does not); 0 means they are unknown, not zero.
    """

    _PEAKS: ClassVar[tuple[str, ...]] = ("max_in_flight",)

    judgements: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    deduplicated: int = 0
    failures: int = 0
    retries: int = 0
    parse_failures: int = 0
    truncated: int = 0
    unknown: int = 0
    windowed: int = 0
    windows: int = 0
    calibration_judgements: int = 0
    uncalibrated: int = 0
    max_in_flight: int = 0
    seconds: float = 0.0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_cached: int = 0
    prompt_cache_reports: int = 0


@dataclass
class RemoteUsage(_Usage):
    """What a rerank service did in one call (:class:`~llamaindex_rerankers.remote.RemoteReranker`).

    Attributes:
        documents: distinct passages sent to the service (a repeated passage is sent once).
        deduplicated: passages that repeated an earlier one in the call and were not sent again.
        requests: HTTP requests sent, retries included.
        retries: HTTP requests that repeated a failed one.
        failures: requests that failed for good (their passages are unjudged).
        unjudged: distinct passages left unjudged: their request failed, or the service's answer
            for them was unusable (a missing, repeated or out-of-range index, a score that is not
            a number); the reason is in each node's ``rerank_error``.
        truncated: passages the service said it truncated (only services that report it, such
            as this package's ``serve``; 0 otherwise).
        max_in_flight: the most requests this call had in flight at once.
        seconds: wall-clock time of the call's requests, waits for a request slot included.
    """

    _PEAKS: ClassVar[tuple[str, ...]] = ("max_in_flight",)

    documents: int = 0
    deduplicated: int = 0
    requests: int = 0
    retries: int = 0
    failures: int = 0
    unjudged: int = 0
    truncated: int = 0
    max_in_flight: int = 0
    seconds: float = 0.0


@dataclass
class RerankReport:
    """What one rerank call did. Returned with the nodes by ``rerank`` / ``arerank``, sent with
    the end event, and readable as ``reranker.last_report`` in the calling thread or task.

    Attributes:
        query: the query string.
        n_candidates: nodes received.
        n_returned: nodes returned after ``min_score`` and ``top_n``.
        n_judged: nodes the reranker judged (scored).
        n_unjudged: nodes the reranker could not judge (kept, never dropped), those in
            ``n_skipped`` included: ``n_judged + n_unjudged + n_pruned == n_candidates``.
        n_skipped: nodes with no text to judge (an image node, empty or whitespace text): never
            sent to the model, kept unjudged with the reason in ``rerank_error``.
        n_pruned: nodes a multi-stage reranker kept from its last stage (placed last).
        best_score: highest rerank score among judged nodes, ``None`` if none was judged.
        retrieval_weight: the first-stage weight this call used (the number that
            ``retrieval_weight="auto"`` chose, or the fixed one).
        seconds: wall-clock time of the whole call.
        cross_encoder: the cross-encoder's figures, ``None`` when no cross-encoder ran.
        llm: the LLM judge's figures, ``None`` when no LLM judge ran.
        remote: the rerank service's figures, ``None`` when no service was called.
    """

    query: str
    n_candidates: int = 0
    n_returned: int = 0
    n_judged: int = 0
    n_unjudged: int = 0
    n_pruned: int = 0
    n_skipped: int = 0
    best_score: float | None = None
    retrieval_weight: float | None = None
    seconds: float = 0.0
    cross_encoder: CrossEncoderUsage | None = None
    llm: LLMUsage | None = None
    remote: RemoteUsage | None = None

    @property
    def failed(self) -> bool:
        """True when there were candidates but none could be judged (an outage, not an
        abstention: the passages were never looked at). Nodes without text (``n_skipped``)
        were not for judging, so they alone are no failure."""
        return self.n_judged == 0 and self.n_unjudged - self.n_skipped > 0

    def add_usage(self, other: RerankReport) -> None:
        """Add another report's backend figures (a cascade's stages) to this one."""
        if other.cross_encoder is not None:
            self.cross_encoder = other.cross_encoder.merged(self.cross_encoder)  # type: ignore[assignment]
        if other.llm is not None:
            self.llm = other.llm.merged(self.llm)  # type: ignore[assignment]
        if other.remote is not None:
            self.remote = other.remote.merged(self.remote)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe nested dict: the call's fields, then one dict per backend that ran."""
        return {
            "query": self.query,
            "n_candidates": self.n_candidates,
            "n_returned": self.n_returned,
            "n_judged": self.n_judged,
            "n_unjudged": self.n_unjudged,
            "n_pruned": self.n_pruned,
            "n_skipped": self.n_skipped,
            "best_score": self.best_score,
            "retrieval_weight": self.retrieval_weight,
            "seconds": self.seconds,
            "cross_encoder": None if self.cross_encoder is None else self.cross_encoder.to_dict(),
            "llm": None if self.llm is None else self.llm.to_dict(),
            "remote": None if self.remote is None else self.remote.to_dict(),
        }


class RerankResult(NamedTuple):
    """What one rerank call returns: the reranked nodes and that call's own report.

    Example:
        >>> result = RerankResult(nodes=[], report=RerankReport(query="q"))
        >>> nodes, report = result
    """

    nodes: list[NodeWithScore]
    report: RerankReport

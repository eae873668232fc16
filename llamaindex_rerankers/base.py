"""The one contract every reranker in this package follows.

:class:`BaseReranker` owns everything that is the same for all rerankers: validation, events,
callback payloads, sorting (stable, ties by input order), ``top_n``, ``min_score``, fusion with
the first-stage rank, output metadata and never touching the caller's nodes. A reranker only
implements :meth:`BaseReranker._judge`: "score these texts for this query".
"""

from __future__ import annotations

import asyncio
import logging
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from llamaindex_rerankers.scoring import clamp_unit, fuse, rank_order, rank_prior, select

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Metadata keys the base writes on every output node.
RERANK_SCORE = "rerank_score"
RETRIEVAL_SCORE = "retrieval_score"
RETRIEVAL_RANK = "retrieval_rank"


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
    """

    score: float | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pruned: bool = False
    pruned_rank: int = 0


@dataclass
class RerankReport:
    """What one rerank call did; readable as ``reranker.last_report`` after a call and sent
    with the end event.

    Attributes:
        query: the query string.
        n_candidates: nodes received.
        n_returned: nodes returned after ``min_score`` and ``top_n``.
        n_unjudged: nodes the reranker could not judge (kept, never dropped).
        n_pruned: nodes a multi-stage reranker kept from its last stage (placed last).
        best_score: highest rerank score among judged nodes, ``None`` if none was judged.
        counters: reranker-specific figures (LLM calls, tokens, cache hits, truncations ...).
    """

    query: str
    n_candidates: int = 0
    n_returned: int = 0
    n_unjudged: int = 0
    n_pruned: int = 0
    best_score: float | None = None
    counters: dict[str, float] = field(default_factory=dict)

    def any_relevant(self, min_score: float) -> bool:
        """Whether any judged passage scored at least ``min_score`` (for abstaining)."""
        return self.best_score is not None and self.best_score >= min_score


class RerankerEndEvent(ReRankEndEvent):
    """:class:`ReRankEndEvent` with this package's per-call report attached."""

    report: dict[str, Any] = Field(default_factory=dict)


class BaseReranker(BaseNodePostprocessor):
    """Base node postprocessor for rerankers: subclasses implement :meth:`_judge` only.

    Output nodes are new objects: ``node.score`` is the rerank score (a Python float in [0, 1])
    and the metadata holds ``rerank_score``, ``retrieval_score`` and ``retrieval_rank`` (1-based)
    plus the reranker's own ``rerank_*`` keys; all of them are excluded from the text sent to
    LLMs and embedding models.
    """

    top_n: int | None = Field(
        default=None, ge=1, description="Number of nodes to return; None returns all of them."
    )
    min_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Drop judged nodes whose rerank score is below this; None keeps all.",
    )
    retrieval_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Weight w of the first-stage rank in the final score: "
        "(1 - w) * rerank score + w * rank prior, where the rank prior is 1 for the first "
        "candidate and falls linearly to 1/K for the last. 0 ranks by the reranker alone.",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED,
        description="Which node metadata is included in the text sent to the reranker.",
    )

    _last_report: RerankReport | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return cls.__name__

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Name of the model behind this reranker (for events and callbacks)."""

    @abstractmethod
    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        """Score ``texts`` for ``query``: exactly one :class:`Judgement` per text, in order.

        Add figures worth reporting to ``report.counters``.
        """

    async def _ajudge(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        """Async :meth:`_judge`; by default runs it in a worker thread off the event loop."""
        return await asyncio.to_thread(self._judge, query, texts, report)

    @property
    def last_report(self) -> RerankReport | None:
        """The report of the most recent call on this instance (``None`` before the first)."""
        return self._last_report

    # -- template methods ---------------------------------------------------------------

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts, report = self._begin(nodes, query_bundle)
        if not nodes:
            return []
        with self._events(nodes, query_bundle, query) as finish:
            judgements = self._judge(query, texts, report)
            return finish(self._assemble(nodes, judgements, report), report)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts, report = self._begin(nodes, query_bundle)
        if not nodes:
            return []
        with self._events(nodes, query_bundle, query) as finish:
            judgements = await self._ajudge(query, texts, report)
            return finish(self._assemble(nodes, judgements, report), report)

    # -- shared machinery ---------------------------------------------------------------

    def _begin(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[str, list[str], RerankReport]:
        """Validate, then the query, the texts to judge and a fresh report (already the last
        report when there is nothing to judge)."""
        query = self._validate(nodes, query_bundle)
        report = RerankReport(query=query, n_candidates=len(nodes))
        if not nodes:
            self._last_report = report
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        return query, texts, report

    def _validate(self, nodes: Sequence[NodeWithScore], query_bundle: QueryBundle | None) -> str:
        if query_bundle is None:
            raise ValueError(
                f"{self.class_name()} needs a query: call postprocess_nodes(nodes, "
                "query_str='...') or pass query_bundle=QueryBundle('...')."
            )
        query = query_bundle.query_str
        if not isinstance(query, str) or not query.strip():
            raise ValueError(
                f"{self.class_name()} got an empty query string; pass the user's question as "
                "query_str='...'."
            )
        for i, n in enumerate(nodes):
            if not isinstance(n, NodeWithScore):
                raise TypeError(
                    f"nodes[{i}] is a {type(n).__name__}, not a NodeWithScore; wrap nodes as "
                    "NodeWithScore(node=TextNode(text=...), score=...)."
                )
        return query

    def _events(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None, query: str
    ) -> _RerankEvents:
        return _RerankEvents(self, nodes, query_bundle, query)

    def _assemble(
        self, nodes: Sequence[NodeWithScore], judgements: Sequence[Judgement], report: RerankReport
    ) -> list[NodeWithScore]:
        if len(judgements) != len(nodes):
            raise RuntimeError(
                f"{self.class_name()} returned {len(judgements)} judgements for {len(nodes)} "
                "nodes; this is a bug in the reranker."
            )
        total = len(nodes)
        model_scores: list[float | None] = []
        for i, j in enumerate(judgements):
            if j.score is not None and not math.isfinite(j.score):
                logger.warning(
                    "%s gave a non-finite score for node %d; treating it as unjudged",
                    self.class_name(),
                    i,
                )
                model_scores.append(None)
            else:
                model_scores.append(None if j.score is None else clamp_unit(j.score))
        final: list[float | None] = [
            None if s is None else fuse(s, rank_prior(i, total), self.retrieval_weight)
            for i, s in enumerate(model_scores)
        ]
        pruned = sorted(
            (i for i, j in enumerate(judgements) if j.pruned),
            key=lambda i: (judgements[i].pruned_rank, i),
        )
        order = [i for i in rank_order(final) if not judgements[i].pruned] + pruned
        chosen = select(order, final, self.top_n, self.min_score)

        judged = [
            s
            for s, j in zip(model_scores, judgements, strict=True)
            if s is not None and not j.pruned
        ]
        report.n_pruned = sum(j.pruned for j in judgements)
        report.n_unjudged = total - report.n_pruned - len(judged)
        report.best_score = max(judged) if judged else None
        report.n_returned = len(chosen)
        return [
            _new_node(
                nodes[i],
                final[i],
                model_scores[i],
                i + 1,
                judgements[i].metadata,
                fused=self.retrieval_weight > 0,
            )
            for i in chosen
        ]


class _RerankEvents:
    """Start/end instrumentation events and the RERANKING callback around one call.

    Entered only after validation, so a bad call fires no start event.
    """

    def __init__(
        self,
        reranker: BaseReranker,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None,
        query: str,
    ) -> None:
        self._reranker = reranker
        self._nodes = nodes
        self._query_bundle = query_bundle
        self._query = query
        self._cb: Any = None
        self._event: Any = None

    def __enter__(self) -> Any:
        r = self._reranker
        top_n = r.top_n if r.top_n is not None else len(self._nodes)
        dispatcher.event(
            ReRankStartEvent(
                query=self._query_bundle, nodes=self._nodes, top_n=top_n, model_name=r.model_name
            )
        )
        self._cb = r.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: self._nodes,
                EventPayload.MODEL_NAME: r.model_name,
                EventPayload.QUERY_STR: self._query,
                EventPayload.TOP_K: top_n,
            },
        )
        self._event = self._cb.__enter__()
        return self._finish

    def _finish(self, out: list[NodeWithScore], report: RerankReport) -> list[NodeWithScore]:
        self._event.on_end(payload={EventPayload.NODES: out})
        self._reranker._last_report = report
        dispatcher.event(RerankerEndEvent(nodes=out, report=_report_dict(report)))
        return out

    def __exit__(self, *exc: object) -> None:
        self._cb.__exit__(*exc)


def _report_dict(report: RerankReport) -> dict[str, Any]:
    return {
        "query": report.query,
        "n_candidates": report.n_candidates,
        "n_returned": report.n_returned,
        "n_unjudged": report.n_unjudged,
        "n_pruned": report.n_pruned,
        "best_score": report.best_score,
        **report.counters,
    }


def _new_node(
    original: NodeWithScore,
    score: float | None,
    model_score: float | None,
    retrieval_rank: int,
    extra: Mapping[str, Any],
    fused: bool,
) -> NodeWithScore:
    """A copy of ``original`` carrying the rerank score and metadata; the input is untouched."""
    meta: dict[str, Any] = dict(extra)
    meta[RERANK_SCORE] = score
    if fused:
        meta["rerank_model_score"] = model_score
    meta[RETRIEVAL_SCORE] = None if original.score is None else float(original.score)
    meta[RETRIEVAL_RANK] = retrieval_rank
    node = original.node
    keys = list(meta)
    copy = node.model_copy(
        update={
            "metadata": {**node.metadata, **meta},
            "excluded_llm_metadata_keys": _union(node.excluded_llm_metadata_keys, keys),
            "excluded_embed_metadata_keys": _union(node.excluded_embed_metadata_keys, keys),
        }
    )
    return NodeWithScore(node=copy, score=0.0 if score is None else float(score))


def _union(existing: Sequence[str], new: Sequence[str]) -> list[str]:
    return list(existing) + [k for k in new if k not in existing]

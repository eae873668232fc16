"""The one contract every reranker in this package follows.

:class:`BaseReranker` owns everything that is the same for all rerankers: validation, events,
callback payloads, sorting (stable, ties by input order), ``top_n``, ``min_score``, fusion with
the first-stage rank, output metadata and never touching the caller's nodes. A reranker only
implements :meth:`BaseReranker._judge`: "score these texts for this query".

Why one module over 600 lines: it is the contract every reranker shares (the sync and async doors,
argument checks, events, ordering, the report), read together when a reranker is written; the maths
it calls lives in scoring.py and windows.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import itertools
import logging
import math
import threading
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from llama_index.core.bridge.pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from llamaindex_rerankers.scoring import (
    fuse,
    fusion_weight,
    penalised,
    rank_order,
    rank_prior,
    select,
    usable_score,
)
from llamaindex_rerankers.types import Judgement, RerankReport, RerankResult

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Metadata keys the base writes on every output node.
RERANK_SCORE = "rerank_score"
RETRIEVAL_SCORE = "retrieval_score"
RETRIEVAL_RANK = "retrieval_rank"
#: Metadata key of an unjudged node's reason (also the LLM reranker's failed judgements).
RERANK_ERROR = "rerank_error"
#: Metadata key of the model's own score when the base fused it with the retrieval score.
RERANK_MODEL_SCORE = "rerank_model_score"
#: The reason given to a node with no text: nothing to judge, so it is never sent to the model.
NO_TEXT = (
    "no text to judge (the node's text is empty or whitespace, e.g. an image node); "
    "kept unjudged, never sent to the model"
)


#: The last report of each reranker instance, per thread / asyncio task (``last_report``).
_LAST_REPORTS: contextvars.ContextVar[dict[int, RerankReport]] = contextvars.ContextVar(
    "llamaindex_rerankers_last_reports"
)
#: Reports kept per context: enough for the rerankers a task uses, bounded for long-lived ones.
_MAX_LAST_REPORTS = 64
_INSTANCE_IDS = itertools.count(1)

#: Reranker classes by their ``class_name()``, so that a stored configuration is rebuilt by name.
_CLASSES: dict[str, type[BaseReranker]] = {}


class Once:
    """A thread-safe "first time?" flag, for a warning an instance logs once, not per call.

    A deep copy of an instance carries the flag's state (a copy of a reranker that has warned
    does not warn again) with a lock of its own (locks cannot be copied).

    Example:
        >>> once = Once()
        >>> once.first(), once.first()
        (True, False)
    """

    def __init__(self, done: bool = False) -> None:
        self._done = done
        self._lock = threading.Lock()

    def first(self) -> bool:
        """True exactly once: for the first caller, in whatever thread."""
        with self._lock:
            done, self._done = self._done, True
        return not done

    def __deepcopy__(self, memo: dict[int, Any]) -> Once:
        with self._lock:
            return Once(self._done)

    def __copy__(self) -> Once:
        return self.__deepcopy__({})


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
    retrieval_weight: float | Literal["auto"] = Field(
        default=0.0,
        description="Weight w of the first-stage rank in the final score: "
        "(1 - w) * rerank score + w * rank prior, where the rank prior is 1 for the first "
        "candidate and falls linearly to 1/K for the last. 0 ranks by the reranker alone. "
        "'auto' chooses w per query from how uncertain the judge was (scoring.fusion_weight); "
        "a reranker that reports no uncertainty ranks alone (w = 0).",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED,
        description="Which node metadata is included in the text sent to the reranker.",
    )

    model_config = ConfigDict(extra="forbid")

    _instance_id: int = PrivateAttr(default_factory=lambda: next(_INSTANCE_IDS))

    @classmethod
    def class_name(cls) -> str:
        """A fixed name per class, stored by ``to_dict`` and used by :meth:`from_dict` to rebuild
        the right class (subclasses override it with a literal, never ``cls.__name__``, so that
        renaming a class does not break stored configurations)."""
        return "BaseReranker"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "class_name" in cls.__dict__:  # only classes that name themselves are registered
            _CLASSES[cls.class_name()] = cls

    @field_validator("retrieval_weight", mode="before")
    @classmethod
    def _check_retrieval_weight(cls, value: Any) -> Any:
        return check_weight("retrieval_weight", value)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_arguments(cls, data: Any) -> Any:
        """Typos raise (``concurency=4``) with the valid names, instead of being ignored."""
        if isinstance(data, Mapping):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            unknown = sorted(str(k) for k in data if k not in known)
            if unknown:
                valid = sorted(k for k in cls.model_fields if k != "callback_manager")
                hints = [
                    f"{name!r} -> {close[0]!r}?"
                    for name in unknown
                    if (close := difflib.get_close_matches(name, valid, n=1))
                ]
                raise ValueError(
                    f"{cls.__name__} got unknown argument(s) {unknown}"
                    + (f" (did you mean {', '.join(hints)})" if hints else "")
                    + f"; valid arguments: {', '.join(valid)}."
                )
        return data

    # -- copies ---------------------------------------------------------------------------

    def __copy__(self) -> Any:
        copied = super().__copy__()
        # A copy is another reranker: its own last_report, never the original's.
        copied._instance_id = next(_INSTANCE_IDS)
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        """``copy.deepcopy`` and ``model_copy(deep=True)``: settings copied, so the copy's are
        its own; private attributes deep-copied too, except objects that say how they are
        copied (a loaded model is shared, see ``__deepcopy__`` on them); a new instance id."""
        copied = super().__deepcopy__(memo)
        copied._instance_id = next(_INSTANCE_IDS)
        return copied

    # -- serialisation --------------------------------------------------------------------

    #: Fields never written by :meth:`to_dict` (live objects, secrets).
    _NOT_SERIALISED: ClassVar[frozenset[str]] = frozenset({"callback_manager"})

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """Every setting as JSON-safe data, plus ``class_name``; secrets (``api_key``, headers)
        and live objects (clients, callback managers) are left out.

        Example:
            >>> from llamaindex_rerankers import CrossEncoderReranker
            >>> CrossEncoderReranker(model="m", top_n=3).to_dict()["top_n"]
            3
        """
        exclude = set(kwargs.pop("exclude", None) or ()) | set(self._NOT_SERIALISED)
        data = self.model_dump(mode="json", exclude=exclude, **kwargs)
        data["class_name"] = self.class_name()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Any:
        """Rebuild a reranker from :meth:`to_dict`'s output. Called on :class:`BaseReranker`
        (or any class), the stored ``class_name`` picks the class.

        Raises:
            ValueError: the stored class name is unknown, or names a class that is not ``cls``
                or a subclass of it.

        Example:
            >>> from llamaindex_rerankers import BaseReranker, CrossEncoderReranker
            >>> config = CrossEncoderReranker(model="m", top_n=3).to_dict()
            >>> type(BaseReranker.from_dict(config)).__name__
            'CrossEncoderReranker'
        """
        data = {**data, **kwargs}
        name = data.pop("class_name", None)
        target: type[BaseReranker] = cls
        if name is not None:
            found = _CLASSES.get(str(name))
            if found is None:
                raise ValueError(
                    f"unknown reranker class_name {name!r}; known: {', '.join(sorted(_CLASSES))}. "
                    "Import the module that defines it before loading the configuration."
                )
            if not issubclass(found, cls):
                raise ValueError(f"the configuration is a {name}, not a {cls.class_name()}.")
            target = found
        if target.__abstractmethods__:
            raise ValueError(
                f"{target.__name__} is abstract: the configuration needs a 'class_name' "
                f"(one of {', '.join(sorted(_CLASSES))})."
            )
        return target(**data)

    # -- what a reranker implements -------------------------------------------------------

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Name of the model behind this reranker (for events and callbacks)."""

    @abstractmethod
    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        """Score ``texts`` for ``query``: exactly one :class:`Judgement` per text, in order.

        ``report`` belongs to this call alone: set the backend's usage on it
        (``report.cross_encoder`` / ``report.llm``). Keep no per-call state on ``self``.
        """

    async def _ajudge(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        """Async :meth:`_judge`; by default runs it in a worker thread off the event loop."""
        return await asyncio.to_thread(self._judge, query, texts, report)

    # -- public calls ---------------------------------------------------------------------

    def rerank(self, nodes: Sequence[NodeWithScore], query: str | QueryBundle) -> RerankResult:
        """Rerank ``nodes`` for ``query``: the new nodes and this call's own report.

        Safe to call from many threads at once on one instance: nothing about the call is kept
        on the instance.

        Example:
            >>> from llama_index.core.schema import NodeWithScore, TextNode
            >>> from llamaindex_rerankers import CrossEncoderReranker
            >>> reranker = CrossEncoderReranker(top_n=1)  # doctest: +SKIP
            >>> nodes = [NodeWithScore(node=TextNode(text="Prune in winter."), score=0.3)]
            >>> result = reranker.rerank(nodes, "when to prune apple trees")  # doctest: +SKIP
            >>> result.nodes[0].score, result.report.n_candidates  # doctest: +SKIP
            (0.93, 1)
        """
        nodes, bundle = _arguments(self, nodes, query, "rerank")
        query_str, texts, todo, report = self._begin(nodes, bundle)
        if not nodes:
            return RerankResult([], report)
        with self._events(nodes, bundle, query_str) as finish:
            started = time.perf_counter()
            judged = self._judge(query_str, texts, report) if texts else []
            judgements = _with_unjudged(self, len(nodes), todo, judged)
            out = self._assemble(nodes, judgements, report, _others(len(nodes), todo))
            return finish(out, report, started)

    async def arerank(
        self, nodes: Sequence[NodeWithScore], query: str | QueryBundle
    ) -> RerankResult:
        """Async :meth:`rerank`: model inference runs off the event loop; safe for many
        concurrent tasks on one instance."""
        nodes, bundle = _arguments(self, nodes, query, "arerank")
        query_str, texts, todo, report = self._begin(nodes, bundle)
        if not nodes:
            return RerankResult([], report)
        with self._events(nodes, bundle, query_str) as finish:
            started = time.perf_counter()
            judged = await self._ajudge(query_str, texts, report) if texts else []
            judgements = _with_unjudged(self, len(nodes), todo, judged)
            out = self._assemble(nodes, judgements, report, _others(len(nodes), todo))
            return finish(out, report, started)

    @property
    def last_report(self) -> RerankReport | None:
        """The report of this instance's most recent call *in the current thread or asyncio
        task* (``None`` before one). A convenience for interactive use: in services, take the
        report from :meth:`rerank` / :meth:`arerank`, which return it with the nodes."""
        return _LAST_REPORTS.get({}).get(self._instance_id)

    def _remember(self, report: RerankReport) -> None:
        reports = dict(_LAST_REPORTS.get({}))
        reports.pop(self._instance_id, None)
        reports[self._instance_id] = report
        while len(reports) > _MAX_LAST_REPORTS:
            del reports[next(iter(reports))]
        _LAST_REPORTS.set(reports)

    # -- LlamaIndex's template methods ----------------------------------------------------

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        nodes, bundle = _arguments(
            self, nodes, _require_query(self, query_bundle), "postprocess_nodes"
        )
        return self.rerank(nodes, bundle).nodes

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        nodes, bundle = _arguments(
            self, nodes, _require_query(self, query_bundle), "apostprocess_nodes"
        )
        return (await self.arerank(nodes, bundle)).nodes

    # -- shared machinery ---------------------------------------------------------------

    def _begin(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle
    ) -> tuple[str, list[str], list[int], RerankReport]:
        """Validate, then the query, the texts to judge, the indices of their nodes and a fresh
        report (already the last report when there is nothing to judge).

        A node without text of its own (an image node, ``TextNode(text="")``, whitespace) is
        not judged: a score for it would be a score of its metadata or of nothing.
        """
        query = self._validate(nodes, query_bundle)
        report = RerankReport(query=query, n_candidates=len(nodes))
        if not nodes:
            self._remember(report)
        todo = [i for i, n in enumerate(nodes) if _has_text(n)]
        report.n_skipped = len(nodes) - len(todo)
        texts = [nodes[i].node.get_content(metadata_mode=self.metadata_mode) for i in todo]
        return query, texts, todo, report

    def _validate(self, nodes: Sequence[NodeWithScore], query_bundle: QueryBundle) -> str:
        query = query_bundle.query_str
        if not isinstance(query, str):
            raise TypeError(
                f"{self.class_name()}: query_str must be a str, got {type(query).__name__}; "
                "pass the user's question as query_str='...' or QueryBundle('...')."
            )
        if not query.strip():
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
        self,
        nodes: Sequence[NodeWithScore],
        judgements: Sequence[Judgement],
        report: RerankReport,
        textless: Sequence[int] = (),
    ) -> list[NodeWithScore]:
        """The output nodes: judged by final score, then unjudged in retrieval order, then a
        cascade's pruned ones, then the ``textless`` (nodes without text: no stage saw them,
        so even a pruned node, which the first stage judged, says more)."""
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
            model_scores.append(usable_score(j.score))
        weight = self._weight_for(judgements, model_scores)
        report.retrieval_weight = weight
        final: list[float | None] = [
            None if s is None else penalised(fuse(s, rank_prior(i, total), weight), j.penalty)
            for i, (s, j) in enumerate(zip(model_scores, judgements, strict=True))
        ]
        pruned = sorted(
            (i for i, j in enumerate(judgements) if j.pruned),
            key=lambda i: (judgements[i].pruned_rank, i),
        )
        penalties = [j.penalty for j in judgements]
        last = set(textless)
        order = [
            i for i in rank_order(final, penalties) if not judgements[i].pruned and i not in last
        ]
        order += pruned + sorted(last)
        chosen = select(order, final, self.top_n, self.min_score)

        judged = [
            s
            for s, j in zip(model_scores, judgements, strict=True)
            if s is not None and not j.pruned
        ]
        report.n_pruned = sum(j.pruned for j in judgements)
        report.n_judged = len(judged)
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
                fused=weight > 0 or judgements[i].penalty > 0,
                weight=weight if self.retrieval_weight == "auto" else None,
            )
            for i in chosen
        ]

    def _weight_for(
        self, judgements: Sequence[Judgement], model_scores: Sequence[float | None]
    ) -> float:
        """The first-stage weight of this call: the fixed one, or the ``"auto"`` choice from
        the uncertainty of the judged (usable score, not pruned) passages; with no uncertainty
        to go by (nothing judged, or a reranker without the measure) it ranks alone (0)."""
        judged = [j for j, s in zip(judgements, model_scores, strict=True) if s is not None]
        return weight_for(self.retrieval_weight, judged, fallback=0.0)


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

    def _finish(
        self, out: list[NodeWithScore], report: RerankReport, started: float
    ) -> RerankResult:
        report.seconds = time.perf_counter() - started
        self._event.on_end(payload={EventPayload.NODES: out})
        self._reranker._remember(report)
        dispatcher.event(RerankerEndEvent(nodes=out, report=report.to_dict()))
        return RerankResult(out, report)

    def __exit__(self, *exc: object) -> None:
        self._cb.__exit__(*exc)


def _arguments(
    reranker: BaseReranker, nodes: Any, query: Any, call: str
) -> tuple[list[NodeWithScore], QueryBundle]:
    """The nodes as a list and the query as a bundle, or a ``TypeError`` that says what was
    passed instead (before any event fires). Arguments given the wrong way round are named as
    such: both are sequences-or-strings, so the types alone would say something misleading."""
    name = reranker.class_name()
    if isinstance(nodes, str | QueryBundle) or _looks_like_nodes(query):
        raise TypeError(
            f"{name}.{call}() got the query where the nodes go: it looks like the arguments "
            f"are swapped: {call}(nodes, query)."
        )
    if isinstance(query, QueryBundle):
        bundle = query
    elif isinstance(query, str):
        bundle = QueryBundle(query_str=query)
    else:
        raise TypeError(
            f"{name}.{call}(): query must be a str or QueryBundle, got {type(query).__name__}; "
            f"pass the user's question as a string: {call}(nodes, 'how to prune apple trees')."
        )
    if isinstance(nodes, NodeWithScore) or not isinstance(nodes, Iterable):
        raise TypeError(
            f"{name}.{call}(): nodes must be a list of NodeWithScore, got {type(nodes).__name__}."
        )
    return list(nodes), bundle


def _looks_like_nodes(value: Any) -> bool:
    """Whether ``value`` is a node or a non-empty sequence of nodes (a misplaced argument)."""
    if isinstance(value, NodeWithScore | BaseNode):
        return True
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and isinstance(value[0], NodeWithScore | BaseNode)
    )


def _has_text(node: NodeWithScore) -> bool:
    """Whether the node has text of its own to judge (its metadata alone does not count)."""
    return bool(node.node.get_content(metadata_mode=MetadataMode.NONE).strip())


def _others(total: int, todo: Sequence[int]) -> list[int]:
    """The indices in ``range(total)`` that are not in ``todo``."""
    given = set(todo)
    return [i for i in range(total) if i not in given]


def _with_unjudged(
    reranker: BaseReranker, total: int, todo: Sequence[int], judged: Sequence[Judgement]
) -> list[Judgement]:
    """One judgement per node: the reranker's for the nodes it was given (``todo``), "not
    judged, no text" for the others."""
    if len(judged) != len(todo):
        raise RuntimeError(
            f"{reranker.class_name()} returned {len(judged)} judgements for {len(todo)} "
            "nodes; this is a bug in the reranker."
        )
    out = [Judgement(None, {RERANK_ERROR: NO_TEXT})] * total
    for i, j in zip(todo, judged, strict=True):
        out[i] = j
    return out


def _require_query(reranker: BaseReranker, query_bundle: QueryBundle | None) -> QueryBundle:
    if query_bundle is None:
        raise ValueError(
            f"{reranker.class_name()} needs a query: call postprocess_nodes(nodes, "
            "query_str='...') or pass query_bundle=QueryBundle('...')."
        )
    return query_bundle


def weight_for(setting: float | str, judgements: Sequence[Judgement], fallback: float) -> float:
    """A fusion weight for one call: ``setting`` if it is a number; with ``"auto"``,
    :func:`~llamaindex_rerankers.scoring.fusion_weight` of the uncertainties of the judged,
    not pruned ``judgements``, or ``fallback`` when none reports one.

    Example:
        >>> weight_for("auto", [Judgement(0.9, uncertainty=0.1)], fallback=0.5)
        0.0
        >>> weight_for("auto", [Judgement(0.9)], fallback=0.5), weight_for(0.3, [], fallback=0.5)
        (0.5, 0.3)
    """
    if setting != "auto":
        return float(setting)
    found = [
        j.uncertainty
        for j in judgements
        if j.score is not None and not j.pruned and j.uncertainty is not None
    ]
    return fusion_weight(found) if found else fallback


def check_weight(name: str, value: Any) -> float | str:
    """A fusion weight as given by a user: ``"auto"``, or a number in [0, 1] (a numeric
    string, as from a CLI or a config file, is read as a number).

    Raises:
        ValueError: anything else, saying what is accepted.

    Example:
        >>> check_weight("retrieval_weight", "0.3"), check_weight("retrieval_weight", "auto")
        (0.3, 'auto')
    """
    number: Any = value
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] or 'auto', got {value!r}")
    return float(number)


def _new_node(
    original: NodeWithScore,
    score: float | None,
    model_score: float | None,
    retrieval_rank: int,
    extra: Mapping[str, Any],
    fused: bool,
    weight: float | None = None,
) -> NodeWithScore:
    """A copy of ``original`` carrying the rerank score and metadata; the input is untouched."""
    meta: dict[str, Any] = dict(extra)
    meta[RERANK_SCORE] = score
    if fused:
        meta[RERANK_MODEL_SCORE] = model_score
    if weight is not None:
        meta["rerank_retrieval_weight"] = weight
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
    # An unjudged node keeps score None: 0.0 would claim "judged irrelevant".
    return NodeWithScore(node=copy, score=None if score is None else float(score))


def _union(existing: Sequence[str], new: Sequence[str]) -> list[str]:
    return list(existing) + [k for k in new if k not in existing]

"""Running rerankers side by side on the same first-stage candidates (the "run" step).

Loading lives in :mod:`.data`, scoring in :mod:`.metrics`; this module only runs: for every query
it takes the first stage's top K once and hands a fresh copy of those candidates to each
reranker in turn, timing each call and collecting its LLM calls and tokens. The ranking a
reranker returns is what gets scored, in its order (ties included), not re-sorted by score.
"""

from __future__ import annotations

import logging
import operator
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.evaluation.data import Dataset, Run, candidates
from llamaindex_rerankers.evaluation.metrics import evaluate, per_query
from llamaindex_rerankers.types import RerankReport

logger = logging.getLogger(__name__)


class FirstStage(Protocol):
    """Where candidates come from: the top ``k`` nodes for a query, best first."""

    name: str

    def retrieve(self, query_id: str, query: str, k: int) -> list[NodeWithScore]: ...


@dataclass
class RunFileStage:
    """Candidates from a TREC run file (e.g. the BM25 top-100 shipped with a dataset).

    Example:
        >>> stage = RunFileStage(ds, load_trec_run(".../runs/bm25_top100.trec"))  # doctest: +SKIP
    """

    dataset: Dataset
    run: Run
    name: str = "bm25-run"

    def retrieve(self, query_id: str, query: str, k: int) -> list[NodeWithScore]:
        return candidates(self.dataset, self.run, query_id, k)


@dataclass
class ChromaStage:
    """Dense retrieval through our Chroma pipeline; the index is built once, persisted in
    ``persist_dir`` and reused (re-indexing an unchanged corpus embeds nothing).

    Documents longer than one chunk are split; a document's score is its best chunk's, and its
    text is the whole document, so rerankers see the same passage whatever the first stage.
    """

    dataset: Dataset
    persist_dir: str | Path
    embed_model: Any = None
    name: str = "chroma"
    show_progress: bool = True
    _index: Any = field(default=None, init=False, repr=False)

    def _ensure_index(self) -> Any:
        if self._index is None:
            from llama_index.core import Document

            from llamaindex_rerankers import pipeline

            config = pipeline.ChromaConfig(
                persist_dir=self.persist_dir, collection=f"eval-{self.dataset.name}"
            )
            embed = self.embed_model or pipeline.make_embed_model()
            docs = [Document(id_=d.doc_id, text=d.content) for d in self.dataset.corpus.values()]
            pipeline.index_documents(
                docs, config, embed_model=embed, show_progress=self.show_progress
            )
            self._index = pipeline.load_index(config, embed_model=embed)
        return self._index

    def retrieve(self, query_id: str, query: str, k: int) -> list[NodeWithScore]:
        from llama_index.core.schema import TextNode

        retriever = self._ensure_index().as_retriever(similarity_top_k=2 * k)
        best: dict[str, float] = {}
        for hit in retriever.retrieve(query):
            doc_id = hit.node.ref_doc_id or hit.node.node_id.split("#", 1)[0]
            if doc_id not in best:  # hits come best first
                best[doc_id] = float(hit.score or 0.0)
        return [
            NodeWithScore(node=TextNode(id_=d, text=self.dataset.corpus[d].content), score=s)
            for d, s in list(best.items())[:k]
        ]


@dataclass(frozen=True)
class QueryOutcome:
    """One reranker on one query: the doc ids it returned, best first, and what it cost."""

    query_id: str
    ranking: tuple[str, ...]
    n_candidates: int
    latency_s: float
    counters: Mapping[str, float]
    dropped: int  # expected min(top_n, K) nodes minus those returned (0 for our rerankers)


@dataclass
class RerankerRun:
    """All queries of one reranker at one K.

    ``load_s`` is the time its ``load()`` took before the first query (loading its model),
    kept out of the queries' latencies; ``None`` when it has no ``load()``.
    """

    reranker: str
    top_k: int
    top_n: int | None
    outcomes: dict[str, QueryOutcome] = field(default_factory=dict)
    load_s: float | None = None

    def as_run(self) -> Run:
        """The rankings as a run whose scores preserve each returned order exactly."""
        return {
            q: [(doc, float(len(o.ranking) - i)) for i, doc in enumerate(o.ranking)]
            for q, o in self.outcomes.items()
        }


@dataclass(frozen=True)
class ScoredRun:
    """A :class:`RerankerRun` scored: aggregate measures, latency, summed counts (peaks maxed),
    means of per-query figures such as the retrieval weight, and the model's load time."""

    reranker: str
    top_k: int
    top_n: int | None
    queries: int
    measures: dict[str, float]
    per_query: dict[str, dict[str, float]]
    latency_median_s: float
    latency_p95_s: float
    totals: dict[str, float]
    means: dict[str, float] = field(default_factory=dict)
    load_s: float | None = None

    def row(self) -> dict[str, Any]:
        """A flat record for tables and JSON: counts as ``total_<name>`` (integers), means as
        ``mean_<name>``."""
        return {
            "reranker": self.reranker,
            "top_k": self.top_k,
            "top_n": self.top_n,
            "queries": self.queries,
            **self.measures,
            "latency_median_s": self.latency_median_s,
            "latency_p95_s": self.latency_p95_s,
            "load_s": self.load_s,
            **{f"total_{k}": v for k, v in sorted(self.totals.items())},
            **{f"mean_{k}": v for k, v in sorted(self.means.items())},
        }


class LLMUsageCounter(BaseEventHandler):
    """Counts LLM calls and tokens seen by LlamaIndex instrumentation (for the anchors, whose
    LLM traffic goes through LlamaIndex LLM classes)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def class_name(cls) -> str:
        return "LLMUsageCounter"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        name = type(event).__name__
        if name not in ("LLMChatEndEvent", "LLMCompletionEndEvent"):
            return
        self.calls += 1
        response = getattr(event, "response", None)
        usage = _usage(getattr(response, "raw", None))
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.completion_tokens += usage.get("completion_tokens", 0)

    def snapshot(self) -> tuple[int, int, int]:
        return self.calls, self.prompt_tokens, self.completion_tokens


def _usage(raw: Any) -> dict[str, int]:
    usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    if usage is None:
        return {}
    get = usage.get if isinstance(usage, Mapping) else lambda k, d=0: getattr(usage, k, d)
    return {k: int(get(k, 0) or 0) for k in ("prompt_tokens", "completion_tokens")}


def run_rerankers(
    dataset: Dataset,
    first_stage: FirstStage,
    rerankers: Mapping[str, BaseNodePostprocessor | None],
    *,
    top_k: int,
    top_n: int | None,
    query_ids: Sequence[str] | None = None,
    show_progress: bool = True,
    progress_desc: str | None = None,
) -> dict[str, RerankerRun]:
    """Rerank the first stage's top ``top_k`` of every query with each reranker, side by side.

    Args:
        dataset: queries (and corpus) to run.
        first_stage: where candidates come from; asked once per query.
        rerankers: name -> postprocessor (``None`` keeps the first-stage order, cut to ``top_n``).
            Each gets its own deep copy of the candidates (some anchors write into their input).
            One with a ``load()`` method (the cross-encoder's) is loaded before the first query
            and the time that took is the run's ``load_s``, not part of any query's latency.
        top_k: candidates per query.
        top_n: nodes each reranker should return (``None``: all).
        query_ids: which queries (default: all of the dataset's, in file order).
        show_progress: tqdm bar over queries.

    Returns:
        name -> :class:`RerankerRun`.
    """
    from tqdm.auto import tqdm

    qids = list(query_ids) if query_ids is not None else dataset.query_ids()
    runs = {name: RerankerRun(name, top_k, top_n) for name in rerankers}
    for name, reranker in rerankers.items():
        loads = _loaders(reranker)
        if loads:
            start = time.perf_counter()
            for load in loads:
                load()
            runs[name].load_s = time.perf_counter() - start
    counter = LLMUsageCounter()
    root = get_dispatcher()
    root.add_event_handler(counter)
    try:
        bar = tqdm(
            qids,
            desc=progress_desc or f"{first_stage.name} K={top_k}",
            disable=not show_progress,
            unit="query",
        )
        for qid in bar:
            query = dataset.queries[qid]
            pool = first_stage.retrieve(qid, query, top_k)
            for name, reranker in rerankers.items():
                runs[name].outcomes[qid] = _run_one(reranker, pool, qid, query, top_n, counter)
    finally:
        root.event_handlers.remove(counter)
    return runs


def _loaders(reranker: Any) -> list[Callable[[], Any]]:
    """The ``load()`` methods of a reranker and of the rerankers it holds (a cascade's stages)."""
    found: list[Callable[[], Any]] = []
    load = getattr(reranker, "load", None)
    if callable(load):
        found.append(load)
    if isinstance(reranker, BaseReranker):
        for value in vars(reranker).values():
            if isinstance(value, BaseReranker):
                found += _loaders(value)
    return found


def _run_one(
    reranker: BaseNodePostprocessor | None,
    pool: Sequence[NodeWithScore],
    qid: str,
    query: str,
    top_n: int | None,
    counter: LLMUsageCounter,
) -> QueryOutcome:
    nodes = [n.model_copy(deep=True) for n in pool]
    expected = len(nodes) if top_n is None else min(top_n, len(nodes))
    before = counter.snapshot()
    start = time.perf_counter()
    errors = 0
    report: RerankReport | None = None
    if reranker is None or not nodes:
        out = nodes[:expected]
    else:
        try:
            if isinstance(reranker, BaseReranker):
                out, report = reranker.rerank(nodes, query)
                out = out[:expected]
            else:
                out = reranker.postprocess_nodes(nodes, QueryBundle(query))[:expected]
        except Exception as exc:
            # Ours never fail a query (an LLM failure is an unjudged node): if one raises, the
            # setup is broken (a missing model ...) and the run stops with that error. An
            # anchor that raises (e.g. a prompt over the LLM's context window) is a measured
            # outcome: it returned nothing for this query; the run goes on.
            if isinstance(reranker, BaseReranker):
                raise
            logger.warning("%s raised on query %s: %s", type(reranker).__name__, qid, exc)
            out, errors = [], 1
    latency = time.perf_counter() - start
    after = counter.snapshot()
    counters: dict[str, float] = {}
    if report is not None:
        counters.update(_report_counters(report))
    elif reranker is not None:
        counters.update(
            calls=after[0] - before[0],
            prompt_tokens=after[1] - before[1],
            completion_tokens=after[2] - before[2],
            errors=errors,
        )
    ranking = tuple(dict.fromkeys(n.node.node_id for n in out))  # an anchor may repeat a node
    return QueryOutcome(
        qid, ranking, len(nodes), latency, counters, max(0, expected - len(ranking))
    )


def _report_counters(report: RerankReport) -> dict[str, float]:
    """One query's figures from our report: the LLM's under the names the anchors' figures
    use (calls, prompt_tokens ...), the cross-encoder's prefixed ``ce_``, the rerank service's
    ``remote_``."""
    counters: dict[str, float] = {}
    if report.cross_encoder is not None:
        usage = report.cross_encoder.to_dict()
        counters.update({f"ce_{k}": v for k, v in usage.items() if k != "seconds"})
    if report.llm is not None:
        counters.update({k: v for k, v in report.llm.to_dict().items() if k != "seconds"})
    if report.remote is not None:
        usage = report.remote.to_dict()
        counters.update({f"remote_{k}": v for k, v in usage.items() if k != "seconds"})
    if report.retrieval_weight is not None:
        counters["retrieval_weight"] = report.retrieval_weight  # averaged, see _MEANS
    return counters


#: Per-query figures that are averaged over the queries that report them, not summed.
_MEANS = frozenset({"retrieval_weight"})


def default_measures(dataset: Dataset, top_n: int | None, top_k: int) -> list[str]:
    """nDCG@10, RR@10 and R@N (N = top_n, else K); binary measures at rel ≥ 2 on graded data."""
    graded = any(label > 1 for labels in dataset.qrels.values() for label in labels.values())
    rel = "(rel=2)" if graded else ""
    return ["nDCG@10", f"RR{rel}@10", f"R{rel}@{top_n or top_k}"]


def score_runs(
    dataset: Dataset,
    runs: Mapping[str, RerankerRun],
    measures: Sequence[str] | None = None,
) -> list[ScoredRun]:
    """Score each run over the queries it ran (a query with no result scores 0).

    Latency is reported as the median and 95th percentile over queries; counters (LLM calls,
    tokens, failures, dropped nodes ...) are summed (integers stay integers), except peaks
    (``max_*``), which are maxed, and per-query figures such as the retrieval weight, which are
    averaged over the queries that report them (:attr:`ScoredRun.means`).
    """
    scored = []
    for run in runs.values():
        qids = list(run.outcomes)
        names = list(measures or default_measures(dataset, run.top_n, run.top_k))
        as_run = run.as_run()
        totals: dict[str, float] = {"dropped": 0}
        reported: dict[str, list[float]] = {}
        for o in run.outcomes.values():
            totals["dropped"] += o.dropped
            for k, v in o.counters.items():
                if k in _MEANS:
                    reported.setdefault(k, []).append(float(v))
                    continue
                # "max_*" figures (e.g. max_in_flight) are peaks: their total is the peak
                merge = max if k.removeprefix("remote_").startswith("max_") else operator.add
                totals[k] = merge(totals.get(k, 0), v)
        latencies = sorted(o.latency_s for o in run.outcomes.values())
        scored.append(
            ScoredRun(
                reranker=run.reranker,
                top_k=run.top_k,
                top_n=run.top_n,
                queries=len(qids),
                measures=evaluate(dataset.qrels, as_run, names, qids),
                per_query=per_query(dataset.qrels, as_run, names, qids),
                latency_median_s=statistics.median(latencies) if latencies else 0.0,
                latency_p95_s=_percentile(latencies, 0.95),
                totals=totals,
                means={k: statistics.fmean(v) for k, v in reported.items()},
                load_s=run.load_s,
            )
        )
    return scored


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 < q < 1, a multiple of 0.05) of already sorted values, 0.0 for none.

    ``statistics.quantiles``' inclusive method: linear interpolation between the two nearest
    values (numpy's default, R's type 7), rather than the nearest rank, which on few queries is
    simply the slowest one (10 queries: p95 = max).
    """
    if len(sorted_values) < 2:
        # quantiles() needs two values before Python 3.13.
        return float(sorted_values[0]) if sorted_values else 0.0
    cuts = statistics.quantiles(sorted_values, n=20, method="inclusive")
    return cuts[round(q * 20) - 1]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of flat records (floats to 4 places, latency to 3)."""
    if not rows:
        return ""
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))

    def fmt(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot_against_k(scored: Sequence[ScoredRun], path: str | Path, measure: str = "nDCG@10") -> Path:
    """Plot ``measure`` and median latency against K for each reranker; writes a PNG."""
    from llamaindex_rerankers._imports import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_name: dict[str, list[ScoredRun]] = {}
    for s in scored:
        by_name.setdefault(s.reranker, []).append(s)
    for name, points in by_name.items():
        points.sort(key=lambda s: s.top_k)
        ks = [p.top_k for p in points]
        left.plot(ks, [p.measures.get(measure, 0.0) for p in points], marker="o", label=name)
        if name != "none":  # the first stage's order costs nothing: no latency to plot
            right.plot(ks, [p.latency_median_s * 1000 for p in points], marker="o", label=name)
    left.set(xlabel="K (first-stage candidates)", ylabel=measure, title=f"{measure} vs K")
    right.set(
        xlabel="K (first-stage candidates)",
        ylabel="median latency per query (ms)",
        title="Latency vs K",
        yscale="log",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

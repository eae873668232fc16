"""The demo: first-stage retrieval versus reranking on a small corpus shipped with the package.

The corpus (``sample_corpus/*.md``, about 30 short documents) is built around the classic
question "best practices for pruning apple trees": one real pruning guide, related gardening
pages, and confusers that share its words (pruning shears, Apple Inc. stock, apple pie,
decision-tree pruning, ...). :func:`run_demo` indexes it into an embedded Chroma, asks a few
questions and returns both orders; :func:`format_demo` lays them out side by side. The same
presentation helpers (:func:`ranked_sources`, :func:`format_sources`) serve the CLI's ``query``.

Example:
    >>> from llamaindex_rerankers.demo import format_demo, run_demo
    >>> print(format_demo(run_demo()))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaindex_rerankers.base import RERANK_SCORE

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import NodeWithScore

    from llamaindex_rerankers.pipeline import IndexStats, RetrievalResult

logger = logging.getLogger(__name__)

#: The questions the demo asks, the classic one first.
DEMO_QUESTIONS: tuple[str, ...] = (
    "best practices for pruning apple trees",
    "why are my apples so small?",
    "is Apple stock a good buy after the earnings report?",
    # Off-topic: nothing in the corpus answers it, so the query engine should abstain.
    "how do I replace the timing belt on a diesel van?",
)
#: A query engine built with ``abstain_below`` answers "no relevant context" below this score.
DEMO_ABSTAIN_BELOW = 0.5
#: Chroma collection the demo writes to.
DEMO_COLLECTION = "llamaindex_rerankers_demo"
#: Terminal width the formatters fit into by default.
DEFAULT_WIDTH = 100


def sample_corpus_dir() -> Path:
    """The folder of the sample corpus installed with the package.

    Example:
        >>> sorted(p.name for p in sample_corpus_dir().glob("*.md"))[:1]
        ['alpha-beta-pruning.md']
    """
    return Path(str(resources.files("llamaindex_rerankers") / "sample_corpus"))


@dataclass(frozen=True)
class RankedSource:
    """One source as shown to a user: its place in a ranking and where it came from.

    Attributes:
        rank: 1-based position in this ranking.
        node_id: the chunk's id in the index.
        title: the document's title (its first Markdown heading, else its file name).
        text: the chunk's text, without metadata.
        retrieval_rank: 1-based position in the first-stage (embedding) order.
        retrieval_score: the first-stage similarity, ``None`` if the retriever gave none.
        rerank_score: the reranker's score in [0, 1], ``None`` when nothing was reranked.

    Example:
        >>> s = RankedSource(1, "guide.md#0", "Guide", "Prune in winter.", 3, 0.61, 0.97)
        >>> s.to_json()["retrieval_rank"]
        3
    """

    rank: int
    node_id: str
    title: str
    text: str
    retrieval_rank: int
    retrieval_score: float | None
    rerank_score: float | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``id``, ``rank``, ``title``, the scores and ranks, ``text``."""
        return {
            "id": self.node_id,
            "rank": self.rank,
            "title": self.title,
            "rerank_score": self.rerank_score,
            "retrieval_rank": self.retrieval_rank,
            "retrieval_score": self.retrieval_score,
            "text": self.text,
        }

    def snippet(self) -> str:
        """The text on one line, without its title heading."""
        lines = self.text.strip().splitlines()
        if lines and lines[0].lstrip().startswith("#"):
            lines = lines[1:]
        return " ".join(" ".join(lines).split())


@dataclass(frozen=True)
class Comparison:
    """Retrieval order and reranked order for one question.

    Example:
        >>> Comparison("q", retrieved=[], reranked=[]).question
        'q'
    """

    question: str
    retrieved: list[RankedSource]
    reranked: list[RankedSource]
    abstained: bool = False


@dataclass(frozen=True)
class DemoReport:
    """Everything :func:`run_demo` did.

    Attributes:
        stats: what indexing the sample corpus did.
        location: where the index lives (``ChromaConfig.describe()``); a temporary folder
            (already deleted) unless ``persist_dir`` was given.
        reranker: the reranker's model name, or ``"none"``.
        comparisons: one per question, in order.
    """

    stats: IndexStats
    location: str
    reranker: str
    comparisons: list[Comparison]


def node_title(node: NodeWithScore) -> str:
    """A display title for a retrieved node: its ``title`` metadata, else its first Markdown
    heading, else its file name, else its id.

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> node_title(NodeWithScore(node=TextNode(text="# Pruning Pears\\n\\nCut in winter.")))
        'Pruning Pears'
    """
    meta = node.node.metadata
    if isinstance(meta.get("title"), str) and meta["title"].strip():
        return str(meta["title"]).strip()
    for line in node.node.get_content().strip().splitlines()[:3]:
        if line.lstrip().startswith("#"):
            return line.lstrip().lstrip("#").strip()
    for key in ("file_name", "file_path", "source_id"):
        if isinstance(meta.get(key), str) and meta[key]:
            return str(meta[key])
    return str(node.node.node_id)


def ranked_sources(result: RetrievalResult, *, top_n: int | None = None) -> list[RankedSource]:
    """The reranked sources of ``result``, each with its first-stage rank and score.

    Works with any reranker and with none (then the order and ranks are the retrieval ones and
    ``rerank_score`` is ``None``).

    Args:
        result: from :func:`llamaindex_rerankers.pipeline.retrieve_and_rerank`.
        top_n: keep at most this many; ``None`` keeps all.

    Example:
        >>> result = retrieve_and_rerank(index, "pruning", reranker=r)  # doctest: +SKIP
        >>> [s.retrieval_rank for s in ranked_sources(result, top_n=3)]  # doctest: +SKIP
        [3, 1, 7]
    """
    first_stage = {n.node.node_id: (i + 1, n.score) for i, n in enumerate(result.retrieved)}
    nodes = result.reranked if top_n is None else result.reranked[:top_n]
    out = []
    for rank, n in enumerate(nodes, start=1):
        retrieval_rank, retrieval_score = first_stage.get(n.node.node_id, (rank, n.score))
        rerank = n.node.metadata.get(RERANK_SCORE)
        out.append(
            RankedSource(
                rank=rank,
                node_id=n.node.node_id,
                title=node_title(n),
                text=n.node.get_content(),
                retrieval_rank=retrieval_rank,
                retrieval_score=_float(retrieval_score),
                rerank_score=_float(rerank),
            )
        )
    return out


def retrieval_sources(result: RetrievalResult) -> list[RankedSource]:
    """The first-stage sources of ``result`` in retrieval order (with the rerank score of those
    the reranker kept)."""
    rerank = {n.node.node_id: n.node.metadata.get(RERANK_SCORE) for n in result.reranked}
    return [
        RankedSource(
            rank=i,
            node_id=n.node.node_id,
            title=node_title(n),
            text=n.node.get_content(),
            retrieval_rank=i,
            retrieval_score=_float(n.score),
            rerank_score=_float(rerank.get(n.node.node_id)),
        )
        for i, n in enumerate(result.retrieved, start=1)
    ]


def run_demo(
    *,
    persist_dir: str | Path | None = None,
    collection: str = DEMO_COLLECTION,
    questions: Sequence[str] = DEMO_QUESTIONS,
    top_k: int = 8,
    reranker: BaseNodePostprocessor | None = None,
    embed_model: BaseEmbedding | None = None,
    show_progress: bool = True,
    abstain_below: float | None = DEMO_ABSTAIN_BELOW,
) -> DemoReport:
    """Index the sample corpus into an embedded Chroma and compare both orders per question.

    Args:
        persist_dir: Chroma folder to (re)use; ``None`` uses a temporary folder, deleted after.
            Re-running on the same folder embeds nothing (indexing is incremental).
        collection: Chroma collection name.
        questions: the questions to ask.
        top_k: first-stage candidates per question; the reranker reorders all of them.
        reranker: the reranker; ``None`` builds a ``CrossEncoderReranker`` with its defaults
            (``$LLAMAINDEX_RERANKERS_CROSS_ENCODER`` or the hub model).
        embed_model: the embedding model; ``None`` uses
            :func:`~llamaindex_rerankers.pipeline.make_embed_model`'s default.
        show_progress: show a progress bar while embedding.
        abstain_below: mark a question as abstained when no reranked source reaches this
            score (what ``build_query_engine(abstain_below=...)`` does); ``None`` never.

    Returns:
        The index stats and one :class:`Comparison` per question.

    Raises:
        ModelLoadError: a model could not be loaded (the message says which option to set).
        ValueError: no questions, or ``top_k`` < 1.

    Example:
        >>> report = run_demo(top_k=5)  # doctest: +SKIP
        >>> report.comparisons[0].reranked[0].title  # doctest: +SKIP
        'Pruning Apple Trees: When and How'
    """
    from llamaindex_rerankers.pipeline import (
        ChromaConfig,
        index_folder,
        load_index,
        make_embed_model,
        relevant_enough,
        retrieve_and_rerank,
    )

    if not questions or any(not q.strip() for q in questions):
        raise ValueError("run_demo needs at least one non-empty question.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    if reranker is None:
        from llamaindex_rerankers.cross_encoder import CrossEncoderReranker

        reranker = CrossEncoderReranker()
    # Load models before any work, so a missing model fails in a second, not after indexing.
    load = getattr(reranker, "load", None)
    if callable(load):
        load()
    embed = embed_model if embed_model is not None else make_embed_model()

    where: Any = (
        tempfile.TemporaryDirectory(prefix="llamaindex-rerankers-demo-", ignore_cleanup_errors=True)
        if persist_dir is None
        else contextlib.nullcontext(str(persist_dir))
    )
    with where as folder:
        config = ChromaConfig(persist_dir=folder, collection=collection)
        with resources.as_file(resources.files("llamaindex_rerankers") / "sample_corpus") as src:
            stats = index_folder(
                src, config, embed_model=embed, required_exts=[".md"], show_progress=show_progress
            )
        index = load_index(config, embed_model=embed)
        comparisons = []
        for question in questions:
            result = retrieve_and_rerank(index, question, top_k=top_k, reranker=reranker)
            abstained = abstain_below is not None and not relevant_enough(
                result.reranked, abstain_below
            )
            comparisons.append(
                Comparison(question, retrieval_sources(result), ranked_sources(result), abstained)
            )
    name = str(getattr(reranker, "model_name", None) or type(reranker).__name__)
    location = config.describe() + (" (temporary)" if persist_dir is None else "")
    return DemoReport(stats, location, name, comparisons)


# -- formatting -------------------------------------------------------------------------------


def format_comparison(comparison: Comparison, *, width: int = DEFAULT_WIDTH) -> str:
    """Retrieval order and reranked order side by side, fitting ``width`` columns.

    Left: rank, title, retrieval score. Right: rank, title, rerank score and the retrieval rank
    the source came from.

    Example:
        >>> print(format_comparison(report.comparisons[0]))  # doctest: +SKIP
    """
    # Fixed columns: left "rr  title  0.000" | right "rr  title  0.000  (#rr)".
    half = (width - 3) // 2
    left_title = max(8, half - 2 - 2 - 1 - 6)
    right_title = max(8, width - 3 - half - 2 - 2 - 1 - 6 - 6)
    head_l = f"{'retrieval (embeddings)':<{half}}"
    head_r = "reranked (score, was #)"
    lines = [f"Q: {_cut(comparison.question, width - 3)}", f"{head_l} | {head_r}"]
    lines.append(f"{'-' * half}-+-{'-' * (width - 3 - half)}")
    rows = max(len(comparison.retrieved), len(comparison.reranked))
    for i in range(rows):
        left = " " * half
        if i < len(comparison.retrieved):
            s = comparison.retrieved[i]
            title = _cut(s.title, left_title)
            left = f"{s.rank:>2}  {title:<{left_title}} {_score(s.retrieval_score)}"
        right = ""
        if i < len(comparison.reranked):
            s = comparison.reranked[i]
            was = f"(#{s.retrieval_rank})"
            title = _cut(s.title, right_title)
            right = f"{s.rank:>2}  {title:<{right_title}} {_score(s.rerank_score)} {was:>5}"
        lines.append(f"{left:<{half}} | {right}".rstrip())
    if comparison.abstained:
        lines.append(
            _cut(
                "-> abstain: no source is relevant; the engine answers "
                "'No relevant context found.'",
                width,
            )
        )
    return "\n".join(lines)


def format_demo(report: DemoReport, *, width: int = DEFAULT_WIDTH) -> str:
    """The whole demo as text: what was indexed, then one side-by-side table per question.

    Example:
        >>> print(format_demo(run_demo()))  # doctest: +SKIP
    """
    s = report.stats
    parts = [
        f"Sample corpus indexed into {report.location}\n"
        f"{s.added} added, {s.updated} updated, {s.removed} removed, {s.unchanged} unchanged; "
        f"{s.chunks} chunks. Reranker: {report.reranker}"
    ]
    parts += [format_comparison(c, width=width) for c in report.comparisons]
    return "\n\n".join(parts)


def format_sources(
    sources: Sequence[RankedSource], *, width: int = DEFAULT_WIDTH, answer: str | None = None
) -> str:
    """A readable table of ranked sources: rank, rerank score, retrieval rank and score, and a
    one-line "title: snippet"; the answer first when there is one.

    Example:
        >>> print(format_sources(ranked_sources(result)))  # doctest: +SKIP
    """
    lines = []
    if answer is not None:
        lines += ["Answer:", textwrap.fill(answer.strip(), width=width), "", "Sources:"]
    if not sources:
        return "\n".join([*lines, "(no sources)"])
    head = f"{'#':>2}  {'rerank':>6}  {'ret.rank':>8}  {'ret.score':>9}  title: snippet"
    lines += [head, "-" * min(width, 100)]
    room = max(10, width - len(head) + len("title: snippet"))
    for s in sources:
        line = f"{s.title}: {s.snippet()}"
        lines.append(
            f"{s.rank:>2}  {_score(s.rerank_score)}  {s.retrieval_rank:>8}  "
            f"{_score(s.retrieval_score):>9}  {_cut(line, room)}"
        )
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return f"{value:6.3f}" if value is not None else f"{'-':>6}"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)].rstrip() + "…"


def _float(value: Any) -> float | None:
    return None if value is None else float(value)

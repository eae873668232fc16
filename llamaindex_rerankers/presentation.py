"""What a user sees of a ranking: ranked-source records and their text formatting.

Shared by the CLI's ``query``, the demo and the chatbot server. Pure: the records are built from
a :class:`~llamaindex_rerankers.pipeline.RetrievalResult` and formatted as plain text; nothing
here loads a model or touches an index.

Example:
    >>> from llamaindex_rerankers.presentation import format_sources, ranked_sources
    >>> result = retrieve_and_rerank(index, "pruning", reranker=r)  # doctest: +SKIP
    >>> print(format_sources(ranked_sources(result, top_n=5)))  # doctest: +SKIP
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamaindex_rerankers.base import RERANK_SCORE
from llamaindex_rerankers.pipeline.query import NO_RELEVANT_CONTEXT, RERANK_FAILED_MESSAGE

if TYPE_CHECKING:
    from llama_index.core.schema import NodeWithScore

    from llamaindex_rerankers.pipeline import IndexStats, RetrievalResult

#: Terminal width the formatters fit into by default.
DEFAULT_WIDTH = 100


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
        """The text on one line, without its title heading (see :func:`text_snippet`)."""
        return text_snippet(self.text)


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
    rerank_failed: bool = False


@dataclass(frozen=True)
class DemoReport:
    """Everything :func:`~llamaindex_rerankers.demo.run_demo` did.

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


def node_title(node: NodeWithScore, *, file_path: bool = True) -> str:
    """A display title for a retrieved node: its ``title`` metadata, else its first Markdown
    heading, else its file name (or path), else its id.

    Args:
        file_path: fall back to the ``file_path`` metadata; the server passes ``False``, since
            the paths of its machine are nobody's business.

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
    keys = ("file_name", "file_path", "source_id") if file_path else ("file_name", "source_id")
    for key in keys:
        if isinstance(meta.get(key), str) and meta[key]:
            return str(meta[key])
    return str(node.node.node_id)


def text_snippet(text: str, limit: int | None = None) -> str:
    """The text on one line without its title heading; longer than ``limit`` characters, it is
    cut at a word and ends with " …" (``None``: never cut).

    Example:
        >>> text_snippet("# Pruning\\nCut in\\n  winter, before buds open.", limit=16)
        'Cut in winter, …'
    """
    lines = text.strip().splitlines()
    if lines and lines[0].lstrip().startswith("#"):
        lines = lines[1:]
    flat = " ".join(" ".join(lines).split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + " …"


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
    if comparison.rerank_failed:
        lines.append(_cut(f"-> {RERANK_FAILED_MESSAGE}", width))
    elif comparison.abstained:
        lines.append(
            _cut(
                f"-> abstain: no source is relevant; the engine answers {NO_RELEVANT_CONTEXT!r}",
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

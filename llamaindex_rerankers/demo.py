"""The demo: first-stage retrieval versus reranking on a small corpus shipped with the package.

The corpus (``sample_corpus/*.md``, about 30 short documents) is built around the classic
question "best practices for pruning apple trees": one real pruning guide, related gardening
pages, and confusers that share its words (pruning shears, Apple Inc. stock, apple pie,
decision-tree pruning, ...). :func:`run_demo` indexes it into an embedded Chroma, asks a few
questions and returns both orders; :func:`~llamaindex_rerankers.presentation.format_demo` lays
them out side by side. The presentation records and formatters live in
:mod:`llamaindex_rerankers.presentation` (re-exported here).

Example:
    >>> from llamaindex_rerankers.demo import format_demo, run_demo
    >>> print(format_demo(run_demo()))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaindex_rerankers.presentation import (
    DEFAULT_WIDTH,
    Comparison,
    DemoReport,
    RankedSource,
    format_comparison,
    format_demo,
    format_sources,
    node_title,
    ranked_sources,
    retrieval_sources,
)

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

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


def sample_corpus_dir() -> Path:
    """The folder of the sample corpus installed with the package.

    Example:
        >>> sorted(p.name for p in sample_corpus_dir().glob("*.md"))[:1]
        ['alpha-beta-pruning.md']
    """
    return Path(str(resources.files("llamaindex_rerankers") / "sample_corpus"))


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
    from llamaindex_rerankers.pipeline import ChromaConfig, index_folder, load_index

    if not questions or any(not q.strip() for q in questions):
        raise ValueError("run_demo needs at least one non-empty question.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    reranker, embed = _load_models(reranker, embed_model)

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
        comparisons = [
            _compare(index, question, top_k, reranker, abstain_below) for question in questions
        ]
    name = str(getattr(reranker, "model_name", None) or type(reranker).__name__)
    location = config.describe() + (" (temporary)" if persist_dir is None else "")
    return DemoReport(stats, location, name, comparisons)


def _load_models(
    reranker: BaseNodePostprocessor | None, embed_model: BaseEmbedding | None
) -> tuple[BaseNodePostprocessor, BaseEmbedding]:
    """The reranker (default: a ``CrossEncoderReranker``) and embedding model, both loaded."""
    from llamaindex_rerankers.pipeline import make_embed_model

    if reranker is None:
        from llamaindex_rerankers.cross_encoder import CrossEncoderReranker

        reranker = CrossEncoderReranker()
    # Load models before any work, so a missing model fails in a second, not after indexing.
    load = getattr(reranker, "load", None)
    if callable(load):
        load()
    return reranker, embed_model if embed_model is not None else make_embed_model()


def _compare(
    index: VectorStoreIndex,
    question: str,
    top_k: int,
    reranker: BaseNodePostprocessor,
    abstain_below: float | None,
) -> Comparison:
    """One question: the first-stage order and the reranked one."""
    from llamaindex_rerankers.pipeline import relevant_enough, rerank_failed, retrieve_and_rerank

    result = retrieve_and_rerank(index, question, top_k=top_k, reranker=reranker)
    # An outage (nothing judged) is not an abstention: the passages were never read.
    failed = rerank_failed(result.reranked)
    abstained = (
        not failed
        and abstain_below is not None
        and not relevant_enough(result.reranked, abstain_below)
    )
    return Comparison(
        question,
        retrieval_sources(result),
        ranked_sources(result),
        abstained=abstained,
        rerank_failed=failed,
    )


__all__ = [
    "DEFAULT_WIDTH",
    "DEMO_ABSTAIN_BELOW",
    "DEMO_COLLECTION",
    "DEMO_QUESTIONS",
    "Comparison",
    "DemoReport",
    "RankedSource",
    "format_comparison",
    "format_demo",
    "format_sources",
    "node_title",
    "ranked_sources",
    "retrieval_sources",
    "run_demo",
    "sample_corpus_dir",
]

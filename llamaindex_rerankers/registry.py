"""Our rerankers by name, for the CLI and for configuration files.

Each name maps to a small factory; adding a reranker is one line in :data:`_FACTORIES`.
LlamaIndex's own rerankers, which the benchmarks compare ours against, are not here: they are
built by :mod:`llamaindex_rerankers.evaluation.anchors`.

Example:
    >>> from llamaindex_rerankers.registry import RERANKER_NAMES, make_reranker
    >>> RERANKER_NAMES
    ('none', 'cross-encoder', 'llm', 'cascade')
    >>> make_reranker("none") is None
    True
    >>> reranker = make_reranker("cross-encoder", top_n=5, batch_size=16)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_index.core.postprocessor.types import BaseNodePostprocessor

from llamaindex_rerankers.base import BaseReranker

Factory = Callable[..., BaseNodePostprocessor | None]


def _none(*, top_n: int | None = None, **options: Any) -> None:
    if options:
        raise ValueError(
            f"reranker 'none' takes no options, got {sorted(options)}; drop them or pick a "
            "reranker that uses them."
        )
    return None


def _cross_encoder(*, top_n: int | None = None, **options: Any) -> BaseNodePostprocessor:
    # Imported here so that reading the registry never loads a model class's module graph.
    from llamaindex_rerankers.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker(top_n=top_n, **options)


def _llm(
    *,
    top_n: int | None = None,
    llm_base_url: str | None = None,
    llm_model: str | None = None,
    llm_api_key: str | None = None,
    llm_cache_namespace: str | None = None,
    **options: Any,
) -> BaseReranker:
    from llamaindex_rerankers.llm import LLMReranker

    if llm_model:
        options["model"] = llm_model
    if llm_cache_namespace:
        options["cache_namespace"] = llm_cache_namespace
    return LLMReranker(top_n=top_n, base_url=llm_base_url, api_key=llm_api_key, **options)


def _cascade(
    *,
    top_n: int | None = None,
    keep: int = 6,
    stage1_weight: float | str = "auto",
    cross_encoder_model: str | None = None,
    **llm_options: Any,
) -> BaseNodePostprocessor:
    from llamaindex_rerankers.cascade import CascadeReranker
    from llamaindex_rerankers.cross_encoder import CrossEncoderReranker

    first = CrossEncoderReranker(**({"model": cross_encoder_model} if cross_encoder_model else {}))
    return CascadeReranker(
        first=first,
        second=_llm(**llm_options),
        keep=keep,
        stage1_weight=stage1_weight,
        top_n=top_n,
    )


_FACTORIES: dict[str, Factory] = {
    "none": _none,
    "cross-encoder": _cross_encoder,
    "llm": _llm,
    "cascade": _cascade,
}

#: Names accepted by :func:`make_reranker`, in display order.
RERANKER_NAMES: tuple[str, ...] = tuple(_FACTORIES)
#: The rerankers that need an OpenAI-compatible LLM endpoint (``llm_base_url`` ...).
LLM_RERANKERS = frozenset({"llm", "cascade"})


def make_reranker(
    name: str, *, top_n: int | None = None, **options: Any
) -> BaseNodePostprocessor | None:
    """Build the reranker registered under ``name``.

    Args:
        name: one of :data:`RERANKER_NAMES`; ``"none"`` means "keep the retrieval order" and
            returns ``None`` (no postprocessor).
        top_n: number of nodes the reranker returns; ``None`` returns all of them.
        **options: keyword arguments of the reranker's class (for ``"cross-encoder"``: those of
            :class:`~llamaindex_rerankers.cross_encoder.CrossEncoderReranker`, e.g. ``model``,
            ``batch_size``, ``device``). The model is loaded on first use, not here.

    Returns:
        A node postprocessor, or ``None`` for ``"none"``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names), or
            ``"none"`` was given options.

    Example:
        >>> make_reranker("cross-encoder", top_n=3).top_n
        3
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(RERANKER_NAMES)
        raise ValueError(f"unknown reranker {name!r}; choose one of: {known}.") from None
    return factory(top_n=top_n, **options)

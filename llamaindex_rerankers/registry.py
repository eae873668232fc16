"""Rerankers by name, for the CLI and for configuration files.

Each name maps to a small factory; adding a reranker is one line in :data:`_FACTORIES`.

Example:
    >>> from llamaindex_rerankers.registry import RERANKER_NAMES, make_reranker
    >>> RERANKER_NAMES
    ('none', 'cross-encoder', 'llm', 'cascade', 'sbert', 'llmrerank', 'rankgpt')
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
    **options: Any,
) -> BaseReranker:
    from llamaindex_rerankers.llm import LLMReranker

    if llm_model:
        options["model"] = llm_model
    return LLMReranker(top_n=top_n, base_url=llm_base_url, api_key=llm_api_key, **options)


def _cascade(
    *,
    top_n: int | None = None,
    keep: int = 6,
    stage1_weight: float = 0.5,
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


# -- LlamaIndex's own rerankers, the anchors we compare against (extra: anchors) -------------

_ALL = 10**9  # the anchors need an int top_n; "all" for ours is None


def _sbert(*, top_n: int | None = None, model: str | None = None, **options: Any) -> Any:
    from llamaindex_rerankers._imports import require
    from llamaindex_rerankers.cross_encoder import default_cross_encoder

    sbert = require("llama_index.postprocessor.sbert_rerank")
    return sbert.SentenceTransformerRerank(
        model=model or default_cross_encoder(), top_n=top_n or _ALL, **options
    )


def _openai_like(base_url: str | None, model: str | None, api_key: str | None) -> Any:
    from llamaindex_rerankers.llm.endpoint import LLMEndpoint

    if not base_url or not model:
        raise ValueError(
            "LlamaIndex's LLM rerankers need llm_base_url and llm_model (an OpenAI-compatible "
            "endpoint, e.g. the local server of `llamaindex-rerankers llm-server`)."
        )
    # The anchors' answers (rankings, choice lists) must not be cut, and a slow local server
    # needs time: no token cap, a long timeout.
    return LLMEndpoint(base_url, model, api_key).as_llama_index_llm(
        max_tokens=None, timeout=120.0, max_retries=2
    )


def _llm_anchor(cls: Any) -> Factory:
    """A factory for one of LlamaIndex's LLM rerankers on our endpoint options."""

    def make(
        *,
        top_n: int | None = None,
        llm_base_url: str | None = None,
        llm_model: str | None = None,
        llm_api_key: str | None = None,
        **options: Any,
    ) -> Any:
        llm = _openai_like(llm_base_url, llm_model, llm_api_key)
        return cls()(llm=llm, top_n=top_n or _ALL, **options)

    return make


def _llmrerank_class() -> Any:
    from llama_index.core.postprocessor import LLMRerank

    return LLMRerank


def _rankgpt_class() -> Any:
    from llamaindex_rerankers._imports import require

    return require("llama_index.postprocessor.rankgpt_rerank").RankGPTRerank


_FACTORIES: dict[str, Factory] = {
    "none": _none,
    "cross-encoder": _cross_encoder,
    "llm": _llm,
    "cascade": _cascade,
    "sbert": _sbert,
    "llmrerank": _llm_anchor(_llmrerank_class),
    "rankgpt": _llm_anchor(_rankgpt_class),
}

#: Names accepted by :func:`make_reranker`, in display order.
RERANKER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


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

"""LlamaIndex's own rerankers, the anchors ours are compared against (extra: ``anchors``).

They are benchmark baselines, not part of the public registry
(:mod:`llamaindex_rerankers.registry` lists only ours): the ``eval`` command and the benchmarks
build them by name here, with the same option names as ours (``top_n``, ``llm_base_url``,
``llm_model``, ``llm_api_key``), so one command line drives both.

* ``sbert``: ``SentenceTransformerRerank`` (llama-index-postprocessor-sbert-rerank).
* ``llmrerank``: ``LLMRerank`` (llama-index-core), choice lists parsed from text.
* ``structuredllmrerank``: ``StructuredLLMRerank`` (llama-index-core), the same prompt answered
  through LlamaIndex's structured prediction.
* ``rankgpt``: ``RankGPTRerank`` (llama-index-postprocessor-rankgpt-rerank), listwise.

Example:
    >>> from llamaindex_rerankers.evaluation.anchors import ANCHOR_NAMES, make_anchor
    >>> ANCHOR_NAMES
    ('sbert', 'llmrerank', 'structuredllmrerank', 'rankgpt')
    >>> anchor = make_anchor("llmrerank", top_n=5, llm_base_url="http://127.0.0.1:8000/v1",
    ...                      llm_model="m")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llamaindex_rerankers.registry import Factory

#: Context window of a local server when LlamaIndex's LLM rerankers run (SmolLM2's full window):
#: RankGPT puts all K passages in one prompt.
ANCHOR_N_CTX = 8192
#: Tokens an anchor may generate per call.
ANCHOR_MAX_TOKENS = 512

_ALL = 10**9  # the anchors need an int top_n; "all" for ours is None


def _sbert(*, top_n: int | None = None, model: str | None = None, **options: Any) -> Any:
    from llamaindex_rerankers._imports import require
    from llamaindex_rerankers.cross_encoder import default_cross_encoder

    sbert = require("llama_index.postprocessor.sbert_rerank")
    return sbert.SentenceTransformerRerank(
        model=model or default_cross_encoder(), top_n=top_n or _ALL, **options
    )


def _openai_like(base_url: str | None, model: str | None, api_key: str | None) -> Any:
    from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint

    if not base_url or not model:
        raise ValueError(
            "LlamaIndex's LLM rerankers need llm_base_url and llm_model (an OpenAI-compatible "
            "endpoint, e.g. the local server of `llamaindex-rerankers llm-server`)."
        )
    # The anchors' answers (rankings of 20, choice lists of 10) fit well within 512 tokens; a
    # cap keeps a small model that repeats itself from generating until its context is full
    # (StructuredLLMRerank with SmolLM2 timed out on every query without one). A slow local
    # server needs time: a long timeout.
    return LLMEndpoint(base_url, model, api_key).as_llama_index_llm(
        max_tokens=ANCHOR_MAX_TOKENS, timeout=120.0, max_retries=1
    )


def _llm_anchor(cls: Callable[[], Any]) -> Factory:
    """A factory for one of LlamaIndex's LLM rerankers on our endpoint options."""

    def make(
        *,
        top_n: int | None = None,
        llm_base_url: str | None = None,
        llm_model: str | None = None,
        llm_api_key: str | None = None,
        llm_cache_namespace: str | None = None,  # the endpoint's; anchors have no cache
        **options: Any,
    ) -> Any:
        llm = _openai_like(llm_base_url, llm_model, llm_api_key)
        return cls()(llm=llm, top_n=top_n or _ALL, **options)

    return make


def _llmrerank_class() -> Any:
    from llama_index.core.postprocessor import LLMRerank

    return LLMRerank


def _structuredllmrerank_class() -> Any:
    from llama_index.core.postprocessor import StructuredLLMRerank

    return StructuredLLMRerank


def _rankgpt_class() -> Any:
    from llamaindex_rerankers._imports import require

    return require("llama_index.postprocessor.rankgpt_rerank").RankGPTRerank


_FACTORIES: dict[str, Factory] = {
    "sbert": _sbert,
    "llmrerank": _llm_anchor(_llmrerank_class),
    "structuredllmrerank": _llm_anchor(_structuredllmrerank_class),
    "rankgpt": _llm_anchor(_rankgpt_class),
}

#: Names accepted by :func:`make_anchor`, in display order.
ANCHOR_NAMES: tuple[str, ...] = tuple(_FACTORIES)
#: The anchors that need an OpenAI-compatible LLM endpoint (``llm_base_url``, ``llm_model``).
LLM_ANCHORS = frozenset({"llmrerank", "structuredllmrerank", "rankgpt"})


def make_anchor(name: str, *, top_n: int | None = None, **options: Any) -> Any:
    """Build LlamaIndex's reranker registered under ``name``.

    Args:
        name: one of :data:`ANCHOR_NAMES`.
        top_n: number of nodes the anchor returns; ``None`` returns all of them.
        **options: for ``"sbert"``, ``model`` and ``SentenceTransformerRerank``'s keyword
            arguments; for the LLM anchors, ``llm_base_url`` and ``llm_model`` (both needed),
            ``llm_api_key`` and the class's keyword arguments (e.g. ``choice_batch_size``).

    Returns:
        The anchor, a LlamaIndex node postprocessor.

    Raises:
        ValueError: ``name`` is not an anchor (the message lists them), or an LLM anchor was
            given no endpoint.
        ImportError: the anchor's package is missing; the message names the ``anchors`` extra.

    Example:
        >>> make_anchor("sbert", top_n=3).top_n  # doctest: +SKIP
        3
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(ANCHOR_NAMES)
        raise ValueError(f"unknown anchor {name!r}; choose one of: {known}.") from None
    return factory(top_n=top_n, **options)

"""From command-line options to a reranker's factory options: one mapping for ``query``,
``demo`` and ``eval``, for our rerankers and LlamaIndex's (the anchors) alike.

Example:
    >>> reranker_options("cascade", cross_encoder_model="/models/ce")
    {'cross_encoder_model': '/models/ce'}
    >>> needs_llm("cross-encoder"), needs_llm("rankgpt")
    (False, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamaindex_rerankers.evaluation.anchors import LLM_ANCHORS
from llamaindex_rerankers.registry import LLM_RERANKERS

if TYPE_CHECKING:
    from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint

#: Every reranker name, ours or an anchor, that needs an OpenAI-compatible LLM endpoint.
LLM_BACKED: frozenset[str] = LLM_RERANKERS | LLM_ANCHORS

# The factory option that takes ``--cross-encoder-model``, per reranker that has one.
_CROSS_ENCODER_OPTION = {
    "cross-encoder": "model",
    "cascade": "cross_encoder_model",
    "sbert": "model",
}


def needs_llm(name: str) -> bool:
    """Whether the reranker ``name`` needs an LLM endpoint (so one must be found or started)."""
    return name in LLM_BACKED


def reranker_options(
    name: str, *, cross_encoder_model: str | None = None, endpoint: LLMEndpoint | None = None
) -> dict[str, Any]:
    """The options ``--cross-encoder-model`` and the LLM endpoint give the factory of ``name``
    (:func:`~llamaindex_rerankers.registry.make_reranker` or
    :func:`~llamaindex_rerankers.evaluation.anchors.make_anchor`); options a reranker does not
    take are left out.

    Args:
        name: a reranker or anchor name.
        cross_encoder_model: the cross-encoder's id or local path; ``None`` keeps the default.
        endpoint: the LLM endpoint; ``None`` when no LLM is used.
    """
    options: dict[str, Any] = {}
    key = _CROSS_ENCODER_OPTION.get(name)
    if key and cross_encoder_model:
        options[key] = cross_encoder_model
    if endpoint is not None and needs_llm(name):
        options.update(endpoint.reranker_options())
    return options

"""Every reranker by name, ours and LlamaIndex's (the anchors), in one table.

Each name has a small factory, whether it needs an LLM endpoint, and which factory option takes a
cross-encoder model; adding a reranker is one line in :data:`_ENTRIES`. The command line
(``query``, ``demo``, ``eval``), the chatbot backend (``serve``) and the benchmarks derive their
choices and options from here, so that the names and defaults cannot drift apart.

* Ours (:data:`RERANKER_NAMES`, built by :func:`make_reranker`): ``none`` (keep the retrieval
  order), ``cross-encoder``, ``llm``, ``cascade``, ``remote`` (a rerank service, options
  ``remote_url``, ``remote_api``, ``remote_model``, else ``$LLAMAINDEX_RERANKERS_REMOTE_*``).
  Their defaults are the classes' own.
* LlamaIndex's anchors (:data:`ANCHOR_NAMES`, built by :func:`make_anchor`, extra ``anchors``),
  the baselines the benchmarks compare ours against, with the same option names as ours
  (``top_n``, ``llm_base_url``, ``llm_model``, ``llm_api_key``) so that one command line drives
  both: ``sbert`` (``SentenceTransformerRerank``), ``llmrerank`` (``LLMRerank``, choice lists
  parsed from text), ``structuredllmrerank`` (``StructuredLLMRerank``, the same prompt answered
  through structured prediction), ``rankgpt`` (``RankGPTRerank``, listwise).

This module imports no reranker class until a factory runs: reading the table is cheap.

Example:
    >>> from llamaindex_rerankers.registry import RERANKER_NAMES, make_reranker, needs_llm
    >>> RERANKER_NAMES
    ('none', 'cross-encoder', 'llm', 'cascade', 'remote')
    >>> ANCHOR_NAMES
    ('sbert', 'llmrerank', 'structuredllmrerank', 'rankgpt')
    >>> make_reranker("none") is None
    True
    >>> needs_llm("cross-encoder"), needs_llm("rankgpt")
    (False, True)
    >>> reranker_options("cascade", cross_encoder_model="/models/ce")
    {'cross_encoder_model': '/models/ce'}
    >>> reranker = make_reranker("cross-encoder", top_n=5, batch_size=16)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

    from llamaindex_rerankers.base import BaseReranker
    from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint

Factory = Callable[..., "BaseNodePostprocessor | None"]

#: Context window of a local server when LlamaIndex's LLM rerankers run (SmolLM2's full window):
#: RankGPT puts all K passages in one prompt.
ANCHOR_N_CTX = 8192
#: Tokens an anchor may generate per call.
ANCHOR_MAX_TOKENS = 512

_ALL = 10**9  # the anchors need an int top_n; "all" for ours is None


# -- ours -----------------------------------------------------------------------------------


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
    keep: int | None = None,
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
        # None keeps the class's default: one default, not one per caller.
        **({"keep": keep} if keep is not None else {}),
        stage1_weight=stage1_weight,
        top_n=top_n,
    )


#: ``--remote-api`` values: the service's HTTP shape (Cohere's rerank API v2 or v1, TEI's).
REMOTE_APIS: tuple[str, ...] = ("cohere", "cohere-v1", "tei")
#: Environment variable read when no ``remote_api`` is given (``serve`` reads the rerank
#: service's settings from the environment: ``$LLAMAINDEX_RERANKERS_REMOTE_URL`` ...).
REMOTE_API_ENV = "LLAMAINDEX_RERANKERS_REMOTE_API"


def remote_api_settings(value: str) -> dict[str, str]:
    """``RemoteReranker``'s ``api`` and ``api_version`` for a ``--remote-api`` value.

    Raises:
        ValueError: not one of :data:`REMOTE_APIS`.

    Example:
        >>> remote_api_settings("cohere-v1")
        {'api': 'cohere', 'api_version': 'v1'}
    """
    if value not in REMOTE_APIS:
        raise ValueError(f"remote_api must be one of {', '.join(REMOTE_APIS)}, got {value!r}.")
    if value == "tei":
        return {"api": "tei"}
    return {"api": "cohere", "api_version": "v1" if value == "cohere-v1" else "v2"}


def _remote(
    *,
    top_n: int | None = None,
    remote_url: str | None = None,
    remote_api: str | None = None,
    remote_model: str | None = None,
    **options: Any,
) -> BaseReranker:
    import os

    from llamaindex_rerankers.remote import RemoteReranker

    api = remote_api or os.environ.get(REMOTE_API_ENV)
    if api:
        options.update(remote_api_settings(api))
    if remote_url:
        options["base_url"] = remote_url
    if remote_model:
        options["model"] = remote_model
    return RemoteReranker(top_n=top_n, **options)


# -- LlamaIndex's, the anchors --------------------------------------------------------------


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


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    #: Needs an OpenAI-compatible LLM endpoint (``llm_base_url`` ...).
    needs_llm: bool = False
    #: The factory option that takes a cross-encoder model (``--cross-encoder-model``).
    cross_encoder_option: str | None = None
    #: One of LlamaIndex's rerankers, a benchmark baseline, rather than ours.
    anchor: bool = False
    #: Takes a rerank service's options (``remote_url``, ``remote_api``, ``remote_model``).
    remote: bool = False


_ENTRIES: dict[str, _Entry] = {
    "none": _Entry(_none),
    "cross-encoder": _Entry(_cross_encoder, cross_encoder_option="model"),
    "llm": _Entry(_llm, needs_llm=True),
    "cascade": _Entry(_cascade, needs_llm=True, cross_encoder_option="cross_encoder_model"),
    "remote": _Entry(_remote, remote=True),
    "sbert": _Entry(_sbert, cross_encoder_option="model", anchor=True),
    "llmrerank": _Entry(_llm_anchor(_llmrerank_class), needs_llm=True, anchor=True),
    "structuredllmrerank": _Entry(
        _llm_anchor(_structuredllmrerank_class), needs_llm=True, anchor=True
    ),
    "rankgpt": _Entry(_llm_anchor(_rankgpt_class), needs_llm=True, anchor=True),
}

#: Our rerankers, accepted by :func:`make_reranker`, in display order.
RERANKER_NAMES: tuple[str, ...] = tuple(n for n, e in _ENTRIES.items() if not e.anchor)
#: LlamaIndex's rerankers, accepted by :func:`make_anchor`, in display order.
ANCHOR_NAMES: tuple[str, ...] = tuple(n for n, e in _ENTRIES.items() if e.anchor)
#: Every name, ours then the anchors (what ``eval --reranker`` accepts).
ALL_NAMES: tuple[str, ...] = RERANKER_NAMES + ANCHOR_NAMES
#: Our rerankers that need an OpenAI-compatible LLM endpoint (``llm_base_url`` ...).
LLM_RERANKERS: frozenset[str] = frozenset(n for n in RERANKER_NAMES if _ENTRIES[n].needs_llm)
#: The anchors that need an OpenAI-compatible LLM endpoint (``llm_base_url``, ``llm_model``).
LLM_ANCHORS: frozenset[str] = frozenset(n for n in ANCHOR_NAMES if _ENTRIES[n].needs_llm)
#: Every name, ours or an anchor, that needs an OpenAI-compatible LLM endpoint.
LLM_BACKED: frozenset[str] = LLM_RERANKERS | LLM_ANCHORS


def cascade_keep_default() -> int:
    """How many candidates the cascade's second stage sees by default (the class's ``keep``):
    what ``eval --cascade-keep`` shows and uses when not given."""
    from llamaindex_rerankers.cascade import CascadeReranker

    return int(CascadeReranker.model_fields["keep"].default)


def needs_llm(name: str) -> bool:
    """Whether the reranker ``name`` (ours or an anchor) needs an LLM endpoint, so that one must
    be found or started."""
    return name in LLM_BACKED


def reranker_options(
    name: str,
    *,
    cross_encoder_model: str | None = None,
    endpoint: LLMEndpoint | None = None,
    remote_url: str | None = None,
    remote_api: str | None = None,
    remote_model: str | None = None,
) -> dict[str, Any]:
    """The options a cross-encoder model, an LLM endpoint and a rerank service give the factory
    of ``name`` (:func:`make_reranker` or :func:`make_anchor`); options a reranker does not take
    are left out.

    Args:
        name: a reranker or anchor name.
        cross_encoder_model: the cross-encoder's id or local path; ``None`` keeps the default.
        endpoint: the LLM endpoint; ``None`` when no LLM is used.
        remote_url: the rerank service's root URL (``remote``); ``None``: its environment
            variable.
        remote_api: one of :data:`REMOTE_APIS`; ``None``: ``$LLAMAINDEX_RERANKERS_REMOTE_API``,
            else ``cohere``.
        remote_model: the model name sent to the rerank service.

    Example:
        >>> reranker_options("cross-encoder", cross_encoder_model="/models/ce")
        {'model': '/models/ce'}
    """
    options: dict[str, Any] = {}
    entry = _ENTRIES.get(name)
    key = entry.cross_encoder_option if entry else None
    if key and cross_encoder_model:
        options[key] = cross_encoder_model
    if endpoint is not None and needs_llm(name):
        options.update(endpoint.reranker_options())
    if entry and entry.remote:
        given = {"remote_url": remote_url, "remote_api": remote_api, "remote_model": remote_model}
        options.update({k: v for k, v in given.items() if v})
    return options


def make_reranker(
    name: str, *, top_n: int | None = None, **options: Any
) -> BaseNodePostprocessor | None:
    """Build our reranker registered under ``name``.

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
        ValueError: ``name`` is not one of ours (the message lists them; the anchors are built
            by :func:`make_anchor`), or ``"none"`` was given options.

    Example:
        >>> make_reranker("cross-encoder", top_n=3).top_n
        3
    """
    if name not in RERANKER_NAMES:
        known = ", ".join(RERANKER_NAMES)
        raise ValueError(f"unknown reranker {name!r}; choose one of: {known}.")
    return _ENTRIES[name].factory(top_n=top_n, **options)


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
    if name not in ANCHOR_NAMES:
        known = ", ".join(ANCHOR_NAMES)
        raise ValueError(f"unknown anchor {name!r}; choose one of: {known}.")
    return _ENTRIES[name].factory(top_n=top_n, **options)

"""LLMReranker: graded likelihood labels from a chat model, scored from the label
log-probabilities.

Each distinct (query, passage) pair of a call is one chat request at temperature 0 that
generates a single token: an answer code standing for *unlikely*, *likely* or *very likely* (see
:mod:`llamaindex_rerankers.llm.labels`). The probabilities of the codes among the top
log-probabilities of that token are renormalised over the label set and the score is the
expected relevance Σ p(label) · value(label) (Zhuang et al. 2023, "Beyond Yes and No").

This module holds the reranker's settings, their validation and serialisation, its prompts and
its live parts (client, cache, request limiter); the per-call engine (limits shared by all of
an instance's calls, deduplication, the cache reads and writes, the failure policy, the LLM
events for token counting) is :mod:`llamaindex_rerankers.llm.judging`, which returns each
call's judgements with its :class:`~llamaindex_rerankers.types.LLMUsage` (``report.llm``).
Passages labelled ``unknown`` get ``Judgement(score=None)``: :class:`BaseReranker` places them
after every judged passage, in retrieval order, with ``node.score = None``.

The module is longer than the ~600 lines we aim at because of what the class must hold: about
190 lines declare its 40 settings (each description is part of the JSON schema and the API
reference) and 70 make copies and pickles share or rebuild each live part.

Configuration round-trips: ``to_dict`` / ``from_dict`` / ``to_json`` / ``from_json`` keep every
setting, the prompts (string fields, also read and written by ``get_prompts`` /
``update_prompts``) and the cache as a spec (``"memory"``, a path, ``redis://...``, or
``None``; other URLs are refused). Secrets (``api_key``, ``default_headers``) are never written.

Copies and pickles (LlamaIndex and user code copy postprocessors; multiprocessing pickles them):

* ``copy.copy``, ``copy.deepcopy`` and ``model_copy`` (``deep=`` or not, ``update=`` or not)
  never fail. The copy has its own settings (deep: copied deeply), its own request limiter and
  last report, and *shares* the heavy parts: the cache, the LLM or client object given, the
  HTTP client while the endpoint settings are the same, the callback manager. A part whose
  setting the copy changes is made again from it: ``model_copy(update={"base_url": ...})``
  talks to the new endpoint, ``update={"cache": None}`` has no cache. The same holds for an
  assignment (``reranker.cache = ...``).
* ``pickle`` keeps the endpoint: the LLM of :meth:`LLMReranker.from_llm` (and a ``client=``)
  is pickled with the reranker, a ``base_url`` reranker comes back to the same URL. A client or
  LLM that cannot be pickled makes ``pickle.dumps`` raise a ``TypeError`` that says how to
  rebuild the reranker around it (``to_dict(exclude={'client'})`` + ``from_dict(..., llm=)``).
  An SQLite cache reopens its file; a memory cache comes back empty.

Token counting: with :meth:`LLMReranker.from_llm` the LLM emits its ``LLM`` events itself (to
its own callback manager); the reranker then adds none when its handlers are already the LLM's.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import pickle
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index.core.bridge.pydantic import (
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.prompts.mixin import PromptMixin, PromptMixinType

from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.injection import flag_injections
from llamaindex_rerankers.llm.cache import (
    JudgementCache,
    cache_spec,
    check_cache_spec,
    open_cache,
)
from llamaindex_rerankers.llm.codes import DEFAULT_SALT, draw_codes, relabel
from llamaindex_rerankers.llm.judging import JudgeSetup, event_manager, judge
from llamaindex_rerankers.llm.labels import DEFAULT_LABELS, Label, validate_labels
from llamaindex_rerankers.llm.llamaindex_client import LlamaIndexChatClient
from llamaindex_rerankers.llm.loop import run_async, run_sync
from llamaindex_rerankers.llm.openai_client import OpenAIChatClient
from llamaindex_rerankers.llm.prompts import (
    JUDGE_KEY,
    JUDGE_PROMPT,
    RETRY_KEY,
    RETRY_PROMPT,
    SYSTEM_KEY,
    SYSTEM_PROMPT,
    FewShotExample,
    check_prompts,
    prompt_key,
)
from llamaindex_rerankers.llm.tokens import TokenCounter
from llamaindex_rerankers.llm.types import ChatClient
from llamaindex_rerankers.types import Judgement, LLMUsage, RerankReport
from llamaindex_rerankers.windows import DEFAULT_WINDOW_OVERLAP, LongText, check_overlap

DEFAULT_LLM_MODEL = "gpt-4o-mini"

#: Guards the lazy creation of an instance's client and limiter: held for microseconds, so one
#: lock serves every instance.
_LAZY_LOCK = threading.Lock()

#: Prompt-mixin key -> the field that holds its template text.
_PROMPT_FIELDS = {SYSTEM_KEY: "system_prompt", JUDGE_KEY: "judge_prompt", RETRY_KEY: "retry_prompt"}


def default_namespace(identity: tuple[str, str]) -> str:
    """The cache namespace of an endpoint when none is given: ``"base_url|model"``.

    Example:
        >>> default_namespace(("http://127.0.0.1:8080/v1", "m"))
        'http://127.0.0.1:8080/v1|m'
    """
    base_url, model = identity
    return f"{base_url}|{model}"


class LLMReranker(BaseReranker, PromptMixin):
    """Rerank nodes with an LLM judging each passage *unlikely* / *likely* / *very likely*.

    Scores are expected relevance from the label log-probabilities of one generated token, in
    [0, 1]. Output metadata per node: ``rerank_label`` (most probable label, or ``unknown``),
    ``rerank_score``, ``rerank_label_probs`` (label → probability), ``rerank_source``
    (``"logprobs"``, ``"text"`` or ``"unknown"``), ``rerank_truncated``, ``rerank_cached`` and
    ``rerank_injection_suspected`` and, when it is true, ``rerank_injection_signals`` (with
    ``detect_injection``).

    Prompt-injection defences (:mod:`llamaindex_rerankers.llm.injection`, measured by
    ``benchmarks/bench_injection.py``): ``random_codes`` (answer codes drawn per query),
    ``sandwich`` (the instruction repeated after the passage), ``datamark`` (spotlighting),
    ``detect_injection`` / ``suspected_penalty`` (flag instruction-like passages and, by
    default, demote them after every clean one, whatever the fusion with the first stage).
    Each one that changes the prompt is part of the cache key.
    Figures per call (LLM calls, tokens, cache hits, repeats, failures, retries, parse failures)
    are in the call's ``report.llm`` and in the end event.

    The endpoint is an OpenAI-compatible server (``base_url``, ``model``), any LlamaIndex
    ``LLM`` (:meth:`from_llm`), or any :class:`ChatClient` (``client=``).

    The HTTP settings (``base_url``, ``api_key``, ``default_headers``, ``timeout``,
    ``max_retries``, ``backoff_base``, ``backoff_max``) stay flat fields rather than a nested
    endpoint config: flat is how they are written and read everywhere already (``to_dict``
    keys in saved configurations and benchmark results, ``model_copy(update={"base_url":
    ...})``, which pydantic applies without validation, so a nested config would need an alias
    layer there and in assignment, and some 90 keyword arguments across the registry, the CLI,
    ``serve``, benchmarks and tests). They are grouped where grouping does work: :attr:`client`
    builds one :class:`OpenAIChatClient` from them and builds it again only when one changes.

    Calibration and fusion with the first stage: label probabilities are calibrated per query
    against a content-free passage (``calibration``, :mod:`llamaindex_rerankers.llm.calibration`),
    and the final score is (1 − w) · LLM score + w · rank prior, the rank prior falling linearly
    from 1 for the first retrieved candidate to 1/K for the last. ``retrieval_weight="auto"``
    (default) chooses w per query from the judge's uncertainty
    (:func:`~llamaindex_rerankers.scoring.fusion_weight`): a weak judge such as SmolLM2-135M
    falls back to the first-stage order, a sure one ranks alone.

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> reranker = LLMReranker(model="gpt-4o-mini", top_n=2)
        >>> nodes = [NodeWithScore(node=TextNode(text=t), score=1.0)
        ...          for t in ["Prune apple trees in late winter.", "Apple stock fell 2%."]]
        >>> nodes, report = reranker.rerank(nodes, "prune apple trees")  # doctest: +SKIP
    """

    model: str = Field(
        default=DEFAULT_LLM_MODEL,
        description="Chat model name sent to the endpoint (for llama.cpp: the served GGUF path).",
    )
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint root ending in /v1; None uses OPENAI_BASE_URL or "
        "OpenAI's API.",
    )
    api_key: str | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description="API key; None uses OPENAI_API_KEY (a placeholder for a local base_url). "
        "Never serialised or shown.",
    )
    default_headers: dict[str, str] | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description="Extra HTTP headers for every request. Never serialised or shown (they "
        "often carry credentials).",
    )
    labels: tuple[Label, ...] = Field(
        default=DEFAULT_LABELS,
        description="Graded labels (name, answer code, value in [0, 1]); default unlikely (A) = "
        "0, likely (B) = 0.5, very likely (C) = 1. Codes must differ at their first token.",
    )
    examples: tuple[FewShotExample, ...] = Field(
        default=(),
        description="Worked examples (query, passage, label name) shown as earlier chat turns; "
        "none by default (prompt v2); prompts.FEW_SHOT_EXAMPLES are prompt v1's. Part of the "
        "cache key.",
    )
    system_prompt: str = Field(
        default=SYSTEM_PROMPT,
        description="System message template (prompt key 'system_prompt'); may use {choices} "
        "and {codes}.",
    )
    judge_prompt: str = Field(
        default=JUDGE_PROMPT,
        description="User message template (prompt key 'judge_prompt'); must use {query} and "
        "{passage}, may use {choices} and {codes}.",
    )
    retry_prompt: str = Field(
        default=RETRY_PROMPT,
        description="Appended to the user message when an answer could not be read (prompt key "
        "'retry_prompt').",
    )
    use_logprobs: bool = Field(
        default=True,
        description="Ask for log-probabilities and score by expected relevance; False parses "
        "the answer text only (score = the label's value).",
    )
    top_logprobs: int = Field(
        default=10, ge=1, le=20, description="Alternatives per token asked for (OpenAI allows 20)."
    )
    max_tokens: int = Field(
        default=1, ge=1, description="Tokens generated per judgement when logprobs are used."
    )
    text_max_tokens: int = Field(
        default=8,
        ge=1,
        description="Tokens generated per judgement when the label is parsed from the text.",
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        description="Requests in flight at once for this instance, across all its concurrent "
        "calls (threads and tasks).",
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds per HTTP attempt.")
    max_retries: int = Field(
        default=4,
        ge=0,
        description="Retries per judgement on 429, 5xx, timeouts, connection "
        "errors (exponential backoff with full jitter, honouring Retry-After).",
    )
    backoff_base: float = Field(
        default=0.5, ge=0, description="First retry waits up to this many seconds (doubling)."
    )
    backoff_max: float = Field(
        default=20.0, ge=0, description="Longest wait between retries, Retry-After included."
    )
    deadline: float | None = Field(
        default=None,
        gt=0,
        description="Seconds allowed for one whole rerank call, the wait for a free request "
        "slot included; judgements not done by then are labelled unknown. None: no deadline.",
    )
    query_max_tokens: int | None = Field(
        default=128, ge=1, description="Token budget of the query; longer queries are cut."
    )
    passage_max_tokens: int | None = Field(
        default=512,
        ge=1,
        description="Token budget of each passage; longer passages are cut and flagged "
        "rerank_truncated. Counted with tiktoken for OpenAI models, chars/4 otherwise.",
    )
    long_text: LongText = Field(
        default="truncate",
        description="What to do with a passage longer than passage_max_tokens: 'truncate' "
        "judges its beginning (flagged rerank_truncated); 'windows' judges overlapping windows "
        "that each fit and keeps the best (MaxP), at one request per distinct window.",
    )
    window_overlap: float = Field(
        default=DEFAULT_WINDOW_OVERLAP,
        ge=0,
        description="Tokens shared by consecutive windows (long_text='windows'): a fraction in "
        "[0, 1) of passage_max_tokens, or a whole number of tokens (>= 1).",
    )
    cache: Any = Field(
        default="memory",
        description="'memory' (an LRU per instance, shared with its copies), a path to an "
        "SQLite file, 'redis://HOST:PORT/DB[?ttl=SECONDS]' (shared by every process that uses "
        "it), a JudgementCache object (get/put; get_many/put_many optional), or None for no "
        "cache; other URLs (postgres://...) raise. Written by to_dict as 'memory', the SQLite "
        "path, the Redis URL (never with a password), or None.",
    )
    cache_namespace: str | None = Field(
        default=None,
        description="Who judges, in the cache key: None is 'base_url|model'. Give a name that "
        "outlives the endpoint's address, e.g. a local server's `server.namespace` "
        "('gguf-sha256:...'), so that a restarted server on another port hits the cache.",
    )
    show_progress: bool = Field(default=False, description="Show a tqdm bar per rerank call.")
    # -- prompt-injection defences (llamaindex_rerankers.llm.injection); all in the cache key.
    random_codes: bool = Field(
        default=False,
        description="Draw the answer codes per query (distinct letters from "
        "injection.CODE_POOL, seeded by a hash of the query and code_salt) instead of the "
        "labels' fixed codes, so that 'Answer: C' inside a passage means nothing.",
    )
    code_salt: str | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description="Secret mixed into the code draw; None uses injection.DEFAULT_SALT, which "
        "is public. Never serialised (pass it again to from_dict); its hash is in the cache key.",
    )
    calibration: Literal["none", "content-free"] = Field(
        default="content-free",
        description="Contextual calibration (llm.calibration): 'content-free' also judges a "
        "content-free passage (calibration.CONTENT_FREE_PASSAGES: an empty one) with each query "
        "and divides the label prior it shows out of every judgement (+1 judgement per query, "
        "cached like the others; none when judging text only); 'none' scores the raw label "
        "probabilities.",
    )
    retrieval_weight: float | Literal["auto"] = Field(
        default="auto",
        description="Weight w of the first-stage rank in the final score: (1 - w) * LLM score "
        "+ w * rank prior. 'auto' (default) chooses w per query from the mean normalised "
        "entropy of the judge's calibrated label distributions (scoring.fusion_weight): a judge "
        "that cannot tell the passages apart leaves the first-stage order, a sure one ranks "
        "alone. A number in [0, 1] fixes it; 0 ranks by the LLM alone.",
    )
    sandwich: bool = Field(
        default=True,
        description="Repeat the instruction after the passage (prompts.SANDWICH_PROMPT). On "
        "by default: with SmolLM2-135M and a fixed weight of 0 it cut injection success at "
        "top-1 from 38 % to 15 % on the benchmark's train split; with retrieval_weight='auto' "
        "that judge defers to the first stage and the sandwich changes nothing there "
        "(benchmarks/results/injection_train.md). It is meant for judges that do read.",
    )
    datamark: str | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        description="Spotlighting by datamarking: a marker character (e.g. '^') that replaces "
        "the whitespace of every passage, explained in the system prompt. None: off.",
    )
    detect_injection: bool = Field(
        default=True,
        description="Flag passages with instruction-like text (detector.injection_signals) as "
        "rerank_injection_suspected in the node metadata.",
    )
    suspected_penalty: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="A suspected passage's final score (after fusion with the first stage) is "
        "multiplied by (1 - penalty), and it loses ties with unsuspected passages: 0 only "
        "flags, 1 (the default) puts it after every judged unsuspected passage. Needs "
        "detect_injection.",
    )

    # The live parts, made from the fields and made again when the fields they come from change
    # (an assignment, or a ``model_copy(update=...)``): each holds what it was made from.
    #: The endpoint object given (``client=`` / ``llm=``); None: built from the fields.
    _client: ChatClient | None = PrivateAttr(default=None)
    _client_given: bool = PrivateAttr(default=False)
    #: (endpoint settings, OpenAIChatClient) when no endpoint object was given.
    _built_client: tuple[tuple[Any, ...], ChatClient] | None = PrivateAttr(default=None)
    #: (the ``cache`` setting, the cache made from it).
    _cache_state: tuple[Any, JudgementCache | None] | None = PrivateAttr(default=None)
    #: (model, its token counter).
    _counter_state: tuple[str, TokenCounter] | None = PrivateAttr(default=None)
    _limiter_state: tuple[Any, int, asyncio.Semaphore] | None = PrivateAttr(default=None)

    def __init__(self, *, client: ChatClient | None = None, llm: Any = None, **data: Any) -> None:
        """Args are the fields above, plus one optional endpoint object: ``client`` (any
        :class:`ChatClient`) or ``llm`` (any LlamaIndex ``LLM``; see :meth:`from_llm`)."""
        if client is not None and llm is not None:
            raise ValueError("pass client= or llm=, not both.")
        if llm is not None:
            client = LlamaIndexChatClient(llm)
            data.setdefault("model", client.identity[1])
        super().__init__(**data)
        self._client = client
        self._client_given = client is not None
        self._current_cache()  # made now: a bad path fails here, not at the first call

    # -- copies and pickles ---------------------------------------------------------------
    #
    # LlamaIndex and user code copy postprocessors. A copy has settings of its own (fields) and
    # its own request limiter and last report, and shares the heavy parts: the cache, the
    # endpoint object given (an LLM, a client), the HTTP client while the endpoint settings
    # are the same, the callback manager. A part whose setting the copy changes is made again
    # from the copy's setting at its first use.

    def __copy__(self) -> LLMReranker:
        new = super().__copy__()
        new._become_new_instance()
        return new

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> LLMReranker:
        memo = {} if memo is None else memo
        # Deep-copy the settings only; objects in fields that are live parts are shared (a
        # deep copy of a cache or a callback manager would copy locks, connections, handlers).
        for part in (self.cache, self.callback_manager):
            if part is not None and not isinstance(part, (str, Path)):
                memo[id(part)] = part
        new = self.__copy__()  # the private state is shared, as for a shallow copy
        object.__setattr__(new, "__dict__", copy.deepcopy(self.__dict__, memo))
        return new

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> LLMReranker:
        """A copy with ``update`` applied (not validated, as in pydantic); see the comment
        above for what a copy shares. Pydantic's own ``deep=True`` with an ``update``
        deep-copies the live parts too, and fails on their locks."""
        source = copy.deepcopy(self) if deep and update else self
        return super(LLMReranker, source).model_copy(update=update, deep=deep and not update)

    def _become_new_instance(self) -> None:
        """After a copy: a limiter and a last report of its own."""
        self._limiter_state = None
        self._instance_id = self.__private_attributes__["_instance_id"].default_factory()  # type: ignore[call-arg,misc]

    def __getstate__(self) -> dict[str, Any]:
        """The fields and the endpoint object given; the live parts are made again when
        loaded (an SQLite cache reopens its file, a memory cache comes back empty).

        Raises:
            TypeError: the client or LLM given cannot be pickled; the message says how to
                rebuild the reranker around it instead.
        """
        endpoint = self._client if self._client_given else None
        if endpoint is not None:
            try:
                pickle.dumps(endpoint)
            except Exception as exc:
                what = endpoint.llm if isinstance(endpoint, LlamaIndexChatClient) else endpoint
                raise TypeError(
                    f"{self.class_name()} cannot be pickled: the {type(what).__name__} it "
                    f"judges with cannot be ({exc}). Pickle its settings instead, "
                    "config = reranker.to_dict(exclude={'client'}), and pass the object again "
                    "where it is loaded: LLMReranker.from_dict(config, llm=...) or "
                    "from_dict(config, client=...)."
                ) from exc
        return {
            "__dict__": dict(self.__dict__),
            "__pydantic_fields_set__": set(self.__pydantic_fields_set__),
            "endpoint": endpoint,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        endpoint = state.get("endpoint")
        given = {"client": endpoint} if endpoint is not None else {}
        self.__init__(**state["__dict__"], **given)  # type: ignore[misc]
        object.__setattr__(self, "__pydantic_fields_set__", set(state["__pydantic_fields_set__"]))

    @classmethod
    def from_llm(cls, llm: Any, **settings: Any) -> LLMReranker:
        """A reranker judging with any LlamaIndex ``LLM``.

        Log-probabilities are used where the LLM class returns them (LlamaIndex's ``OpenAI`` and
        ``OpenAILike`` as chat models: the scores are expected relevance); with any other LLM
        the label is read from the answer text. The cache namespace defaults to the LLM's class
        and model name; ``model`` defaults to the LLM's model name (it picks the tokenizer of
        the token budgets). The LLM's own settings (retries, timeout) apply to its requests.

        What the LLM needs: an ``achat`` (every LlamaIndex LLM has one) and, to bound what a
        judgement generates (1 token with logprobs, ``text_max_tokens`` otherwise), a
        ``max_tokens`` / ``max_new_tokens`` / ``max_output_tokens`` field: the reranker judges
        with a copy of the LLM with that field set, whatever the LLM's own value. A class
        without one is warned about (:class:`UserWarning`): limit its output yourself. For an
        ``OpenAILike`` endpoint pass ``is_chat_model=True`` (its default, False, sends the
        prompt to ``/v1/completions`` as plain text without logprobs; warned about too).
        Token counting: the LLM's ``callback_manager`` gets its ``LLM`` events.

        Example:
            >>> from llama_index.llms.openai_like import OpenAILike  # doctest: +SKIP
            >>> llm = OpenAILike(model="m", api_base="http://127.0.0.1:8080/v1",
            ...                  api_key="none", is_chat_model=True)  # doctest: +SKIP
            >>> reranker = LLMReranker.from_llm(llm, top_n=3)  # doctest: +SKIP
        """
        return cls(llm=llm, **settings)

    # -- validation -----------------------------------------------------------------------

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: tuple[Label, ...]) -> tuple[Label, ...]:
        return validate_labels(value)

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value: Any) -> Any:
        return check_cache_spec(value)  # a URL other than redis:// is not a path

    @field_validator("window_overlap")
    @classmethod
    def _check_window_overlap(cls, value: float) -> float:
        return check_overlap(value)

    @model_validator(mode="after")
    def _check_examples_and_prompts(self) -> LLMReranker:
        names = {lab.name for lab in self.labels}
        for ex in self.examples:
            if ex.label not in names:
                raise ValueError(
                    f"few-shot example label {ex.label!r} is not one of the labels "
                    f"{sorted(names)}; fix examples= or pass examples=()"
                )
        check_prompts(self._templates())
        return self

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """Every setting as JSON-safe data (see :meth:`BaseReranker.to_dict`); the cache is
        written as ``"memory"``, its SQLite path, or ``None``.

        Raises:
            ValueError: the cache is an object of your own, or the endpoint was given as an
                object (``client=`` / ``llm=``): neither can be written. The message says how
                to write the rest and pass the object again to ``from_dict``.

        Example:
            >>> config = LLMReranker(model="m", cache=None, top_n=3).to_dict()
            >>> LLMReranker.from_dict(config).top_n
            3
        """
        exclude = set(kwargs.pop("exclude", None) or ())
        if self._client_given and "client" not in exclude:
            raise ValueError(
                f"{self.class_name()}.to_dict() cannot write the chat client or LLM object it "
                f"was given ({type(self._client).__name__}). Write the other settings with "
                "to_dict(exclude={'client'}) and pass the object again: "
                "LLMReranker.from_dict(config, llm=...) or from_dict(config, client=...)."
            )
        if "cache" not in exclude:
            cache_spec(self.cache)  # raises for a cache that cannot be written
        exclude.discard("client")
        return super().to_dict(exclude=exclude, **kwargs)

    @field_serializer("cache")
    def _serialize_cache(self, value: Any) -> str | None:
        return cache_spec(value)

    @classmethod
    def class_name(cls) -> str:
        return "LLMReranker"

    # -- properties -----------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def client(self) -> ChatClient:
        """The chat client (an :class:`OpenAIChatClient` unless one was given)."""
        given = self._client
        if given is not None:
            return given
        settings = (
            self.model, self.base_url, self.api_key,
            tuple(sorted((self.default_headers or {}).items())),
            self.timeout, self.max_retries, self.backoff_base, self.backoff_max,
        )  # fmt: skip
        with _LAZY_LOCK:
            held = self._built_client
            if held is None or held[0] != settings:
                # Made again when a setting changed: an assignment, or a copy of this reranker
                # pointed elsewhere (model_copy(update={"base_url": ...})).
                held = (settings, OpenAIChatClient(
                    model=self.model,
                    base_url=self.base_url,
                    api_key=self.api_key,
                    default_headers=self.default_headers,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    backoff_base=self.backoff_base,
                    backoff_max=self.backoff_max,
                ))  # fmt: skip
                self._built_client = held
            return held[1]

    @property
    def judgement_cache(self) -> JudgementCache | None:
        """The cache in use (``None`` when caching is off)."""
        return self._current_cache()

    def _current_cache(self) -> JudgementCache | None:
        """The cache made from the ``cache`` setting (again when the setting changed)."""
        spec = self.cache
        held = self._cache_state
        if held is not None and _same_spec(held[0], spec):
            return held[1]
        made = open_cache(spec)  # outside the lock: it may open a file
        with _LAZY_LOCK:
            held = self._cache_state
            if held is None or not _same_spec(held[0], spec):
                held = (spec, made)
                self._cache_state = held
            return held[1]

    @property
    def namespace(self) -> str:
        """The judge's name in cache keys: ``cache_namespace``, else ``"base_url|model"``."""
        return self.cache_namespace or default_namespace(self.client.identity)

    @property
    def prompt_key(self) -> str:
        """The prompt part of every cache key (version + hash of prompts, labels, examples, and
        the scoring mode: a text-mode judgement is a hard label, not label probabilities)."""
        return self._prompt_key(self._templates())

    def _prompt_key(self, templates: Any) -> str:
        key = prompt_key(templates, self.labels, self.examples, self._defences())
        return key if self.use_logprobs else key + ":text"

    def _defences(self) -> str:
        """The injection defences that change what the model sees, for the cache key ("" with
        none, so that keys from before they existed stay valid)."""
        parts = []
        if self.random_codes:
            salt = self.code_salt if self.code_salt is not None else DEFAULT_SALT
            parts.append(f"codes={hashlib.sha256(salt.encode()).hexdigest()[:16]}")
        if self.sandwich:
            parts.append("sandwich")
        if self.datamark is not None:
            parts.append(f"datamark={self.datamark}")
        return ",".join(parts)

    def _labels_for(self, query: str) -> tuple[Label, ...]:
        """The labels of one query: the configured ones, or with codes drawn per query."""
        if not self.random_codes:
            return self.labels
        salt = self.code_salt if self.code_salt is not None else DEFAULT_SALT
        return relabel(self.labels, draw_codes(query, salt, len(self.labels)))

    def _flag_injections(self, texts: Sequence[str], judged: list[Judgement]) -> list[Judgement]:
        """:func:`~llamaindex_rerankers.injection.flag_injections` when ``detect_injection``
        is on: the base (or a cascade around this reranker) takes ``suspected_penalty`` off the
        final score, after fusion, so that deferring to the first-stage order cannot undo it."""
        if not self.detect_injection:
            return judged
        return flag_injections(texts, judged, self.suspected_penalty)

    def close(self) -> None:
        """Close the client's HTTP connections (the next call opens new ones). Optional: an
        instance that lives as long as the process never needs it."""
        held = self._built_client
        aclose = getattr(self._client or (held[1] if held else None), "aclose", None)
        if aclose is not None:
            run_sync(aclose())

    # -- prompt mixin ---------------------------------------------------------------------

    def _templates(self) -> dict[str, BasePromptTemplate]:
        return {key: PromptTemplate(getattr(self, name)) for key, name in _PROMPT_FIELDS.items()}

    def _get_prompts(self) -> dict[str, BasePromptTemplate]:
        return self._templates()

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    def _update_prompts(self, prompts: Mapping[str, BasePromptTemplate]) -> None:
        texts = {name: getattr(self, name) for name in _PROMPT_FIELDS.values()}
        for key, template in prompts.items():
            if key not in _PROMPT_FIELDS:
                continue
            text = getattr(template, "template", None)
            if not isinstance(text, str):
                raise ValueError(
                    f"{key} must be a string template (PromptTemplate('...')), got a "
                    f"{type(template).__name__}: the reranker keeps its prompts as text so that "
                    "they are saved with to_dict()."
                )
            texts[_PROMPT_FIELDS[key]] = text
        check_prompts({key: PromptTemplate(texts[name]) for key, name in _PROMPT_FIELDS.items()})
        for name, text in texts.items():
            setattr(self, name, text)

    # -- judging (the engine is llm.judging) ----------------------------------------------

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        """Runs the judging on the background loop and waits for it; works in any thread,
        with or without a running event loop (Jupyter, async web handlers)."""
        judged, report.llm = run_sync(self._judge_async(query, texts))
        return self._flag_injections(texts, judged)

    async def _ajudge(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        """Awaits the judging on the background loop; cancelling the caller cancels it. The
        detector (milliseconds per passage) runs in a worker thread, off the caller's loop."""
        judged, report.llm = await run_async(self._judge_async(query, texts))
        return await asyncio.to_thread(self._flag_injections, texts, judged)

    async def _judge_async(
        self, query: str, texts: Sequence[str]
    ) -> tuple[list[Judgement], LLMUsage]:
        """On the background loop: this call's judgements and usage."""
        return await judge(self._setup(), query, texts)

    def _setup(self) -> JudgeSetup:
        """What one call judges with, read once (on the background loop: the limiter is
        bound to it)."""
        client = self.client
        templates = self._templates()
        return JudgeSetup(
            owner=self.class_name(),
            client=client,
            cache=self._current_cache(),
            limiter=self._limiter(),
            counter=self._token_counter(),
            events=event_manager(self.callback_manager, client),
            templates=templates,
            labels_for=self._labels_for,
            examples=self.examples,
            namespace=self.cache_namespace or default_namespace(client.identity),
            prompt_key=self._prompt_key(templates),
            concurrency=self.concurrency,
            deadline=self.deadline,
            query_max_tokens=self.query_max_tokens,
            passage_max_tokens=self.passage_max_tokens,
            long_text=self.long_text,
            window_overlap=self.window_overlap,
            use_logprobs=self.use_logprobs,
            calibration=self.calibration,
            max_tokens=self.max_tokens,
            text_max_tokens=self.text_max_tokens,
            top_logprobs=self.top_logprobs,
            sandwich=self.sandwich,
            datamark=self.datamark,
            show_progress=self.show_progress,
        )

    def _limiter(self) -> asyncio.Semaphore:
        """The instance's semaphore (on the background loop; renewed if the loop or
        ``concurrency`` changed)."""
        loop = asyncio.get_running_loop()
        with _LAZY_LOCK:
            held = self._limiter_state
            if held is None or held[0] is not loop or held[1] != self.concurrency:
                held = (loop, self.concurrency, asyncio.Semaphore(self.concurrency))
                self._limiter_state = held
            return held[2]

    def _token_counter(self) -> TokenCounter:
        model = self.model
        held = self._counter_state
        if held is None or held[0] != model:
            held = (model, TokenCounter.for_model(model))
            self._counter_state = held
        return held[1]


def _same_spec(made_from: Any, spec: Any) -> bool:
    """Whether a cache made from ``made_from`` is the one ``spec`` asks for: the same object,
    or an equal string or path."""
    if made_from is spec:
        return True
    return type(made_from) is type(spec) and isinstance(spec, (str, Path)) and made_from == spec

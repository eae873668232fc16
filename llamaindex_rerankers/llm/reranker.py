"""LLMReranker: graded likelihood labels from an OpenAI-compatible chat model, scored from the
label log-probabilities.

Each (query, passage) pair is one chat request at temperature 0 that generates a single token:
an answer code standing for *unlikely*, *likely* or *very likely* (see
:mod:`llamaindex_rerankers.llm.labels`). The probabilities of the codes among the top
log-probabilities of that token are renormalised over the label set and the score is the
expected relevance Σ p(label) · value(label) (Zhuang et al. 2023, "Beyond Yes and No").

Failure policy (a node is never dropped):

* Endpoint without logprobs: the label is parsed from the answer text and the score is its
  value (``rerank_source="text"``). The process switches an endpoint to text mode only on clear
  evidence (:mod:`llamaindex_rerankers.llm.capabilities`), with a WARNING.
* Unparseable answer: one retry with a stricter instruction, then the label ``unknown``.
* Failed request (retries spent, deadline reached): the label ``unknown``; failures are counted
  in the report and logged once per call.

Passages labelled ``unknown`` get ``Judgement(score=None)``: :class:`BaseReranker` places them
after every judged passage, in retrieval order, with ``node.score = 0.0``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core.bridge.pydantic import (
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.prompts.mixin import PromptMixin, PromptMixinType

from llamaindex_rerankers.base import BaseReranker
from llamaindex_rerankers.llm.cache import (
    CachedJudgement,
    JudgementCache,
    MemoryCache,
    SQLiteCache,
    cache_key,
)
from llamaindex_rerankers.llm.capabilities import logprobs_supported
from llamaindex_rerankers.llm.labels import (
    DEFAULT_LABELS,
    UNKNOWN,
    Label,
    expected_relevance,
    most_probable,
    parse_text_label,
    probs_from_tokens,
    validate_labels,
)
from llamaindex_rerankers.llm.openai_client import OpenAIChatClient
from llamaindex_rerankers.llm.prompts import (
    DEFAULT_EXAMPLES,
    FewShotExample,
    check_prompts,
    default_prompts,
    prompt_key,
    render_messages,
)
from llamaindex_rerankers.llm.tokens import TokenCounter
from llamaindex_rerankers.llm.types import ChatClient, ChatClientError, ChatResult
from llamaindex_rerankers.types import Judgement, LLMUsage, RerankReport

logger = logging.getLogger(__name__)

DEFAULT_LLM_MODEL = "gpt-4o-mini"

#: Counters written to ``report.counters`` on every call (all start at 0).
COUNTERS = (
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "cache_hits",
    "failures",
    "retries",
    "parse_failures",
    "truncated",
    "unknown",
)


@dataclass
class _CallState:
    """Per-call working state shared by the concurrent judgements of one rerank call."""

    query: str
    query_truncated: bool
    prompt_key: str
    identity: tuple[str, str]
    deadline: float | None
    semaphore: asyncio.Semaphore
    counters: dict[str, float]
    errors: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class LLMReranker(BaseReranker, PromptMixin):
    """Rerank nodes with an LLM judging each passage *unlikely* / *likely* / *very likely*.

    Scores are expected relevance from the label log-probabilities of one generated token, in
    [0, 1]. Output metadata per node: ``rerank_label`` (most probable label, or ``unknown``),
    ``rerank_score``, ``rerank_label_probs`` (label → probability), ``rerank_source``
    (``"logprobs"``, ``"text"`` or ``"unknown"``), ``rerank_truncated`` and ``rerank_cached``.
    Figures per call (LLM calls, tokens, cache hits, failures, retries, parse failures) are in
    ``reranker.last_report.counters`` and in the end event.

    Fusion with the first stage (``retrieval_weight`` = w, from the base): final score =
    (1 − w) · LLM score + w · rank prior, the rank prior falling linearly from 1 for the first
    retrieved candidate to 1/K for the last. With a strong model keep w = 0; with a weak one
    (SmolLM2-135M) w ≈ 0.3-0.5 keeps reranking from hurting.

    Example:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> reranker = LLMReranker(model="gpt-4o-mini", top_n=2)
        >>> nodes = [NodeWithScore(node=TextNode(text=t), score=1.0)
        ...          for t in ["Prune apple trees in late winter.", "Apple stock fell 2%."]]
        >>> out = reranker.postprocess_nodes(nodes, query_str="prune apple trees")  # doctest: +SKIP
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
        default=None, exclude=True, repr=False, description="Extra HTTP headers for every request."
    )
    labels: tuple[Label, ...] = Field(
        default=DEFAULT_LABELS,
        description="Graded labels (name, answer code, value in [0, 1]); default unlikely (A) = "
        "0, likely (B) = 0.5, very likely (C) = 1. Codes must differ at their first token.",
    )
    examples: tuple[FewShotExample, ...] = Field(
        default=DEFAULT_EXAMPLES,
        description="Worked examples (query, passage, label name) shown as earlier chat turns; "
        "() for none. Part of the cache key.",
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
    concurrency: int = Field(default=8, ge=1, description="Judgements in flight at once.")
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
        description="Seconds allowed for one whole rerank call; judgements not done by then are "
        "labelled unknown. None: no deadline.",
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
    cache: Any = Field(
        default="memory",
        description="'memory' (an LRU per instance), a path to an SQLite file, an object with "
        "get/put (JudgementCache), or None for no cache.",
    )
    show_progress: bool = Field(default=False, description="Show a tqdm bar per rerank call.")

    _client: ChatClient | None = PrivateAttr(default=None)
    _cache: JudgementCache | None = PrivateAttr(default=None)
    _prompts: dict[str, BasePromptTemplate] = PrivateAttr(default_factory=default_prompts)
    _counter: TokenCounter | None = PrivateAttr(default=None)

    def __init__(self, *, client: ChatClient | None = None, **data: Any) -> None:
        """Args are the fields above; ``client`` replaces the OpenAI client (any ChatClient)."""
        super().__init__(**data)
        self._client = client
        self._cache = _make_cache(self.cache)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: tuple[Label, ...]) -> tuple[Label, ...]:
        return validate_labels(value)

    @model_validator(mode="after")
    def _check_examples(self) -> LLMReranker:
        names = {lab.name for lab in self.labels}
        for ex in self.examples:
            if ex.label not in names:
                raise ValueError(
                    f"few-shot example label {ex.label!r} is not one of the labels "
                    f"{sorted(names)}; fix examples= or pass examples=()"
                )
        return self

    @field_serializer("cache")
    def _serialize_cache(self, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return str(value) if isinstance(value, Path) else repr(value)

    @classmethod
    def class_name(cls) -> str:
        return "LLMReranker"

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def client(self) -> ChatClient:
        """The chat client (an :class:`OpenAIChatClient` unless one was passed)."""
        if self._client is None:
            self._client = OpenAIChatClient(
                model=self.model,
                base_url=self.base_url,
                api_key=self.api_key,
                default_headers=self.default_headers,
                timeout=self.timeout,
                max_retries=self.max_retries,
                backoff_base=self.backoff_base,
                backoff_max=self.backoff_max,
            )
        return self._client

    @property
    def judgement_cache(self) -> JudgementCache | None:
        """The cache in use (``None`` when caching is off)."""
        return self._cache

    # -- prompt mixin ---------------------------------------------------------------------

    def _get_prompts(self) -> dict[str, BasePromptTemplate]:
        return dict(self._prompts)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    def _update_prompts(self, prompts: dict[str, BasePromptTemplate]) -> None:
        merged = {**self._prompts, **{k: v for k, v in prompts.items() if k in self._prompts}}
        check_prompts(merged)
        self._prompts = merged

    # -- judging --------------------------------------------------------------------------

    def _judge(self, query: str, texts: Sequence[str], report: RerankReport) -> list[Judgement]:
        """Runs :meth:`_ajudge` on a fresh event loop; in a worker thread if a loop is running
        here (Jupyter, async web handlers), so the sync API works everywhere."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._ajudge_and_close(query, texts, report))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(asyncio.run, self._ajudge_and_close(query, texts, report))
            return future.result()

    async def _ajudge_and_close(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        try:
            return await self._ajudge(query, texts, report)
        finally:
            # The loop ends with this call: close its HTTP connections.
            aclose = getattr(self._client, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _ajudge(
        self, query: str, texts: Sequence[str], report: RerankReport
    ) -> list[Judgement]:
        """Judge ``texts`` concurrently, at most ``concurrency`` requests in flight."""
        started = time.monotonic()
        counter = self._token_counter()
        query_cut, query_truncated = counter.truncate(query, self.query_max_tokens)
        counters: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        state = _CallState(
            query=query_cut,
            query_truncated=query_truncated,
            prompt_key=prompt_key(self._prompts, self.labels, self.examples),
            identity=self.client.identity,
            deadline=None if self.deadline is None else time.monotonic() + self.deadline,
            semaphore=asyncio.Semaphore(self.concurrency),
            counters=counters,
        )
        bar = _progress(len(texts), self.show_progress)
        try:
            judgements = await asyncio.gather(
                *(self._judge_one(state, text, counter, bar) for text in texts)
            )
        finally:
            if bar is not None:
                bar.close()
        report.llm = LLMUsage(
            judgements=len(texts),
            max_in_flight=state.max_in_flight,
            seconds=time.monotonic() - started,
            **{k: int(v) for k, v in counters.items()},
        )
        if state.errors:
            logger.warning(
                "%s: %d of %d judgements failed and were labelled %r (kept after the judged "
                "nodes); last error: %s",
                self.class_name(), len(state.errors), len(texts), UNKNOWN, state.errors[-1],
            )  # fmt: skip
        if counters["parse_failures"]:
            logger.info(
                "%s: %d answers could not be parsed (%d nodes labelled %r)",
                self.class_name(), counters["parse_failures"], counters["unknown"], UNKNOWN,
            )  # fmt: skip
        return list(judgements)

    def _token_counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = TokenCounter.for_model(self.model)
        return self._counter

    async def _judge_one(
        self, state: _CallState, text: str, counter: TokenCounter, bar: Any
    ) -> Judgement:
        passage, passage_truncated = counter.truncate(text, self.passage_max_tokens)
        truncated = passage_truncated or state.query_truncated
        state.counters["truncated"] += int(passage_truncated)
        base, model = state.identity
        key = cache_key(model, base, state.prompt_key, state.query, passage)
        try:
            cached = self._cache.get(key) if self._cache is not None else None
            if cached is not None:
                state.counters["cache_hits"] += 1
                return self._scored(cached, truncated, cached_hit=True)
            async with state.semaphore:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                try:
                    result = await self._ask(state, passage)
                except _Failed as exc:
                    state.counters["unknown"] += 1
                    return _unknown(truncated, str(exc))
                finally:
                    state.in_flight -= 1
            if result is None:
                state.counters["unknown"] += 1
                return _unknown(truncated, "unparseable answer")
            if self._cache is not None:
                self._cache.put(key, result)
            return self._scored(result, truncated, cached_hit=False)
        finally:
            if bar is not None:
                bar.update(1)

    async def _ask(self, state: _CallState, passage: str) -> CachedJudgement | None:
        """One judgement: the first answer, and a stricter retry if it cannot be read.

        Returns ``None`` when neither answer gives a label; raises :class:`_Failed` when a
        request fails for good.
        """
        for retry in (False, True):
            messages = render_messages(
                self._prompts, state.query, passage, self.labels, retry=retry,
                examples=self.examples,
            )  # fmt: skip
            parsed = self._read(await self._chat(state, messages))
            if parsed is not None:
                return parsed
            state.counters["parse_failures"] += 1
        return None

    async def _chat(self, state: _CallState, messages: list[dict[str, str]]) -> ChatResult:
        want = self.use_logprobs and logprobs_supported(state.identity) is not False
        result = await self._request(state, messages, logprobs=want)
        if (
            want
            and result.tokens is None
            and self.max_tokens < self.text_max_tokens
            and parse_text_label(result.text, self.labels) is None
        ):
            # The answer came without logprobs and a one-token answer may be cut short: ask
            # again in text mode.
            result = await self._request(state, messages, logprobs=False)
        return result

    async def _request(
        self, state: _CallState, messages: list[dict[str, str]], *, logprobs: bool
    ) -> ChatResult:
        counters = state.counters
        try:
            result = await self.client.achat(
                messages,
                max_tokens=self.max_tokens if logprobs else self.text_max_tokens,
                logprobs=logprobs,
                top_logprobs=self.top_logprobs,
                deadline=state.deadline,
            )
        except ChatClientError as exc:
            attempts = max(int(getattr(exc, "attempts", 1) or 0), 0)
            counters["calls"] += attempts
            counters["retries"] += max(attempts - 1, 0)
            counters["failures"] += 1
            state.errors.append(str(exc))
            raise _Failed(str(exc)) from exc
        counters["calls"] += result.attempts
        counters["retries"] += max(result.attempts - 1, 0)
        counters["prompt_tokens"] += result.prompt_tokens
        counters["completion_tokens"] += result.completion_tokens
        return result

    def _read(self, result: ChatResult) -> CachedJudgement | None:
        if result.tokens is not None:
            probs = probs_from_tokens(result.tokens, self.labels)
            if probs is not None:
                return CachedJudgement(probs, "logprobs")
        label = parse_text_label(result.text, self.labels)
        if label is None:
            return None
        return CachedJudgement({lab.name: float(lab is label) for lab in self.labels}, "text")

    def _scored(self, judged: CachedJudgement, truncated: bool, *, cached_hit: bool) -> Judgement:
        names = {lab.name for lab in self.labels}
        probs = {k: float(v) for k, v in judged.probs.items() if k in names}
        return Judgement(
            score=expected_relevance(probs, self.labels),
            metadata={
                "rerank_label": most_probable(probs, self.labels),
                "rerank_label_probs": probs,
                "rerank_source": judged.source,
                "rerank_truncated": truncated,
                "rerank_cached": cached_hit,
            },
        )


class _Failed(Exception):
    """A chat request failed for good (already counted and logged)."""


def _unknown(truncated: bool, why: str) -> Judgement:
    return Judgement(
        score=None,
        metadata={
            "rerank_label": UNKNOWN,
            "rerank_label_probs": {},
            "rerank_source": UNKNOWN,
            "rerank_truncated": truncated,
            "rerank_cached": False,
            "rerank_error": why,
        },
    )


def _make_cache(spec: Any) -> JudgementCache | None:
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "memory":
        return MemoryCache()
    if isinstance(spec, (str, Path)):
        return SQLiteCache(spec)
    if isinstance(spec, JudgementCache):
        return spec
    raise ValueError(
        f"cache must be 'memory', a path to an SQLite file, an object with get/put, or None; "
        f"got {type(spec).__name__}"
    )


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="LLM rerank", unit="passage", leave=False)
